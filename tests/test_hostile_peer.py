"""Hostile input against a real daemon process: malformed msgpack, a wrong signature, an
unknown schema version, an oversized frame, a peer that connects and never speaks. Each gets
rejected (and penalised where a peer is to blame) and the daemon keeps serving."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from gossip.envelope import Envelope, packb, unpackb
from gossip.errors import GossipError
from gossip.framing import read_frame
from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.topics import TOPIC_TASKS
from peer.home import Home, RunInfo, init_home
from peer.procs import running_peer
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunInfo]:
    home = Home(tmp_path / "victim")
    init_home(home, listen=["/ip4/127.0.0.1/tcp/0"], api_listen="127.0.0.1:0")
    with running_peer(home, "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0") as (_, info):
        yield info


async def api(info: RunInfo, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=info.api_url, timeout=3.0, trust_env=False) as client:
        return await client.get(path)


async def metric(info: RunInfo, name: str) -> float:
    text = (await api(info, "/metrics")).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def rejected(info: RunInfo) -> int:
    return int((await api(info, "/status")).json()["gossip"]["rejected"])


async def received_bodies(info: RunInfo) -> list[object]:
    return [e["body"] for e in (await api(info, "/gossip/received?topic=tasks")).json()]


def forged_envelopes(attacker: Identity) -> list[bytes]:
    good = Envelope.create(attacker, "message", 1, {"hello": "world"})
    wrong_sig = Envelope(good.kind, good.author, good.seq, {"hello": "forged"}, good.signature).encode()
    future = packb({"v": 99, "k": "message", "a": good.author, "n": 2, "b": {}, "s": good.signature})
    return [b"\xc1\xff not msgpack", wrong_sig, future, packb(["not", "an", "envelope"])]


async def test_forged_gossip_is_rejected_and_penalised(daemon: RunInfo) -> None:
    attacker = Libp2pTransport(Identity.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(attacker.serve)
        target = next(a for a in daemon.listen if a.startswith("/ip4/127."))
        await attacker.connect(target)
        await attacker.subscribe(TOPIC_TASKS)  # joins the topic mesh so publishes reach the daemon
        penalties_before = await metric(daemon, "hivemesh_gossip_penalties_total")
        for data in forged_envelopes(Identity.generate()):
            await attacker.publish(TOPIC_TASKS, data)

        async def all_rejected() -> bool:
            return await rejected(daemon) >= 4

        await wait_until(all_rejected, timeout=20)
        assert await metric(daemon, "hivemesh_gossip_penalties_total") >= penalties_before + 4
        assert await received_bodies(daemon) == []  # nothing forged was delivered
        assert (await api(daemon, "/health")).status_code == 200
        nursery.cancel_scope.cancel()


async def test_oversized_frame_and_silent_stream_do_not_hurt_the_daemon(daemon: RunInfo) -> None:
    attacker = Libp2pTransport(Identity.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(attacker.serve)
        target = next(a for a in daemon.listen if a.startswith("/ip4/127."))
        peer = await attacker.connect(target)

        # A frame header announcing 1 GiB: the daemon refuses it without reading the body.
        stream = await attacker.open_stream(peer, "/hivemesh/sync/1")
        await stream.send_all(struct.pack(">I", 1 << 30))
        answer = unpackb(await read_frame(stream, timeout=15))
        assert "exceeds limit" in answer["err"]  # a clear error, not a hang or a crash
        await stream.aclose()

        async def penalised() -> bool:
            return await metric(daemon, "hivemesh_gossip_penalties_total") >= 1

        await wait_until(penalised, timeout=15)

        # A stream that never speaks is closed by the daemon's read deadline.
        silent = await attacker.open_stream(peer, "/hivemesh/sync/1")
        with trio.fail_after(30), pytest.raises(GossipError):
            await read_frame(silent, timeout=30)
        await silent.aclose()

        # A raw TCP connection that never completes a handshake: the daemon keeps serving others.
        host, port = re.match(r"/ip4/([^/]+)/tcp/(\d+)", target).groups()  # type: ignore[union-attr]
        raw = await trio.open_tcp_stream(host, int(port))
        try:
            assert (await api(daemon, "/health")).status_code == 200
            honest = Libp2pTransport(Identity.generate())
            await nursery.start(honest.serve)
            assert await honest.connect(target, timeout=10) == peer
        finally:
            await raw.aclose()
        nursery.cancel_scope.cancel()


async def test_garbage_pubsub_rpc_costs_the_sender_its_stream_not_the_daemon(daemon: RunInfo) -> None:
    attacker = Libp2pTransport(Identity.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(attacker.serve)
        target = next(a for a in daemon.listen if a.startswith("/ip4/127."))
        peer = await attacker.connect(target)
        # A varint-prefixed frame on the GossipSub protocol that is not a protobuf RPC.
        stream = await attacker.open_stream(peer, "/meshsub/1.1.0")
        garbage = b"\xff" * 40
        await stream.send_all(bytes([len(garbage)]) + garbage)
        await stream.aclose()

        async def healthy_and_still_gossiping() -> bool:
            return (await api(daemon, "/health")).status_code == 200

        await wait_until(healthy_and_still_gossiping, timeout=10)
        # The daemon still accepts and relays gossip from an honest peer afterwards.
        honest = Libp2pTransport(Identity.generate())
        await nursery.start(honest.serve)
        await honest.connect(target)
        await honest.subscribe(TOPIC_TASKS)
        ok = Envelope.create(Identity.generate(), "message", 1, {"still": "alive"}).encode()

        async def delivered() -> bool:
            await honest.publish(TOPIC_TASKS, ok)
            return {"still": "alive"} in await received_bodies(daemon)

        await wait_until(delivered, timeout=30, interval=0.5)
        nursery.cancel_scope.cancel()
