"""The `hivemesh` command line, run as real processes: init, id, run, signals, user errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from peer.home import Home, RunInfo, init_home, read_run_info, write_run_info
from peer.procs import log_tail, running_peer, spawn_peer, stop_process, wait_serving
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

LOOPBACK = ("--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0")
UNKNOWN_PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def hivemesh(*args: str, home: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    prefix = ["--home", str(home)] if home is not None else []
    return subprocess.run(
        [sys.executable, "-m", "peer", *prefix, *args], capture_output=True, text=True, timeout=timeout
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 1, one line on stderr starting with 'error:', no traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_init_is_idempotent_and_id_needs_no_daemon(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = hivemesh("init", "--json", home=home)
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert created["created_key"] and created["created_config"] and created["peer_id"].startswith("12D3KooW")
    again = hivemesh("init", home=home)
    assert again.returncode == 0
    assert again.stdout.splitlines() == [f"already initialised {home}", f"peer id: {created['peer_id']}"]
    shown = hivemesh("id", home=home)
    assert (shown.returncode, shown.stdout.strip()) == (0, created["peer_id"])
    after_command = hivemesh("id", "--home", str(home))  # the global --home may follow the command
    assert after_command.stdout.strip() == created["peer_id"]
    assert json.loads(hivemesh("id", "--json", home=home).stdout)["peer_id"] == created["peer_id"]
    env_home = subprocess.run(
        [sys.executable, "-m", "peer", "id"],
        capture_output=True,
        text=True,
        env={**os.environ, "HIVEMESH_HOME": str(home)},
    )
    assert env_home.stdout.strip() == created["peer_id"]


def test_user_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert_user_error(hivemesh("id", home=missing), f"no hivemesh home at {missing}", "hivemesh init")
    assert_user_error(hivemesh("run", home=missing), "no hivemesh home")
    home = tmp_path / "home"
    init_home(Home(home))
    assert_user_error(
        hivemesh("run", "--bootstrap", "/ip4/127.0.0.1/tcp/4001", home=home), "must end with /p2p/"
    )
    assert_user_error(hivemesh("run", "--listen", "not-a-multiaddr", home=home), "is not a multiaddr")
    assert_user_error(hivemesh("run", "--api", "nowhere", home=home), "expected HOST:PORT")
    assert_user_error(
        hivemesh("init", "--listen", "/ip4/1.2.3.4/tcp/1/p2p/" + UNKNOWN_PEER, home=tmp_path / "h2")
    )
    assert not (tmp_path / "h2").exists()  # nothing written for a rejected init
    assert_user_error(hivemesh("gossip", "publish", "{not json", home=home), "not valid JSON")


def test_status_without_a_running_daemon(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    assert_user_error(hivemesh("status", home=home.root), "no hivemesh daemon is running", "hivemesh run")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert_user_error(
        hivemesh("peers", "--api", f"127.0.0.1:{closed}", home=home.root), "no hivemesh daemon answers"
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_run_info(home, RunInfo(dead.pid, UNKNOWN_PEER, [], f"127.0.0.1:{closed}", "0", time.time()))
    assert_user_error(hivemesh("status", "--json", home=home.root), "stale run.json")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_stops_cleanly_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    home = Home(tmp_path / "home")
    peer_id = init_home(home).identity.peer_id
    process = spawn_peer(home, *LOOPBACK)
    try:
        info = wait_serving(home, process.pid)
        assert info.peer_id == peer_id and info.pid == process.pid
        p2p_port = int(info.listen[0].split("/tcp/")[1].split("/")[0])
        api_port = int(info.api.rsplit(":", 1)[1])
        assert p2p_port > 0 and api_port > 0 and not port_is_free(p2p_port) and not port_is_free(api_port)
        await wait_until(lambda: "to connect other peers use: --bootstrap" in log_tail(home, 20))
        assert f"--bootstrap /ip4/127.0.0.1/tcp/{p2p_port}/p2p/{peer_id}" in log_tail(home, 20)
        # A second daemon on the same home is refused while the first runs.
        assert_user_error(hivemesh("run", *LOOPBACK, home=home.root), "already running")
        status = hivemesh("status", "--json", home=home.root)
        assert status.returncode == 0 and json.loads(status.stdout)["peer_id"] == peer_id
        process.send_signal(signum)
        await wait_until(lambda: process.poll() is not None, timeout=20)
        assert process.returncode == 0, log_tail(home, 30)
        assert read_run_info(home) is None
        assert port_is_free(p2p_port) and port_is_free(api_port)
        assert '"peer stopped"' in log_tail(home, 5) or "peer stopped" in log_tail(home, 5)
    finally:
        stop_process(process)


async def test_dead_bootstrap_addresses_do_not_block_start_up(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts TCP but never speaks: a dial would hang without a deadline
        dead = [
            f"/ip4/127.0.0.1/tcp/{closed.getsockname()[1]}/p2p/{UNKNOWN_PEER}",
            f"/ip4/127.0.0.1/tcp/{silent.getsockname()[1]}/p2p/{UNKNOWN_PEER}",
        ]
        started = time.monotonic()
        args = [*LOOPBACK, "--bootstrap", dead[0], "--bootstrap", dead[1]]
        # A dial of the silent address alone could take the 10 s dial timeout: serving well
        # before that shows start-up never waited for it.
        with running_peer(home, *args, timeout=8) as (process, info):
            assert time.monotonic() - started < 8
            async with httpx.AsyncClient(base_url=info.api_url) as client:
                assert (await client.get("/health")).json()["status"] == "ok"

                async def closed_port_failed() -> bool:
                    entries = (await client.get("/status")).json()["bootstrap"]
                    return entries[0]["last_error"] is not None

                await wait_until(closed_port_failed, timeout=15)
                status = (await client.get("/status")).json()
                assert [e["addr"] for e in status["bootstrap"]] == dead
                assert not any(e["connected"] for e in status["bootstrap"])
                assert status["connected_peers"] == []
            # The dial of the silent address may still be hanging: shutdown must not wait for it.
            stopping = time.monotonic()
            process.terminate()
            assert process.wait(20) == 0
            assert time.monotonic() - stopping < 8


def test_ports_in_use_are_reported_with_their_address(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(Home(home))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for args, expected in [
            (
                ["--listen", f"/ip4/127.0.0.1/tcp/{port}", "--api", "127.0.0.1:0"],
                f"/ip4/127.0.0.1/tcp/{port}",
            ),
            (["--listen", "/ip4/127.0.0.1/tcp/0", "--api", f"127.0.0.1:{port}"], f"API on 127.0.0.1:{port}"),
        ]:
            result = hivemesh("run", *args, home=home)
            assert result.returncode == 1
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith("error: ") and expected in last and "in use" in last.lower()
            assert "Traceback" not in result.stderr
            assert read_run_info(Home(home)) is None


def test_wildcard_listen_addresses_become_dialable_ones() -> None:
    from peer.daemon import dialable_addrs

    addrs = dialable_addrs([f"/ip4/0.0.0.0/tcp/4001/p2p/{UNKNOWN_PEER}"])
    assert f"/ip4/127.0.0.1/tcp/4001/p2p/{UNKNOWN_PEER}" == addrs[-1]  # loopback last: never the hint
    assert not any("/0.0.0.0/" in a for a in addrs)
    assert dialable_addrs(["/ip4/10.1.2.3/tcp/1/p2p/x", "/ip4/127.0.0.1/tcp/2/p2p/x"])[0].startswith(
        "/ip4/10."
    )
