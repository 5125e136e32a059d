"""Ledger throughput: apply_block + commit_block (tx/s) for blocks of signed transfers.

For each block size, builds blocks of pre-signed transfers among `--accounts` accounts (each
sender pipelines several nonces when the block is larger than the account count), then times
separately, per block:
  verify   Ed25519 signature checks alone (what the mempool does once per tx at admission),
  admit    Mempool.add of every tx (decode + admission checks + signature verify),
  apply    apply_block with the mempool's verified set (decode + rules + app hash),
  commit   LedgerStore.commit_block (one SQLite WAL transaction, synchronous=FULL, fsync).
"committed tx/s" is txs / (apply + commit): the rate of a peer whose mempool already verified
the signatures. Also prints encode_state cost (the store's snapshot cost) and load_state time.

    .venv/bin/python benchmarks/ledger_apply.py [--accounts 1000] [--sizes 500,1000,2000]
        [--blocks 5] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gossip.identity import Identity
from ledger.apply import apply_block
from ledger.block import ZERO_HASH, build_block
from ledger.genesis import Genesis, GenesisValidator, genesis_state
from ledger.mempool import Mempool
from ledger.params import Params
from ledger.state import State, app_hash, encode_state
from ledger.store import LedgerStore
from ledger.tx import SignedTx, sign_tx, verify_tx

CHAIN = "hm-bench"


def make_accounts(n: int) -> list[Identity]:
    return [Identity.from_seed(hashlib.sha256(b"bench-%d" % i).digest()) for i in range(n)]


def make_state(ids: list[Identity]) -> State:
    genesis = Genesis(
        chain_id=CHAIN,
        balances={i.peer_id: 10**12 for i in ids},
        validators=(GenesisValidator(ids[0].peer_id, ids[0].public, 10**6, 0),),
        params=Params(min_fee=1, max_validators=10),
    )
    return genesis_state(genesis)


def sign_block_txs(ids: list[Identity], state: State, size: int, salt: int) -> list[SignedTx]:
    nonces = {i.peer_id: state.accounts[i.peer_id].nonce for i in ids}
    txs = []
    for k in range(size):
        sender = ids[k % len(ids)]
        to = ids[(k * 7 + salt) % len(ids)].peer_id
        txs.append(
            sign_tx(
                sender,
                "transfer",
                {"to": to, "amount": 1 + k % 5},
                nonce=nonces[sender.peer_id],
                fee=1,
                chain_id=CHAIN,
            )
        )
        nonces[sender.peer_id] += 1
    return txs


def bench_size(ids: list[Identity], size: int, blocks: int, workdir: Path) -> dict[str, Any]:
    state = make_state(ids)
    store = LedgerStore(workdir / f"bench-{size}.sqlite3")
    prev_hash, prev_app = ZERO_HASH, app_hash(state)
    times: dict[str, list[float]] = {"verify": [], "admit": [], "apply": [], "commit": []}
    for height in range(1, blocks + 1):
        txs = sign_block_txs(ids, state, size, height)
        t0 = time.perf_counter()
        for stx in txs:
            verify_tx(stx)
        t1 = time.perf_counter()
        pool = Mempool(max_txs=max(10_000, size))
        for stx in txs:
            pool.add(stx.encoded, state)
        reaped = pool.reap(size, 1 << 30)
        t2 = time.perf_counter()
        block = build_block(
            state, prev_hash, ids[0].peer_id, state.time_ms + 1_000, reaped, state_app_hash=prev_app
        )
        t3 = time.perf_counter()
        new, receipts, new_app = apply_block(
            state, block.height, block.time_ms, block.proposer, block.txs, verified=pool.verified
        )
        t4 = time.perf_counter()
        store.commit_block(block.encoded, b"commit", new, receipts, state_app_hash=new_app)
        t5 = time.perf_counter()
        assert len(receipts) == size and all(r.ok for r in receipts), "every benchmark tx must apply"
        pool.update([r.tx_hash for r in receipts], new)
        times["verify"].append(t1 - t0)
        times["admit"].append(t2 - t1)
        times["apply"].append(t4 - t3)
        times["commit"].append(t5 - t4)
        state, prev_hash, prev_app = new, block.hash, new_app
    store.close(snapshot=False)
    t0 = time.perf_counter()
    with LedgerStore(workdir / f"bench-{size}.sqlite3") as reopened:
        loaded = reopened.load_state()
    load_s = time.perf_counter() - t0
    assert loaded is not None and app_hash(loaded) == prev_app
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "block_txs": size,
        "blocks": blocks,
        "verify_us_per_tx": med["verify"] / size * 1e6,
        "admit_us_per_tx": med["admit"] / size * 1e6,
        "apply_ms": med["apply"] * 1e3,
        "commit_ms": med["commit"] * 1e3,
        "apply_tx_s": size / med["apply"],
        "committed_tx_s": size / (med["apply"] + med["commit"]),
        "with_verify_tx_s": size / (med["apply"] + med["commit"] + med["verify"]),
        "load_state_replay_ms": load_s * 1e3,
        "block_bytes": len(block.encoded),
    }


def encode_cost(n: int) -> dict[str, float]:
    state = make_state(make_accounts(n))
    t0 = time.perf_counter()
    data = encode_state(state)
    return {"accounts": n, "encode_state_ms": (time.perf_counter() - t0) * 1e3, "bytes": len(data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--sizes", default="500,1000,2000")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ids = make_accounts(args.accounts)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_size(ids, int(s), args.blocks, Path(tmp)) for s in args.sizes.split(",")]
    costs = [encode_cost(n) for n in sorted({args.accounts, 10_000})]
    if args.json:
        print(json.dumps({"sizes": results, "encode_state": costs}, indent=2))
        return
    print(f"{args.accounts} accounts, {args.blocks} blocks per size, medians per block")
    print(
        f"{'txs':>6} {'verify us/tx':>12} {'admit us/tx':>11} {'apply ms':>9} {'commit ms':>9} "
        f"{'apply tx/s':>10} {'committed tx/s':>14} {'+verify tx/s':>12} {'reload ms':>9}"
    )
    for r in results:
        print(
            f"{r['block_txs']:>6} {r['verify_us_per_tx']:>12.1f} {r['admit_us_per_tx']:>11.1f} "
            f"{r['apply_ms']:>9.1f} {r['commit_ms']:>9.1f} {r['apply_tx_s']:>10.0f} "
            f"{r['committed_tx_s']:>14.0f} {r['with_verify_tx_s']:>12.0f} {r['load_state_replay_ms']:>9.1f}"
        )
    for c in costs:
        print(f"encode_state, {c['accounts']} accounts: {c['encode_state_ms']:.1f} ms, {c['bytes']} bytes")


if __name__ == "__main__":
    main()
