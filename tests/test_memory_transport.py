"""MemoryTransport: connections, flooding gossip, fault knobs, partitions and streams."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from gossip.errors import DialError, GossipError, MessageTooLarge, ProtocolNotSupported, StreamBroken
from gossip.framing import read_frame, write_frame
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.transport import MAX_GOSSIP_BYTES, ByteStream, GossipMessage, Verdict
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

TOPIC = "hivemesh/test/1"
ECHO = "/hivemesh/test-echo/1"


@asynccontextmanager
async def serving(net: MemoryNetwork, count: int) -> AsyncIterator[list[MemoryTransport]]:
    async with trio.open_nursery() as nursery:
        transports = [net.transport(Identity.generate()) for _ in range(count)]
        for t in transports:
            await nursery.start(t.serve)
        yield transports
        nursery.cancel_scope.cancel()


async def link(*transports: MemoryTransport) -> None:
    """Connect transports in a line."""
    for a, b in itertools.pairwise(transports):
        assert await a.connect(b.listen_addrs()[0]) == b.peer_id


async def receive(channel: trio.MemoryReceiveChannel[GossipMessage], timeout: float = 5.0) -> GossipMessage:
    with trio.fail_after(timeout):
        return await channel.receive()


def pending(channel: trio.MemoryReceiveChannel[GossipMessage]) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait().data)
        except trio.WouldBlock:
            return out


async def test_connect_and_disconnect_are_seen_by_both_sides() -> None:
    async with serving(MemoryNetwork(), 3) as (a, b, c):
        assert a.listen_addrs() == [f"/memory/{a.peer_id}"]
        await link(a, b)
        assert await a.connect(b.listen_addrs()[0]) == b.peer_id  # redial is a no-op
        assert a.connected_peers() == [b.peer_id] and b.connected_peers() == [a.peer_id]
        await b.disconnect(a.peer_id)
        assert a.connected_peers() == [] and b.connected_peers() == []
        assert c.connected_peers() == []


async def test_dial_errors_are_clear() -> None:
    net = MemoryNetwork()
    async with serving(net, 1) as (a,):
        with pytest.raises(DialError, match="not an in-memory address"):
            await a.connect("/ip4/127.0.0.1/tcp/4001")
        with pytest.raises(DialError, match="no peer is listening"):
            await a.connect(f"/memory/{Identity.generate().peer_id}")
        with pytest.raises(DialError, match="ourselves"):
            await a.connect(a.listen_addrs()[0])
    idle = net.transport(Identity.generate())
    with pytest.raises(DialError, match="not serving"):
        await idle.connect(a.listen_addrs()[0])
    with pytest.raises(GossipError, match="not serving"):
        await idle.publish(TOPIC, b"x")


async def test_gossip_floods_along_a_line_and_names_the_forwarder() -> None:
    async with serving(MemoryNetwork(), 3) as (a, b, c):
        await link(a, b, c)
        subs = [await t.subscribe(TOPIC) for t in (a, b, c)]
        await a.publish(TOPIC, b"hello")
        got = [await receive(s) for s in subs]
        assert [m.data for m in got] == [b"hello"] * 3
        assert [m.forwarder for m in got] == [a.peer_id, a.peer_id, b.peer_id]
        await a.publish(TOPIC, b"hello")  # identical bytes are deduplicated, like any duplicate
        await a.publish(TOPIC, b"after")
        assert (await receive(subs[2])).data == b"after"


async def test_rejected_messages_are_neither_delivered_nor_forwarded() -> None:
    async with serving(MemoryNetwork(), 3) as (a, b, c):
        await link(a, b, c)
        seen_by_b: list[GossipMessage] = []

        def b_validator(message: GossipMessage) -> Verdict:
            seen_by_b.append(message)
            return Verdict.REJECT if message.data.startswith(b"bad") else Verdict.ACCEPT

        b.set_validator(b_validator)
        sub_b, sub_c = await b.subscribe(TOPIC), await c.subscribe(TOPIC)
        await a.publish(TOPIC, b"bad one")
        await a.publish(TOPIC, b"good one")
        # One path a->b->c, FIFO without delay: had "bad" been forwarded it would arrive first.
        assert (await receive(sub_c)).data == b"good one"
        assert (await receive(sub_b)).data == b"good one"
        assert pending(sub_b) == [] and pending(sub_c) == []
        assert [(m.data, m.forwarder) for m in seen_by_b] == [
            (b"bad one", a.peer_id),
            (b"good one", a.peer_id),
        ]


async def test_duplicated_datagrams_reach_the_validator_and_subscriber_once() -> None:
    net = MemoryNetwork(seed=7)
    net.duplicate = 1.0
    async with serving(net, 2) as (a, b):
        await link(a, b)
        calls: list[bytes] = []
        b.set_validator(lambda m: calls.append(m.data) or Verdict.ACCEPT)
        sub = await b.subscribe(TOPIC)
        sent = [f"m{i}".encode() for i in range(20)]
        for data in sent:
            await a.publish(TOPIC, data)
        assert [(await receive(sub)).data for _ in sent] == sent
        await wait_until(lambda: net.counters["delivered"] == 40)
        assert net.counters["duplicated"] == 20
        assert calls == sent and pending(sub) == []


async def test_drop_loses_about_the_configured_fraction() -> None:
    net = MemoryNetwork(seed=3)
    async with serving(net, 2) as (a, b):
        await link(a, b)
        sub = await b.subscribe(TOPIC)
        net.drop = 0.5
        for i in range(200):
            await a.publish(TOPIC, f"m{i}".encode())
        net.drop = 0.0
        await a.publish(TOPIC, b"sentinel")
        got = []
        while (data := (await receive(sub)).data) != b"sentinel":
            got.append(data)
        assert 60 <= len(got) <= 140, len(got)
        assert net.counters["dropped"] == 200 - len(got)
        assert got == sorted(got, key=lambda d: int(d[1:]))  # no delay: surviving order is kept


async def test_delay_delivers_everything_in_a_changed_order() -> None:
    net = MemoryNetwork(seed=5)
    net.delay = (0.0, 0.05)
    async with serving(net, 2) as (a, b):
        await link(a, b)
        sub = await b.subscribe(TOPIC)
        sent = [f"m{i}".encode() for i in range(30)]
        for data in sent:
            await a.publish(TOPIC, data)
        got = [(await receive(sub)).data for _ in sent]
        assert sorted(got) == sorted(sent)
        assert got != sent


async def test_partition_blocks_gossip_dials_and_streams_until_heal() -> None:
    net = MemoryNetwork()
    async with serving(net, 4) as (a, b, c, d):
        await link(a, b, c)
        c.set_stream_handler(ECHO, echo_handler)
        d.set_stream_handler(ECHO, echo_handler)
        sub_a, sub_c = await a.subscribe(TOPIC), await c.subscribe(TOPIC)
        net.partition([a.peer_id, b.peer_id], [c.peer_id, d.peer_id])
        await b.publish(TOPIC, b"during")
        assert (await receive(sub_a)).data == b"during"
        with pytest.raises(DialError, match="partition"):
            await a.connect(d.listen_addrs()[0])
        with pytest.raises(DialError, match="partition"):
            await b.open_stream(c.peer_id, ECHO)
        net.heal()
        await b.publish(TOPIC, b"healed")
        assert (await receive(sub_c)).data == b"healed"  # "during" was lost, not held back
        await a.connect(d.listen_addrs()[0])
        stream = await b.open_stream(c.peer_id, ECHO)
        assert await echo(stream, b"ping") == b"ping"


async def test_partition_resets_streams_across_it() -> None:
    net = MemoryNetwork()
    async with serving(net, 2) as (a, b):
        await link(a, b)
        b.set_stream_handler(ECHO, echo_handler)
        stream = await a.open_stream(b.peer_id, ECHO)
        assert await echo(stream, b"one") == b"one"
        net.partition([a.peer_id], [b.peer_id])
        with pytest.raises(StreamBroken, match="reset"):
            await read_frame(stream, timeout=5)


async def echo_handler(stream: ByteStream) -> None:
    while True:
        try:
            frame = await read_frame(stream, timeout=30)
        except StreamBroken:
            return
        await write_frame(stream, frame)


async def echo(stream: ByteStream, payload: bytes) -> bytes:
    await write_frame(stream, payload, timeout=5)
    return await read_frame(stream, timeout=5)


async def test_streams_round_trip_dial_on_demand_and_refuse_unknown_protocols() -> None:
    async with serving(MemoryNetwork(), 2) as (a, b):
        b.set_stream_handler(ECHO, echo_handler)
        stream = await a.open_stream(b.peer_id, ECHO)  # not connected yet: dials, as libp2p would
        assert stream.remote_peer == b.peer_id and a.connected_peers() == [b.peer_id]
        assert await echo(stream, b"x" * 100_000) == b"x" * 100_000
        await stream.send_eof()
        with pytest.raises(StreamBroken, match="ended"):
            await read_frame(stream, timeout=5)  # the handler saw EOF and closed its end
        await stream.aclose()
        with pytest.raises(ProtocolNotSupported, match="/nope/1"):
            await a.open_stream(b.peer_id, "/nope/1")
        with pytest.raises(DialError, match="no peer is listening"):
            await a.open_stream(Identity.generate().peer_id, ECHO)


async def test_disconnect_resets_open_streams_on_both_ends() -> None:
    async with serving(MemoryNetwork(), 2) as (a, b):
        await link(a, b)
        handler_saw: list[str] = []

        async def hold(stream: ByteStream) -> None:
            try:
                await stream.receive_some(10)
            except StreamBroken as e:
                handler_saw.append(str(e))

        b.set_stream_handler(ECHO, hold)
        stream = await a.open_stream(b.peer_id, ECHO)
        await a.disconnect(b.peer_id)
        with pytest.raises(StreamBroken, match="reset"):
            await stream.receive_some(10)
        with pytest.raises(StreamBroken):
            await stream.send_all(b"late")
        await wait_until(lambda: handler_saw)
        assert "reset" in handler_saw[0]


async def test_leaving_serve_disconnects_and_unregisters() -> None:
    net = MemoryNetwork()
    async with serving(net, 1) as (a,):
        b = net.transport(Identity.generate())
        async with trio.open_nursery() as inner:
            await inner.start(b.serve)
            sub_b = await b.subscribe(TOPIC)
            await link(a, b)
            assert set(net.peers()) == {a.peer_id, b.peer_id}
            inner.cancel_scope.cancel()
        assert a.connected_peers() == [] and net.peers() == [a.peer_id]
        with pytest.raises(DialError, match="no peer is listening"):
            await a.connect(b.listen_addrs()[0])
        with trio.fail_after(5):
            assert [m async for m in sub_b] == []  # b's subscriptions end with it


async def test_publish_over_the_gossip_limit_raises() -> None:
    async with serving(MemoryNetwork(), 1) as (a,):
        with pytest.raises(MessageTooLarge):
            await a.publish(TOPIC, b"x" * (MAX_GOSSIP_BYTES + 1))
