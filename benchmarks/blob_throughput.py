"""Blob fetch throughput between two OS processes over real libp2p (TCP + Noise + Yamux) on loopback.

The parent starts this same file as a child process (`serve`) that stores a random blob and
serves it; the parent connects and fetches it into a fresh store, `--runs` times, printing
MB/s (MB = 10^6 bytes, as in notes/libp2p-measurements.md). Two times per fetch: "transfer"
ends when the last chunk is verified and written, "fetch" when fetch() returns (after fsync
and the rename into place). Before each fetch the same number of bytes also goes over a bare
stream of the same connection (1 MiB writes from memory, the reader discards them): that is
the ceiling of the transport on this machine at that moment, which matters on a shared box.
CPU seconds of both processes are printed for each: they are steadier than rates when other
work shares the cores (with several providers, "server" is their sum). Nothing is asserted:
it only reports.

With --providers N, N server processes hold the same blob and each fetch takes chunks from
all of them at once (the bare stream still comes from the first).

    .venv/bin/python benchmarks/blob_throughput.py [--size-mib 100] [--runs 3] [--providers 1] [--profile DIR]

With --profile, both processes run under cProfile and write DIR/client.prof and
DIR/server.prof (read them with `python -m pstats`); rates are then lower than without.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import random
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from gossip.blobs import BlobExchange, BlobStore
from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.transport import ByteStream, PeerId

MB = 1_000_000
MiB = 1 << 20
CHILD_START_TIMEOUT = 60.0
RAW_PROTOCOL = "/hivemesh/bench-raw/1"
BLOB_SEED = 20260101


# ---- child: serve one blob (and raw bytes) until stdin closes ---------------------------------


async def serve(root: Path, size: int, profile: Path | None) -> None:
    store = BlobStore(root)
    blob_id = store.put_bytes(random.Random(BLOB_SEED).randbytes(size))  # the same in every server
    profiler = cProfile.Profile() if profile else None
    transport = Libp2pTransport(Identity.generate())
    BlobExchange(transport, store)
    payload = os.urandom(MiB)

    async def send_raw(stream: ByteStream) -> None:
        await stream.receive_some(16)  # "go"
        for _ in range(size // MiB):
            await stream.send_all(payload)
        await stream.send_eof()

    transport.set_stream_handler(RAW_PROTOCOL, send_raw)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve)
        print(json.dumps({"addr": transport.listen_addrs()[0], "blob_id": blob_id}), flush=True)
        if profiler is not None:
            profiler.enable()
        # The parent closes our stdin when it is done (or dies): then we stop.
        await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    store.close()


# ---- parent: time raw streams and fetches -----------------------------------------------------


@dataclass
class Run:
    raw: float  # seconds for the bare stream
    raw_cpu: tuple[float, float]  # CPU seconds of (reader, server) for it
    transfer: float  # seconds until the last chunk was verified and written
    fetch: float  # seconds until fetch() returned
    fetch_cpu: tuple[float, float]  # CPU seconds of (fetcher, server)


async def timed_runs(
    addrs: list[str], blob_id: str, size: int, runs: int, work: Path, server_pids: list[int]
) -> list[Run]:
    transport = Libp2pTransport(Identity.generate())
    server_procs = [psutil.Process(pid) for pid in server_pids]
    results: list[Run] = []

    def server_cpu() -> float:
        return sum(_cpu_of(p) for p in server_procs)

    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve)
        servers = [await transport.connect(addr) for addr in addrs]
        server = servers[0]
        for run in range(runs):
            cpu0, scpu0 = _cpu_seconds(), server_cpu()
            raw = await time_raw_stream(transport, server, size)
            raw_cpu = (_cpu_seconds() - cpu0, server_cpu() - scpu0)
            store = BlobStore(work / f"run{run}")
            exchange = BlobExchange(transport, store, timeout=30.0)
            last_chunk = 0.0

            def progress(done: int, total: int) -> None:
                nonlocal last_chunk
                if done == total:
                    last_chunk = time.perf_counter()

            cpu0, scpu0, t0 = _cpu_seconds(), server_cpu(), time.perf_counter()
            path = await exchange.fetch(blob_id, servers, progress=progress, parallel=len(servers))
            t1, cpu1, scpu1 = time.perf_counter(), _cpu_seconds(), server_cpu()
            assert path.stat().st_size == size
            r = Run(raw, raw_cpu, last_chunk - t0, t1 - t0, (cpu1 - cpu0, scpu1 - scpu0))
            results.append(r)
            print(
                f"run {run + 1}: bare stream {size / MB / r.raw:6.1f} MB/s (CPU s {_pair(r.raw_cpu)}) | "
                f"blob transfer {size / MB / r.transfer:6.1f} MB/s, "
                f"fetch incl. fsync {size / MB / r.fetch:6.1f} MB/s (CPU s {_pair(r.fetch_cpu)})",
                flush=True,
            )
            store.close()
            path.unlink()  # keep the disk footprint at one copy
        nursery.cancel_scope.cancel()
    return results


async def time_raw_stream(transport: Libp2pTransport, server: PeerId, size: int) -> float:
    stream = await transport.open_stream(server, RAW_PROTOCOL)
    t0 = time.perf_counter()
    await stream.send_all(b"go")
    got = 0
    while piece := await stream.receive_some(MiB):
        got += len(piece)
    elapsed = time.perf_counter() - t0
    await stream.aclose()
    assert got == size // MiB * MiB
    return elapsed


def _pair(cpu: tuple[float, float]) -> str:
    return f"{cpu[0]:.2f} here + {cpu[1]:.2f} server"


def _cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_parent(size: int, runs: int, profile: Path | None, providers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="blobbench-") as tmp:
        work = Path(tmp)
        children: list[subprocess.Popen[str]] = []
        try:
            for i in range(providers):
                child_args = ["serve", str(work / f"server{i}"), str(size)]
                if profile is not None and i == 0:
                    profile.mkdir(parents=True, exist_ok=True)
                    child_args += ["--profile", str(profile / "server.prof")]
                children.append(
                    subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), *child_args],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            infos = [json.loads(_read_line(child, CHILD_START_TIMEOUT)) for child in children]
            blob_id = infos[0]["blob_id"]
            assert all(info["blob_id"] == blob_id for info in infos)
            pids = [child.pid for child in children]
            print(f"server processes {pids} hold a {size / MiB:.0f} MiB blob {blob_id[:16]}...")
            profiler = cProfile.Profile() if profile is not None else None
            if profiler is not None:
                profiler.enable()
            addrs = [info["addr"] for info in infos]
            results = trio.run(timed_runs, addrs, blob_id, size, runs, work / "client", pids)
            if profiler is not None and profile is not None:
                profiler.disable()
                profiler.dump_stats(profile / "client.prof")
        finally:
            for child in children:
                if child.stdin is not None:
                    child.stdin.close()  # tells the child to stop
            for child in children:
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def median_rate(seconds: list[float]) -> float:
        return size / MB / statistics.median(seconds)

    raw = median_rate([r.raw for r in results])
    transfer = median_rate([r.transfer for r in results])
    fetch = median_rate([r.fetch for r in results])
    print(
        f"median of {runs} runs, {size / MiB:.0f} MiB, Noise+Yamux on loopback, {providers} provider(s): "
        f"blob fetch {fetch:.1f} MB/s (transfer {transfer:.1f} MB/s) vs bare stream {raw:.1f} MB/s "
        f"= {fetch / raw:.0%} of the transport ceiling"
    )


def _read_line(child: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or an error if it dies or takes too long."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)  # the child writes it in one flush
    line = child.stdout.readline() if ready else ""
    if not line.endswith("\n"):
        child.kill()
        raise RuntimeError(f"server process not ready within {timeout}s (exit code {child.poll()})")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("serve", help="(internal) the server process")
    child.add_argument("root", type=Path)
    child.add_argument("size", type=int)
    child.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--size-mib", type=int, default=100, help="blob size in MiB (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="fetches to time (default 3)")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats of both ends here")
    parser.add_argument(
        "--providers", type=int, default=1, help="server processes holding the blob (default 1)"
    )
    args = parser.parse_args()
    if args.command == "serve":
        trio.run(serve, args.root, args.size, args.profile)
    else:
        run_parent(args.size_mib * MiB, args.runs, args.profile, args.providers)


if __name__ == "__main__":
    main()
