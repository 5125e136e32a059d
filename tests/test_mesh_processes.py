"""A 4-peer cluster of real processes started by the CLI: gossip reaches everyone, a killed
peer is noticed, and the same identity restarted rejoins and receives again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.client import ApiClient
from peer.cluster import Cluster, cluster_down
from peer.home import Home
from peer.procs import pid_alive, running_peer, wait_for

pytestmark = pytest.mark.timeout(240)


def hivemesh(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    directory = tmp_path / "mesh"
    up = hivemesh("cluster", "up", "--peers", "4", "--dir", directory, "--json")
    try:
        assert up.returncode == 0, up.stderr
        loaded = Cluster.load(directory)
        assert loaded is not None
        yield loaded
    finally:
        cluster_down(directory, timeout=5.0)


def bodies(api: str, topic: str = "tasks") -> list[object]:
    with ApiClient(f"http://{api}", timeout=3.0) as client:
        return [entry["body"] for entry in client.received(topic)]


def publish(api: str, body: object) -> None:
    with ApiClient(f"http://{api}", timeout=3.0) as client:
        client.publish("tasks", body)


def connected(api: str) -> set[str]:
    with ApiClient(f"http://{api}", timeout=3.0) as client:
        return set(client.status()["connected_peers"])


def everyone_has(apis: list[str], expected: list[object]) -> bool:
    return all(all(item in bodies(api) for item in expected) for api in apis)


def test_four_peers_gossip_kill_and_rejoin(cluster: Cluster) -> None:
    peers = cluster.peers
    apis = [p.api for p in peers]
    sent = [{"from": p.index, "n": 1} for p in peers]
    for peer, body in zip(peers, sent, strict=True):
        publish(peer.api, body)
    wait_for(lambda: everyone_has(apis, sent), 30, "every message at every peer")

    # kill -9 the last peer: the bootstrap peer notices it is gone.
    victim = peers[3]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim.pid), 10, "the killed peer to exit")
    wait_for(lambda: victim.peer_id not in connected(peers[0].api), 30, "peer 0 to drop the killed peer")

    # Messages published meanwhile still reach the survivors.
    during = {"from": 0, "n": "while-down"}
    publish(peers[0].api, during)
    wait_for(lambda: everyone_has(apis[:3], [during]), 30, "survivors to receive")

    # Restart with the same home (same key, new port): same peer id, rejoins, receives again.
    home = Home(Path(victim.home))
    args = ["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--bootstrap", peers[0].multiaddr]
    with running_peer(home, *args) as (_, info):
        assert info.peer_id == victim.peer_id
        wait_for(lambda: victim.peer_id in connected(peers[0].api), 30, "the restarted peer to rejoin")
        after = [{"from": p.index, "n": 2} for p in peers[:3]]
        for peer, body in zip(peers[:3], after, strict=True):
            publish(peer.api, body)
        wait_for(lambda: everyone_has([info.api], after), 30, "the restarted peer to receive")
        back = {"from": 3, "n": "back"}
        publish(info.api, back)
        wait_for(lambda: everyone_has(apis[:3], [back]), 30, "the restarted peer's message to reach all")


def test_cluster_status_reports_a_dead_peer(cluster: Cluster) -> None:
    os.kill(cluster.peers[2].pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(cluster.peers[2].pid), 10, "the killed peer to exit")
    status = hivemesh("cluster", "status", "--dir", cluster.root, "--json")
    assert status.returncode == 1
    rows = json.loads(status.stdout)
    assert [r["alive"] for r in rows] == [True, True, False, True]
