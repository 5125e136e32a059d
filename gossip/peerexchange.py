"""Peer exchange: grows the bootstrap star into a mesh by trading self-advertised addresses.

Every peer serves PEERS_PROTOCOL. A request carries the asker's own dialable addresses; the
answer carries the server's own addresses and a random sample (at most MAX_SAMPLE) of the
peers it knows first-hand. Every `interval` seconds (jittered) a peer connected to fewer than
`target_degree` others asks a random connected peer and then dials a few random known,
unconnected ones, each dial under a timeout.

Trust: an address enters the book only if it names its peer id (`/p2p/<id>` for libp2p,
`/memory/<id>` in memory), and is keyed by that id, so the transport's handshake proves who
answers a dial. Only *verified* entries are passed on to others: those a peer advertised
about itself over an authenticated stream, or that we dialed successfully. Second-hand
addresses never overwrite verified ones, an address failing MAX_DIAL_FAILURES dials in a row
is forgotten, and the book holds at most `max_book` peers (unverified ones are evicted
first). A malformed request or answer costs the sender a penalty through the node's scores.

Wire (msgpack, inside request/response frames):
  request  {"self": [addr, ...]}
  response {"self": [addr, ...], "peers": [[addr, ...], ...]}
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from gossip.dialer import peer_id_in_address
from gossip.errors import GossipError, InvalidMessage
from gossip.transport import PeerId

if TYPE_CHECKING:
    from gossip.node import GossipNode

log = structlog.get_logger(__name__)

PEERS_PROTOCOL = "/hivemesh/peers/1"
# Connections each peer seeks. Every GossipSub transmission costs py-libp2p CPU, and the mesh
# (D=3, gossip.libp2p_host) is drawn from these connections. Every peer is also connected to the
# bootstrap peer, which keeps only a few of them in its mesh: at 2, a peer it pruned often had a
# single other mesh link and whole pairs were cut off the mesh, leaving their messages to
# anti-entropy (seconds, benchmarks/gossip_latency.py with 20 peers). 3 leaves every peer two
# links besides the bootstrap peer.
DEFAULT_TARGET_DEGREE = 3
MAX_SAMPLE = 32  # peers in one answer
MAX_SELF_ADDRS = 8  # addresses one peer may advertise for itself
MAX_ADDR_LEN = 256
MAX_BOOK = 256  # peers remembered
MAX_DIAL_FAILURES = 3  # consecutive failed dials before an entry is forgotten
MAX_REQUEST = 8 * 1024
MAX_RESPONSE = 128 * 1024  # MAX_SAMPLE * MAX_SELF_ADDRS * MAX_ADDR_LEN fits with room to spare
_ADDRS_TRIED = 3  # addresses of one peer tried per dial attempt
_RETRY_AFTER = 10.0  # seconds before an address that failed once is tried again (doubles)


@dataclass(slots=True)
class _Entry:
    addrs: tuple[str, ...]
    verified: bool
    failures: int = 0
    retry_at: float = 0.0


class AddressBook:
    """Peers we could dial, keyed by peer id. Pure bookkeeping: no I/O, the caller passes the time."""

    def __init__(self, own_id: PeerId, max_peers: int = MAX_BOOK) -> None:
        self.own_id = own_id
        self.max_peers = max_peers
        self._entries: OrderedDict[PeerId, _Entry] = OrderedDict()  # least recently learned first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

    def addrs(self, peer: PeerId) -> tuple[str, ...]:
        entry = self._entries.get(peer)
        return () if entry is None else entry.addrs

    def is_verified(self, peer: PeerId) -> bool:
        entry = self._entries.get(peer)
        return entry is not None and entry.verified

    def learn(self, peer: PeerId, addrs: list[str], *, first_hand: bool) -> None:
        """Record addrs for peer: told by the peer itself (first_hand) or by someone else."""
        if peer == self.own_id or not addrs:
            return
        entry = self._entries.get(peer)
        if first_hand:
            self._entries[peer] = _Entry(tuple(addrs), verified=True)
            self._entries.move_to_end(peer)
        elif entry is None:
            self._entries[peer] = _Entry(tuple(addrs), verified=False)
        self._evict()

    def sample(self, count: int, rng: random.Random, exclude: set[PeerId]) -> list[list[str]]:
        """Up to count verified entries, chosen at random, none of them in exclude."""
        eligible = [p for p, e in self._entries.items() if e.verified and p not in exclude]
        return [list(self._entries[p].addrs) for p in rng.sample(eligible, min(count, len(eligible)))]

    def candidates(self, now: float, skip: Callable[[PeerId], bool]) -> list[PeerId]:
        """Peers worth dialing now: not skipped (connected, banned) and not backing off."""
        return [p for p, e in self._entries.items() if e.retry_at <= now and not skip(p)]

    def dialed(self, peer: PeerId, addr: str) -> None:
        """A dial to addr reached peer: the entry is verified and addr is tried first next time."""
        entry = self._entries.get(peer)
        if entry is None:
            return
        entry.addrs = (addr, *(a for a in entry.addrs if a != addr))
        entry.verified, entry.failures, entry.retry_at = True, 0, 0.0

    def failed(self, peer: PeerId, now: float) -> None:
        """A dial to peer failed: back off, and forget it after MAX_DIAL_FAILURES in a row."""
        entry = self._entries.get(peer)
        if entry is None:
            return
        entry.failures += 1
        if entry.failures >= MAX_DIAL_FAILURES:
            del self._entries[peer]
        else:
            entry.retry_at = now + _RETRY_AFTER * 2 ** (entry.failures - 1)

    def _evict(self) -> None:
        while len(self._entries) > self.max_peers:
            victim = next((p for p, e in self._entries.items() if not e.verified), None)
            del self._entries[victim if victim is not None else next(iter(self._entries))]


def parse_addrs(value: Any, owner: PeerId | None, what: str) -> tuple[PeerId | None, list[str]]:
    """Check a list of addresses that must all name one peer (owner, when given).

    Returns (the peer they name, the addresses). Raises InvalidMessage.
    """
    if not isinstance(value, list) or len(value) > MAX_SELF_ADDRS:
        raise InvalidMessage(f"{what} must be a list of at most {MAX_SELF_ADDRS} addresses")
    named: PeerId | None = owner
    for addr in value:
        if not isinstance(addr, str) or not 0 < len(addr) <= MAX_ADDR_LEN:
            raise InvalidMessage(f"{what}: addresses must be strings of 1..{MAX_ADDR_LEN} characters")
        peer = peer_id_in_address(addr)
        if peer is None:
            raise InvalidMessage(f"{what}: address {addr[:80]!r} does not name its peer id")
        if named is None:
            named = peer
        elif peer != named:
            raise InvalidMessage(f"{what}: address {addr[:80]!r} names {peer}, expected {named}")
    return named, list(value)


class PeerExchange:
    """Both sides of PEERS_PROTOCOL for one GossipNode, and the loop that dials new peers.

    Args:
        node: whose transport, request/response, scores and random source are used.
        target_degree: keep asking and dialing while connected to fewer peers than this.
        interval: mean seconds between rounds (each wait is jittered by +-50%).
        dial_timeout: limit of one dial; request_timeout: limit of one exchange.
        max_dials: new peers dialed at most per round.
        own_addrs: our dialable addresses (default: the transport's listen addresses).
    """

    def __init__(
        self,
        node: GossipNode,
        *,
        target_degree: int = DEFAULT_TARGET_DEGREE,
        interval: float = 2.0,
        dial_timeout: float = 5.0,
        request_timeout: float = 5.0,
        max_dials: int = 3,
        max_book: int = MAX_BOOK,
        own_addrs: Callable[[], list[str]] | None = None,
    ) -> None:
        if target_degree < 1 or interval <= 0 or max_dials < 1:
            raise ValueError("need target_degree >= 1, interval > 0 and max_dials >= 1")
        self.node = node
        self.transport = node.transport
        self.target_degree = target_degree
        self.interval = interval
        self.dial_timeout = dial_timeout
        self.request_timeout = request_timeout
        self.max_dials = max_dials
        self.book = AddressBook(node.peer_id, max_book)
        self._own_addrs = own_addrs if own_addrs is not None else self.transport.listen_addrs
        node.rpc.set_handler(PEERS_PROTOCOL, self.handle, max_request=MAX_REQUEST)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run rounds until cancelled; `started()` at once."""
        task_status.started()
        while True:
            await trio.sleep(self.interval * self.node.random.uniform(0.5, 1.5))
            await self.exchange_once()

    def own_addrs(self) -> list[str]:
        """Our dialable addresses that name us (what we advertise)."""
        mine = [a for a in self._own_addrs() if peer_id_in_address(a) == self.node.peer_id]
        return [a for a in mine if len(a) <= MAX_ADDR_LEN][:MAX_SELF_ADDRS]

    def degree(self) -> int:
        return len(self._connected())

    # -- asking ------------------------------------------------------------------------------

    async def exchange_once(self) -> int:
        """One round: below target degree, ask a random neighbour, then dial. Returns dials that worked.

        With no neighbour left at all, the book alone still gives addresses to dial.
        """
        connected = self._connected()
        if len(connected) >= self.target_degree:
            return 0
        if connected:
            await self.ask(self.node.random.choice(sorted(connected)))
        return await self.dial_some(self.target_degree - self.degree())

    async def ask(self, peer: PeerId) -> bool:
        """Request peer's addresses and sample; True if a well-formed answer was absorbed."""
        try:
            reply = await self.node.rpc.request(
                peer,
                PEERS_PROTOCOL,
                {"self": self.own_addrs()},
                timeout=self.request_timeout,
                max_response=MAX_RESPONSE,
            )
        except GossipError as e:  # unreachable or refusing peers are normal; garbage is already penalised
            log.debug("peer exchange failed", peer=peer, error=str(e))
            return False
        try:
            own, sample = _parse_response(reply, peer)
        except InvalidMessage as e:
            self.node.penalize(peer, f"malformed peer-exchange answer: {e}")
            return False
        self.book.learn(peer, own, first_hand=True)
        for named, addrs in sample:
            if named != peer:
                self.book.learn(named, addrs, first_hand=False)
        return True

    async def dial_some(self, wanted: int) -> int:
        """Dial up to min(wanted, max_dials) random known peers at once; returns how many connected."""
        if wanted <= 0:
            return 0
        connected = set(self.transport.connected_peers())
        candidates = self.book.candidates(trio.current_time(), lambda p: p in connected or self._banned(p))
        chosen = self.node.random.sample(candidates, min(wanted, self.max_dials, len(candidates)))
        results: list[bool] = []
        async with trio.open_nursery() as nursery:
            for peer in chosen:
                nursery.start_soon(self._dial, peer, results)
        return sum(results)

    async def _dial(self, peer: PeerId, results: list[bool]) -> None:
        for addr in self.book.addrs(peer)[:_ADDRS_TRIED]:
            try:
                reached = await self.transport.connect(addr, timeout=self.dial_timeout)
            except GossipError as e:
                log.debug("peer-exchange dial failed", addr=addr, error=str(e))
                continue
            if reached == peer:  # the transport's handshake checked the id the address names
                self.book.dialed(peer, addr)
                results.append(True)
                return
        self.book.failed(peer, trio.current_time())
        results.append(False)

    # -- answering ---------------------------------------------------------------------------

    async def handle(self, peer: PeerId, body: Any) -> dict[str, Any]:
        """Server side: learn the asker's own addresses, answer with ours and a sample."""
        await trio.lowlevel.checkpoint()
        if self._banned(peer):
            raise GossipError("refused: you are banned by this peer")
        try:
            if not isinstance(body, dict) or set(body) != {"self"}:
                raise InvalidMessage("must be {self: [addr, ...]}")
            _, addrs = parse_addrs(body["self"], peer, "self")
        except InvalidMessage as e:
            error = InvalidMessage(f"malformed peer-exchange request: {e}")
            self.node.penalize(peer, str(error))
            raise error from e
        self.book.learn(peer, addrs, first_hand=True)
        sample = self.book.sample(MAX_SAMPLE, self.node.random, exclude={peer})
        return {"self": self.own_addrs(), "peers": sample}

    # -- helpers -----------------------------------------------------------------------------

    def _connected(self) -> list[PeerId]:
        return [p for p in self.transport.connected_peers() if not self._banned(p)]

    def _banned(self, peer: PeerId) -> bool:
        return self.node.scores.is_banned(peer)


def _parse_response(reply: Any, responder: PeerId) -> tuple[list[str], list[tuple[PeerId, list[str]]]]:
    """Validate an answer from responder. Raises InvalidMessage."""
    if not isinstance(reply, dict) or set(reply) != {"self", "peers"}:
        raise InvalidMessage("answer must be {self: [addr, ...], peers: [[addr, ...], ...]}")
    _, own = parse_addrs(reply["self"], responder, "self")
    peers = reply["peers"]
    if not isinstance(peers, list) or len(peers) > MAX_SAMPLE:
        raise InvalidMessage(f"peers must be a list of at most {MAX_SAMPLE} address lists")
    sample: list[tuple[PeerId, list[str]]] = []
    for item in peers:
        named, addrs = parse_addrs(item, None, "peers")
        if named is None:
            raise InvalidMessage("peers: every entry needs at least one address")
        sample.append((named, addrs))
    return own, sample
