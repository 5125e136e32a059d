"""Ledger store: commit and reload, refusals that write nothing, kill -9 atomicity, last-signed guard."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossip.envelope import packb
from ledger.apply import Receipt
from ledger.block import ZERO_HASH, Block, apply_decided_block, build_block
from ledger.errors import CorruptStore, InvalidBlock, SignRegression, StoreError
from ledger.genesis import Genesis, genesis_state
from ledger.state import State, app_hash, encode_state
from ledger.store import LedgerStore
from ledger.tx import SignedTx
from tests.test_block import ADDR, VALIDATOR, double_sign, make_genesis, transfer

ROOT = Path(__file__).resolve().parent.parent
GENESIS = make_genesis()


class Chain:
    """Builds, applies and commits blocks on top of whatever `store` holds."""

    def __init__(self, store: LedgerStore, genesis: Genesis = GENESIS) -> None:
        self.store = store
        self.state = store.load_state() or genesis_state(genesis)
        tip = store.tip()
        self.prev_hash = tip.block_hash if tip else ZERO_HASH
        self.app_hash = tip.app_hash if tip else app_hash(self.state)
        self.blocks: list[Block] = []

    def next_block(self, txs: list[SignedTx], evidence: tuple[object, ...] = ()) -> Block:
        time_ms = self.state.time_ms + 1_000
        return build_block(
            self.state,
            self.prev_hash,
            VALIDATOR.peer_id,
            time_ms,
            txs,
            evidence,
            state_app_hash=self.app_hash,
        )

    def commit(self, txs: list[SignedTx], evidence: tuple[object, ...] = ()) -> tuple[Block, list[Receipt]]:
        block = self.next_block(txs, evidence)
        new, receipts, new_hash = apply_decided_block(self.state, block)
        self.store.commit_block(
            block.encoded, b"commit-%d" % block.height, new, receipts, state_app_hash=new_hash
        )
        self.state, self.prev_hash, self.app_hash = new, block.hash, new_hash
        self.blocks.append(block)
        return block, receipts

    def nonce(self, i: int) -> int:
        return self.state.accounts[ADDR[i]].nonce

    def random_txs(self, rng: random.Random) -> list[SignedTx]:
        """A few transfers, sometimes with a stale or future nonce (excluded) or too large (fails)."""
        txs = []
        for sender in rng.sample(range(1, len(ADDR)), rng.randint(0, 4)):
            nonce = self.nonce(sender) + rng.choice([0, 0, 0, 0, 3])
            amount = rng.choice([1, 10, 100, 10**9])
            txs.append(transfer(sender, rng.randrange(len(ADDR)), nonce, amount))
        return txs


def encoded(state: State | None) -> bytes:
    assert state is not None
    return encode_state(state)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def test_empty_store(path: Path) -> None:
    with LedgerStore(path) as store:
        assert store.load_state() is None and store.height() == 0 and store.tip() is None
        assert store.block(1) is None and store.blocks(1, 10, 10**6) == []
        assert store.tx_location(b"\x00" * 32) is None and store.last_signed() is None
        assert store.verify_chain(GENESIS) == 0


@pytest.mark.parametrize("close_snapshot", [True, False])
def test_commit_and_reload(path: Path, close_snapshot: bool) -> None:
    store = LedgerStore(path, snapshot_blocks=4)
    chain = Chain(store)
    rng = random.Random(1)
    for _ in range(9):
        chain.commit(chain.random_txs(rng))
    last, _ = chain.commit([transfer(1, 2, chain.nonce(1))], (double_sign(3),))
    assert chain.state.validators[VALIDATOR.peer_id].jailed  # the evidence was applied
    store.close(snapshot=close_snapshot)

    with LedgerStore(path, snapshot_blocks=4) as again:
        assert again.height() == 10
        assert again.tip() == (10, last.hash, chain.app_hash)
        loaded = again.load_state()
        assert encoded(loaded) == encode_state(chain.state)
        assert again.block(10) == (last.encoded, b"commit-10")
        assert again.receipts(10) == apply_decided_block(chain_state(chain, 9), last)[1]
        assert again.verify_chain(GENESIS) == 10
        assert again.verify_chain(GENESIS, verify_signatures=False) == 10


def chain_state(chain: Chain, height: int) -> State:
    """Replay `chain.blocks` from genesis up to `height`."""
    state = genesis_state(GENESIS)
    for block in chain.blocks[:height]:
        state = apply_decided_block(state, block)[0]
    return state


def test_blocks_for_sync_respects_limits(path: Path) -> None:
    with LedgerStore(path) as store:
        chain = Chain(store)
        for _ in range(6):
            chain.commit([transfer(1, 2, chain.nonce(1))])
        sizes = {b.height: len(b.encoded) + len(b"commit-%d" % b.height) for b in chain.blocks}
        page = store.blocks(2, 3, 10**9)
        assert [(h, blk) for h, blk, _ in page] == [(h, chain.blocks[h - 1].encoded) for h in (2, 3, 4)]
        assert [c for _, _, c in page] == [b"commit-2", b"commit-3", b"commit-4"]
        assert [h for h, _, _ in store.blocks(2, 10, sizes[2] + sizes[3])] == [2, 3]
        assert [h for h, _, _ in store.blocks(5, 10, 1)] == [5]  # always at least one block
        assert [h for h, _, _ in store.blocks(0, 100, 10**9)] == [1, 2, 3, 4, 5, 6]
        assert store.blocks(7, 10, 10**9) == []


def test_tx_location(path: Path) -> None:
    with LedgerStore(path) as store:
        chain = Chain(store)
        chain.commit([transfer(1, 2, 0)])
        tx = transfer(3, 4, 0)
        _, receipts = chain.commit([transfer(1, 2, 1), tx])
        chain.commit([tx])  # included again: excluded as a replay, the index keeps the first
        height, index, receipt = store.tx_location(tx.hash) or (0, 0, None)
        assert (height, index, receipt) == (2, 1, receipts[1]) and receipt is not None and receipt.ok
        assert store.receipts(3)[0].code == "bad_nonce"  # type: ignore[index]
        assert store.tx_location(transfer(5, 6, 0).hash) is None


def test_commit_refusals_write_nothing(path: Path) -> None:
    store = LedgerStore(path)
    chain = Chain(store)
    chain.commit([transfer(1, 2, 0)])
    good = chain.next_block([transfer(1, 2, 1)])
    new, receipts, new_hash = apply_decided_block(chain.state, good)
    other = Chain(LedgerStore(path.with_name("other.sqlite3")))
    other.commit([transfer(5, 6, 0)])  # a different chain history at height 1
    wrong_parent = other.next_block([])
    wrong_parent_state = apply_decided_block(other.state, wrong_parent)[0]
    stale_app = Block(**{**_fields(good), "last_app_hash": b"\x05" * 32})
    bad_receipt = Receipt(b"\x00" * 32, True, "ok", "", True, 1)
    cases: list[tuple[bytes, State, list[Receipt], type[Exception], str]] = [
        (b"junk", new, receipts, InvalidBlock, "not msgpack"),
        (chain.blocks[0].encoded, new, receipts, StoreError, "does not follow"),
        (wrong_parent.encoded, wrong_parent_state, [], StoreError, "prev_hash"),
        (stale_app.encoded, new, receipts, StoreError, "last_app_hash"),
        (good.encoded, chain.state, receipts, StoreError, "not the result of block 2"),
        (good.encoded, new, [], StoreError, "receipts do not match"),
        (good.encoded, new, [bad_receipt], StoreError, "receipts do not match"),
    ]
    for data, state, rs, error, reason in cases:
        with pytest.raises(error, match=reason):
            store.commit_block(data, b"c", state, rs, state_app_hash=new_hash)
        assert store.height() == 1 and store.block(2) is None
    with pytest.raises(StoreError, match="commit certificate must be bytes"):
        store.commit_block(good.encoded, "c", new, receipts)  # type: ignore[arg-type]
    store.commit_block(good.encoded, b"c2", new, receipts)  # app hash computed when not given
    assert store.tip() == (2, good.hash, new_hash)
    store.close()
    with LedgerStore(path) as again:
        assert again.verify_chain(GENESIS) == 2
        with pytest.raises(CorruptStore, match="genesis is"):
            again.verify_chain(make_genesis(chain="other-chain"))


def _fields(block: Block) -> dict[str, object]:
    names = ("chain_id", "height", "time_ms", "proposer", "prev_hash", "last_app_hash", "txs", "evidence")
    return {n: getattr(block, n) for n in names}


def test_tampering_is_detected(path: Path) -> None:
    store = LedgerStore(path, snapshot_blocks=100)
    chain = Chain(store)
    for i in range(4):
        chain.commit([transfer(1, 2, i)])
    receipts_2 = packb([r.to_wire() for r in store.receipts(2) or []])
    store.close(snapshot=False)  # the snapshot stays at height 1: load_state must replay 2..4
    with sqlite3.connect(path) as db:
        db.execute("UPDATE blocks SET app_hash = ? WHERE height = 3", (b"\x09" * 32,))
    with LedgerStore(path) as again, pytest.raises(CorruptStore, match="replaying block 3 gives app hash"):
        again.load_state()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE blocks SET app_hash = ? WHERE height = 3", (chain_app_hash(chain, 3),))
        db.execute("UPDATE blocks SET receipts = ? WHERE height = 2", (b"\x91\x01",))
    with LedgerStore(path) as again, pytest.raises(CorruptStore, match="receipts of block 2"):
        again.verify_chain(GENESIS)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE blocks SET receipts = ? WHERE height = 2", (receipts_2,))
        db.execute("DELETE FROM txs WHERE height = 4")
    with LedgerStore(path) as again, pytest.raises(CorruptStore, match="tx index entry of block 4 #0"):
        again.verify_chain(GENESIS)
    path.with_name("junk.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptStore, match="not a usable ledger store"):
        LedgerStore(path.with_name("junk.sqlite3"))
    with pytest.raises(StoreError, match="cannot open the ledger store"):
        LedgerStore(path / "no-such-dir" / "x.sqlite3")


def chain_app_hash(chain: Chain, height: int) -> bytes:
    return app_hash(chain_state(chain, height))


def test_last_signed_is_monotonic_and_durable(path: Path) -> None:
    with LedgerStore(path) as store:
        assert store.last_signed() is None and store.last_signed_data() == b""
        store.save_last_signed(5, 0, 1, b"lock-a")
        store.save_last_signed(5, 0, 1, b"lock-b")  # the same key again: allowed
        store.save_last_signed(5, 2, 0)
        for lower in [(5, 1, 2), (4, 9, 2), (0, 0, 0)]:
            with pytest.raises(SignRegression, match="refusing to go backwards"):
                store.save_last_signed(*lower)
        with pytest.raises(StoreError, match="non-negative integers"):
            store.save_last_signed(6, -1, 0)
        with pytest.raises(StoreError, match="non-negative integers"):
            store.save_last_signed(6, True, 0)
        assert store.last_signed() == (5, 2, 0)
    with LedgerStore(path) as again:
        assert again.last_signed() == (5, 2, 0) and again.last_signed_data() == b""
        with pytest.raises(SignRegression):
            again.save_last_signed(5, 1, 2)


# ---- crash safety: kill -9 a committing process at random points -------------------------------

CHILD = "import sys; from tests.test_store import commit_forever; commit_forever(sys.argv[1])"


def commit_forever(path: str) -> None:
    """Child process: guard, commit, report each height on stdout, forever (until killed)."""
    store = LedgerStore(Path(path), snapshot_blocks=5, snapshot_txs=12)
    chain = Chain(store)
    while True:
        height = chain.state.height + 1
        store.save_last_signed(height, 0, 2)
        chain.commit(chain.random_txs(random.Random(height)))
        print(height, flush=True)


def run_and_kill(path: Path, rng: random.Random) -> int:
    """Start a committing child, let it report 1..5 commits, SIGKILL it after a random delay.

    Returns the highest height the child reported as committed.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    reported = 0
    for _ in range(rng.randint(1, 5)):
        line = child.stdout.readline()
        if not line:
            child.wait()
            pytest.fail(f"child exited early: {child.stderr.read().decode()}")
        reported = int(line)
    time.sleep(rng.random() * 0.05)  # a random crash point, not a synchronization
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for line in child.stdout.read().splitlines():  # what it reported before dying
        reported = int(line)
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return reported


def test_kill9_while_committing_loses_nothing_and_tears_nothing(path: Path) -> None:
    rng = random.Random(os.getpid())
    reported = 0
    for _ in range(4):
        reported = max(reported, run_and_kill(path, rng))
        with LedgerStore(path) as store:
            height = store.height()
            assert height >= reported  # every commit the child saw return is durable
            assert store.verify_chain(GENESIS) == height  # every block fully applied, none torn
            state = store.load_state()
            assert state is not None and state.height == height
            assert app_hash(state) == store.tip().app_hash  # type: ignore[union-attr]
            signed = store.last_signed()
            assert signed is not None and (reported, 0, 2) <= signed <= (height + 1, 0, 2)
            store.close(snapshot=rng.random() < 0.5)
    assert reported >= 4
