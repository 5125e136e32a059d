"""Gossip delivery latency, loss and CPU across N real peer processes on loopback.

Starts `hivemesh cluster up --peers N`, waits for peer exchange to give every peer its target
number of connections (or N-1), measures idle CPU, then per offered rate publishes paced messages
round-robin from every peer through the local API (one publishing thread per peer, so a slow
answer does not lower the offered rate) and reads every peer's received log.
Latency of a message = the moment the LAST peer had it minus the moment it was published
(all processes share this machine's clock). Prints median / p95 / max, the count lost, the
deliveries that came by anti-entropy instead of gossip, and the CPU the peers used while
publishing (all peers together and the busiest one, in % of one core), and that CPU divided by
the deliveries (ms of CPU per message per peer; valid while the peers keep up).

`--profile DIR` runs every peer under cProfile, switched on for the publishing window of
each rate only, and prints the top functions of the busiest peer (profiling slows peers
down: its latency numbers are not comparable with a normal run). `--gossip-only` runs the
daemons without ledger and market although the cluster has a genesis (gossip cost alone);
without it every peer runs the full daemon, as `hivemesh cluster up` does. `--legacy` runs
the gossip settings from before hivemesh issue 2 (for side-by-side comparisons), `--host`
overrides one setting of gossip.libp2p_host (e.g. --host SEND_SENDER_RECORDS=True).

    python benchmarks/gossip_latency.py [--peers 20] [--rates 10,25,50] [--seconds 10]
        [--profile DIR] [--mesh D,D_low,D_high] [--px-degree N] [--host NAME=VALUE ...]
        [--legacy] [--gossip-only]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from gossip.peerexchange import DEFAULT_TARGET_DEGREE
from peer.client import ApiClient
from peer.cluster import Cluster, cluster_down, cluster_up

# Loaded by every peer process through PYTHONPATH (as sitecustomize) when --profile or an
# experiment knob is given. Profiling: SIGUSR1 starts a fresh cProfile, SIGUSR2 stops it and
# writes DIR/<pid>.prof (the last rate's window wins). The knobs override, before the peer
# starts, settings of gossip.libp2p_host (NAME=python-literal pairs, `;`-separated) and the
# peer-exchange target, or drop the ledger and market.
_HOOK = """\
import ast, cProfile, os, signal, time
_dir = os.environ.get("HIVEMESH_BENCH_PROFILE_DIR")
if _dir:
    _prof = [cProfile.Profile()]
    def _start(signum, frame):
        _prof[0] = cProfile.Profile(time.process_time)  # CPU time: 20 peers on 2 cores wait a lot
        _prof[0].enable()
    def _stop(signum, frame):
        _prof[0].disable()
        _prof[0].dump_stats(os.path.join(_dir, f"{os.getpid()}.prof"))
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
if os.environ.get("HIVEMESH_BENCH_HOST"):
    import gossip.libp2p_host as _host
    for _item in os.environ["HIVEMESH_BENCH_HOST"].split(";"):
        _name, _value = _item.split("=", 1)
        if not hasattr(_host, _name):
            raise SystemExit(f"gossip.libp2p_host has no setting {_name}")
        setattr(_host, _name, ast.literal_eval(_value))
if os.environ.get("HIVEMESH_BENCH_GOSSIP_ONLY"):
    import peer.genesis_file as _genesis
    _genesis.home_genesis = lambda home: None  # no ledger, no market: the daemon runs gossip alone
if os.environ.get("HIVEMESH_BENCH_PX_DEGREE"):
    import gossip.peerexchange as _px
    _px.PeerExchange.__init__.__kwdefaults__["target_degree"] = int(os.environ["HIVEMESH_BENCH_PX_DEGREE"])
"""
# --legacy: the gossip settings before hivemesh issue 2 (GossipSub 1.2, D=6/4/12, a signed peer
# record in every RPC, one write per RPC, a Yamux WINDOW_UPDATE per read).
_LEGACY_HOST = (
    'GOSSIP_PROTOCOLS=("/meshsub/1.2.0","/meshsub/1.1.0","/meshsub/1.0.0")',
    "GOSSIP_DEGREE=6",
    "GOSSIP_DEGREE_LOW=4",
    "GOSSIP_DEGREE_HIGH=12",
    "SEND_SENDER_RECORDS=True",
    "COALESCED_WRITE_BYTES=0",
    "WINDOW_UPDATE_BATCH=0",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CpuMeter:
    """CPU seconds (user + system) of the peer processes between two readings, in % of one core."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self._start = self._read()
        self._t0 = time.monotonic()

    def _read(self) -> list[float]:
        return [sum(p.cpu_times()[:2]) for p in self.procs]

    def percent(self) -> list[float]:
        now, elapsed = self._read(), time.monotonic() - self._t0
        return [100 * (b - a) / elapsed for a, b in zip(self._start, now, strict=True)]


def gossip_stats(clients: list[ApiClient]) -> list[dict[str, int]]:
    return [client.status()["gossip"] for client in clients]


def degrees(clients: list[ApiClient]) -> list[int]:
    return [len(client.status()["connected_peers"]) for client in clients]


def wait_for_degree(clients: list[ApiClient], target: int, timeout: float) -> list[int]:
    want = min(target, len(clients) - 1)
    deadline = time.monotonic() + timeout
    while (found := degrees(clients)) and min(found) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def signal_all(cluster: Cluster, signum: int) -> None:
    for peer in cluster.peers:
        os.kill(peer.pid, signum)


def run_rate(
    cluster: Cluster, clients: list[ApiClient], rate: float, seconds: float, settle: float, profile: bool
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    total = int(rate * seconds)
    sent: dict[int, float] = {}
    before = gossip_stats(clients)
    if profile:
        signal_all(cluster, signal.SIGUSR1)
    cpu = CpuMeter([p.pid for p in cluster.peers])

    def publish(i: int) -> None:
        sent[i] = time.time()
        clients[i % len(clients)].publish("tasks", {"run": run, "i": i})

    # One publishing thread per peer: a slow API answer must not hold back the offered rate.
    pools = [ThreadPoolExecutor(max_workers=1) for _ in clients]
    start = time.monotonic()
    try:
        futures = []
        for i in range(total):
            due = start + i / rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            futures.append(pools[i % len(clients)].submit(publish, i))
        for future in futures:
            future.result()
    finally:
        for pool in pools:
            pool.shutdown()
    publish_s = time.monotonic() - start
    cpu_percent = cpu.percent()
    if profile:
        signal_all(cluster, signal.SIGUSR2)
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
    after = gossip_stats(clients)
    latencies = [max(g[i] for g in got) - sent[i] for i in range(total) if all(i in g for g in got)]
    nan = float("nan")
    return {
        "rate": rate,
        "achieved_rate": total / publish_s,
        "messages": total,
        "deliveries_expected": total * len(clients),
        "lost": sum(total - len(g) for g in got),
        "by_sync": sum(
            a["recovered_by_sync"] - b["recovered_by_sync"] for a, b in zip(after, before, strict=True)
        ),
        "median_ms": 1000 * statistics.median(latencies) if latencies else nan,
        "p95_ms": 1000 * percentile(latencies, 0.95) if latencies else nan,
        "max_ms": 1000 * max(latencies) if latencies else nan,
        "cpu_total": sum(cpu_percent),
        "cpu_max": max(cpu_percent),
        # CPU of all peers while publishing, per delivery (idle included); only meaningful
        # while the peers keep up: a backlog is worked off after the window.
        "cpu_ms_per_delivery": 10 * sum(cpu_percent) * publish_s / (total * len(clients)),
        "busiest": max(range(len(cpu_percent)), key=cpu_percent.__getitem__),
    }


# Where CPU goes, by the file a function lives in (first match wins).
_REPO = str(Path(__file__).resolve().parents[1])
_GROUPS = (
    ("hivemesh gossip", f"{_REPO}/gossip/"),
    ("hivemesh peer (API, daemon)", f"{_REPO}/peer/"),
    ("hivemesh ledger", f"{_REPO}/ledger/"),
    ("hivemesh compute", f"{_REPO}/compute/"),
    ("libp2p yamux", "libp2p/stream_muxer"),
    ("libp2p noise/security", "libp2p/security"),
    ("libp2p pubsub", "libp2p/pubsub"),
    ("libp2p other", "libp2p/"),
    ("trio", "/trio/"),
    ("HTTP server", "hypercorn"),
    ("HTTP server", "/h11/"),
    ("logging", "/logging/"),
    ("logging", "structlog"),
    ("protobuf", "protobuf"),
)


def cpu_by_group(stats: pstats.Stats) -> dict[str, float]:
    """Own CPU time per group; C functions count for the group of their caller."""
    groups: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, tottime, _, callers) in raw.items():
        where = filename
        if filename == "~" and callers:  # a builtin: charge it to its heaviest caller's file
            where = max(callers.items(), key=lambda item: item[1][2])[0][0]
        name = next((group for group, needle in _GROUPS if needle in where), "other")
        groups[name] = groups.get(name, 0.0) + tottime
    return groups


def print_profile(path: Path, top: int = 25) -> None:
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\n--- cProfile (CPU time) of the busiest peer ({path.name}): {total:.2f} s ---")
    for group, seconds in sorted(cpu_by_group(stats).items(), key=lambda item: -item[1]):
        print(f"{group:>28}: {seconds:6.2f} s  {100 * seconds / total:5.1f} %")
    print("--- by own time ---")
    stats.sort_stats("tottime").print_stats(top)
    print("--- by cumulative time ---")
    stats.sort_stats("cumulative").print_stats(top)


def install_hook(directory: Path, args: argparse.Namespace) -> None:
    """Make the peer processes load _HOOK, configured by environment variables they inherit."""
    host = list(_LEGACY_HOST) if args.legacy else []
    if args.mesh:
        d, low, high = (int(x) for x in args.mesh.split(","))
        host += [f"GOSSIP_DEGREE={d}", f"GOSSIP_DEGREE_LOW={low}", f"GOSSIP_DEGREE_HIGH={high}"]
    host += args.host
    settings = {
        "HIVEMESH_BENCH_PROFILE_DIR": str(args.profile.absolute()) if args.profile else None,
        "HIVEMESH_BENCH_HOST": ";".join(host) or None,
        "HIVEMESH_BENCH_PX_DEGREE": str(args.px_degree) if args.px_degree else None,
        "HIVEMESH_BENCH_GOSSIP_ONLY": "1" if args.gossip_only else None,
    }
    if not any(settings.values()):
        return
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    directory.mkdir(parents=True)
    (directory / "sitecustomize.py").write_text(_HOOK)
    os.environ.update({k: v for k, v in settings.items() if v})
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--rates", default="10,25,50")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--profile", type=Path, default=None, help="run peers under cProfile, dump here")
    parser.add_argument("--mesh", default=None, help="experiment: GossipSub D,D_low,D_high (e.g. 3,2,4)")
    parser.add_argument("--px-degree", type=int, default=None, help="experiment: peer-exchange target")
    parser.add_argument(
        "--host", action="append", default=[], metavar="NAME=VALUE", help="experiment: a libp2p_host setting"
    )
    parser.add_argument("--keep", action="store_true", help="keep the peer homes and logs afterwards")
    parser.add_argument("--legacy", action="store_true", help="gossip settings before hivemesh issue 2")
    parser.add_argument(
        "--gossip-only", action="store_true", help="peers run without ledger and market (genesis ignored)"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        tmp = tempfile.mkdtemp(prefix="hivemesh-bench-")
        if args.keep:
            print(f"peer homes and logs are kept in {tmp}")
        else:
            cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        install_hook(Path(tmp) / "hook", args)
        root = Path(tmp) / "mesh"
        t0 = time.monotonic()
        cluster = cluster_up(root, args.peers, timeout=180)
        print(f"{args.peers} peer processes up and connected in {time.monotonic() - t0:.1f} s")
        clients = [ApiClient(p.api_url, timeout=10.0) for p in cluster.peers]
        try:
            t1 = time.monotonic()
            found = wait_for_degree(clients, args.px_degree or DEFAULT_TARGET_DEGREE, timeout=60)
            print(
                f"degree after {time.monotonic() - t1:.1f} s: min {min(found)} median "
                f"{statistics.median(found):g} max {max(found)}"
            )
            idle = CpuMeter([p.pid for p in cluster.peers])
            time.sleep(5)
            idle_percent = idle.percent()
            print(f"idle CPU: all peers {sum(idle_percent):.1f} %, busiest {max(idle_percent):.1f} %")
            print(
                f"{'rate/s':>7} {'achieved':>8} {'msgs':>5} {'lost':>10} {'by sync':>7} {'median ms':>10} "
                f"{'p95 ms':>8} {'max ms':>8} {'cpu all %':>9} {'busiest %':>9} {'cpu ms/deliv':>12}"
            )
            for rate in (float(r) for r in args.rates.split(",")):
                r = run_rate(cluster, clients, rate, args.seconds, args.settle, bool(args.profile))
                print(
                    f"{r['rate']:7.0f} {r['achieved_rate']:8.1f} {r['messages']:5d} "
                    f"{r['lost']:5d}/{r['deliveries_expected']:<4d} {r['by_sync']:7d} {r['median_ms']:10.1f} "
                    f"{r['p95_ms']:8.1f} {r['max_ms']:8.1f} {r['cpu_total']:9.1f} {r['cpu_max']:9.1f} "
                    f"{r['cpu_ms_per_delivery']:12.2f}",
                    flush=True,
                )
                busiest_pid = cluster.peers[r["busiest"]].pid
            if args.profile:
                print_profile(args.profile / f"{busiest_pid}.prof")  # the busiest of the last rate
        finally:
            for c in clients:
                c.close()
            cluster_down(root)


if __name__ == "__main__":
    main()
