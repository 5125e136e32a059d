"""Peer processes: start one, wait until it serves, find it again, stop it.

Used by `hivemesh cluster` and by the integration tests. Waiting always polls a condition
under a deadline. Stopping sends SIGTERM, waits, then SIGKILLs what is left; a pid is only
signalled when its command line still names the peer's home (pids get reused).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx
import psutil

from peer.errors import ClusterError, HomeError
from peer.home import Home, RunInfo, read_run_info

T = TypeVar("T")
LOG_NAME = "peer.log"


def pid_alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll until `predicate()` returns something truthy; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def peer_command(home: Home, *run_args: str) -> list[str]:
    return [sys.executable, "-m", "peer", "--home", str(home.root), "run", *run_args]


def spawn_peer(
    home: Home, *run_args: str, env: dict[str, str] | None = None, detach: bool = True
) -> subprocess.Popen[bytes]:
    """Start `hivemesh --home HOME run ARGS` in the background, logging to HOME/peer.log.

    detach puts it in its own session, so it outlives the caller and ignores its terminal's ^C.
    """
    home.root.mkdir(parents=True, exist_ok=True)
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    with (home.root / LOG_NAME).open("ab") as log:
        return subprocess.Popen(
            peer_command(home, *run_args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=detach,
        )


def log_tail(home: Home, lines: int = 5) -> str:
    try:
        text = (home.root / LOG_NAME).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _health_ok(info: RunInfo) -> bool:
    try:
        return httpx.get(f"{info.api_url}/health", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_serving(home: Home, pid: int, timeout: float = 30.0) -> RunInfo:
    """Wait until the daemon `pid` has written run.json and answers /health; ClusterError if it died."""

    def ready() -> RunInfo | None:
        if not pid_alive(pid):
            raise ClusterError(f"peer in {home.root} (pid {pid}) exited during start-up: {log_tail(home)}")
        try:
            info = read_run_info(home)
        except HomeError:
            return None  # being written
        return info if info is not None and info.pid == pid and _health_ok(info) else None

    try:
        return wait_for(ready, timeout, f"the peer in {home.root} to serve")
    except TimeoutError as e:
        raise ClusterError(f"{e}; last log lines: {log_tail(home)}") from None


def owns_home(pid: int, home: Home) -> bool:
    """Whether `pid` is still a daemon started for `home` (and not a reused pid)."""
    try:
        return str(home.root) in psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return False


def stop_pids(pids: Iterable[int], timeout: float = 10.0) -> dict[int, str]:
    """SIGTERM every pid, wait up to `timeout`, SIGKILL the rest. Returns pid -> outcome."""
    outcome: dict[int, str] = {}
    for pid in pids:
        outcome[pid] = _signal(pid, signal.SIGTERM, "terminated")
    waiting = [pid for pid, state in outcome.items() if state == "terminated"]
    try:
        wait_for(lambda: not any(pid_alive(p) for p in waiting), timeout, "peers to exit")
    except TimeoutError:
        for pid in waiting:
            if pid_alive(pid):
                outcome[pid] = _signal(pid, signal.SIGKILL, "killed")
        stragglers = [p for p in waiting if outcome[p] == "killed"]
        wait_for(lambda: not any(pid_alive(p) for p in stragglers), 5.0, "killed peers to exit")
    return outcome


def _signal(pid: int, signum: signal.Signals, done: str) -> str:
    if not pid_alive(pid):
        return "not running"
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return "not running"
    except PermissionError:
        raise ClusterError(f"not allowed to signal pid {pid}") from None
    return done


@contextmanager
def running_peer(
    home: Home, *run_args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], RunInfo]]:
    """A peer process for the duration of a `with` block; always stopped (and reaped) on exit."""
    process = spawn_peer(home, *run_args, env=env)
    try:
        yield process, wait_serving(home, process.pid, timeout=timeout)
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM a child, SIGKILL it after `timeout`; returns its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
