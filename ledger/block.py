"""Blocks: the value consensus decides, with its canonical encoding, hash, shape checks and builder.

Wire form: the canonical msgpack (keys sorted, shortest encodings) of the map
{"chain", "evidence", "height", "last_app_hash", "prev_hash", "proposer", "time", "txs", "v"}.
`txs` are tx wire bytes (`ledger.tx`), `evidence` are encoded duplicate-vote evidence
(`packb(DuplicateVoteEvidence.to_wire())`). `Block.decode` refuses any bytes that are not
exactly the canonical encoding of a well-formed block, so a block has one encoding and one
hash: `block_hash = sha256(encoded)`, which is the value id consensus votes on.

Header rules: height >= 1; prev_hash is the hash of block height-1 (32 zero bytes at height 1);
last_app_hash is the app hash of the state after height-1 (the genesis app hash at height 1);
time_ms strictly increases from block to block. `Block.decode` checks the form only (it never
decodes the txs); `validate_block_shape` checks a block against the state it extends and is
what proposers and the consensus validate-value callback run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from gossip.envelope import packb, unpackb
from gossip.errors import GossipError
from ledger.apply import Receipt, apply_block
from ledger.consensus import ConsensusError, DuplicateVoteEvidence
from ledger.errors import InvalidBlock, InvalidTx
from ledger.state import State, app_hash, validator_set_at
from ledger.tx import MAX_TX_BYTES, MAX_UINT64, SignedTx, check_address, decode_tx, decode_wire_map

BLOCK_VERSION = 1
MAX_BLOCK_BYTES = 4 * 1024 * 1024
MAX_BLOCK_TXS = 10_000
MAX_BLOCK_EVIDENCE = 64
MAX_EVIDENCE_BYTES = 4 * 1024
# What a proposer may spend on txs (mempool reap budget): leaves room for header and evidence.
MAX_BLOCK_TX_BYTES = MAX_BLOCK_BYTES - 512 * 1024
MAX_CHAIN_ID_LEN = 64
HASH_BYTES = 32
ZERO_HASH = bytes(HASH_BYTES)
_WIRE_KEYS = frozenset(
    {"chain", "evidence", "height", "last_app_hash", "prev_hash", "proposer", "time", "txs", "v"}
)


def _is_uint(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_UINT64


def _check_blobs(items: Any, what: str, max_count: int, max_each: int) -> None:
    if not isinstance(items, tuple):
        raise InvalidBlock(f"{what} must be a list, got {type(items).__name__}")
    if len(items) > max_count:
        raise InvalidBlock(f"{len(items)} {what} exceed the limit of {max_count} per block")
    for i, item in enumerate(items):
        if not isinstance(item, bytes) or not 0 < len(item) <= max_each:
            size = len(item) if isinstance(item, bytes) else type(item).__name__
            raise InvalidBlock(f"{what} #{i} must be 1..{max_each} bytes, got {size}")


@dataclass(frozen=True, slots=True)
class Block:
    """A block. Construction checks every field (raises InvalidBlock) and computes the encoding.

    `txs` and `evidence` may be given as lists; they are stored as tuples.
    """

    chain_id: str
    height: int
    time_ms: int
    proposer: str
    prev_hash: bytes
    last_app_hash: bytes
    txs: tuple[bytes, ...] = ()
    evidence: tuple[bytes, ...] = ()
    encoded: bytes = field(init=False, repr=False, compare=False)
    hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("txs", "evidence"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check()
        encoded = packb(
            {
                "chain": self.chain_id,
                "evidence": list(self.evidence),
                "height": self.height,
                "last_app_hash": self.last_app_hash,
                "prev_hash": self.prev_hash,
                "proposer": self.proposer,
                "time": self.time_ms,
                "txs": list(self.txs),
                "v": BLOCK_VERSION,
            }
        )
        if len(encoded) > MAX_BLOCK_BYTES:
            raise InvalidBlock(f"block of {len(encoded)} bytes exceeds the limit of {MAX_BLOCK_BYTES}")
        object.__setattr__(self, "encoded", encoded)
        object.__setattr__(self, "hash", hashlib.sha256(encoded).digest())

    def _check(self) -> None:
        if not isinstance(self.chain_id, str) or not 0 < len(self.chain_id) <= MAX_CHAIN_ID_LEN:
            raise InvalidBlock(f"chain id must be a string of 1..{MAX_CHAIN_ID_LEN} characters")
        if not _is_uint(self.height, 1):
            raise InvalidBlock(f"height must be an integer >= 1, got {self.height!r}")
        if not _is_uint(self.time_ms):
            raise InvalidBlock(f"time must be an unsigned 64-bit integer (ms), got {self.time_ms!r}")
        try:
            check_address(self.proposer)
        except InvalidTx as e:
            raise InvalidBlock(f"bad proposer: {e}") from e
        for name in ("prev_hash", "last_app_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != HASH_BYTES:
                raise InvalidBlock(f"{name} must be {HASH_BYTES} bytes, got {value!r:.80}")
        if (self.height == 1) != (self.prev_hash == ZERO_HASH):
            raise InvalidBlock("prev_hash must be 32 zero bytes at height 1 and only there")
        _check_blobs(self.txs, "txs", MAX_BLOCK_TXS, MAX_TX_BYTES)
        _check_blobs(self.evidence, "evidence", MAX_BLOCK_EVIDENCE, MAX_EVIDENCE_BYTES)

    def encode(self) -> bytes:
        return self.encoded

    @classmethod
    def decode(cls, data: bytes) -> Block:
        """Parse untrusted bytes. Checks the form of every field, not the txs inside.

        Raises:
            InvalidBlock: oversized, malformed msgpack, wrong fields or types, or non-canonical bytes.
        """
        data, raw = decode_wire_map(
            data, "block", MAX_BLOCK_BYTES, _WIRE_KEYS, InvalidBlock, msgpack_prefix="block is not msgpack: "
        )
        if not _is_uint(raw["v"]) or raw["v"] != BLOCK_VERSION:
            raise InvalidBlock(f"block version {raw['v']!r} not supported (we speak {BLOCK_VERSION})")
        for name in ("txs", "evidence"):
            if not isinstance(raw[name], list):
                raise InvalidBlock(f"{name} must be a list, got {type(raw[name]).__name__}")
        block = cls(
            chain_id=raw["chain"],
            height=raw["height"],
            time_ms=raw["time"],
            proposer=raw["proposer"],
            prev_hash=raw["prev_hash"],
            last_app_hash=raw["last_app_hash"],
            txs=tuple(raw["txs"]),
            evidence=tuple(raw["evidence"]),
        )
        if block.encoded != data:
            raise InvalidBlock("block bytes are not in canonical encoding")
        return block


def block_hash(block: Block | bytes) -> bytes:
    """sha256 of the block's wire bytes: the value id consensus votes on."""
    return block.hash if isinstance(block, Block) else hashlib.sha256(block).digest()


def encode_evidence(evidence: DuplicateVoteEvidence) -> bytes:
    return packb(evidence.to_wire())


def decode_evidence(data: bytes) -> DuplicateVoteEvidence:
    """Parse one evidence item of a block. Raises InvalidBlock if it is not canonical evidence."""
    try:
        evidence = DuplicateVoteEvidence.from_wire(unpackb(data, max_bytes=MAX_EVIDENCE_BYTES))
    except (GossipError, ConsensusError) as e:
        raise InvalidBlock(f"malformed evidence: {e}") from e
    if encode_evidence(evidence) != data:
        raise InvalidBlock("evidence bytes are not in canonical encoding")
    return evidence


def validate_block_shape(
    block: Block,
    state: State,
    prev_hash: bytes,
    *,
    state_app_hash: bytes | None = None,
    now_ms: int | None = None,
    max_future_ms: int = 10_000,
    decode: Callable[[bytes], SignedTx] = decode_tx,
) -> list[SignedTx]:
    """Check that `block` can extend `state` (the state after block height-1) and return its txs.

    Does not verify tx signatures or run the txs: a tx that fails admission when the block is
    applied only gets a failed receipt. Evidence is decoded, not verified (consensus does that).

    Args:
        prev_hash: hash of the block at height-1 (ZERO_HASH at height 1).
        state_app_hash: app_hash(state) if the caller knows it (saves hashing the whole state).
        now_ms: the local clock; if given, a block more than `max_future_ms` ahead is refused.
        decode: decodes one tx (decode_tx, or a node's caching decoder).
    Returns:
        The decoded txs, in block order (can be passed to apply_block instead of the bytes).
    Raises:
        InvalidBlock: naming the first field that does not fit.
    """
    if block.chain_id != state.chain_id:
        raise InvalidBlock(f"block is for chain {block.chain_id!r}, this chain is {state.chain_id!r}")
    if block.height != state.height + 1:
        raise InvalidBlock(f"block height {block.height} does not follow the last height {state.height}")
    if block.prev_hash != prev_hash:
        raise InvalidBlock(f"prev_hash {block.prev_hash.hex()} is not the last block hash {prev_hash.hex()}")
    expected_app = app_hash(state) if state_app_hash is None else state_app_hash
    if block.last_app_hash != expected_app:
        raise InvalidBlock(
            f"last_app_hash {block.last_app_hash.hex()} is not the state's {expected_app.hex()}"
        )
    if block.time_ms <= state.time_ms:
        raise InvalidBlock(f"block time {block.time_ms} is not after the last block time {state.time_ms}")
    if now_ms is not None and block.time_ms > now_ms + max_future_ms:
        raise InvalidBlock(f"block time {block.time_ms} is more than {max_future_ms} ms ahead of {now_ms}")
    if block.proposer not in {v.address for v in validator_set_at(state, block.height)}:
        raise InvalidBlock(f"proposer {block.proposer} is not in the validator set of height {block.height}")
    txs: list[SignedTx] = []
    seen: set[bytes] = set()
    for i, raw in enumerate(block.txs):
        try:
            stx = decode(raw)
        except InvalidTx as e:
            raise InvalidBlock(f"tx #{i}: {e}") from e
        if stx.tx.chain_id != block.chain_id:
            raise InvalidBlock(f"tx #{i} is for chain {stx.tx.chain_id!r}")
        if stx.hash in seen:
            raise InvalidBlock(f"tx #{i} ({stx.hash.hex()}) appears twice")
        seen.add(stx.hash)
        txs.append(stx)
    evidence_ids: set[bytes] = set()
    for i, item in enumerate(block.evidence):
        evidence = decode_evidence(item)
        if evidence.height >= block.height:
            raise InvalidBlock(f"evidence #{i} is for height {evidence.height}, not before {block.height}")
        if item in evidence_ids:
            raise InvalidBlock(f"evidence #{i} appears twice")
        evidence_ids.add(item)
    return txs


def build_block(
    state: State,
    prev_hash: bytes,
    proposer: str,
    time_ms: int,
    txs: Sequence[bytes | SignedTx],
    evidence: Sequence[bytes | DuplicateVoteEvidence] = (),
    *,
    state_app_hash: bytes | None = None,
) -> Block:
    """The next block on top of `state`. Time is raised to last block time + 1 if the clock lags.

    Raises InvalidBlock if the result breaks a limit (too many or too large txs or evidence).
    """
    return Block(
        chain_id=state.chain_id,
        height=state.height + 1,
        time_ms=max(time_ms, state.time_ms + 1),
        proposer=proposer,
        prev_hash=prev_hash,
        last_app_hash=app_hash(state) if state_app_hash is None else state_app_hash,
        txs=tuple(t.encoded if isinstance(t, SignedTx) else t for t in txs),
        evidence=tuple(encode_evidence(e) if isinstance(e, DuplicateVoteEvidence) else e for e in evidence),
    )


def apply_decided_block(
    state: State, block: Block, *, verified: Collection[bytes] = (), txs: Sequence[SignedTx] | None = None
) -> tuple[State, list[Receipt], bytes]:
    """apply_block for a decided `block`: (new state, receipts, app hash).

    `txs` may be the list validate_block_shape returned (saves decoding them again).
    Raises InvalidBlock for a block of another chain or with undecodable evidence.
    """
    if block.chain_id != state.chain_id:
        raise InvalidBlock(f"block is for chain {block.chain_id!r}, this chain is {state.chain_id!r}")
    evidence = [decode_evidence(item) for item in block.evidence]
    body: Sequence[bytes | SignedTx] = block.txs if txs is None else txs
    return apply_block(
        state,
        block.height,
        block.time_ms,
        block.proposer,
        body,
        evidence,
        verified=verified,
        entropy=block.prev_hash,
    )
