"""Ledger throughput and finality over real validator processes (`cluster up`).

Starts a local cluster of `--validators` validator peers whose genesis also funds `--accounts`
benchmark accounts, pre-signs `--rate * --seconds` transfers among those accounts (each
account's txs in nonce order), then `--threads` client threads submit them through
`POST /tx/raw` in batches of `--batch`, paced to the offered rate. Each thread owns a fixed
set of accounts and always talks to the same validator, so a sender's nonces arrive in order.
A watcher polls one validator's `/ledger/status` and reads every new block's tx hashes.

Reported:
  committed tx/s   txs committed / (last commit seen - first submit)
  finality         per tx: the moment the watcher saw its block minus the moment its batch
                   was posted (p50 / p99 / max; includes up to one poll interval, 10 ms)
  where time goes  block interval and txs per block as seen by the watcher; per validator
                   CPU (% of one core) over the run, blocks decided live vs synced, consensus
                   rounds per height (> 1 means timeouts), the API's time per batch

All processes share this machine, so client threads, HTTP, gossip and consensus compete for
the same cores: the numbers say what this machine can do, not what a network of machines can.

    .venv/bin/python benchmarks/ledger_throughput.py [--validators 4] [--accounts 2000]
        [--rate 2000] [--seconds 20] [--threads 4] [--batch 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from gossip.identity import Identity
from ledger.tx import sign_tx
from peer.cluster import Cluster, cluster_down, cluster_up
from peer.genesis_file import read_genesis

POLL_S = 0.01
DRAIN_S = 60.0


def presign(accounts: list[Identity], total: int, chain_id: str) -> list[list[bytes]]:
    """Per account, `total / len(accounts)` transfers to the next account, nonces 0, 1, ..."""
    per_account = -(-total // len(accounts))
    out = []
    for i, identity in enumerate(accounts):
        to = accounts[(i + 1) % len(accounts)].peer_id
        out.append(
            [
                sign_tx(
                    identity, "transfer", {"to": to, "amount": 1}, nonce=n, fee=1, chain_id=chain_id
                ).encoded
                for n in range(per_account)
            ]
        )
    return out


class Watcher(threading.Thread):
    """Polls one validator; records when each block (and so each of its txs) was first seen."""

    def __init__(self, api: str) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=f"http://{api}", timeout=30.0, trust_env=False)
        self.seen: dict[str, float] = {}  # tx hash -> when its block was seen
        self.blocks: list[tuple[int, float, int]] = []  # (height, seen at, txs)
        self.height = int(self.http.get("/ledger/status").json()["height"])
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now_height = int(self.http.get("/ledger/status").json()["height"])
            seen_at = time.monotonic()
            for h in range(self.height + 1, now_height + 1):
                hashes = self.http.get(f"/query/block/{h}").json()["tx_hashes"]
                for tx_hash in hashes:
                    self.seen.setdefault(tx_hash, seen_at)
                self.blocks.append((h, seen_at, len(hashes)))
            self.height = max(self.height, now_height)
            self.stop.wait(POLL_S)


class Submitter(threading.Thread):
    """Posts its txs in paced batches to one validator; records submit times and rejections."""

    def __init__(self, api: str, txs: list[bytes], rate: float, batch: int, start_at: float) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=f"http://{api}", timeout=60.0, trust_env=False)
        self.txs, self.rate, self.batch, self.start_at = txs, rate, batch, start_at
        self.submitted: dict[str, float] = {}
        self.rejected: Counter[str] = Counter()
        self.post_s: list[float] = []

    def run(self) -> None:
        for k in range(0, len(self.txs), self.batch):
            due = self.start_at + k / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the offered load, not synchronisation
            chunk = self.txs[k : k + self.batch]
            sent_at = time.monotonic()
            response = self.http.post("/tx/raw", json={"txs": [t.hex() for t in chunk]})
            self.post_s.append(time.monotonic() - sent_at)
            response.raise_for_status()
            for result in response.json()["results"]:
                if "tx_hash" in result:
                    self.submitted[result["tx_hash"]] = sent_at
                else:
                    self.rejected[result["code"]] += 1


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(cluster: Cluster) -> list[dict[str, float]]:
    rows = []
    for peer in cluster.peers:
        text = httpx.get(f"http://{peer.api}/metrics", timeout=10.0, trust_env=False).text
        rows.append(
            {
                "height": metric(text, "hivemesh_ledger_height"),
                "rounds": metric(text, "hivemesh_consensus_rounds_total"),
                "synced": metric(text, "hivemesh_ledger_blocks_synced_total"),
                "txs": metric(text, "hivemesh_ledger_txs_committed_total"),
            }
        )
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    accounts = [Identity.generate() for _ in range(args.accounts)]
    root = Path(tempfile.mkdtemp(prefix="hm-ledger-bench-"))
    cluster = cluster_up(root, args.validators, timeout=180, extra_accounts=[a.peer_id for a in accounts])
    try:
        chain_id = read_genesis(root / "genesis.json").chain_id
        t0 = time.monotonic()
        signed = presign(accounts, args.rate * args.seconds, chain_id)
        sign_s = time.monotonic() - t0
        per_thread: list[list[bytes]] = [[] for _ in range(args.threads)]
        for n in range(len(signed[0])):  # nonce rounds: every account's tx n before any tx n+1
            for i, txs in enumerate(signed):
                per_thread[i % args.threads].append(txs[n])
        watcher = Watcher(cluster.peers[0].api)
        procs = [psutil.Process(p.pid) for p in cluster.peers]
        cpu_before = [p.cpu_times() for p in procs]
        before = scrape(cluster)
        start_at = time.monotonic() + 0.5
        submitters = [
            Submitter(
                cluster.peers[t % len(cluster.peers)].api, txs, args.rate / args.threads, args.batch, start_at
            )
            for t, txs in enumerate(per_thread)
        ]
        watcher.start()
        for s in submitters:
            s.start()
        for s in submitters:
            s.join()
        submit_end = time.monotonic()
        submitted = {h: t for s in submitters for h, t in s.submitted.items()}
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not submitted.keys() <= watcher.seen.keys():
            time.sleep(0.05)  # draining: polling the watcher's progress with a deadline
        watcher.stop.set()
        watcher.join()
        elapsed = time.monotonic() - start_at
        cpu = [
            100 * (sum(p.cpu_times()[:2]) - sum(b[:2])) / elapsed
            for p, b in zip(procs, cpu_before, strict=True)
        ]
        after = scrape(cluster)
    finally:
        cluster_down(root, timeout=10)
    return report(args, submitted, watcher, submitters, cpu, before, after, sign_s, start_at, submit_end)


def report(
    args: argparse.Namespace,
    submitted: dict[str, float],
    watcher: Watcher,
    submitters: list[Submitter],
    cpu: list[float],
    before: list[dict[str, float]],
    after: list[dict[str, float]],
    sign_s: float,
    start_at: float,
    submit_end: float,
) -> dict[str, Any]:
    latencies = [watcher.seen[h] - t for h, t in submitted.items() if h in watcher.seen]
    committed = len(latencies)
    last = max((watcher.seen[h] for h in submitted if h in watcher.seen), default=start_at)
    blocks = [b for b in watcher.blocks if b[2] > 0]
    intervals = [b[1] - a[1] for a, b in zip(watcher.blocks, watcher.blocks[1:], strict=False)]
    rejected: Counter[str] = Counter()
    for s in submitters:
        rejected.update(s.rejected)
    heights = [a["height"] - b["height"] for a, b in zip(after, before, strict=True)]
    return {
        "validators": args.validators,
        "accounts": args.accounts,
        "offered_tx_s": args.rate,
        "offered_achieved_tx_s": round(len(submitted) / max(submit_end - start_at, 1e-9), 1),
        "presign_s": round(sign_s, 2),
        "submitted": sum(len(s.txs) for s in submitters),
        "accepted": len(submitted),
        "rejected": dict(rejected),
        "committed": committed,
        "committed_tx_s": round(committed / max(last - start_at, 1e-9), 1),
        "finality_p50_s": round(percentile(latencies, 0.50), 3),
        "finality_p99_s": round(percentile(latencies, 0.99), 3),
        "finality_max_s": round(max(latencies, default=float("nan")), 3),
        "blocks": len(watcher.blocks),
        "blocks_with_txs": len(blocks),
        "block_interval_median_s": round(statistics.median(intervals), 3) if intervals else None,
        "txs_per_block_median": statistics.median(b[2] for b in blocks) if blocks else 0,
        "txs_per_block_max": max((b[2] for b in blocks), default=0),
        "api_batch_post_median_s": round(statistics.median(p for s in submitters for p in s.post_s), 4),
        "validator_cpu_pct": [round(c) for c in cpu],
        "rounds_per_height": [
            round((a["rounds"] - b["rounds"]) / h, 2) if h else None
            for a, b, h in zip(after, before, heights, strict=True)
        ],
        "blocks_synced": [int(a["synced"] - b["synced"]) for a, b in zip(after, before, strict=True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=2000, help="offered tx/s")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
