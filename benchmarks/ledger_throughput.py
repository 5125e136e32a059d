"""Ledger throughput and finality over real validator processes (`cluster up`).

Starts a local cluster of `--validators` validator peers whose genesis also funds `--accounts`
benchmark accounts, pre-signs `--rate * --seconds` transfers among them (each account's txs
in nonce order), then `--threads` client threads submit them through `POST /tx/raw` in
batches of `--batch`, paced to the offered rate. A thread owns a fixed set of accounts and
always talks to the same validator, so a sender's nonces arrive in order.

Measured:
  committed tx/s   txs committed / (last commit seen - first submit)
  finality         per tx: when the watcher (polling validator 0 every 20 ms) first saw the
                   block holding it, minus when its batch was posted: p50 / p99 / max
  where time goes  API: seconds per accepted tx inside POST /tx/raw (mempool admission and
                   one gossip publish per tx); gossip: the largest mempool each validator
                   reached (a validator far below the others is not receiving the txs);
                   consensus: block interval, txs per block, rounds per height (> 1 means a
                   round timed out), blocks fetched by block sync; CPU of each validator
                   (% of one core) over the run, and CPU-ms per committed tx (mean
                   validator). Validators that stop answering are listed.

Every process shares this machine: clients, HTTP, gossip and consensus compete for the same
cores, so the numbers say what this machine can do, not what a network of machines can.

  timeouts fired  consensus timeouts per validator by kind (propose: a proposal came late)
  proposals       per validator, how proposals arrived: compact (rebuilt from its own
                   txs), fetched (missing txs asked from peers), failed, full

With --idle S no txs are sent: the cluster's CPU (each validator, % of one core) and the
blocks it makes are measured over S seconds, after it has settled.

With --profile DIR every validator's event loop thread is profiled (cProfile, dumped to
DIR/ledger-<peer>.prof when it stops) and the top functions of validator 0 are printed.

    .venv/bin/python benchmarks/ledger_throughput.py [--validators 4] [--accounts 1000]
        [--rate 200] [--seconds 20] [--threads 8] [--batch 50] [--json] [--keep] [--profile DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pstats
import re
import shutil
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
from ledger.node import PROFILE_ENV
from ledger.tx import sign_tx
from peer.cluster import Cluster, cluster_down, cluster_up
from peer.genesis_file import read_genesis

WATCH_S = 0.02
SAMPLE_S = 0.5
DRAIN_S = 60.0


def accounts(n: int) -> list[Identity]:
    return [Identity.from_seed(hashlib.sha256(b"ledger-bench-%d" % i).digest()) for i in range(n)]


def presign(ids: list[Identity], total: int, chain_id: str) -> list[list[bytes]]:
    """Per account, `total / len(ids)` transfers of 1 to the next account, nonces 0, 1, ..."""
    per_account = -(-total // len(ids))
    return [
        [
            sign_tx(
                ident,
                "transfer",
                {"to": ids[(i + 1) % len(ids)].peer_id, "amount": 1},
                nonce=n,
                fee=1,
                chain_id=chain_id,
            ).encoded
            for n in range(per_account)
        ]
        for i, ident in enumerate(ids)
    ]


class Watcher(threading.Thread):
    """Polls one validator; records when each block (and so each tx in it) was first seen."""

    def __init__(self, api: str) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=f"http://{api}", timeout=30.0, trust_env=False)
        self.seen: dict[str, float] = {}
        self.blocks: list[tuple[int, float, int]] = []  # (height, seen at, txs)
        self.height = int(self.http.get("/ledger/status").json()["height"])
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(WATCH_S):
            try:
                top = int(self.http.get("/ledger/status").json()["height"])
                seen_at = time.monotonic()
                for h in range(self.height + 1, top + 1):
                    hashes = self.http.get(f"/query/block/{h}").json()["tx_hashes"]
                    for tx_hash in hashes:
                        self.seen.setdefault(tx_hash, seen_at)
                    self.blocks.append((h, seen_at, len(hashes)))
                    self.height = h
            except (httpx.HTTPError, ValueError, KeyError):
                self.errors += 1


class Sampler(threading.Thread):
    """Every validator's height, round and mempool size twice a second."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.apis = [p.api for p in cluster.peers]
        self.mempool_max = [0] * len(self.apis)
        self.round_max = [0] * len(self.apis)
        self.unanswered = [0] * len(self.apis)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            for i, api in enumerate(self.apis):
                try:
                    status = httpx.get(f"http://{api}/ledger/status", timeout=5.0, trust_env=False).json()
                except httpx.HTTPError:
                    self.unanswered[i] += 1
                    continue
                self.mempool_max[i] = max(self.mempool_max[i], status["mempool"])
                self.round_max[i] = max(self.round_max[i], status["round"])


class Submitter(threading.Thread):
    """Posts its txs in paced batches to one validator; records submit times and refusals."""

    def __init__(self, api: str, txs: list[bytes], rate: float, batch: int, start_at: float) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=f"http://{api}", timeout=60.0, trust_env=False)
        self.txs, self.rate, self.batch, self.start_at = txs, rate, batch, start_at
        self.submitted: dict[str, float] = {}
        self.rejected: Counter[str] = Counter()
        self.s_per_tx: list[float] = []  # time inside one POST / txs in it
        self.failed_posts = 0

    def run(self) -> None:
        for k in range(0, len(self.txs), self.batch):
            delay = self.start_at + k / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the offered load (not synchronisation)
            chunk = self.txs[k : k + self.batch]
            sent_at = time.monotonic()
            try:
                response = self.http.post("/tx/raw", json={"txs": [t.hex() for t in chunk]})
                response.raise_for_status()
            except httpx.HTTPError:
                self.failed_posts += 1
                continue
            self.s_per_tx.append((time.monotonic() - sent_at) / len(chunk))
            for result in response.json()["results"]:
                if "tx_hash" in result:
                    self.submitted[result["tx_hash"]] = sent_at
                else:
                    self.rejected[result["code"]] += 1


def metric(text: str, name: str) -> float:
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if pattern.match(line))


def metric_label(text: str, name: str, label: str, value: str) -> float:
    line = f'{name}{{{label}="{value}"}} '
    return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines() if row.startswith(line))


def scrape(cluster: Cluster) -> list[dict[str, float] | None]:
    rows: list[dict[str, float] | None] = []
    for peer in cluster.peers:
        try:
            text = httpx.get(f"http://{peer.api}/metrics", timeout=5.0, trust_env=False).text
        except httpx.HTTPError:
            rows.append(None)
            continue
        rows.append(
            {
                "height": metric(text, "hivemesh_ledger_height"),
                "rounds": metric(text, "hivemesh_consensus_rounds_total"),
                "synced": metric(text, "hivemesh_ledger_blocks_synced_total"),
                **{
                    f"timeout_{k}": metric_label(text, "hivemesh_consensus_timeouts_total", "kind", k)
                    for k in ("propose", "prevote", "precommit", "rebroadcast")
                },
                **{
                    f"proposal_{k}": metric_label(text, "hivemesh_ledger_proposals_total", "how", k)
                    for k in ("full", "compact", "fetched", "failed")
                },
            }
        )
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def idle(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hm-ledger-idle-"))
    cluster = cluster_up(root, args.validators, timeout=180)
    try:
        time.sleep(5.0)  # settling after start-up (not synchronisation)
        procs = [psutil.Process(p.pid) for p in cluster.peers]
        cpu_before = [sum(p.cpu_times()[:2]) for p in procs]
        before, start = scrape(cluster), time.monotonic()
        time.sleep(args.idle)  # the measurement window
        elapsed = time.monotonic() - start
        cpu = [100 * (sum(p.cpu_times()[:2]) - b) / elapsed for p, b in zip(procs, cpu_before, strict=True)]
        after = scrape(cluster)
    finally:
        cluster_down(root, timeout=10)
        shutil.rmtree(root, ignore_errors=True)
    heights = [a["height"] - b["height"] if a and b else None for a, b in zip(after, before, strict=True)]
    return {
        "idle_s": round(elapsed, 1),
        "blocks": heights,
        "validator_cpu_pct": [round(c, 1) for c in cpu],
        "total_cpu_pct": round(sum(cpu), 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    ids = accounts(args.accounts)
    root = Path(tempfile.mkdtemp(prefix="hm-ledger-bench-"))
    if args.profile:
        os.environ[PROFILE_ENV] = str(Path(args.profile).resolve())  # the peers inherit it
    cluster = cluster_up(root, args.validators, timeout=180, extra_accounts=[a.peer_id for a in ids])
    try:
        chain_id = read_genesis(root / "genesis.json").chain_id
        signed = presign(ids, args.rate * args.seconds, chain_id)
        per_thread: list[list[bytes]] = [[] for _ in range(args.threads)]
        for n in range(len(signed[0])):  # nonce rounds: every account's tx n before any tx n+1
            for i, txs in enumerate(signed):
                per_thread[i % args.threads].append(txs[n])
        watcher, sampler = Watcher(cluster.peers[0].api), Sampler(cluster)
        procs = [psutil.Process(p.pid) for p in cluster.peers]
        cpu_before = [sum(p.cpu_times()[:2]) for p in procs]
        before = scrape(cluster)
        start_at = time.monotonic() + 0.5
        rate = args.rate / args.threads
        apis = [cluster.peers[t % len(cluster.peers)].api for t in range(args.threads)]
        submitters = [
            Submitter(api, txs, rate, args.batch, start_at) for api, txs in zip(apis, per_thread, strict=True)
        ]
        for thread in (watcher, sampler, *submitters):
            thread.start()
        for s in submitters:
            s.join()
        submit_end = time.monotonic()
        submitted = {h: t for s in submitters for h, t in s.submitted.items()}
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not submitted.keys() <= watcher.seen.keys():
            time.sleep(0.05)  # draining: watching the watcher's progress under a deadline
        watcher.stop.set()
        sampler.stop.set()
        watcher.join()
        sampler.join()
        elapsed = time.monotonic() - start_at
        cpu = [
            100 * (sum(p.cpu_times()[:2]) - b) / elapsed if p.is_running() else float("nan")
            for p, b in zip(procs, cpu_before, strict=True)
        ]
        after = scrape(cluster)
    finally:
        cluster_down(root, timeout=10)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    stats = {
        "start_at": start_at,
        "submit_end": submit_end,
        "cpu": cpu,
        "cpu_s": [c / 100 * elapsed for c in cpu],
        "before": before,
        "after": after,
    }
    return report(args, submitted, watcher, sampler, submitters, stats)


def report(
    args: argparse.Namespace,
    submitted: dict[str, float],
    watcher: Watcher,
    sampler: Sampler,
    submitters: list[Submitter],
    stats: dict[str, Any],
) -> dict[str, Any]:
    start_at, submit_end = stats["start_at"], stats["submit_end"]
    latencies = [watcher.seen[h] - t for h, t in submitted.items() if h in watcher.seen]
    last = max((watcher.seen[h] for h in submitted if h in watcher.seen), default=start_at)
    busy = [b for b in watcher.blocks if b[2] > 0]
    intervals = [b[1] - a[1] for a, b in zip(watcher.blocks, watcher.blocks[1:], strict=False)]
    rejected: Counter[str] = Counter()
    for s in submitters:
        rejected.update(s.rejected)
    per_tx = [x for s in submitters for x in s.s_per_tx]

    def per_height(a: dict[str, float] | None, b: dict[str, float] | None, key: str) -> Any:
        if a is None or b is None:
            return "down"
        heights = a["height"] - b["height"]
        return round((a[key] - b[key]) / heights, 2) if key == "rounds" and heights else int(a[key] - b[key])

    pairs = list(zip(stats["after"], stats["before"], strict=True))
    return {
        "validators": args.validators,
        "accounts": args.accounts,
        "offered_tx_s": args.rate,
        "offered_achieved_tx_s": round(len(submitted) / max(submit_end - start_at, 1e-9), 1),
        "submitted": sum(len(s.txs) for s in submitters),
        "accepted": len(submitted),
        "refused": dict(rejected),
        "failed_posts": sum(s.failed_posts for s in submitters),
        "committed": len(latencies),
        "committed_tx_s": round(len(latencies) / max(last - start_at, 1e-9), 1),
        "finality_p50_s": round(percentile(latencies, 0.50), 3),
        "finality_p99_s": round(percentile(latencies, 0.99), 3),
        "finality_max_s": round(max(latencies, default=float("nan")), 3),
        "api_s_per_tx": round(statistics.median(per_tx), 5) if per_tx else None,
        "mempool_max": sampler.mempool_max,
        "blocks": len(watcher.blocks),
        "blocks_with_txs": len(busy),
        "block_interval_median_s": round(statistics.median(intervals), 3) if intervals else None,
        "block_interval_max_s": round(max(intervals), 3) if intervals else None,
        "txs_per_block_median": statistics.median(b[2] for b in busy) if busy else 0,
        "txs_per_block_max": max((b[2] for b in busy), default=0),
        "rounds_per_height": [
            per_height(a, b, "rounds") for a, b in zip(stats["after"], stats["before"], strict=True)
        ],
        "round_max": sampler.round_max,
        "blocks_synced": [
            per_height(a, b, "synced") for a, b in zip(stats["after"], stats["before"], strict=True)
        ],
        "timeouts_fired": {
            k: [per_height(a, b, f"timeout_{k}") for a, b in pairs]
            for k in ("propose", "prevote", "precommit", "rebroadcast")
        },
        "proposals_received": {
            k: [per_height(a, b, f"proposal_{k}") for a, b in pairs]
            for k in ("full", "compact", "fetched", "failed")
        },
        "validator_cpu_pct": [round(c) for c in stats["cpu"]],
        # CPU per committed tx, per validator: what a tx costs, less sensitive to other load than tx/s.
        "validator_cpu_ms_per_tx": round(statistics.mean(stats["cpu_s"]) * 1000 / max(len(latencies), 1), 3),
        "status_unanswered": sampler.unanswered,
        "watcher_errors": watcher.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=200, help="offered tx/s")
    parser.add_argument("--seconds", type=int, default=20)
    # The clients share the machine with the validators: 8 threads posting batches of 50 reach
    # 1,800 tx/s offered while leaving the validators most of the CPU.
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory (peer logs)")
    parser.add_argument("--idle", type=float, default=0.0, help="measure idle CPU for this many seconds")
    parser.add_argument("--profile", metavar="DIR", help="cProfile each validator's event loop into DIR")
    args = parser.parse_args()
    result = idle(args) if args.idle else run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    if args.profile:
        dumps = sorted(Path(args.profile).glob("ledger-*.prof"))
        if dumps:
            print(f"\nvalidator profile {dumps[0].name} (event loop thread), top by own time:")
            pstats.Stats(str(dumps[0])).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
