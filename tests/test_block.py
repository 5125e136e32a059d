"""Blocks: canonical encoding round trip, stable hash, strict decoding of every field, shape checks."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest

from gossip.envelope import packb
from gossip.identity import Identity
from ledger.block import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_EVIDENCE,
    MAX_BLOCK_TXS,
    MAX_EVIDENCE_BYTES,
    ZERO_HASH,
    Block,
    apply_decided_block,
    block_hash,
    build_block,
    decode_evidence,
    encode_evidence,
    validate_block_shape,
)
from ledger.consensus import DuplicateVoteEvidence, Vote, VoteType
from ledger.errors import InvalidBlock
from ledger.genesis import Genesis, GenesisValidator, genesis_state
from ledger.params import Params
from ledger.state import State, app_hash
from ledger.tx import MAX_TX_BYTES, SignedTx, sign_tx

CHAIN = "hm-block-test"
IDS = [Identity.from_seed(hashlib.sha256(b"block-acct-%d" % i).digest()) for i in range(8)]
ADDR = [i.peer_id for i in IDS]
VALIDATOR = IDS[0]


def make_genesis(chain: str = CHAIN, accounts: int = len(IDS)) -> Genesis:
    return Genesis(
        chain_id=chain,
        balances={a: 1_000_000 for a in ADDR[:accounts]},
        validators=(GenesisValidator(VALIDATOR.peer_id, VALIDATOR.public, 50_000, 0),),
        params=Params(min_fee=1),
        genesis_time_ms=1_000,
    )


def transfer(sender: int, to: int, nonce: int, amount: int = 10, chain: str = CHAIN) -> SignedTx:
    return sign_tx(
        IDS[sender], "transfer", {"to": ADDR[to], "amount": amount}, nonce=nonce, fee=1, chain_id=chain
    )


def double_sign(height: int, chain: str = CHAIN) -> DuplicateVoteEvidence:
    votes = [
        Vote.create(VALIDATOR.sign, chain, VoteType.PREVOTE, height, 0, vid, VALIDATOR.peer_id)
        for vid in (hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest())
    ]
    return DuplicateVoteEvidence.of(*votes)


def first_block(state: State, txs: list[SignedTx] | None = None, evidence: tuple[Any, ...] = ()) -> Block:
    txs = [transfer(1, 2, 0), transfer(2, 3, 0)] if txs is None else txs
    return build_block(state, ZERO_HASH, VALIDATOR.peer_id, 5_000, txs, evidence)


@pytest.fixture
def state() -> State:
    return genesis_state(make_genesis())


def raw_map(block: Block) -> dict[str, Any]:
    return msgpack.unpackb(block.encoded, raw=False)


def test_round_trip_and_hash(state: State) -> None:
    block = first_block(state)
    again = Block.decode(block.encode())
    assert again == block
    assert again.encoded == block.encoded
    assert block_hash(block) == block_hash(block.encoded) == hashlib.sha256(block.encoded).digest()
    assert block.height == 1 and block.prev_hash == ZERO_HASH and block.last_app_hash == app_hash(state)
    assert block.txs == (transfer(1, 2, 0).encoded, transfer(2, 3, 0).encoded)
    # Lists are accepted and stored as tuples; the hash does not depend on that.
    assert Block(**{**_fields(block), "txs": list(block.txs)}).hash == block.hash


def test_hash_is_stable() -> None:
    """Golden value: a change here changes every block id on the chain (a hard fork)."""
    block = Block(CHAIN, 7, 123_456, ADDR[0], b"\x11" * 32, b"\x22" * 32, (b"tx-a", b"tx-b"), (b"ev",))
    assert Block.decode(block.encoded).hash == block.hash
    assert block.hash.hex() == GOLDEN_HASH


def _fields(block: Block) -> dict[str, Any]:
    names = ("chain_id", "height", "time_ms", "proposer", "prev_hash", "last_app_hash", "txs", "evidence")
    return {n: getattr(block, n) for n in names}


GOLDEN_HASH = "195967145f4df66d27be369949bd247a2b969a3646afcc58e91e8e67de93ead4"

MALFORMED_FIELDS: list[tuple[str, Any, str]] = [
    ("chain", "", "chain id"),
    ("chain", "x" * 65, "chain id"),
    ("chain", 7, "chain id"),
    ("height", 0, "height"),
    ("height", -1, "height"),
    ("height", True, "height"),
    ("height", "1", "height"),
    ("time", -5, "time"),
    ("time", 1.5, "time"),
    ("proposer", "not-a-peer-id", "proposer"),
    ("proposer", b"\x00" * 32, "proposer"),
    ("prev_hash", b"\x01" * 32, "prev_hash"),  # non-zero at height 1
    ("prev_hash", b"\x00" * 31, "prev_hash"),
    ("prev_hash", "00" * 32, "prev_hash"),
    ("last_app_hash", b"\x00" * 33, "last_app_hash"),
    ("last_app_hash", None, "last_app_hash"),
    ("txs", b"tx", "txs must be a list"),
    ("txs", [b""], "txs #0"),
    ("txs", ["text"], "txs #0"),
    ("txs", [b"x" * (MAX_TX_BYTES + 1)], "txs #0"),
    ("txs", [b"t"] * (MAX_BLOCK_TXS + 1), "exceed the limit"),
    ("evidence", {}, "evidence must be a list"),
    ("evidence", [b"e" * (MAX_EVIDENCE_BYTES + 1)], "evidence #0"),
    ("evidence", [b"e"] * (MAX_BLOCK_EVIDENCE + 1), "exceed the limit"),
    ("v", 2, "version"),
    ("v", "1", "version"),
]


@pytest.mark.parametrize(("key", "value", "reason"), MALFORMED_FIELDS)
def test_every_malformed_field_is_rejected(state: State, key: str, value: Any, reason: str) -> None:
    raw = raw_map(first_block(state))
    raw[key] = value
    with pytest.raises(InvalidBlock, match=reason):
        Block.decode(packb(dict(sorted(raw.items()))))


def test_prev_hash_zero_only_at_height_one(state: State) -> None:
    raw = raw_map(first_block(state))
    raw["height"] = 2
    with pytest.raises(InvalidBlock, match="zero bytes at height 1"):
        Block.decode(packb(dict(sorted(raw.items()))))


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_wrong_field_set_is_rejected(state: State, change: str) -> None:
    raw = raw_map(first_block(state))
    if change == "missing":
        del raw["evidence"]
    else:
        raw["zzz"] = 1
    with pytest.raises(InvalidBlock, match="exactly the fields"):
        Block.decode(packb(dict(sorted(raw.items()))))


def test_non_canonical_bytes_are_rejected(state: State) -> None:
    block = first_block(state)
    raw = raw_map(block)
    unsorted = packb(dict(reversed(list(raw.items()))))
    assert unsorted != block.encoded and msgpack.unpackb(unsorted, raw=False) == raw
    with pytest.raises(InvalidBlock, match="canonical"):
        Block.decode(unsorted)
    wide_int = block.encoded.replace(b"\xa6height\x01", b"\xa6height\xcc\x01")
    assert wide_int != block.encoded
    with pytest.raises(InvalidBlock, match="canonical"):
        Block.decode(wide_int)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not msgpack"),
        (b"\xc1", "not msgpack"),
        (packb([1, 2, 3]), "exactly the fields"),
        (packb({"chain": CHAIN}), "exactly the fields"),
        (b"\x00" * (MAX_BLOCK_BYTES + 1), "exceeds the limit"),
        ("text", "must be bytes"),
    ],
)
def test_garbage_is_rejected(data: Any, reason: str) -> None:
    with pytest.raises(InvalidBlock, match=reason):
        Block.decode(data)


def test_oversized_block_cannot_be_built(state: State) -> None:
    big = [
        bytes([i % 256, i // 256]) + b"x" * (MAX_TX_BYTES - 2) for i in range(MAX_BLOCK_BYTES // MAX_TX_BYTES)
    ]
    with pytest.raises(InvalidBlock, match="exceeds the limit"):
        build_block(state, ZERO_HASH, VALIDATOR.peer_id, 5_000, big)


def test_evidence_round_trip_and_rejects(state: State) -> None:
    evidence = double_sign(1)
    assert decode_evidence(encode_evidence(evidence)) == evidence
    block = first_block(genesis_state(make_genesis()), evidence=(evidence,))
    assert Block.decode(block.encoded).evidence == (encode_evidence(evidence),)
    with pytest.raises(InvalidBlock, match="malformed evidence"):
        decode_evidence(packb(["duplicate_vote", 1, 2]))
    with pytest.raises(InvalidBlock, match="malformed evidence"):
        decode_evidence(b"\xc1")
    wire = evidence.to_wire()
    swapped = packb([wire[0], wire[2], wire[1]])  # wrong order: not the canonical form
    with pytest.raises(InvalidBlock, match="malformed evidence"):
        decode_evidence(swapped)


# ---- validate_block_shape ---------------------------------------------------------------------


def test_valid_block_passes_and_returns_txs(state: State) -> None:
    block = first_block(state)
    txs = validate_block_shape(block, state, ZERO_HASH)
    assert [t.hash for t in txs] == [hashlib.sha256(t).digest() for t in block.txs]
    assert validate_block_shape(block, state, ZERO_HASH, state_app_hash=app_hash(state), now_ms=5_000) == txs


def _rebuilt(block: Block, **changes: Any) -> Block:
    return Block(**{**_fields(block), **changes})


SHAPE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("chain", {"chain_id": "other-chain"}, "chain"),
    ("height", {"height": 2, "prev_hash": b"\x01" * 32}, "height 2 does not follow"),
    ("app hash", {"last_app_hash": b"\x02" * 32}, "last_app_hash"),
    ("time equal", {"time_ms": 1_000}, "not after the last block time"),
    ("time before", {"time_ms": 999}, "not after the last block time"),
    ("proposer", {"proposer": ADDR[3]}, "not in the validator set"),
    ("garbage tx", {"txs": (b"\x93\x01\x02\x03",)}, "tx #0"),
    ("tx other chain", {"txs": (transfer(1, 2, 0, chain="other").encoded,)}, "tx #0 is for chain"),
    ("duplicate tx", {"txs": (transfer(1, 2, 0).encoded,) * 2}, "appears twice"),
    ("bad evidence", {"evidence": (b"\x01",)}, "malformed evidence"),
    ("future evidence", {"evidence": (encode_evidence(double_sign(1)),)}, "not before 1"),
    ("twice evidence", {"evidence": (encode_evidence(double_sign(0)),) * 2}, "appears twice"),
]


@pytest.mark.parametrize(("name", "changes", "reason"), SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_shape_violations_are_rejected(state: State, name: str, changes: dict[str, Any], reason: str) -> None:
    block = _rebuilt(first_block(state), **changes)
    with pytest.raises(InvalidBlock, match=reason):
        validate_block_shape(block, state, ZERO_HASH)


def test_prev_hash_and_future_time(state: State) -> None:
    s1, _, h1 = apply_decided_block(state, first_block(state))
    block2 = build_block(s1, first_block(state).hash, VALIDATOR.peer_id, 9_000, [transfer(1, 2, 1)])
    assert validate_block_shape(block2, s1, first_block(state).hash, state_app_hash=h1)
    with pytest.raises(InvalidBlock, match="prev_hash"):
        validate_block_shape(block2, s1, b"\x07" * 32, state_app_hash=h1)
    with pytest.raises(InvalidBlock, match="ahead of"):
        validate_block_shape(block2, s1, first_block(state).hash, now_ms=8_000, max_future_ms=500)


def test_build_block_keeps_time_monotonic(state: State) -> None:
    block = build_block(state, ZERO_HASH, VALIDATOR.peer_id, 10, [])  # clock behind genesis time
    assert block.time_ms == state.time_ms + 1
    assert validate_block_shape(block, state, ZERO_HASH) == []


def test_apply_decided_block_runs_txs_and_evidence() -> None:
    state = genesis_state(make_genesis())
    s1, receipts, h1 = apply_decided_block(state, first_block(state))
    assert [r.ok for r in receipts] == [True, True] and h1 == app_hash(s1)
    block2 = build_block(s1, first_block(state).hash, VALIDATOR.peer_id, 6_000, [], [double_sign(1)])
    validate_block_shape(block2, s1, first_block(state).hash)
    s2, _, _ = apply_decided_block(s1, block2)
    assert s2.validators[VALIDATOR.peer_id].jailed
    assert s2.validators[VALIDATOR.peer_id].self_stake < s1.validators[VALIDATOR.peer_id].self_stake
    with pytest.raises(InvalidBlock, match="chain"):
        apply_decided_block(genesis_state(make_genesis(chain="other")), block2)
