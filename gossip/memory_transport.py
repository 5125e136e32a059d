"""In-memory Transport: many peers in one process sharing a MemoryNetwork.

A second real implementation of `gossip.transport.Transport`, for tests and for simulations
of hundreds of peers. Gossip is flooded: a peer validates each new message (deduplicated by
the sha256 of its bytes) and forwards it to every neighbour but the one it came from. Every
datagram between two neighbours passes the network's fault knobs, drawn from one seeded
`random.Random`: `drop` and `duplicate` probabilities, a uniform `delay` range (delayed
datagrams are delivered by their own task, so order may change) and partitions (nothing
crosses between groups). Streams are trio memory streams: reliable and never dropped; a
partition refuses new ones and resets those already open across it.

There is no crypto here, so a peer costs a few dicts and one task. Addresses look like
`/memory/<peer_id>`.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Iterable

import trio
import trio.testing

from gossip.errors import DialError, GossipError, MessageTooLarge, ProtocolNotSupported, StreamBroken
from gossip.identity import Identity
from gossip.transport import MAX_GOSSIP_BYTES, GossipMessage, PeerId, StreamHandler, Validator, Verdict

ADDR_PREFIX = "/memory/"
INBOX_SIZE = 16_384  # datagrams queued per peer; beyond this they are dropped, like a full libp2p queue
SUBSCRIPTION_SIZE = 4_096  # messages queued per transport subscription before dropping
SEEN_CAPACITY = 200_000  # digests each peer remembers for de-duplication

_Datagram = tuple[str, bytes, PeerId]  # topic, data, forwarder
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
_RawStream = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]


class MemoryNetwork:
    """The shared medium: who is serving, who is connected, and the fault knobs.

    `drop`, `duplicate` (probabilities) and `delay` (seconds, uniform range) apply to each
    gossip datagram from one peer to a neighbour and may be changed at any time.
    """

    def __init__(self, seed: int = 0) -> None:
        self.random = random.Random(seed)
        self.drop = 0.0
        self.duplicate = 0.0
        self.delay: tuple[float, float] = (0.0, 0.0)
        # Plain counters of what happened to datagrams, for tests and simulations.
        self.counters = dict.fromkeys(
            ("sent", "dropped", "duplicated", "blocked", "overflowed", "delivered"), 0
        )
        self._serving: dict[PeerId, MemoryTransport] = {}
        self._groups: dict[PeerId, int] | None = None

    def transport(self, identity: Identity) -> MemoryTransport:
        return MemoryTransport(self, identity)

    def peers(self) -> list[PeerId]:
        """Peers currently serving."""
        return list(self._serving)

    def partition(self, *groups: Iterable[PeerId]) -> None:
        """Split the network: nothing crosses between groups until heal().

        Peers named in no group form one more group together. Connections stay (as TCP
        connections do under a real partition) but carry no gossip; new dials and streams
        across groups fail with DialError and open streams across groups are reset.
        """
        self._groups = {peer: i for i, group in enumerate(groups) for peer in group}
        for transport in list(self._serving.values()):
            for conn in list(transport._conns.values()):
                if not self.reachable(*conn.peer_ids):
                    conn.reset_streams()

    def heal(self) -> None:
        self._groups = None

    def reachable(self, a: PeerId, b: PeerId) -> bool:
        if self._groups is None:
            return True
        return self._groups.get(a, -1) == self._groups.get(b, -1)

    def _send(self, src: MemoryTransport, conn: _Connection, topic: str, data: bytes) -> None:
        """One gossip datagram from src over conn, through the fault knobs."""
        dst = conn.other(src)
        self.counters["sent"] += 1
        if not self.reachable(src.peer_id, dst.peer_id):
            self.counters["blocked"] += 1
            return
        if self.drop > 0 and self.random.random() < self.drop:
            self.counters["dropped"] += 1
            return
        copies = 1
        if self.duplicate > 0 and self.random.random() < self.duplicate:
            copies = 2
            self.counters["duplicated"] += 1
        item: _Datagram = (topic, data, src.peer_id)
        low, high = self.delay
        for _ in range(copies):
            if high > 0 and src._nursery is not None:
                src._nursery.start_soon(self._deliver_later, self.random.uniform(low, high), conn, dst, item)
            else:
                self._deliver(conn, dst, item)

    async def _deliver_later(
        self, delay: float, conn: _Connection, dst: MemoryTransport, item: _Datagram
    ) -> None:
        await trio.sleep(delay)
        self._deliver(conn, dst, item)

    def _deliver(self, conn: _Connection, dst: MemoryTransport, item: _Datagram) -> None:
        # Checked again at delivery: the link may have gone down while the datagram was delayed.
        if not conn.open or not self.reachable(item[2], dst.peer_id) or dst._inbox is None:
            self.counters["blocked"] += 1
            return
        try:
            dst._inbox.send_nowait(item)
        except trio.WouldBlock:
            self.counters["overflowed"] += 1
        except _STREAM_ERRORS:
            self.counters["blocked"] += 1
        else:
            self.counters["delivered"] += 1


class _Connection:
    """A link between two serving peers, shared by both; owns the streams opened over it."""

    __slots__ = ("ends", "open", "streams")

    def __init__(self, a: MemoryTransport, b: MemoryTransport) -> None:
        self.ends = (a, b)
        self.open = True
        self.streams: set[_StreamPair] = set()

    @property
    def peer_ids(self) -> tuple[PeerId, PeerId]:
        return self.ends[0].peer_id, self.ends[1].peer_id

    def other(self, end: MemoryTransport) -> MemoryTransport:
        return self.ends[1] if end is self.ends[0] else self.ends[0]

    def reset_streams(self) -> None:
        for pair in list(self.streams):
            pair.reset()
        self.streams.clear()

    def close(self) -> None:
        """Both ends see the peer disconnected; open streams are reset."""
        self.open = False
        a, b = self.ends
        if a._conns.get(b.peer_id) is self:
            del a._conns[b.peer_id]
        if b._conns.get(a.peer_id) is self:
            del b._conns[a.peer_id]
        self.reset_streams()


class _StreamPair:
    """Both ends of one stream; reset() breaks both at once, as a closed connection does."""

    def __init__(self, conn: _Connection, opener: MemoryTransport) -> None:
        left, right = trio.testing.memory_stream_pair()
        self.raw = (left, right)
        self.is_reset = False
        self.conn = conn
        self.opener_end = MemoryStream(left, conn.other(opener).peer_id, self)
        self.remote_end = MemoryStream(right, opener.peer_id, self)

    def reset(self) -> None:
        self.is_reset = True
        for raw in self.raw:
            raw.send_stream.close()
            raw.receive_stream.close()  # wakes a blocked reader, which then sees the reset
        self.conn.streams.discard(self)


class MemoryStream:
    """ByteStream over a trio memory stream; trio's resource errors become StreamBroken."""

    def __init__(self, raw: _RawStream, remote_peer: PeerId, pair: _StreamPair) -> None:
        self.remote_peer = remote_peer
        self._raw = raw
        self._pair = pair

    def _broken(self, action: str) -> StreamBroken:
        why = "reset (connection closed)" if self._pair.is_reset else "closed"
        return StreamBroken(f"{action} on stream with {self.remote_peer}: stream {why}")

    async def send_all(self, data: bytes) -> None:
        try:
            await self._raw.send_all(data)
        except _STREAM_ERRORS as e:
            raise self._broken("write") from e

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            data = await self._raw.receive_some(max_bytes)
        except _STREAM_ERRORS as e:
            raise self._broken("read") from e
        if not data and self._pair.is_reset:
            raise self._broken("read")
        return bytes(data)

    async def send_eof(self) -> None:
        try:
            await self._raw.send_eof()
        except _STREAM_ERRORS as e:
            raise self._broken("send_eof") from e

    async def aclose(self) -> None:
        await self._raw.aclose()  # memory streams close without raising or blocking


class MemoryTransport:
    """One peer on a MemoryNetwork. Implements gossip.transport.Transport."""

    def __init__(self, network: MemoryNetwork, identity: Identity) -> None:
        self.network = network
        self.peer_id: PeerId = identity.peer_id
        self._conns: dict[PeerId, _Connection] = {}
        self._handlers: dict[str, StreamHandler] = {}
        self._subs: dict[str, list[trio.MemorySendChannel[GossipMessage]]] = {}
        self._validator: Validator | None = None
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._inbox: trio.MemorySendChannel[_Datagram] | None = None
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the network and process inbound gossip until cancelled; leaving disconnects everyone."""
        if self.peer_id in self.network._serving:
            raise GossipError(f"peer {self.peer_id} is already serving on this network")
        inbox_send, inbox_recv = trio.open_memory_channel[_Datagram](INBOX_SIZE)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery, self._inbox = nursery, inbox_send
                self.network._serving[self.peer_id] = self
                task_status.started()
                async for topic, data, forwarder in inbox_recv:
                    self._on_datagram(topic, data, forwarder)
        finally:
            self.network._serving.pop(self.peer_id, None)
            self._nursery, self._inbox = None, None
            inbox_send.close()
            for conn in list(self._conns.values()):
                conn.close()
            for channels in self._subs.values():
                for channel in channels:
                    channel.close()
            self._subs.clear()

    def listen_addrs(self) -> list[str]:
        return [ADDR_PREFIX + self.peer_id]

    # -- connections -----------------------------------------------------------------------

    async def connect(self, addr: str, timeout: float = 10.0) -> PeerId:
        """Link to the peer at addr (instant, so the timeout never comes into play)."""
        await trio.lowlevel.checkpoint()
        if self._inbox is None:
            raise DialError(f"cannot dial {addr}: this transport is not serving")
        if (
            not addr.startswith(ADDR_PREFIX)
            or len(addr) == len(ADDR_PREFIX)
            or "/" in addr[len(ADDR_PREFIX) :]
        ):
            raise DialError(f"not an in-memory address (want /memory/<peer_id>): {addr!r}")
        peer = addr[len(ADDR_PREFIX) :]
        if peer == self.peer_id:
            raise DialError(f"cannot dial ourselves ({addr})")
        if peer in self._conns:
            return peer
        remote = self.network._serving.get(peer)
        if remote is None:
            raise DialError(f"no peer is listening at {addr}")
        if not self.network.reachable(self.peer_id, peer):
            raise DialError(f"{peer} is unreachable from {self.peer_id} (network partition)")
        conn = _Connection(self, remote)
        self._conns[peer] = conn
        remote._conns[self.peer_id] = conn
        return peer

    async def disconnect(self, peer: PeerId) -> None:
        await trio.lowlevel.checkpoint()
        conn = self._conns.get(peer)
        if conn is not None:
            conn.close()

    def connected_peers(self) -> list[PeerId]:
        return list(self._conns)

    # -- gossip ----------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[GossipMessage]:
        await trio.lowlevel.checkpoint()
        send, recv = trio.open_memory_channel[GossipMessage](SUBSCRIPTION_SIZE)
        self._subs.setdefault(topic, []).append(send)
        return recv

    def set_validator(self, validator: Validator) -> None:
        self._validator = validator

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > MAX_GOSSIP_BYTES:
            raise MessageTooLarge(len(data), MAX_GOSSIP_BYTES)
        await trio.lowlevel.checkpoint()
        if self._inbox is None:
            raise GossipError(f"cannot publish on {topic}: this transport is not serving")
        self._on_datagram(topic, data, self.peer_id)

    def _on_datagram(self, topic: str, data: bytes, forwarder: PeerId) -> None:
        """New message from a neighbour (or our own publish): dedupe, validate, deliver, forward."""
        if forwarder != self.peer_id and forwarder not in self._conns:
            return  # arrived just after the link went down
        digest = hashlib.sha256(data).digest()
        if digest in self._seen:
            return
        self._seen[digest] = None
        if len(self._seen) > SEEN_CAPACITY:
            self._seen.popitem(last=False)
        message = GossipMessage(topic=topic, data=data, forwarder=forwarder)
        if self._validator is not None and self._validator(message) is not Verdict.ACCEPT:
            return
        channels = self._subs.get(topic)
        if channels:
            for channel in list(channels):
                try:
                    channel.send_nowait(message)
                except trio.WouldBlock:
                    self.network.counters["overflowed"] += (
                        1  # a subscriber that does not drain loses messages
                    )
                except _STREAM_ERRORS:
                    channels.remove(channel)  # the subscriber closed its end
        for peer, conn in list(self._conns.items()):
            if peer != forwarder:
                self.network._send(self, conn, topic, data)

    # -- streams ---------------------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    async def open_stream(self, peer: PeerId, protocol: str, timeout: float = 10.0) -> MemoryStream:
        """Open a stream, dialling first if needed (as libp2p does for a known peer)."""
        await trio.lowlevel.checkpoint()
        conn = self._conns.get(peer)
        if conn is None:
            await self.connect(ADDR_PREFIX + peer, timeout)
            conn = self._conns[peer]
        if not self.network.reachable(self.peer_id, peer):
            raise DialError(f"cannot open {protocol} to {peer}: unreachable (network partition)")
        remote = conn.other(self)
        handler = remote._handlers.get(protocol)
        if handler is None:
            raise ProtocolNotSupported(f"{peer} does not support protocol {protocol}")
        if remote._nursery is None:
            raise DialError(f"cannot open {protocol} to {peer}: it is not serving")
        pair = _StreamPair(conn, self)
        try:
            remote._nursery.start_soon(remote._run_handler, handler, pair)
        except RuntimeError:  # its nursery is closing: the peer is shutting down, as a TCP reset
            raise DialError(f"cannot open {protocol} to {peer}: it is shutting down") from None
        conn.streams.add(pair)
        return pair.opener_end

    async def _run_handler(self, handler: StreamHandler, pair: _StreamPair) -> None:
        try:
            await handler(pair.remote_end)
        except GossipError:
            pass  # a broken stream is the remote's problem, not a reason to stop serving
        finally:
            await pair.remote_end.aclose()
            pair.conn.streams.discard(pair)
