"""`hivemesh cluster up / status / down`: three real peer processes on loopback, via the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from peer.cluster import CLUSTER_FILE, Cluster, cluster_down
from peer.home import Home, read_run_info
from peer.procs import log_tail, pid_alive
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


def hivemesh(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """A cluster directory whose peers are stopped whatever the test did."""
    directory = tmp_path / "cluster"
    try:
        yield directory
    finally:
        cluster_down(directory, timeout=5.0)


async def test_cluster_up_status_down(cluster_dir: Path) -> None:
    up = hivemesh("cluster", "up", "--peers", "3", "--dir", cluster_dir, "--json")
    assert up.returncode == 0, up.stderr
    rows = json.loads(up.stdout)["peers"]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert all(r["alive"] and pid_alive(r["pid"]) for r in rows)
    # Everyone bootstrapped from peer 0; peer exchange may connect the others to each other too.
    assert rows[0]["connected_peers"] == 2 and all(1 <= r["connected_peers"] <= 2 for r in rows[1:])
    assert len({r["peer_id"] for r in rows}) == 3 and len({r["api"] for r in rows}) == 3
    for row in rows:
        home = Home(Path(row["home"]))
        assert home.root == cluster_dir / f"peer-{row['index']}"
        info = read_run_info(home)
        assert info is not None and (info.pid, info.peer_id, info.api) == (
            row["pid"],
            row["peer_id"],
            row["api"],
        )
        assert row["multiaddr"].startswith("/ip4/127.0.0.1/tcp/") and row["multiaddr"].endswith(
            row["peer_id"]
        )
    recorded = Cluster.load(cluster_dir)
    assert recorded is not None and [p.pid for p in recorded.peers] == [r["pid"] for r in rows]

    # Starting a second cluster over a running one is refused.
    again = hivemesh("cluster", "up", "--peers", "3", "--dir", cluster_dir)
    assert again.returncode == 1 and "already running" in again.stderr and "Traceback" not in again.stderr

    status = hivemesh("cluster", "status", "--dir", cluster_dir, "--json")
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert [(r["pid"], r["alive"]) for r in reported] == [(r["pid"], True) for r in rows]
    assert reported[0]["connected_peers"] == 2 and all(r["connected_peers"] >= 1 for r in reported)
    table = hivemesh("cluster", "status", "--dir", cluster_dir)
    assert all(r["multiaddr"] in table.stdout for r in rows)

    # Gossip crosses the cluster: published on peer 2, it reaches 1 through 0.
    async with httpx.AsyncClient() as client:
        sent = await client.post(
            f"http://{rows[2]['api']}/gossip/publish", json={"topic": "tasks", "body": {"from": 2}}
        )
        msg_id = sent.json()["msg_id"]

        async def everyone_has_it() -> bool:
            for row in rows:
                entries = (await client.get(f"http://{row['api']}/gossip/received?topic=tasks")).json()
                if msg_id not in {e["msg_id"] for e in entries}:
                    return False
            return True

        await wait_until(everyone_has_it, timeout=20)

    down = hivemesh("cluster", "down", "--dir", cluster_dir, "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout) == {str(r["pid"]): "terminated" for r in rows}
    for row in rows:
        home = Home(Path(row["home"]))
        assert not pid_alive(row["pid"])
        assert read_run_info(home) is None  # removed by the daemon on its clean exit
        assert "peer stopped" in log_tail(home, 3)
    assert not (cluster_dir / CLUSTER_FILE).exists()

    # Idempotent: a second down is a no-op; status now says there is nothing to query.
    second = hivemesh("cluster", "down", "--dir", cluster_dir)
    assert second.returncode == 0 and "no cluster running" in second.stdout
    gone = hivemesh("cluster", "status", "--dir", cluster_dir)
    assert gone.returncode == 1 and gone.stderr.startswith("error: no cluster in")
