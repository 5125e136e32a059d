"""Compact proposals: a proposed block travels as its header and tx hashes, not its tx bytes.

Validators already hold nearly every tx of a proposal in their mempools (txs are gossiped
as they are admitted), so a proposal carries the block without its txs (the "header": the
block's canonical encoding with an empty tx list) and the sha256 of each tx. A receiver
rebuilds the full block from its mempool and the txs it has seen in recent blocks, and
fetches the txs it lacks by request/response (TXS_PROTOCOL) from the proposer first, then
from other peers. The rebuilt block must hash to the value id the proposer signed; only then
does the core see the proposal (as an ordinary `Proposal` carrying the full block), so a
validator that cannot assemble a block never votes for it, and a decided block it could not
assemble reaches it by block sync. This lifts the gossip-message cap on blocks (5000 txs
are ~170 KiB of hashes) and makes a proposal cheap to relay.

Wire (TOPIC_CONSENSUS, kind "cproposal"):
  ["cproposal", height, round, pol_round, proposer, signature, value_id, header, tx_hashes]
The signature is the proposal signature over (height, round, value_id, pol_round, proposer),
so the gossip validator checks it before relaying, without the txs.
TXS_PROTOCOL request {"op": "txs", "hashes": [32 bytes, ...]} -> {"txs": [bytes | None, ...]}
(same order; None for a tx the server does not hold or that no longer fits the answer).

Error handling: malformed compact proposals raise MalformedMessage (REJECT at gossip); a
proposal whose txs cannot be found or whose rebuilt block does not match its value id is
dropped (`AssemblyFailed`), never voted for; malformed fetch answers penalise the server.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from gossip.errors import GossipError, InvalidMessage
from gossip.node import GossipNode
from gossip.transport import PeerId
from ledger.block import HASH_BYTES, MAX_BLOCK_TXS, Block
from ledger.consensus import MalformedMessage, Proposal, proposal_sign_bytes
from ledger.errors import InvalidBlock, LedgerError

log = structlog.get_logger(__name__)

KIND_COMPACT = "cproposal"
TXS_PROTOCOL = "/hivemesh/txs/1"
MAX_FETCH_ANSWER = 8 << 20  # bytes of txs in one fetch answer; the rest are asked elsewhere
MAX_FETCH_REQUEST = MAX_BLOCK_TXS * (HASH_BYTES + 2) + 64
FETCH_TIMEOUT = 3.0
FETCH_PEERS = 3  # the proposer, then up to this many others


class AssemblyFailed(LedgerError):
    """A compact proposal that does not rebuild into the block its proposer signed."""

    code = "assembly_failed"


@dataclass(frozen=True, slots=True)
class CompactProposal:
    """A signed proposal whose value is given as a header block and the hashes of its txs."""

    height: int
    round: int
    pol_round: int
    proposer: str
    signature: bytes
    value_id: bytes
    header: Block  # the block with no txs
    tx_hashes: tuple[bytes, ...]

    def sign_bytes(self, chain_id: str) -> bytes:
        return proposal_sign_bytes(
            chain_id, self.height, self.round, self.value_id, self.pol_round, self.proposer
        )

    def to_wire(self) -> list[Any]:
        return [
            KIND_COMPACT,
            self.height,
            self.round,
            self.pol_round,
            self.proposer,
            self.signature,
            self.value_id,
            self.header.encoded,
            list(self.tx_hashes),
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> CompactProposal:
        """Parse an untrusted wire object. Raises MalformedMessage."""
        if not isinstance(obj, list) or len(obj) != 9 or obj[0] != KIND_COMPACT:
            raise MalformedMessage("a compact proposal is a list of 9 items tagged 'cproposal'")
        _, height, round, pol_round, proposer, signature, vid, header, hashes = obj
        if not isinstance(vid, bytes) or len(vid) != HASH_BYTES:
            raise MalformedMessage("compact proposal value id must be 32 bytes")
        if not isinstance(header, bytes):
            raise MalformedMessage("compact proposal header must be bytes")
        if not isinstance(hashes, list) or len(hashes) > MAX_BLOCK_TXS:
            raise MalformedMessage(f"compact proposal tx hashes must be a list of at most {MAX_BLOCK_TXS}")
        # map() keeps these checks in C: a proposal carries thousands of hashes.
        if set(map(type, hashes)) - {bytes} or set(map(len, hashes)) - {HASH_BYTES}:
            raise MalformedMessage("compact proposal tx hashes must be 32 bytes each")
        if len(set(hashes)) != len(hashes):
            raise MalformedMessage("compact proposal lists a tx twice")
        try:
            block = Block.decode(header)
        except InvalidBlock as e:
            raise MalformedMessage(f"compact proposal header: {e}") from e
        # The block's proposer may differ: a later round re-proposes the valid value of an earlier one.
        if block.txs or block.height != height:
            raise MalformedMessage("compact proposal header must be its own height's tx-less block")
        # Proposal's own checks of height, round, pol_round, proposer and signature:
        Proposal(height, round, b"", pol_round, proposer, signature)
        return cls(height, round, pol_round, proposer, signature, vid, block, tuple(hashes))

    @classmethod
    def of(cls, proposal: Proposal, block: Block) -> CompactProposal:
        """The compact form of a proposal whose value is `block`."""
        assert proposal.value_id == block.hash, "the block must be the proposal's value"
        header = _with_txs(block, ())
        hashes = tuple(hashlib.sha256(tx).digest() for tx in block.txs)
        return cls(
            proposal.height,
            proposal.round,
            proposal.pol_round,
            proposal.proposer,
            proposal.signature,
            proposal.value_id,
            header,
            hashes,
        )

    def with_block(self, block: Block) -> Proposal:
        """The full proposal, given its block (already held: built or assembled here)."""
        assert block.hash == self.value_id, "the block must be the proposal's value"
        return Proposal(self.height, self.round, block.encoded, self.pol_round, self.proposer, self.signature)

    def missing(self, lookup: Callable[[bytes], bytes | None]) -> list[bytes]:
        """Hashes of the txs `lookup` does not hold."""
        return [h for h in self.tx_hashes if lookup(h) is None]

    def assemble(self, lookup: Callable[[bytes], bytes | None]) -> tuple[Proposal, Block]:
        """The full proposal and its block, with every tx from lookup.

        Raises:
            AssemblyFailed: a tx is missing, or the rebuilt block is not the signed value.
        """
        txs: list[bytes] = []
        for h in self.tx_hashes:
            tx = lookup(h)
            if tx is None:
                raise AssemblyFailed(f"tx {h.hex()} of proposal {self.height}/{self.round} is missing")
            txs.append(tx)
        try:
            block = _with_txs(self.header, tuple(txs))
        except InvalidBlock as e:
            raise AssemblyFailed(f"proposal {self.height}/{self.round} rebuilds into no block: {e}") from e
        if block.hash != self.value_id:
            raise AssemblyFailed(f"proposal {self.height}/{self.round} rebuilds into another block")
        full = Proposal(self.height, self.round, block.encoded, self.pol_round, self.proposer, self.signature)
        return full, block


def _with_txs(block: Block, txs: tuple[bytes, ...]) -> Block:
    return Block(
        chain_id=block.chain_id,
        height=block.height,
        time_ms=block.time_ms,
        proposer=block.proposer,
        prev_hash=block.prev_hash,
        last_app_hash=block.last_app_hash,
        txs=txs,
        evidence=block.evidence,
    )


class RecentTxs:
    """Bounded LRU of tx bytes by hash: txs of recent blocks here, and gossiped txs our mempool
    did not admit (a nonce gap, say), which a proposal may still carry.

    Written by the ledger owner, read synchronously by the TXS_PROTOCOL server, so a peer can
    answer for txs that already left its mempool (committed, or never admitted here).
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._txs: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._txs)

    def get(self, tx_hash: bytes) -> bytes | None:
        return self._txs.get(tx_hash)

    def add(self, hashes: Sequence[bytes], txs: Sequence[bytes]) -> None:
        for h, tx in zip(hashes, txs, strict=True):
            self._txs[h] = tx
            self._txs.move_to_end(h)
        while len(self._txs) > self.capacity:
            self._txs.popitem(last=False)


class TxServer:
    """Answers TXS_PROTOCOL from `lookup` (mempool, then recent txs)."""

    def __init__(
        self, lookup: Callable[[bytes], bytes | None], penalize: Callable[[PeerId, str], None]
    ) -> None:
        self._lookup, self._penalize = lookup, penalize

    async def handle(self, peer: PeerId, body: Any) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        try:
            hashes = _parse_request(body)
        except InvalidMessage as e:
            self._penalize(peer, f"malformed txs request: {e}")
            raise
        out: list[bytes | None] = []
        size = 0
        for h in hashes:
            tx = self._lookup(h)
            if tx is not None and size + len(tx) <= MAX_FETCH_ANSWER:
                size += len(tx)
                out.append(tx)
            else:
                out.append(None)
        return {"txs": out}


def _parse_request(body: Any) -> list[bytes]:
    hashes = body.get("hashes") if isinstance(body, dict) and set(body) == {"op", "hashes"} else None
    if (
        body is None
        or body.get("op") != "txs"
        or not isinstance(hashes, list)
        or not 0 < len(hashes) <= MAX_BLOCK_TXS
        or not all(isinstance(h, bytes) and len(h) == HASH_BYTES for h in hashes)
    ):
        raise InvalidMessage(f"txs request must be {{op: txs, hashes: [1..{MAX_BLOCK_TXS} x 32 bytes]}}")
    return hashes


async def fetch_txs(
    gossip: GossipNode, peers: Sequence[PeerId], hashes: Sequence[bytes], *, timeout: float = FETCH_TIMEOUT
) -> dict[bytes, bytes]:
    """Ask peers in turn for the txs with these hashes; returns those found (each checked by hash)."""
    found: dict[bytes, bytes] = {}
    for peer in peers:
        wanted = [h for h in hashes if h not in found]
        if not wanted:
            break
        try:
            reply = await gossip.rpc.request(
                peer,
                TXS_PROTOCOL,
                {"op": "txs", "hashes": wanted},
                timeout=timeout,
                max_response=MAX_FETCH_ANSWER + 8 * len(wanted) + 4096,
            )
        except GossipError as e:
            log.debug("txs fetch failed", peer=peer, error=str(e))
            continue
        txs = reply.get("txs") if isinstance(reply, dict) and len(reply) == 1 else None
        if not isinstance(txs, list) or len(txs) != len(wanted):
            gossip.penalize(peer, "malformed txs answer")
            continue
        for h, tx in zip(wanted, txs, strict=True):
            if tx is None:
                continue
            if not isinstance(tx, bytes) or hashlib.sha256(tx).digest() != h:
                gossip.penalize(peer, "txs answer holds a tx that is not the one asked for")
                break
            found[h] = tx
    return found
