"""Libp2pTransport: the Transport interface over py-libp2p (TCP, Noise, Yamux, GossipSub).

One instance is one peer. `serve()` owns the libp2p host, Pubsub and router for as long as it
runs, so a transport can be served again after it stopped (same identity, new host). Host
construction and library hardening live in gossip.libp2p_host, stream adaptation and error
mapping in gossip.libp2p_stream; this module wires them to the interface.

Error handling: dials and stream opens raise DialError / ProtocolNotSupported and never hang
past their timeout; publish never raises on loss; no libp2p exception reaches the caller.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.subscription import TrioSubscriptionAPI
from libp2p.tools.anyio_service import background_trio_service

from gossip.errors import DialError, GossipError, MessageTooLarge
from gossip.identity import Identity
from gossip.libp2p_host import make_host, make_pubsub, make_router, parse_multiaddr
from gossip.libp2p_stream import (
    DEFAULT_STREAM_IO_TIMEOUT,
    Libp2pStream,
    open_libp2p_stream,
    parse_peer_id,
    wrap_handler,
)
from gossip.transport import (
    MAX_GOSSIP_BYTES,
    ByteStream,
    GossipMessage,
    PeerId,
    StreamHandler,
    Validator,
    Verdict,
)

log = logging.getLogger(__name__)

DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)
# Our per-subscriber channel; behind it sits libp2p's own (enlarged) subscription buffer.
SUBSCRIBER_BUFFER = 1024
# Forwarders of accepted messages waiting to be matched with their delivery (bounded).
MAX_PENDING_FORWARDERS = 8192
DISCONNECT_TIMEOUT = 5.0
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0


@dataclass
class _Running:
    """What exists only while serve() runs."""

    host: IHost
    pubsub: Pubsub
    nursery: trio.Nursery
    topics: set[str] = field(default_factory=set)  # topics subscribed in libp2p


class Libp2pTransport:
    """A real network peer: TCP + Noise + Yamux, GossipSub topics, protocol streams."""

    def __init__(
        self,
        identity: Identity,
        listen: list[str] | None = None,
        *,
        stream_io_timeout: float = DEFAULT_STREAM_IO_TIMEOUT,
    ) -> None:
        self.identity = identity
        self.peer_id: PeerId = identity.peer_id
        self._listen = [parse_multiaddr(a) for a in (listen or DEFAULT_LISTEN)]
        self._stream_io_timeout = stream_io_timeout
        self._validator: Validator | None = None
        self._handlers: dict[str, StreamHandler] = {}
        self._subscribers: dict[str, list[trio.MemorySendChannel[GossipMessage]]] = {}
        self._forwarders: OrderedDict[bytes, PeerId] = OrderedDict()
        self._running: _Running | None = None
        self._serving = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the host until cancelled; `started()` once listening. Closes everything on exit.

        libp2p's own tasks must never see our cancellation: cancelled halfway through their
        clean-up they leave dialed sockets open. So the host runs in a shielded task and, when
        we are cancelled, shuts down in order (connections, host, services), bounded in time.
        """
        if self._serving:
            raise GossipError("Libp2pTransport.serve() is already running")
        self._serving = True
        stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(self._run_host, stop)
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    stop.set()
        except BaseExceptionGroup as group:
            # libp2p's nurseries nest our error in groups of one: hand the caller the error itself.
            error = _sole_exception(group)
            if isinstance(error, GossipError):
                raise error from None
            raise
        finally:
            self._serving = False

    async def _run_host(self, stop: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope(shield=True):
            host = make_host(self.identity)
            router = make_router()
            pubsub = make_pubsub(host, router)  # starts the seen-cache sweeper thread
            try:
                async with AsyncExitStack() as stack:
                    addrs = ", ".join(str(a) for a in self._listen)
                    try:
                        await stack.enter_async_context(host.run(listen_addrs=self._listen))
                    except Exception as e:
                        raise GossipError(f"cannot listen on {addrs}: {e}") from e
                    if not host.get_transport_addrs():  # libp2p only logs a failed bind
                        await host.close()
                        raise GossipError(f"cannot listen on {addrs}: address in use or not a local address")
                    try:
                        await self._run_pubsub(host, pubsub, router, stop, task_status)
                    finally:
                        # Leaving host.run() without close() keeps the listener accepting.
                        with trio.move_on_after(SHUTDOWN_TIMEOUT):
                            await host.close()
            finally:
                self._running = None
                for senders in self._subscribers.values():
                    for send in senders:
                        send.close()
                self._subscribers.clear()
                self._forwarders.clear()
                pubsub.seen_messages.stop()  # joins the sweeper thread

    async def _run_pubsub(
        self,
        host: IHost,
        pubsub: Pubsub,
        router: GossipSub,
        stop: trio.Event,
        task_status: trio.TaskStatus[None],
    ) -> None:
        async with background_trio_service(pubsub), background_trio_service(router):
            async with trio.open_nursery() as nursery:
                with trio.fail_after(STARTUP_TIMEOUT):  # we are shielded: nothing else bounds this
                    await pubsub.wait_until_ready()
                    running = _Running(host, pubsub, nursery)
                    self._running = running
                    for protocol, handler in self._handlers.items():
                        self._install_handler(host, protocol, handler)
                    for topic in list(self._subscribers):  # subscribed before serve() started
                        await self._join_topic(running, topic)
                task_status.started()
                await stop.wait()
                self._running = None  # from here on, calls see a transport that is not serving
                with trio.move_on_after(SHUTDOWN_TIMEOUT):
                    await _close_connections(host)  # while libp2p's tasks are still alive
                    await host.close()
                nursery.cancel_scope.cancel()

    def listen_addrs(self) -> list[str]:
        if self._running is None:
            return []
        return [str(a) for a in self._running.host.get_addrs()]

    # ---- connections -----------------------------------------------------------------------

    async def connect(self, addr: str, timeout: float = 10.0) -> PeerId:
        """Dial `/ip4/../tcp/../p2p/<id>`; returns once gossip can reach the peer."""
        running = self._require_running()
        try:
            info = info_from_p2p_addr(parse_multiaddr(addr))
        except Exception as e:
            raise DialError(f"bad peer address {addr!r}: {e} (expected /ip4/<ip>/tcp/<port>/p2p/<id>)") from e
        peer = info.peer_id.to_base58()
        if peer == self.peer_id:
            raise DialError(f"refusing to dial our own peer id at {addr}")
        network = running.host.get_network()
        # A failed dial blocks the peer for 60 s; a restarted peer must be redialable at once.
        network.unblock_peer(info.peer_id)
        was_connected = bool(network.get_connections(info.peer_id))
        if not was_connected:
            # The swarm dials only one TCP address per peer, the first it knows: a stale one
            # (the peer restarted on another port) would hide the address we were given.
            running.host.get_peerstore().clear_addrs(info.peer_id)
        done = False
        try:
            with trio.fail_after(timeout):  # a silent TCP listener would otherwise hang forever
                await running.host.connect(info)
                await _wait_for_gossip_peer(running, info.peer_id)
            done = True
        except trio.TooSlowError as e:
            raise DialError(f"dial {addr} timed out after {timeout}s") from e
        except Exception as e:  # SwarmDialAllFailedError (refused, wrong id, no Noise), OSError
            raise DialError(f"dial {addr} failed: {type(e).__name__}: {e}") from e
        finally:
            if not done and not was_connected:
                # A dial cut short mid-upgrade (timeout, cancellation) can leave a connection on
                # which no stream ever opens: it would look connected and never be redialled.
                with trio.CancelScope(shield=True):
                    await self.disconnect(peer)
        return peer

    async def disconnect(self, peer: PeerId) -> None:
        running = self._running
        if running is None:
            return
        peer_id = parse_peer_id(peer)
        with trio.move_on_after(DISCONNECT_TIMEOUT):
            try:
                await running.host.disconnect(peer_id)
            except Exception as e:
                log.debug("disconnect from %s failed: %s", peer, e)

    def connected_peers(self) -> list[PeerId]:
        if self._running is None:
            return []
        conns = self._running.host.get_network().get_connections_map()
        return [pid.to_base58() for pid, peer_conns in conns.items() if peer_conns]

    # ---- gossip ----------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[GossipMessage]:
        """A new channel of accepted messages of topic; closed when serve() ends."""
        send, receive = trio.open_memory_channel[GossipMessage](SUBSCRIBER_BUFFER)
        self._subscribers.setdefault(topic, []).append(send)
        if self._running is not None:
            await self._join_topic(self._running, topic)
        return receive

    def set_validator(self, validator: Validator) -> None:
        self._validator = validator

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > MAX_GOSSIP_BYTES:
            raise MessageTooLarge(len(data), MAX_GOSSIP_BYTES)
        running = self._running
        if running is None:
            log.debug("publish on %s dropped: transport not serving", topic)
            return
        try:
            await running.pubsub.publish(topic, data)
        except Exception as e:  # best effort by contract: loss is never the caller's error
            log.warning("publish on %s failed: %s: %s", topic, type(e).__name__, e)

    async def _join_topic(self, running: _Running, topic: str) -> None:
        if topic in running.topics:
            return
        running.topics.add(topic)
        validator = self._topic_validator(running.pubsub, topic)
        running.pubsub.set_topic_validator(topic, validator, is_async_validator=False)
        subscription = await running.pubsub.subscribe(topic)
        running.nursery.start_soon(self._drain, running, topic, subscription)

    def _topic_validator(self, pubsub: Pubsub, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        """libp2p's sync validator for topic: runs ours (read at call time) and notes the forwarder."""

        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            sender = forwarder.to_base58()
            validator = self._validator
            if validator is not None:
                try:
                    verdict = validator(GossipMessage(topic, bytes(msg.data), sender))
                except Exception:  # a buggy validator must not take down libp2p's reader task
                    log.exception("gossip validator raised on %s; rejecting", topic)
                    return False
                if verdict is not Verdict.ACCEPT:
                    return False
            # libp2p delivers without saying who forwarded; it is only known here.
            self._remember_forwarder(pubsub.get_message_id(msg), sender)
            return True

        return validate

    def _remember_forwarder(self, msg_id: bytes, sender: PeerId) -> None:
        self._forwarders[msg_id] = sender
        while len(self._forwarders) > MAX_PENDING_FORWARDERS:
            self._forwarders.popitem(last=False)

    async def _drain(self, running: _Running, topic: str, subscription: TrioSubscriptionAPI) -> None:
        """Empty libp2p's subscription channel into ours, so libp2p never drops for lack of room."""
        while True:
            msg = await subscription.get()
            forwarder = self._forwarders.pop(running.pubsub.get_message_id(msg), None)
            if forwarder is None:  # validation was cached by libp2p: the author is the best we know
                forwarder = ID(msg.from_id).to_base58()
            message = GossipMessage(topic, bytes(msg.data), forwarder)
            for send in list(self._subscribers.get(topic, ())):
                try:
                    await send.send(message)  # backpressure: a slow reader fills libp2p's buffer
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers[topic].remove(send)  # the subscriber went away

    # ---- streams ---------------------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler
        if self._running is not None:
            self._install_handler(self._running.host, protocol, handler)

    def _install_handler(self, host: IHost, protocol: str, handler: StreamHandler) -> None:
        host.set_stream_handler(TProtocol(protocol), wrap_handler(protocol, handler, self._stream_io_timeout))

    async def open_stream(self, peer: PeerId, protocol: str, timeout: float = 10.0) -> ByteStream:
        running = self._require_running()
        stream: Libp2pStream = await open_libp2p_stream(
            running.host, peer, protocol, timeout, self._stream_io_timeout
        )
        return stream

    # ---- helpers ---------------------------------------------------------------------------

    def _require_running(self) -> _Running:
        if self._running is None:
            raise DialError("transport is not serving; start it with `await nursery.start(t.serve)`")
        return self._running


async def _wait_for_gossip_peer(running: _Running, peer_id: ID) -> None:
    """Until pubsub has a stream to the peer (publishes reach it); fails if the connection drops."""
    while True:
        try:
            await running.pubsub.wait_for_peer(peer_id, timeout=0.1)
            return
        except trio.TooSlowError:
            # Dropped during set-up, the wait would otherwise last until the caller's deadline.
            if not running.host.get_network().get_connections(peer_id):
                raise DialError("connection closed during set-up") from None


async def _close_connections(host: IHost) -> None:
    for peer_id in list(host.get_network().get_connections_map()):
        try:
            await host.disconnect(peer_id)
        except Exception as e:
            log.debug("closing connection to %s failed: %s", peer_id, e)


def _sole_exception(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
