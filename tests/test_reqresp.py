"""RequestResponse over the in-memory transport: round trips, errors, deadlines, garbage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from gossip.envelope import packb
from gossip.errors import (
    DialError,
    GossipError,
    InvalidMessage,
    MessageTooLarge,
    ProtocolNotSupported,
    StreamBroken,
)
from gossip.framing import read_frame, write_frame
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.reqresp import RemoteError, RequestResponse
from gossip.transport import ByteStream, PeerId
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

PROTO = "/hivemesh/test-rr/1"


class Pair:
    """A client and a server peer, each with its RequestResponse and a log of misbehaviour."""

    def __init__(self, client: MemoryTransport, server: MemoryTransport, server_timeout: float) -> None:
        self.client_t, self.server_t = client, server
        self.client_faults: list[tuple[PeerId, str]] = []
        self.server_faults: list[tuple[PeerId, str]] = []
        self.client = RequestResponse(client, lambda p, r: self.client_faults.append((p, r)))
        self.server = RequestResponse(
            server, lambda p, r: self.server_faults.append((p, r)), timeout=server_timeout
        )


@asynccontextmanager
async def pair(server_timeout: float = 10.0) -> AsyncIterator[Pair]:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        client, server = net.transport(Identity.generate()), net.transport(Identity.generate())
        await nursery.start(client.serve)
        await nursery.start(server.serve)
        await client.connect(server.listen_addrs()[0])
        yield Pair(client, server, server_timeout)
        nursery.cancel_scope.cancel()


async def echo(peer: PeerId, body: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return {"echo": body, "from": peer}


async def test_round_trip_carries_body_and_caller() -> None:
    async with pair() as p:
        p.server.set_handler(PROTO, echo)
        body = {"n": 7, "blob": b"\x00\x01", "list": [1, "two"]}
        reply = await p.client.request(p.server_t.peer_id, PROTO, body)
        assert reply == {"echo": body, "from": p.client_t.peer_id}
        replies = []
        async with trio.open_nursery() as nursery:  # concurrent requests each get their own stream
            for i in range(5):

                async def one(i: int = i) -> None:
                    replies.append(await p.client.request(p.server_t.peer_id, PROTO, i))

                nursery.start_soon(one)
        assert sorted(r["echo"] for r in replies) == [0, 1, 2, 3, 4]
        assert p.client_faults == [] and p.server_faults == []


async def test_remote_errors_reach_the_client_and_the_server_survives() -> None:
    async with pair() as p:

        async def refuse(peer: PeerId, body: Any) -> Any:
            await trio.lowlevel.checkpoint()
            if body == "gossip":
                raise GossipError("not today")
            raise KeyError("bug")

        p.server.set_handler(PROTO, refuse)
        with pytest.raises(RemoteError, match="not today") as info:
            await p.client.request(p.server_t.peer_id, PROTO, "gossip")
        assert info.value.remote_message == "not today" and info.value.peer == p.server_t.peer_id
        with pytest.raises(RemoteError, match="internal error"):
            await p.client.request(p.server_t.peer_id, PROTO, "crash")
        p.server.set_handler(PROTO, echo)
        assert (await p.client.request(p.server_t.peer_id, PROTO, 1))["echo"] == 1


async def test_dial_and_protocol_errors() -> None:
    async with pair() as p:
        with pytest.raises(ProtocolNotSupported, match=PROTO):
            await p.client.request(p.server_t.peer_id, PROTO, 1)
        with pytest.raises(DialError, match="no peer is listening"):
            await p.client.request(Identity.generate().peer_id, PROTO, 1)


async def test_silent_handler_times_out_the_client() -> None:
    async with pair() as p:

        async def silent(peer: PeerId, body: Any) -> Any:
            await trio.sleep_forever()

        p.server.set_handler(PROTO, silent)
        start = trio.current_time()
        with pytest.raises(StreamBroken, match="timed out"):
            await p.client.request(p.server_t.peer_id, PROTO, 1, timeout=0.3)
        assert trio.current_time() - start < 2.0


async def test_handler_deadline_answers_with_an_error() -> None:
    async with pair(server_timeout=0.2) as p:

        async def silent(peer: PeerId, body: Any) -> Any:
            await trio.sleep_forever()

        p.server.set_handler(PROTO, silent)
        with pytest.raises(RemoteError, match="timed out"):
            await p.client.request(p.server_t.peer_id, PROTO, 1, timeout=5)


async def test_oversized_request_is_refused_and_penalised() -> None:
    async with pair() as p:
        p.server.set_handler(PROTO, echo, max_request=1024)
        with pytest.raises(RemoteError, match="too large"):
            await p.client.request(p.server_t.peer_id, PROTO, b"x" * 5000)
        assert len(p.server_faults) == 1
        peer, reason = p.server_faults[0]
        assert peer == p.client_t.peer_id and "oversized" in reason
        assert (await p.client.request(p.server_t.peer_id, PROTO, b"small"))["echo"] == b"small"


async def test_malformed_request_is_answered_and_penalised() -> None:
    async with pair() as p:
        p.server.set_handler(PROTO, echo)
        stream = await p.client_t.open_stream(p.server_t.peer_id, PROTO)
        await write_frame(stream, b"\xc1garbage", timeout=5)  # 0xc1 is never valid msgpack
        reply = await read_frame(stream, timeout=5)
        assert b"malformed request" in reply
        assert [(peer, "malformed" in reason) for peer, reason in p.server_faults] == [
            (p.client_t.peer_id, True)
        ]


async def test_silent_peer_gets_its_stream_closed_and_is_penalised() -> None:
    async with pair(server_timeout=0.2) as p:
        p.server.set_handler(PROTO, echo)
        stream = await p.client_t.open_stream(p.server_t.peer_id, PROTO)
        await wait_until(lambda: p.server_faults, timeout=5)
        assert p.server_faults[0][0] == p.client_t.peer_id and "sent no" in p.server_faults[0][1]
        with pytest.raises(StreamBroken, match="ended"):
            await read_frame(stream, timeout=5)  # closed by the server, without an answer


async def test_client_limits_and_rejects_bad_responses() -> None:
    async with pair() as p:

        async def big(peer: PeerId, body: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return b"y" * 10_000

        p.server.set_handler(PROTO, big)
        with pytest.raises(MessageTooLarge):
            await p.client.request(p.server_t.peer_id, PROTO, 1, max_response=1000)

        async def garbage_server(stream: ByteStream) -> None:
            await read_frame(stream, timeout=5)
            await write_frame(stream, b"\xc1", timeout=5)

        async def wrong_shape(stream: ByteStream) -> None:
            await read_frame(stream, timeout=5)
            await write_frame(stream, packb({"result": 1}), timeout=5)

        p.server_t.set_stream_handler("/garbage/1", garbage_server)
        p.server_t.set_stream_handler("/shape/1", wrong_shape)
        with pytest.raises(InvalidMessage, match="malformed"):
            await p.client.request(p.server_t.peer_id, "/garbage/1", 1)
        with pytest.raises(InvalidMessage, match="not"):
            await p.client.request(p.server_t.peer_id, "/shape/1", 1)
        assert [peer for peer, _ in p.client_faults] == [p.server_t.peer_id] * 2
