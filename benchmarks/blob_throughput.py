"""Blob fetch throughput between two OS processes over real libp2p (TCP + Noise + Yamux) on loopback.

The parent starts this same file as a child process (`serve`), which stores a random blob
and serves it; the parent connects and fetches it into a fresh store, `--runs` times, and
prints MB/s (MB = 10^6 bytes, as in notes/libp2p-measurements.md). Two times per run:
"transfer" ends when the last chunk is verified and written, "fetch" when fetch() returns
(after fsync and the rename into place). Nothing is asserted: it only reports.

    .venv/bin/python benchmarks/blob_throughput.py [--size-mib 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

from gossip.blobs import BlobExchange, BlobStore
from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport

MB = 1_000_000
MiB = 1 << 20
CHILD_START_TIMEOUT = 60.0


# ---- child: serve one blob until stdin closes -------------------------------------------------


async def serve(root: Path, size: int) -> None:
    store = BlobStore(root)
    blob_id = store.put_bytes(os.urandom(size))
    transport = Libp2pTransport(Identity.generate())
    BlobExchange(transport, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve)
        print(json.dumps({"addr": transport.listen_addrs()[0], "blob_id": blob_id, "size": size}), flush=True)
        # The parent closes our stdin when it is done (or dies): then we stop.
        await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    store.close()


# ---- parent: fetch it and time it -------------------------------------------------------------


async def fetch_runs(
    addr: str, blob_id: str, size: int, runs: int, work: Path, server_pid: int
) -> list[tuple[float, float]]:
    transport = Libp2pTransport(Identity.generate())
    results: list[tuple[float, float]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve)
        server = await transport.connect(addr)
        for run in range(runs):
            store = BlobStore(work / f"run{run}")
            exchange = BlobExchange(transport, store, timeout=30.0)
            last_chunk = 0.0

            def progress(done: int, total: int) -> None:
                nonlocal last_chunk
                if done == total:
                    last_chunk = time.perf_counter()

            server_proc = psutil.Process(server_pid)
            cpu0, scpu0, t0 = _cpu_seconds(), _cpu_of(server_proc), time.perf_counter()
            path = await exchange.fetch(blob_id, [server], progress=progress)
            t1, cpu1, scpu1 = time.perf_counter(), _cpu_seconds(), _cpu_of(server_proc)
            assert path.stat().st_size == size
            transfer, total = last_chunk - t0, t1 - t0
            results.append((transfer, total))
            print(
                f"run {run + 1}: transfer {size / MB / transfer:6.1f} MB/s ({transfer:.3f} s), "
                f"fetch incl. fsync {size / MB / total:6.1f} MB/s ({total:.3f} s), "
                f"CPU seconds: fetcher {cpu1 - cpu0:.2f}, server {scpu1 - scpu0:.2f}",
                flush=True,
            )
            store.close()
            path.unlink()  # keep the disk footprint at one copy
        nursery.cancel_scope.cancel()
    return results


def _cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_parent(size: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="blobbench-") as tmp:
        work = Path(tmp)
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", str(work / "server"), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            hello = _read_line(child, CHILD_START_TIMEOUT)
            info = json.loads(hello)
            print(f"server process {child.pid} holds {size / MiB:.0f} MiB blob {info['blob_id'][:16]}...")
            results = trio.run(
                fetch_runs, info["addr"], info["blob_id"], size, runs, work / "client", child.pid
            )
        finally:
            if child.stdin is not None:
                child.stdin.close()  # tells the child to stop
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    transfers = [size / MB / t for t, _ in results]
    fetches = [size / MB / t for _, t in results]
    print(
        f"blob {size / MiB:.0f} MiB, {runs} runs, Noise+Yamux over loopback, 2 processes: "
        f"transfer median {statistics.median(transfers):.1f} MB/s (best {max(transfers):.1f}), "
        f"fetch incl. fsync median {statistics.median(fetches):.1f} MB/s (best {max(fetches):.1f})"
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
    parser.add_argument("--size-mib", type=int, default=100, help="blob size in MiB (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="fetches to time (default 3)")
    args = parser.parse_args()
    if args.command == "serve":
        trio.run(serve, args.root, args.size)
    else:
        run_parent(args.size_mib * MiB, args.runs)


if __name__ == "__main__":
    main()
