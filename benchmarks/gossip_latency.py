"""Gossip delivery latency and loss across N real peer processes on loopback.

Starts `hivemesh cluster up --peers N`, publishes paced messages round-robin from every peer
through the local API, and reads every peer's received log. Latency of a message = the
moment the LAST peer had it minus the moment it was published (all processes share this
machine's clock). Prints median / p95 / max and the count lost, per offered rate.

    python benchmarks/gossip_latency.py [--peers 20] [--rates 10,25,50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from peer.client import ApiClient
from peer.cluster import Cluster, cluster_down, cluster_up


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_rate(cluster: Cluster, clients: list[ApiClient], rate: float, seconds: float, settle: float) -> dict:
    run = uuid.uuid4().hex[:8]
    total = int(rate * seconds)
    sent: dict[int, float] = {}
    start = time.monotonic()
    for i in range(total):
        due = start + i / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        sent[i] = time.time()
        clients[i % len(clients)].publish("tasks", {"run": run, "i": i})
    publish_s = time.monotonic() - start
    got: list[dict[int, float]] = [{} for _ in clients]
    cursors = [0] * len(clients)
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        for k, client in enumerate(clients):
            for entry in client.received("tasks", since=cursors[k]):
                cursors[k] = max(cursors[k], entry["index"])
                body = entry["body"]
                if isinstance(body, dict) and body.get("run") == run:
                    got[k].setdefault(body["i"], entry["received_at"])
        if all(len(g) == total for g in got):
            break
        time.sleep(0.2)
    latencies = [max(g[i] for g in got) - sent[i] for i in range(total) if all(i in g for g in got)]
    lost = sum(total - len(g) for g in got)
    return {
        "rate": rate,
        "achieved_rate": total / publish_s,
        "messages": total,
        "deliveries_expected": total * len(clients),
        "lost": lost,
        "median_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": 1000 * percentile(latencies, 0.95) if latencies else float("nan"),
        "max_ms": 1000 * max(latencies) if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--rates", default="10,25,50")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hivemesh-bench-") as tmp:
        root = Path(tmp) / "mesh"
        t0 = time.monotonic()
        cluster = cluster_up(root, args.peers, timeout=180)
        print(f"{args.peers} peer processes up and connected in {time.monotonic() - t0:.1f} s")
        clients = [ApiClient(p.api_url, timeout=10.0) for p in cluster.peers]
        try:
            print(f"{'rate/s':>7} {'achieved':>8} {'msgs':>5} {'lost':>9} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
            for rate in (float(r) for r in args.rates.split(",")):
                r = run_rate(cluster, clients, rate, args.seconds, args.settle)
                print(
                    f"{r['rate']:7.0f} {r['achieved_rate']:8.1f} {r['messages']:5d} "
                    f"{r['lost']:4d}/{r['deliveries_expected']:<4d} {r['median_ms']:10.1f} "
                    f"{r['p95_ms']:8.1f} {r['max_ms']:8.1f}",
                    flush=True,
                )
        finally:
            for c in clients:
                c.close()
            cluster_down(root)


if __name__ == "__main__":
    main()
