"""The local HTTP API of real daemon processes: two peers, A and B (bootstrapped from A)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from peer.home import Home, RunInfo, init_home
from peer.procs import running_peer
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

LOOPBACK = ("--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0")


@dataclass(frozen=True)
class RunningPeer:
    home: Home
    info: RunInfo

    @property
    def url(self) -> str:
        return self.info.api_url


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningPeer, RunningPeer]]:
    """Two daemons, B bootstrapped from A; both are stopped even if a test fails."""
    root = tmp_path_factory.mktemp("api")
    home_a, home_b = Home(root / "a"), Home(root / "b")
    init_home(home_a)
    init_home(home_b)
    with running_peer(home_a, *LOOPBACK) as (_, info_a):
        with running_peer(home_b, *LOOPBACK, "--bootstrap", info_a.listen[0]) as (_, info_b):
            yield RunningPeer(home_a, info_a), RunningPeer(home_b, info_b)


async def connected(client: httpx.AsyncClient, peer_id: str) -> bool:
    return peer_id in (await client.get("/status")).json()["connected_peers"]


async def bootstrapped(client: httpx.AsyncClient) -> bool:
    """Every bootstrap address of this peer reports connected (its dial has completed)."""
    entries = (await client.get("/status")).json()["bootstrap"]
    return bool(entries) and all(e["connected"] for e in entries)


async def test_health_and_status(mesh: tuple[RunningPeer, RunningPeer]) -> None:
    a, b = mesh
    async with httpx.AsyncClient(base_url=a.url) as client_a, httpx.AsyncClient(base_url=b.url) as client_b:
        health = await client_a.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "peer_id": a.info.peer_id}
        await wait_until(lambda: bootstrapped(client_b), timeout=20)
        await wait_until(lambda: connected(client_a, b.info.peer_id), timeout=20)
        status = (await client_b.get("/status")).json()
    assert status["peer_id"] == b.info.peer_id
    assert status["version"] == b.info.version
    assert status["api"] == b.info.api
    assert status["listen"] and all(addr.endswith(f"/p2p/{b.info.peer_id}") for addr in status["listen"])
    assert status["connected_peers"] == [a.info.peer_id]
    assert status["bootstrap"] == [
        {"addr": a.info.listen[0], "peer_id": a.info.peer_id, "connected": True, "last_error": None}
    ]
    assert set(status["gossip"]) >= {"received", "accepted", "published"}


async def test_peers_lists_connected_peers_with_scores(mesh: tuple[RunningPeer, RunningPeer]) -> None:
    a, b = mesh
    async with httpx.AsyncClient(base_url=a.url) as client:
        await wait_until(lambda: connected(client, b.info.peer_id), timeout=20)
        peers = (await client.get("/peers")).json()
    assert [p["peer_id"] for p in peers] == [b.info.peer_id]
    assert isinstance(peers[0]["score"], float) and peers[0]["banned"] is False


async def test_metrics_are_prometheus_text_of_this_peer(mesh: tuple[RunningPeer, RunningPeer]) -> None:
    a, b = mesh
    async with httpx.AsyncClient(base_url=a.url) as client:
        await wait_until(lambda: connected(client, b.info.peer_id), timeout=20)
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["hivemesh_peer_connected_peers"] == 1.0
    assert samples["hivemesh_peer_uptime_seconds"] > 0
    assert any(name.startswith("hivemesh_peer_build_info{") for name in samples)
    assert "hivemesh_gossip_penalties_total" in samples  # the gossip node shares the registry
    assert not any(a.info.peer_id in name or b.info.peer_id in name for name in samples)  # no peer-id labels


async def test_gossip_published_on_a_is_received_on_b(mesh: tuple[RunningPeer, RunningPeer]) -> None:
    a, b = mesh
    body = {"job": "resize", "sizes": [1, 2, 3], "nested": {"ok": True, "none": None}, "pi": 3.25}
    async with httpx.AsyncClient(base_url=a.url) as client_a, httpx.AsyncClient(base_url=b.url) as client_b:
        await wait_until(lambda: connected(client_b, a.info.peer_id), timeout=20)
        before = (await client_b.get("/gossip/received", params={"topic": "tasks"})).json()
        since = max((e["index"] for e in before), default=0)
        published = await client_a.post(
            "/gossip/publish", json={"topic": "tasks", "body": body, "kind": "test.job"}
        )
        assert published.status_code == 200, published.text
        msg_id = published.json()["msg_id"]
        assert len(bytes.fromhex(msg_id)) == 32

        async def arrived_on_b() -> list[dict[str, object]]:
            entries = (
                await client_b.get("/gossip/received", params={"topic": "tasks", "since": since})
            ).json()
            return [e for e in entries if e["msg_id"] == msg_id]

        await wait_until(arrived_on_b, timeout=20)
        [entry] = await arrived_on_b()
        assert entry["author"] == a.info.peer_id
        assert (
            entry["kind"] == "test.job" and entry["body"] == body and entry["seq"] == published.json()["seq"]
        )
        assert entry["index"] > since
        # since= filters: nothing after the newest index; other topics did not get it.
        after = (
            await client_b.get("/gossip/received", params={"topic": "tasks", "since": entry["index"]})
        ).json()
        assert all(e["msg_id"] != msg_id for e in after)
        votes = (await client_b.get("/gossip/received", params={"topic": "votes"})).json()
        assert all(e["msg_id"] != msg_id for e in votes)
        # The publisher's own log holds it too.
        own = (await client_a.get("/gossip/received", params={"topic": "tasks"})).json()
        assert msg_id in {e["msg_id"] for e in own}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("GET", "/nope", {}, 404, "no such endpoint"),
        ("POST", "/status", {}, 405, "not allowed"),
        ("GET", "/gossip/publish", {}, 405, "not allowed"),
        ("POST", "/gossip/publish", {"content": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/gossip/publish", {"json": [1, 2]}, 400, "must be a JSON object"),
        ("POST", "/gossip/publish", {"json": {"topic": "nope", "body": 1}}, 400, "unknown topic 'nope'"),
        ("POST", "/gossip/publish", {"json": {"topic": "tasks"}}, 400, "missing field 'body'"),
        ("POST", "/gossip/publish", {"json": {"topic": "tasks", "body": 1, "x": 2}}, 400, "unknown field"),
        (
            "POST",
            "/gossip/publish",
            {"json": {"topic": "tasks", "body": 1, "kind": ""}},
            400,
            "'kind' must be",
        ),
        ("POST", "/gossip/publish", {"json": {"topic": "tasks", "body": 2**70}}, 400, "cannot be encoded"),
        (
            "POST",
            "/gossip/publish",
            {"json": {"topic": "tasks", "body": "x" * 600_000}},
            413,
            "exceeds limit",
        ),
        ("POST", "/gossip/publish", {"content": b"x" * (1024 * 1024 + 1)}, 413, "request body over"),
        ("GET", "/gossip/received", {}, 400, "unknown topic None"),
        ("GET", "/gossip/received", {"params": {"topic": "tasks", "since": "x"}}, 400, "must be an integer"),
        ("GET", "/gossip/received", {"params": {"topic": "tasks", "since": -1}}, 400, "between 0 and"),
        ("GET", "/gossip/received", {"params": {"topic": "tasks", "limit": 0}}, 400, "between 1 and 1000"),
    ],
)
async def test_bad_requests_get_json_errors(
    mesh: tuple[RunningPeer, RunningPeer], method: str, path: str, kwargs: dict, status: int, fragment: str
) -> None:
    a, _ = mesh
    async with httpx.AsyncClient(base_url=a.url) as client:
        response = await client.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert fragment in response.json()["error"]
        assert (await client.get("/health")).status_code == 200  # still serving


def cli(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer", "--home", str(home.root), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_read_commands_are_clients_of_the_api(mesh: tuple[RunningPeer, RunningPeer]) -> None:
    a, b = mesh
    status = cli(a.home, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["peer_id"] == a.info.peer_id
    assert a.info.peer_id in cli(a.home, "status").stdout  # human form
    by_api = cli(Home(Path("/nonexistent")), "peers", "--json", "--api", b.info.api)
    assert by_api.returncode == 0 and [p["peer_id"] for p in json.loads(by_api.stdout)] == [a.info.peer_id]
    published = cli(
        b.home, "gossip", "publish", "--topic", "votes", "--kind", "cli.test", "--json", '{"v": 7}'
    )
    assert published.returncode == 0, published.stderr
    msg_id = json.loads(published.stdout)["msg_id"]

    def received_on_a() -> bool:
        out = cli(a.home, "gossip", "received", "--topic", "votes", "--json")
        return any(e["msg_id"] == msg_id and e["body"] == {"v": 7} for e in json.loads(out.stdout))

    await wait_until(received_on_a, timeout=20, interval=0.2)
    table = cli(a.home, "gossip", "received", "--topic", "votes")
    assert table.returncode == 0 and "cli.test" in table.stdout
    bad_topic = cli(a.home, "gossip", "received", "--topic", "nope")
    assert bad_topic.returncode == 1 and "unknown topic 'nope'" in bad_topic.stderr
    assert "Traceback" not in bad_topic.stderr
