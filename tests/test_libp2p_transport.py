"""Libp2pTransport against real py-libp2p hosts on loopback (several hosts in one process)."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import multiaddr
import psutil
import pytest
import trio
import trio.testing
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID as PeerID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux.yamux import YAMUX_HEADER_FORMAT, Yamux
from noise.connection import NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from gossip.errors import DialError, GossipError, MessageTooLarge, ProtocolNotSupported, StreamBroken
from gossip.framing import read_frame, write_frame
from gossip.identity import Identity
from gossip.libp2p_fastio import FastNoiseReadWriter, FastSecureSession
from gossip.libp2p_transport import Libp2pTransport
from gossip.transport import MAX_GOSSIP_BYTES, ByteStream, GossipMessage, Verdict
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

TOPIC = "hivemesh/test/1"
ECHO = "/hivemesh/test-echo/1"


@asynccontextmanager
async def serving(count: int) -> AsyncIterator[list[Libp2pTransport]]:
    """count transports listening on loopback; all stopped on exit."""
    async with trio.open_nursery() as nursery:
        transports = [Libp2pTransport(Identity.generate()) for _ in range(count)]
        for t in transports:
            await nursery.start(t.serve)
        yield transports
        nursery.cancel_scope.cancel()


def port_of(addr: str) -> int:
    return int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))


def addr_for(port: int, peer_id: str) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"


Inbox = trio.MemoryReceiveChannel[GossipMessage]


async def receive_data(channel: Inbox, timeout: float = 5) -> GossipMessage:
    """Next message that is not a mesh probe."""
    with trio.fail_after(timeout):
        while True:
            msg = await channel.receive()
            if not msg.data.startswith(b"probe"):
                return msg


async def until_mesh_delivers(publisher: Libp2pTransport, channel: Inbox) -> None:
    """Publish probes until one arrives: the mesh path exists (no sleeps, no internals)."""
    with trio.fail_after(10):
        for i in range(1000):
            await publisher.publish(TOPIC, b"probe%d" % i)
            with trio.move_on_after(0.2):
                while not (await channel.receive()).data.startswith(b"probe"):
                    pass
                return


async def test_peer_id_and_listen_addrs_match_identity() -> None:
    async with serving(1) as [a]:
        [addr] = a.listen_addrs()
        assert addr.endswith(f"/p2p/{a.identity.peer_id}")
        assert a.peer_id == a.identity.peer_id
        assert port_of(addr) > 0


async def test_line_of_three_relays_gossip_and_names_forwarder() -> None:
    async with serving(3) as [a, b, c]:
        subs = {t.peer_id: await t.subscribe(TOPIC) for t in (a, b, c)}
        assert await a.connect(b.listen_addrs()[0]) == b.peer_id
        assert await c.connect(b.listen_addrs()[0]) == b.peer_id
        assert set(b.connected_peers()) == {a.peer_id, c.peer_id}
        assert c.connected_peers() == [b.peer_id]  # no direct A-C link: C can only hear A via B
        await until_mesh_delivers(a, subs[c.peer_id])

        await a.publish(TOPIC, b"hello mesh")
        at_c = await receive_data(subs[c.peer_id])
        assert at_c == GossipMessage(TOPIC, b"hello mesh", forwarder=b.peer_id)
        at_a = await receive_data(subs[a.peer_id])
        assert at_a == GossipMessage(TOPIC, b"hello mesh", forwarder=a.peer_id)  # our own publish


async def test_validator_reject_drops_message_at_relay() -> None:
    async with serving(3) as [a, b, c]:
        seen_by_b: list[GossipMessage] = []

        def b_validator(msg: GossipMessage) -> Verdict:
            seen_by_b.append(msg)
            return Verdict.REJECT if msg.data.startswith(b"bad") else Verdict.ACCEPT

        b.set_validator(b_validator)
        sub_b, sub_c = await b.subscribe(TOPIC), await c.subscribe(TOPIC)
        await a.subscribe(TOPIC)
        await a.connect(b.listen_addrs()[0])
        await c.connect(b.listen_addrs()[0])
        await until_mesh_delivers(a, sub_c)

        await a.publish(TOPIC, b"bad message")
        await a.publish(TOPIC, b"good message")
        # One ordered path A->B->C: had B passed the bad one, C would get it first.
        assert (await receive_data(sub_c)).data == b"good message"
        assert (await receive_data(sub_b)).data == b"good message"
        assert any(m.data == b"bad message" and m.forwarder == a.peer_id for m in seen_by_b)


async def test_validator_that_raises_rejects_and_node_keeps_working() -> None:
    async with serving(2) as [a, b]:

        def explode(msg: GossipMessage) -> Verdict:
            if msg.data == b"boom":
                raise RuntimeError("validator bug")
            return Verdict.ACCEPT

        b.set_validator(explode)
        sub_b = await b.subscribe(TOPIC)
        await a.subscribe(TOPIC)
        await a.connect(b.listen_addrs()[0])
        await until_mesh_delivers(a, sub_b)
        await a.publish(TOPIC, b"boom")
        await a.publish(TOPIC, b"after")
        assert (await receive_data(sub_b)).data == b"after"


async def test_publish_over_limit_raises_message_too_large() -> None:
    async with serving(1) as [a]:
        with pytest.raises(MessageTooLarge):
            await a.publish(TOPIC, b"x" * (MAX_GOSSIP_BYTES + 1))


async def echo_frames(stream: ByteStream) -> None:
    while True:
        try:
            frame = await read_frame(stream, timeout=5)
        except StreamBroken:  # the client half-closed: we are done
            return
        await write_frame(stream, b"echo:" + frame)


async def test_stream_round_trip_with_framing_and_half_close() -> None:
    async with serving(2) as [a, b]:
        b.set_stream_handler(ECHO, echo_frames)
        await a.connect(b.listen_addrs()[0])
        stream = await a.open_stream(b.peer_id, ECHO, timeout=5)
        assert stream.remote_peer == b.peer_id
        big = bytes(range(256)) * 4096  # 1 MiB: many Yamux frames
        for payload in (b"one", b"", big):
            await write_frame(stream, payload)
            assert await read_frame(stream, timeout=5) == b"echo:" + payload
        await stream.send_eof()
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""  # handler returned, stream closed
        await stream.aclose()
        await stream.aclose()  # idempotent


async def test_stream_handler_registered_before_serve_and_crashing_handler_is_contained() -> None:
    crashing = "/hivemesh/test-crash/1"

    async def crash(stream: ByteStream) -> None:
        await stream.receive_some(10)
        raise RuntimeError("handler bug")

    early = Libp2pTransport(Identity.generate())
    early.set_stream_handler(ECHO, echo_frames)
    early.set_stream_handler(crashing, crash)
    async with trio.open_nursery() as nursery:
        await nursery.start(early.serve)
        async with serving(1) as [a]:
            await a.connect(early.listen_addrs()[0])
            bad = await a.open_stream(early.peer_id, crashing, timeout=5)
            await bad.send_all(b"hi")
            with pytest.raises(StreamBroken):  # reset by the wrapper, not a hang or a host crash
                await read_frame(bad, timeout=5)
            await bad.aclose()
            good = await a.open_stream(early.peer_id, ECHO, timeout=5)
            await write_frame(good, b"still alive")
            assert await read_frame(good, timeout=5) == b"echo:still alive"
            await good.aclose()
        nursery.cancel_scope.cancel()


async def test_open_stream_for_unknown_protocol_raises_protocol_not_supported() -> None:
    async with serving(2) as [a, b]:
        await a.connect(b.listen_addrs()[0])
        with pytest.raises(ProtocolNotSupported):
            await a.open_stream(b.peer_id, "/hivemesh/nobody-speaks-this/1", timeout=5)


async def test_open_stream_to_unreachable_peer_raises_dial_error() -> None:
    async with serving(1) as [a]:
        with pytest.raises(DialError):
            await a.open_stream(Identity.generate().peer_id, ECHO, timeout=3)
        with pytest.raises(DialError, match="not a peer id"):
            await a.open_stream("not-a-peer", ECHO, timeout=3)


async def test_bad_addresses_raise_clear_dial_errors() -> None:
    async with serving(1) as [a]:
        with pytest.raises(DialError, match="bad peer address"):
            await a.connect("not a multiaddr")
        with pytest.raises(DialError, match="bad peer address"):
            await a.connect("/ip4/127.0.0.1/tcp/4001")  # no /p2p/<id>
        with pytest.raises(DialError, match="own peer id"):
            await a.connect(a.listen_addrs()[0])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dial_closed_port_fails_fast() -> None:
    async with serving(1) as [a]:
        start = time.monotonic()
        with pytest.raises(DialError):
            await a.connect(addr_for(closed_port(), Identity.generate().peer_id), timeout=10)
        assert time.monotonic() - start < 5


async def test_dial_black_hole_listener_times_out() -> None:
    # The kernel completes the TCP handshake, but nobody ever speaks: libp2p alone hangs forever.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        async with serving(1) as [a]:
            start = time.monotonic()
            with pytest.raises(DialError, match="timed out"):
                await a.connect(addr_for(hole.getsockname()[1], Identity.generate().peer_id), timeout=1.5)
            assert time.monotonic() - start < 4


async def test_dial_with_wrong_peer_id_fails() -> None:
    async with serving(2) as [a, b]:
        wrong = addr_for(port_of(b.listen_addrs()[0]), Identity.generate().peer_id)
        with pytest.raises(DialError):
            await a.connect(wrong, timeout=5)
        assert a.connected_peers() == []
        # the real id at the same address still works at once (no negative cache in the way)
        assert await a.connect(b.listen_addrs()[0], timeout=5) == b.peer_id


async def test_plaintext_only_dialer_is_refused() -> None:
    keys = create_new_key_pair()
    plain = new_host(key_pair=keys, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(keys)})
    async with serving(1) as [a]:
        async with plain.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                with pytest.raises(Exception) as caught, trio.fail_after(10):
                    await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(a.listen_addrs()[0])))
                assert not isinstance(caught.value, trio.TooSlowError)  # refused, not ignored
                assert a.connected_peers() == []
            finally:
                with trio.CancelScope(shield=True):
                    await plain.close()


async def test_disconnect_drops_the_connection() -> None:
    async with serving(2) as [a, b]:
        await a.connect(b.listen_addrs()[0])
        await a.disconnect(b.peer_id)
        await wait_until(lambda: a.connected_peers() == [] and b.connected_peers() == [], timeout=5)


def count_tasks() -> int:
    pending, count = [trio.lowlevel.current_root_task()], 0
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


async def test_shutdown_releases_port_tasks_threads_and_closes_subscriptions() -> None:
    threads_before, tasks_before = threading.active_count(), count_tasks()
    t, other = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(t.serve)
        await nursery.start(other.serve)
        port, other_port = port_of(t.listen_addrs()[0]), port_of(other.listen_addrs()[0])
        sub = await t.subscribe(TOPIC)
        await t.connect(other.listen_addrs()[0])  # a dialed connection must be closed too
        assert threading.active_count() == threads_before + 2  # one seen-cache sweeper each
        assert count_tasks() > tasks_before + 10
        nursery.cancel_scope.cancel()
    assert t.listen_addrs() == [] and t.connected_peers() == []
    assert count_tasks() == tasks_before  # libp2p's system tasks included
    leftover = [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if {port, other_port} & {c.laddr.port, c.raddr.port if c.raddr else None}
    ]
    assert leftover == []  # no socket left open, dialed ones included
    with pytest.raises(OSError):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
    assert threading.active_count() == threads_before
    with pytest.raises(trio.EndOfChannel):
        await sub.receive()
    # The same transport serves again (same identity, fresh host).
    async with trio.open_nursery() as nursery:
        await nursery.start(t.serve)
        assert t.listen_addrs()[0].endswith(t.peer_id)
        nursery.cancel_scope.cancel()


async def test_listening_on_a_busy_port_raises_gossip_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        t = Libp2pTransport(Identity.generate(), [f"/ip4/127.0.0.1/tcp/{busy.getsockname()[1]}"])
        with pytest.raises(GossipError, match="cannot listen"):
            await t.serve()


async def test_subscription_made_before_serve_is_live_once_serving() -> None:
    early = Libp2pTransport(Identity.generate())
    inbox = await early.subscribe(TOPIC)
    async with trio.open_nursery() as nursery:
        await nursery.start(early.serve)
        await early.publish(TOPIC, b"mine")
        assert await receive_data(inbox) == GossipMessage(TOPIC, b"mine", early.peer_id)
        nursery.cancel_scope.cancel()


async def test_silent_peer_cannot_hang_a_stream_read() -> None:
    release = trio.Event()

    async def silent(stream: ByteStream) -> None:
        await release.wait()  # accepts the stream, never answers

    async with trio.open_nursery() as nursery:
        a = Libp2pTransport(Identity.generate(), stream_io_timeout=0.5)
        b = Libp2pTransport(Identity.generate())
        b.set_stream_handler(ECHO, silent)
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        await a.connect(b.listen_addrs()[0])
        stream = await a.open_stream(b.peer_id, ECHO, timeout=5)
        start = time.monotonic()
        with pytest.raises(StreamBroken, match="timed out"):
            await stream.receive_some(10)
        assert time.monotonic() - start < 3
        await stream.aclose()
        release.set()
        nursery.cancel_scope.cancel()


async def test_unpaced_burst_is_not_dropped_by_library_queues() -> None:
    # Stock py-libp2p drops ~97 % of such a burst (32-slot outbound queue and subscription channel).
    burst = 200
    async with serving(3) as [a, b, c]:
        await a.subscribe(TOPIC)
        await b.subscribe(TOPIC)
        inbox = await c.subscribe(TOPIC)
        await a.connect(b.listen_addrs()[0])
        await c.connect(b.listen_addrs()[0])
        await until_mesh_delivers(a, inbox)
        for i in range(burst):
            await a.publish(TOPIC, b"burst %d" % i)
        got = [(await receive_data(inbox, timeout=20)).data for _ in range(burst)]
        assert got == [b"burst %d" % i for i in range(burst)]


async def test_concurrent_writes_on_one_stream_stay_contiguous() -> None:
    """Two tasks writing large frames to one stream must not interleave their Yamux frames."""
    received: list[bytes] = []
    done = trio.Event()

    async def collect(stream: ByteStream) -> None:
        for _ in range(8):
            received.append(await read_frame(stream, max_size=4 << 20, timeout=10))
        done.set()

    async with serving(2) as [a, b]:
        b.set_stream_handler(ECHO, collect)
        await a.connect(b.listen_addrs()[0])
        stream = await a.open_stream(b.peer_id, ECHO, timeout=5)
        payloads = [bytes([i]) * (700 * 1024) for i in range(8)]  # each spans many Yamux frames
        async with trio.open_nursery() as writers:
            for payload in payloads:
                writers.start_soon(write_frame, stream, payload, 20.0)
        with trio.fail_after(20):
            await done.wait()
        assert sorted(received) == sorted(payloads)
        await stream.aclose()


# ---- gossip.libp2p_fastio against the library's own Noise and Yamux code ------------------------


def _noise_states() -> tuple[NoiseConnection, NoiseConnection]:
    """Two ends of a finished Noise handshake (NN: no static keys needed for the cipher states)."""
    ends = [NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256") for _ in range(2)]
    ends[0].set_as_initiator()
    ends[1].set_as_responder()
    for end in ends:
        end.start_handshake()
    ends[1].read_message(ends[0].write_message())
    ends[0].read_message(ends[1].write_message())
    assert all(end.handshake_finished for end in ends)
    return ends[0], ends[1]


def _sessions(fast_first: bool) -> tuple[SecureSession, SecureSession]:
    """A patched session and a library one (in that order) joined by an in-memory byte stream."""
    left, right = trio.testing.memory_stream_pair()
    fast_state, plain_state = _noise_states() if fast_first else reversed(_noise_states())
    keys = [create_new_key_pair() for _ in range(2)]
    ids = [PeerID.from_pubkey(k.public_key) for k in keys]

    def session(cls: type, rw_cls: type, stream: object, state: object, me: int) -> SecureSession:
        raw = RawConnection(TrioTCPStream(stream), initiator=me == 0)  # type: ignore[arg-type]
        return cls(
            local_peer=ids[me],
            local_private_key=keys[me].private_key,
            remote_peer=ids[1 - me],
            remote_permanent_pubkey=keys[1 - me].public_key,
            is_initiator=me == 0,
            conn=rw_cls(raw, state),
        )

    fast = session(FastSecureSession, FastNoiseReadWriter, left, fast_state, 0)
    plain = session(SecureSession, NoiseTransportReadWriter, right, plain_state, 1)
    assert type(plain.conn).write_msg is not FastNoiseReadWriter.write_msg
    return fast, plain


@pytest.mark.parametrize("fast_first", [True, False])
async def test_patched_noise_interoperates_with_library_noise_both_ways(fast_first: bool) -> None:
    """Odd-sized writes (empty, one byte, message-limit +-1, megabytes) arrive exactly, in both directions."""
    fast, plain = _sessions(fast_first)
    sizes = [1, 0, 65518, 65519, 65520, 12, 1_000_003, 131_039, 7]
    rng = random.Random(7)
    writes = [rng.randbytes(n) for n in sizes]
    expected = b"".join(writes)
    for sender, receiver in ((fast, plain), (plain, fast)):
        got = bytearray()

        async def send(to: SecureSession = sender) -> None:
            for data in writes:
                if data:  # the library's reader takes an empty message for the end of the stream
                    await to.write(data)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                reads = iter([12, 1, 65507, 3, 200_000])
                while len(got) < len(expected):
                    got += await receiver.read(min(next(reads, 70_001), len(expected) - len(got)))
        assert bytes(got) == expected


async def test_patched_yamux_stream_over_mixed_noise_round_trips_large_payload() -> None:
    """Yamux frames written in batches split across Noise messages; the library's side reads them exactly."""
    fast, plain = _sessions(True)
    muxers = [
        Yamux(fast, plain.local_peer, is_initiator=True),
        Yamux(plain, fast.local_peer, is_initiator=False),
    ]
    payload = random.Random(3).randbytes(3_000_017)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for muxer in muxers:
                nursery.start_soon(muxer.start)
            for muxer in muxers:
                await muxer.event_started.wait()
            for writer_muxer, reader_muxer in (muxers, muxers[::-1]):
                out = await writer_muxer.open_stream()
                nursery.start_soon(out.write, payload)
                inbound = await reader_muxer.accept_stream()
                got = bytearray()
                while len(got) < len(payload):
                    got += await inbound.read(1 << 20)
                assert bytes(got) == payload
            for muxer in muxers:
                await muxer.close()
            nursery.cancel_scope.cancel()


async def test_patched_noise_refuses_forged_messages_and_yamux_still_refuses_oversized_frames() -> None:
    fast, plain = _sessions(True)
    # A flipped ciphertext bit fails authentication, as in the library.
    sealed = plain.conn.encrypt(b"hello")
    forged = bytes([sealed[0] ^ 1]) + sealed[1:]
    await plain.conn.read_writer.write_msg(forged)
    with pytest.raises(NoiseInvalidMessage), trio.fail_after(5):
        await fast.read(5)
    # A DATA frame announcing more than Yamux's 16 MiB limit closes the connection.
    fast, plain = _sessions(True)
    muxer = Yamux(fast, plain.local_peer, is_initiator=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(muxer.start)
            await muxer.event_started.wait()
            await plain.write(struct.pack(YAMUX_HEADER_FORMAT, 0, 0, 0, 2, (16 << 20) + 1))
            await muxer.event_closed.wait()
            nursery.cancel_scope.cancel()
