"""Mempool: admission errors, dedupe, pipelined nonces, fair reap order, recheck after commit, capacity."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gossip.identity import Identity
from ledger import mempool as mempool_module
from ledger.apply import apply_block
from ledger.errors import (
    BadNonce,
    BadSignature,
    DuplicateTx,
    FeeTooLow,
    InsufficientBalance,
    InvalidTx,
    MempoolFull,
    UnknownAccount,
    WrongChain,
)
from ledger.genesis import genesis_state
from ledger.mempool import Mempool
from ledger.params import Params
from ledger.state import State
from ledger.tx import SignedTx, sign_tx
from tests.test_block import ADDR, CHAIN, IDS, VALIDATOR, make_genesis, transfer

POOR = 7  # an account that can pay exactly two fees


@pytest.fixture
def state() -> State:
    genesis = make_genesis(accounts=POOR)
    return genesis_state(replace(genesis, balances={**genesis.balances, ADDR[POOR]: 2}))


def commit(state: State, txs: list[bytes], mempool: Mempool) -> State:
    new, receipts, _ = apply_block(
        state, state.height + 1, state.time_ms + 1, VALIDATOR.peer_id, txs, verified=mempool.verified
    )
    assert all(r.ok for r in receipts), [r.message for r in receipts if not r.ok]
    mempool.update([r.tx_hash for r in receipts if r.charged], new)
    return new


def test_add_and_query(state: State) -> None:
    pool = Mempool()
    tx = transfer(1, 2, 0)
    assert pool.add(tx.encoded, state) == tx.hash
    assert len(pool) == 1 and pool.has(tx.hash) and tx.hash in pool and pool.get(tx.hash) == tx
    assert tx.hash in pool.verified and pool.size_bytes == len(tx.encoded)
    assert pool.pending_nonce(state, ADDR[1]) == 1 and pool.pending_nonce(state, ADDR[2]) == 0
    with pytest.raises(DuplicateTx, match="already in the mempool"):
        pool.add(tx, state)
    assert len(pool) == 1


def test_admission_errors(state: State) -> None:
    pool = Mempool()
    bad_sig = SignedTx(transfer(1, 2, 0).tx, b"\x01" * 64)
    stranger = sign_tx(Identity.from_seed(b"s" * 32), "unjail", {}, nonce=0, fee=1, chain_id=CHAIN)
    cases: list[tuple[bytes | SignedTx, type[Exception], str]] = [
        (b"\x93\x01\x02\x03", InvalidTx, "tx must be a map"),
        (b"x" * (70 * 1024), InvalidTx, "exceeds the limit"),
        (SignedTx(transfer(1, 2, 0).tx, b"short"), InvalidTx, "signature must be 64 bytes"),
        (transfer(1, 2, 0, chain="other"), WrongChain, "this chain is"),
        (stranger, UnknownAccount, "no account"),
        (transfer(1, 2, 1), BadNonce, "next nonce 0"),
        (
            sign_tx(IDS[1], "transfer", {"to": ADDR[2], "amount": 1}, nonce=0, fee=0, chain_id=CHAIN),
            FeeTooLow,
            "fee 0 is below the minimum fee 1",
        ),
        (bad_sig, BadSignature, "does not verify"),
    ]
    for tx, error, reason in cases:
        with pytest.raises(error, match=reason):
            pool.add(tx, state)
    assert len(pool) == 0 and pool.size_bytes == 0
    assert bad_sig.hash not in pool.verified


def test_pipelined_nonces_and_pending_fees(state: State) -> None:
    pool = Mempool()
    for nonce in range(3):
        pool.add(transfer(1, 2, nonce), state)
    assert pool.pending_nonce(state, ADDR[1]) == 3
    with pytest.raises(BadNonce, match="nonce 4 is not the account's next nonce 3"):
        pool.add(transfer(1, 2, 4), state)
    with pytest.raises(BadNonce, match="nonce 1 is not the account's next nonce 3"):
        pool.add(transfer(1, 3, 1), state)  # same nonce as a pending tx: no replacement
    pool.add(transfer(POOR, 1, 0, amount=1), state)
    pool.add(transfer(POOR, 1, 1, amount=1), state)
    with pytest.raises(InsufficientBalance, match="needs 3 but the balance is 2"):
        pool.add(transfer(POOR, 1, 2, amount=1), state)
    assert len(pool) == 5


def test_reap_order_is_per_sender_nonce_order_interleaved_fairly(state: State) -> None:
    pool = Mempool()
    a = [transfer(1, 4, n) for n in range(3)]
    b = [transfer(2, 4, n) for n in range(2)]
    c = [transfer(3, 4, 0)]
    for tx in (b[0], a[0], a[1], c[0], b[1], a[2]):  # b arrived first, then a, then c
        pool.add(tx, state)
    order = [b[0], a[0], c[0], b[1], a[1], a[2]]
    assert pool.reap(100, 10**9) == [t.encoded for t in order]
    assert pool.reap(4, 10**9) == [t.encoded for t in order[:4]]
    three = sum(len(t.encoded) for t in order[:3])
    assert pool.reap(100, three) == [t.encoded for t in order[:3]]
    assert pool.reap(100, 0) == []
    # Reaping does not remove; the reaped list applies cleanly.
    assert len(pool) == 6
    commit(state, pool.reap(100, 10**9), pool)
    assert len(pool) == 0 and pool.size_bytes == 0


def test_reap_skips_a_sender_whose_next_tx_does_not_fit(state: State) -> None:
    pool = Mempool()
    big = sign_tx(IDS[1], "transfer", {"to": ADDR[2], "amount": 1}, nonce=0, fee=1_000, chain_id=CHAIN)
    small = transfer(2, 3, 0)
    pool.add(big, state)
    pool.add(transfer(1, 2, 1), state)
    pool.add(small, state)
    assert pool.reap(10, len(small.encoded)) == [small.encoded]


def test_update_removes_committed_and_rechecks(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    verifications: list[bytes] = []
    real_verify = mempool_module.verify_tx
    monkeypatch.setattr(
        mempool_module, "verify_tx", lambda stx: (verifications.append(stx.hash), real_verify(stx))
    )
    pool = Mempool()
    mine = [transfer(1, 2, n) for n in range(3)]
    for tx in [*mine, transfer(3, 4, 0)]:
        pool.add(tx, state)
    assert len(verifications) == 4
    # A block commits mine[0] and a tx of sender 5 that the mempool never saw.
    outside = transfer(5, 6, 0)
    state = commit(state, [mine[0].encoded, outside.encoded], pool)
    assert len(pool) == 3 and not pool.has(mine[0].hash) and pool.pending_nonce(state, ADDR[1]) == 3
    assert len(verifications) == 4  # the recheck did not verify signatures again
    with pytest.raises(DuplicateTx, match="already committed"):
        pool.add(mine[0], state)
    with pytest.raises(DuplicateTx, match="already committed"):
        pool.add(outside, state)
    # Sender 3 spends its whole balance through a tx that reached the block from elsewhere:
    # its pending tx (same nonce) is stale, and a later one is no longer payable.
    pool.add(transfer(3, 4, 1), state)
    drain = transfer(3, 5, 0, amount=state.accounts[ADDR[3]].balance - 1)
    state = commit(state, [drain.encoded], pool)
    assert not any(pool.has(transfer(3, 4, n).hash) for n in (0, 1))
    assert [pool.has(t.hash) for t in mine] == [False, True, True]
    # The rest still applies in reap order.
    state = commit(state, pool.reap(100, 10**9), pool)
    assert len(pool) == 0 and state.accounts[ADDR[1]].nonce == 3


def test_update_with_raised_min_fee_drops_cheap_txs(state: State) -> None:
    pool = Mempool()
    cheap = transfer(1, 2, 0)
    rich = sign_tx(IDS[2], "transfer", {"to": ADDR[3], "amount": 1}, nonce=0, fee=10, chain_id=CHAIN)
    pool.add(cheap, state)
    pool.add(transfer(1, 2, 1), state)
    pool.add(rich, state)
    governed = state.copy()
    governed.params = Params(min_fee=5)
    dropped = pool.update([], governed)
    assert set(dropped) == {cheap.hash, transfer(1, 2, 1).hash}
    assert len(pool) == 1 and pool.has(rich.hash)
    assert pool.pending_nonce(governed, ADDR[1]) == 0


def test_bounded_by_count_and_bytes(state: State) -> None:
    pool = Mempool(max_txs=3)
    for sender in (1, 2, 3):
        pool.add(transfer(sender, 4, 0), state)
    with pytest.raises(MempoolFull, match="3 txs"):
        pool.add(transfer(5, 4, 0), state)
    commit(state, [transfer(1, 4, 0).encoded], pool)
    assert len(pool) == 2
    size = len(transfer(1, 4, 0).encoded)
    small = Mempool(max_bytes=2 * size)
    small.add(transfer(1, 4, 0), state)
    small.add(transfer(2, 4, 0), state)
    with pytest.raises(MempoolFull, match=f"{2 * size} bytes"):
        small.add(transfer(3, 4, 0), state)
    assert small.size_bytes == 2 * size


def test_verified_cache_is_bounded_but_keeps_pending(state: State) -> None:
    pool = Mempool(verified_cache=3)
    pending = [transfer(1, 2, n) for n in range(5)]
    for tx in pending:
        pool.add(tx, state)
    assert set(pool.verified) == {t.hash for t in pending}  # pending txs are never forgotten
    state = commit(state, [t.encoded for t in pending], pool)
    pool.add(transfer(2, 3, 0), state)
    assert len(pool.verified) == 3  # committed hashes age out of the cache
    assert transfer(2, 3, 0).hash in pool.verified and pending[0].hash not in pool.verified
