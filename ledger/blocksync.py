"""Block sync: decided blocks and their commits, fetched from peers by request/response.

A peer that starts, restarts, was partitioned or frozen, or simply missed a decision on
gossip asks its peers how high they are and fetches what it lacks. Every block is checked
before it is applied (`verify_synced`): it must decode canonically, carry a commit signed by
more than 2/3 of the voting power of the validator set of its height (known from our own
state, so a hostile peer cannot choose it), and extend our chain (height, prev_hash,
last_app_hash, time). A peer that serves a block failing those checks is penalised.

Wire (msgpack bodies of BLOCKS_PROTOCOL request/response):
  {"op": "status"}                         -> {"height": int, "hash": 32 bytes (tip block hash)}
  {"op": "range", "from": int, "max": int} -> {"blocks": [[height, block, commit], ...]}
A range answer holds consecutive heights starting at `from`, at most MAX_RANGE_BLOCKS of them
and at most MAX_RANGE_BYTES of block and commit bytes (the first block always); it may be
shorter than asked. Commits are `packb(Commit.to_wire())`.

Error handling: unreachable or slow peers are skipped for the round; malformed answers and
bad blocks penalise the peer (through the gossip node's scores) and end the round with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from gossip.envelope import packb, unpackb
from gossip.errors import GossipError, InvalidMessage
from gossip.node import GossipNode
from gossip.transport import PeerId
from ledger.block import MAX_BLOCK_BYTES, Block, validate_block_shape
from ledger.consensus import Commit, ConsensusError, ValidatorSet, check_commit
from ledger.errors import InvalidBlock, LedgerError
from ledger.state import State, validator_set_at
from ledger.store import LedgerStore
from ledger.tx import SignedTx

log = structlog.get_logger(__name__)

BLOCKS_PROTOCOL = "/hivemesh/blocks/1"
MAX_RANGE_BLOCKS = 64
MAX_RANGE_BYTES = 4 << 20
MAX_COMMIT_BYTES = 1 << 20
MAX_REQUEST_BYTES = 1024
MAX_STATUS_PEERS = 8  # asked at once in a hinted round (a random poll asks POLL_PEERS)
POLL_PEERS = 2
_RESPONSE_LIMIT = MAX_RANGE_BYTES + MAX_BLOCK_BYTES + MAX_COMMIT_BYTES + 4096
_IDLE_GAP = 0.2  # seconds between rounds that found nothing to fetch (paces hostile hints)
HINT_GRACE = 0.2  # seconds a hint waits: a decision in flight often makes the round needless

# deliver(peer, height, block bytes, commit bytes, more) -> applied (or already held)?
Deliver = Callable[[PeerId, int, bytes, bytes, bool], Awaitable[bool]]


class SyncRejected(LedgerError):
    """A synced block (or its commit) that must not be applied; the serving peer is at fault."""

    code = "sync_rejected"


def encode_commit(commit: Commit) -> bytes:
    return packb(commit.to_wire())


def decode_commit(data: bytes) -> Commit:
    """Parse stored or received commit bytes. Raises SyncRejected."""
    try:
        return Commit.from_wire(unpackb(data, max_bytes=MAX_COMMIT_BYTES))
    except (GossipError, ConsensusError, TypeError, ValueError) as e:
        raise SyncRejected(f"malformed commit: {e}") from e


def verify_synced(
    state: State,
    prev_hash: bytes,
    state_app_hash: bytes,
    height: int,
    block_bytes: bytes,
    commit_bytes: bytes,
) -> tuple[Block, Commit, list[SignedTx]]:
    """Check a fetched block for `height` = state.height + 1; returns it, its commit and its txs.

    Raises:
        SyncRejected: naming the first check that failed.
    """
    try:
        block = Block.decode(block_bytes)
    except InvalidBlock as e:
        raise SyncRejected(f"block {height} does not decode: {e}") from e
    if block.height != height:
        raise SyncRejected(f"asked for block {height}, got block {block.height}")
    commit = decode_commit(commit_bytes)
    try:
        validators = ValidatorSet(validator_set_at(state, height))
        check_commit(validators, height, block.hash, commit, chain_id=state.chain_id)
    except ConsensusError as e:
        raise SyncRejected(f"block {height}: {e}") from e
    try:
        txs = validate_block_shape(block, state, prev_hash, state_app_hash=state_app_hash)
    except InvalidBlock as e:
        raise SyncRejected(f"block {height} does not extend our chain: {e}") from e
    return block, commit, txs


class BlockServer:
    """Answers BLOCKS_PROTOCOL from a read-only store connection (committed blocks only).

    Args:
        reader: a LedgerStore on the same file as the writer, used only by this server and
            other synchronous readers on the event loop thread.
        tip: () -> (height, block hash) of our last committed block.
        penalize: (peer, reason) for malformed requests.
        is_banned: peers that get no answer.
    """

    def __init__(
        self,
        reader: LedgerStore,
        tip: Callable[[], tuple[int, bytes]],
        penalize: Callable[[PeerId, str], None],
        is_banned: Callable[[PeerId], bool] = lambda peer: False,
    ) -> None:
        self.reader, self._tip, self._penalize, self._is_banned = reader, tip, penalize, is_banned

    async def handle(self, peer: PeerId, body: Any) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if self._is_banned(peer):
            raise GossipError("refused: you are banned by this peer")
        try:
            op, start, count = _parse_request(body)
        except InvalidMessage as e:
            self._penalize(peer, f"malformed blocks request: {e}")
            raise
        height, block_hash = self._tip()
        if op == "status":
            return {"height": height, "hash": block_hash}
        if start > height:
            return {"blocks": []}
        rows = self.reader.blocks(start, min(count, MAX_RANGE_BLOCKS, height - start + 1), MAX_RANGE_BYTES)
        return {"blocks": [[h, block, commit] for h, block, commit in rows]}


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63


def _parse_request(body: Any) -> tuple[str, int, int]:
    if isinstance(body, dict) and body == {"op": "status"}:
        return "status", 0, 0
    if (
        isinstance(body, dict)
        and set(body) == {"op", "from", "max"}
        and body["op"] == "range"
        and _is_uint(body["from"])
        and _is_uint(body["max"])
        and body["from"] >= 1
        and body["max"] >= 1
    ):
        return "range", body["from"], body["max"]
    raise InvalidMessage("blocks request must be {op: status} or {op: range, from: int >= 1, max: int >= 1}")


def _parse_status(reply: Any) -> int:
    if not (isinstance(reply, dict) and set(reply) == {"height", "hash"} and _is_uint(reply["height"])):
        raise InvalidMessage("status answer must be {height: int, hash: bytes}")
    if not isinstance(reply["hash"], bytes) or len(reply["hash"]) != 32:
        raise InvalidMessage("status hash must be 32 bytes")
    return reply["height"]


def _parse_range(reply: Any, start: int, asked: int) -> list[tuple[int, bytes, bytes]]:
    items = reply.get("blocks") if isinstance(reply, dict) and len(reply) == 1 else None
    if not isinstance(items, list) or len(items) > min(asked, MAX_RANGE_BLOCKS):
        raise InvalidMessage("range answer must be {blocks: [...]} with at most the blocks asked for")
    out: list[tuple[int, bytes, bytes]] = []
    for i, item in enumerate(items):
        if not (
            isinstance(item, list)
            and len(item) == 3
            and item[0] == start + i
            and isinstance(item[1], bytes)
            and isinstance(item[2], bytes)
        ):
            raise InvalidMessage(f"range item {i} is not [height {start + i}, block bytes, commit bytes]")
        out.append((item[0], item[1], item[2]))
    return out


class BlockSync:
    """The fetching side: rounds of status queries and range fetches, on hints or a timer.

    Args:
        gossip: for rpc requests, the peer list and penalties.
        height: () -> our committed height.
        deliver: hands one fetched block to the ledger's owner task; False if it was rejected
            (the owner has penalised the peer by then).
        done: called after a round that delivered blocks (the owner then joins consensus).
        poll_interval: a round with a couple of random peers at least this often (jittered).
        request_timeout: for each request.
    """

    def __init__(
        self,
        gossip: GossipNode,
        *,
        height: Callable[[], int],
        deliver: Deliver,
        done: Callable[[], Awaitable[None]],
        poll_interval: float = 2.0,
        request_timeout: float = 5.0,
    ) -> None:
        self.gossip = gossip
        self._height, self._deliver, self._done = height, deliver, done
        self.poll_interval, self.request_timeout = poll_interval, request_timeout
        self.active = False  # fetching blocks right now
        self.rounds = 0
        self.fetched = 0
        self._hints_send, self._hints_recv = trio.open_memory_channel[tuple[PeerId | None, int]](1)

    def hint(self, peer: PeerId | None, height: int) -> None:
        """peer sent a message for `height`, so it has committed height - 1: if we have not, run a
        round soon. Never blocks; hints that arrive while one is pending are dropped."""
        if height - 1 > self._height():
            try:
                self._hints_send.send_nowait((peer, height))
            except trio.WouldBlock:
                pass  # a round is already due

    async def run(self) -> None:
        """Rounds forever: on each hint still standing after HINT_GRACE, and a random poll every
        poll_interval (jittered) in which our height did not move (while consensus carries us
        from block to block, there is nothing for a poll to find)."""
        polled_at = self._height()
        while True:
            hint: tuple[PeerId | None, int] | None = None
            with trio.move_on_after(self.poll_interval * self.gossip.random.uniform(0.5, 1.5)):
                hint = await self._hints_recv.receive()
            if hint is None:
                if self._height() == polled_at:
                    await self.sync_round(fanout=POLL_PEERS)
                polled_at = self._height()
                continue
            await trio.sleep(HINT_GRACE)
            if hint[1] - 1 <= self._height():
                continue  # consensus got us there
            if not await self.sync_round(hint[0], fanout=MAX_STATUS_PEERS):
                await trio.sleep(_IDLE_GAP)

    async def sync_round(self, first: PeerId | None = None, *, fanout: int = MAX_STATUS_PEERS) -> int:
        """Ask up to `fanout` peers (first, if given, among them) and fetch from the highest.

        Returns the number of blocks delivered and accepted.
        """
        self.rounds += 1
        heights = await self._statuses(self._candidates(first, fanout))
        delivered = 0
        try:
            for target, peer in sorted(((h, p) for p, h in heights.items()), reverse=True):
                if target <= self._height():
                    break
                self.active = True
                delivered += await self._fetch_from(peer, target)
        finally:
            self.active = False
            if delivered:
                self.fetched += delivered
                await self._done()
        return delivered

    def _candidates(self, first: PeerId | None, fanout: int) -> list[PeerId]:
        g = self.gossip
        others = [p for p in g.transport.connected_peers() if p != first and not g.scores.is_banned(p)]
        head = [first] if first is not None and not g.scores.is_banned(first) else []
        return head + g.random.sample(others, max(0, min(len(others), fanout - len(head))))

    async def _statuses(self, peers: list[PeerId]) -> dict[PeerId, int]:
        heights: dict[PeerId, int] = {}

        async def ask(peer: PeerId) -> None:
            try:
                reply = await self.gossip.rpc.request(
                    peer, BLOCKS_PROTOCOL, {"op": "status"}, timeout=self.request_timeout, max_response=1024
                )
                heights[peer] = _parse_status(reply)
            except InvalidMessage as e:
                self.gossip.penalize(peer, f"malformed blocks status: {e}")
            except GossipError as e:
                log.debug("blocks status failed", peer=peer, error=str(e))

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
        return heights

    async def _fetch_from(self, peer: PeerId, target: int) -> int:
        """Fetch and deliver blocks from peer up to target; stops at the first problem."""
        count = 0
        while (start := self._height() + 1) <= target:
            asked = min(MAX_RANGE_BLOCKS, target - start + 1)
            body = {"op": "range", "from": start, "max": asked}
            try:
                reply = await self.gossip.rpc.request(
                    peer, BLOCKS_PROTOCOL, body, timeout=self.request_timeout, max_response=_RESPONSE_LIMIT
                )
                items = _parse_range(reply, start, asked)
            except InvalidMessage as e:
                self.gossip.penalize(peer, f"malformed blocks range: {e}")
                return count
            except GossipError as e:
                log.debug("blocks range failed", peer=peer, error=str(e))
                return count
            if not items:
                return count  # it claimed more than it serves; not provable, just move on
            for height, block, commit in items:
                if height <= self._height():
                    continue  # consensus got there first
                if height != self._height() + 1 or not await self._deliver(
                    peer, height, block, commit, height < target
                ):
                    return count
                count += 1
        return count
