"""Builds a hardened py-libp2p 0.8.1 host, GossipSub router and Pubsub from an Identity.

py-libp2p's defaults are unsafe for us (see notes/libp2p-cheatsheet.md): a default host
accepts plaintext, the 120 s heartbeat and adaptive gossip slow mesh repair, spam protection
rate-limits our own publishes, and 32-slot queues silently drop bursts. Everything that
fixes those lives here, so the transport module only wires the pieces together.

Gossip is CPU-bound in py-libp2p: every RPC and frame costs Noise, Yamux, protobuf and trio
work on both ends. So the settings here also cut the RPCs and frames a message costs:
GossipSub 1.1 (1.2 sends an IDONTWANT RPC to every mesh peer for every message), a small
mesh, no signed peer record in every RPC, RPCs queued for one peer written in one frame, and
Yamux window credit returned in batches instead of one WINDOW_UPDATE frame per read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections import defaultdict
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import libp2p.pubsub.rpc_queue as _rpc_queue_module
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import ValidationError
from libp2p.io.exceptions import IOException, MessageTooLarge
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationResult
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from gossip import libp2p_fastio
from gossip.identity import Identity

log = logging.getLogger(__name__)

# Per-peer outbound RPC queue (library default 32, drop-on-full: a burst loses ~97 %).
RPC_QUEUE_SIZE = 4096
# Per-subscription channel inside Pubsub (library default 32, drop-on-full).
LIBP2P_SUBSCRIPTION_BUFFER = 4096

# GossipSub versions offered, best first. 1.2 adds IDONTWANT: one more RPC to every mesh peer
# per message, which costs more CPU than the duplicates it saves in a mesh this small.
GOSSIP_PROTOCOLS: tuple[TProtocol, ...] = (PROTOCOL_ID_V11, PROTOCOL_ID)
# Mesh degree D / D_low / D_high. Each mesh peer is one more copy of every message to send,
# receive and drop as a duplicate; 3 keeps the mesh connected through a lost peer. D_high is
# kept at 2 D: with 4, the bootstrap peer (connected to everyone) pruned so often that peers
# refused each other's re-GRAFTs and some were cut off the mesh, left to anti-entropy.
GOSSIP_DEGREE, GOSSIP_DEGREE_LOW, GOSSIP_DEGREE_HIGH = 3, 2, 6
# Send py-libp2p's signed peer record in every pubsub RPC (~210 B, ~50 us to build, ~100 us
# and an Ed25519 verify to check). Nothing of ours reads those records: peers are found by
# hivemesh peer exchange, and the transport's handshake already authenticates the sender.
SEND_SENDER_RECORDS = False
SENDER_RECORD_REFRESH = 10.0  # seconds a built record is reused (the library rebuilds it per RPC)
# RPCs waiting in a peer's queue are written together up to this many bytes: one Yamux frame
# and one Noise message instead of one each.
COALESCED_WRITE_BYTES = 64 * 1024
# Yamux returns receive-window credit after every read: a WINDOW_UPDATE frame back for each read
# (two per pubsub RPC: its varint, then its body). Credit is instead held until this many bytes
# were read. Far below the 256 KiB window, so a sender never waits for it; 0 = every read.
WINDOW_UPDATE_BATCH = 16 * 1024


def harden_library() -> None:
    """Process-wide fixes to py-libp2p defaults; idempotent, applied when this module loads.

    Both knobs are read by the library at call time, so patching the defaults is enough and
    must happen before any peer connects.
    """
    libp2p_fastio.apply()  # cheaper Noise/Yamux byte paths; before serialize_yamux_writes wraps write
    _rpc_queue_module.RpcQueue.__init__.__defaults__ = (
        RPC_QUEUE_SIZE,
        _rpc_queue_module.DefaultMaxMessageSize,
    )
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = LIBP2P_SUBSCRIPTION_BUFFER
    cache_sender_records()
    serialize_yamux_writes()
    batch_yamux_window_updates()
    route_library_logging()


def cache_sender_records() -> None:
    """Build each host's signed peer record once per SENDER_RECORD_REFRESH, not once per RPC.

    The library calls `env_to_send_in_RPC(host)` for every RPC it sends, and each call rebuilds
    the host's address set to compare it with the cached record. With SEND_SENDER_RECORDS off
    the record is stripped before writing anyway; this only makes building it cheap.
    """
    if getattr(_pubsub_module.env_to_send_in_RPC, "_hivemesh_cached", False):
        return
    built: weakref.WeakKeyDictionary[IHost, tuple[float, bytes]] = weakref.WeakKeyDictionary()

    def cached(host: IHost) -> tuple[bytes, bool]:
        now = time.monotonic()
        entry = built.get(host)
        if entry is not None and now - entry[0] < SENDER_RECORD_REFRESH:
            return entry[1], False
        record, fresh = env_to_send_in_RPC(host)
        built[host] = (now, record)
        return record, fresh

    cached._hivemesh_cached = True  # type: ignore[attr-defined]
    _pubsub_module.env_to_send_in_RPC = cached  # type: ignore[assignment]
    _gossipsub_module.env_to_send_in_RPC = cached  # type: ignore[attr-defined]


def serialize_yamux_writes() -> None:
    """Make each YamuxStream.write atomic with respect to other writes on the same stream.

    The library splits a write into window-sized frames and releases its locks between them,
    so two tasks writing one stream (pubsub's RPC sender and a publish, say) interleave their
    frames and the reader sees a corrupt varint-framed RPC. One lock per stream around the
    whole write keeps each message contiguous.
    """
    if getattr(YamuxStream.write, "_hivemesh_serialized", False):
        return
    original = YamuxStream.write

    async def write(self: YamuxStream, data: bytes) -> None:
        lock = self.__dict__.get("_hivemesh_write_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_hivemesh_write_lock", trio.Lock())
        async with lock:
            await original(self, data)

    write._hivemesh_serialized = True  # type: ignore[attr-defined]
    YamuxStream.write = write  # type: ignore[method-assign]


def batch_yamux_window_updates() -> None:
    """Hand the library's window bookkeeping the bytes read in batches of WINDOW_UPDATE_BATCH.

    Credit held back stays below the batch, far below any window, so it can never stall a
    sender: a blocked sender means the window is full of unread bytes, and reading them
    releases the credit. Large reads (blobs) pass straight through, window auto-tuning included.
    """
    if getattr(YamuxStream._auto_tune_and_send_window_update, "_hivemesh_batched", False):
        return
    original = YamuxStream._auto_tune_and_send_window_update

    async def batched(self: YamuxStream, *, bytes_read: int = 0) -> None:
        owed = self.__dict__.get("_hivemesh_unreported", 0) + bytes_read
        if 0 < owed < WINDOW_UPDATE_BATCH:
            self.__dict__["_hivemesh_unreported"] = owed
            return
        self.__dict__["_hivemesh_unreported"] = 0
        await original(self, bytes_read=owed)

    batched._hivemesh_batched = True  # type: ignore[attr-defined]
    YamuxStream._auto_tune_and_send_window_update = batched  # type: ignore[method-assign]


def route_library_logging() -> None:
    """Send the `libp2p` logger through standard logging at WARNING instead of raw stderr.

    `import libp2p` detaches its logger (no handlers, propagate=False), so its warnings reach
    stderr through logging's last-resort handler. A NullHandler plus propagation hands them
    to whatever the application configured, and to nobody if it configured nothing. An
    explicit LIBP2P_DEBUG setting is the operator's choice and is left alone.
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return
    lib_logger = logging.getLogger("libp2p")
    lib_logger.setLevel(logging.WARNING)
    lib_logger.propagate = True
    if not any(isinstance(h, logging.NullHandler) for h in lib_logger.handlers):
        lib_logger.addHandler(logging.NullHandler())
    # Some modules force their own logger to INFO (auto_connector logs every 10 s); let them
    # inherit WARNING instead.
    for name, child in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            if logging.NOTSET < child.level < logging.WARNING:
                child.setLevel(logging.NOTSET)


def key_pair(identity: Identity) -> KeyPair:
    """libp2p's key pair for our Ed25519 identity (same peer id)."""
    private = Ed25519PrivateKey.from_bytes(identity.seed)
    return KeyPair(private, private.get_public_key())


def make_host(identity: Identity) -> IHost:
    """A TCP host speaking only Noise (never plaintext) and only Yamux."""
    keys = key_pair(identity)
    host = new_host(
        key_pair=keys,
        sec_opt={NOISE_ID: NoiseTransport(keys, noise_privkey=new_x25519_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
    )
    _disable_auto_connect(host)
    return host


def _disable_auto_connect(host: IHost) -> None:
    """Stop the swarm from dialing peerstore peers on its own every 10 s.

    It aims at 200 connections, redials dead peers without our timeouts (a WARNING per
    failed dial) and makes the topology depend on history. Who we connect to is decided by
    the Dialer and the layers above it.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is None:
        return

    async def never_connect() -> None:
        return None

    connector.maybe_connect = never_connect  # type: ignore[method-assign]


class BackoffGossipSub(GossipSub):
    """GossipSub that backs off from the peers its heartbeat prunes, as the spec says.

    The library's heartbeat prunes an oversubscribed mesh without recording a backoff on its
    own side, so the next heartbeat that finds the mesh short may GRAFT the same peer again at
    once; that peer, still inside the backoff our PRUNE told it about, calls it a GRAFT flood
    and prunes us back: mesh churn, and a warning each time.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        # The library's peer scorer runs on every publish and heartbeat, but with its default
        # parameters (all weights 0, thresholds -inf) it never decides anything; misbehaviour
        # is scored by gossip/scoring.py. Without it the router takes its unscored paths.
        self.scorer = None

    def mesh_heartbeat(self) -> tuple[defaultdict[ID, list[str]], defaultdict[ID, list[str]]]:
        to_graft, to_prune = super().mesh_heartbeat()
        for peer, topics in to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return to_graft, to_prune


def make_router() -> GossipSub:
    """GossipSub with the settings measured to work (notes/libp2p-measurements.md)."""
    return BackoffGossipSub(
        protocols=list(GOSSIP_PROTOCOLS),
        degree=GOSSIP_DEGREE,
        degree_low=GOSSIP_DEGREE_LOW,
        degree_high=GOSSIP_DEGREE_HIGH,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=1,  # library default is 120 s
        adaptive_gossip_enabled=False,  # otherwise a sparse mesh stretches the heartbeat to 30 s
        spam_protection_enabled=False,  # otherwise >10 msg/s per (peer, topic) is dropped, ours too
    )


class HardenedPubsub(Pubsub):
    """Pubsub whose per-peer reader survives garbage and whose writer batches.

    The library's stream handler only catches stream and varint errors, so one RPC that fails
    protobuf decoding escapes into the swarm's nursery and stops the whole host: any peer could
    crash us with a single malformed frame. Here such a peer loses its pubsub stream instead.

    The library's per-peer sender writes one RPC per stream write; under load a peer's queue
    holds several, and each write costs a Yamux frame, a Noise message and a trio round trip
    on both ends. Here everything queued is written at once (still one varint-framed RPC after
    another, as the protocol says). Signed peer records are stripped unless SEND_SENDER_RECORDS.
    """

    def get_hello_packet(self) -> rpc_pb2.RPC:
        return _strip_sender_record(super().get_hello_packet())

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        return await super().write_msg(stream, _strip_sender_record(rpc_msg))

    async def handle_sending_messages(self, peer_id: ID, stream: INetStream, queue: RpcQueue) -> None:
        try:
            while True:
                rpc = await queue.pop()
                if rpc is None:
                    return  # the queue was closed: the peer is gone
                frames = [encode_varint_prefixed(_strip_sender_record(rpc).SerializeToString())]
                size = len(frames[0])
                # pop() returns at once while the queue holds something: no other task runs here.
                while len(queue) and size < COALESCED_WRITE_BYTES:
                    more = await queue.pop()
                    if more is None:
                        break
                    frames.append(encode_varint_prefixed(_strip_sender_record(more).SerializeToString()))
                    size += len(frames[-1])
                try:
                    await stream.write(b"".join(frames))
                except (StreamClosed, StreamReset):
                    log.debug("pubsub stream to %s closed while writing", peer_id)
                    self._handle_dead_peer(peer_id)
                    return
        except Exception as error:  # as the library's loop: a broken sender means a dead peer
            log.debug("pubsub sender for %s stopped: %r", peer_id, error)
            self._handle_dead_peer(peer_id)

    async def validate_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        """The library's check (cache, then the topic's sync validators), without its error text.

        The library puts the whole message into ValidationError's text (f"...{msg}"): formatting
        a 64 KiB tx batch costs milliseconds, and every message our validator ignores pays it
        (a tx batch whose txs are known, a backlogged subscriber). Only our sync validators run.
        """
        msg_id = self._msg_id_constructor(msg)
        cached = self.validation_cache.get(msg_id)
        if cached is not None:
            if not cached.is_valid:
                raise ValidationError("refused before")
            return
        for topic_validator in self.get_msg_validators(msg):
            if topic_validator.is_async:  # none of ours: keep the library's path for them
                await super().validate_msg(msg_forwarder, msg)
                return
            if not topic_validator.validator(msg_forwarder, msg):
                self.validation_cache.put(msg_id, ValidationResult(False, time.time(), "refused"))
                raise ValidationError("refused by the topic validator")
        self.validation_cache.put(msg_id, ValidationResult(True, time.time()))

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """The library's read loop for one peer's pubsub stream, handling published messages inline.

        The library starts a task (through its service manager, which walks its task tree) for
        every message received, though most are duplicates that push_msg drops at once; that
        spawn was the largest cost per message. Inline, a peer's messages are also handled in
        the order they arrived, and a slow subscriber slows the reading of this stream
        (TCP backpressure) instead of piling up tasks. A failure is the caller's to handle, as
        for a malformed RPC.
        """
        peer_id = stream.muxed_conn.peer_id
        try:
            while self.manager.is_running:
                incoming = await read_varint_prefixed_bytes_limited(stream, self.max_inbound_rpc_size)
                rpc = rpc_pb2.RPC()
                rpc.ParseFromString(incoming)
                if not maybe_consume_signed_record(rpc, self.host, peer_id):
                    log.debug("pubsub RPC of %s with an invalid signed record ignored", peer_id)
                    continue
                for msg in rpc.publish:
                    if self._is_subscribed_to_msg(msg):
                        await self.push_msg(peer_id, msg)
                if rpc.subscriptions:
                    if len(rpc.subscriptions) > self.max_subscriptions_per_rpc:
                        log.warning("%s sent %d subscriptions in one RPC", peer_id, len(rpc.subscriptions))
                    else:
                        for subscription in rpc.subscriptions:
                            self.handle_subscription(peer_id, subscription)
                if rpc.HasField("control"):
                    await self.router.handle_rpc(rpc, peer_id)
        except MessageTooLarge as error:
            log.warning("pubsub RPC from %s over the size limit: %s", peer_id, error)
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)
        except (StreamEOF, StreamError, IOException, RawConnError) as error:
            log.debug("pubsub stream of %s ended: %r", peer_id, error)

    async def stream_handler(self, stream: INetStream) -> None:
        try:
            await super().stream_handler(stream)
        except Exception as error:  # whatever a hostile peer's bytes make the library raise
            peer_id = stream.muxed_conn.peer_id
            log.warning("dropping pubsub stream of %s after a malformed RPC: %r", peer_id, error)
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)


def _strip_sender_record(rpc: rpc_pb2.RPC) -> rpc_pb2.RPC:
    """rpc without its signed peer record (in place: every queued RPC is the peer's own copy)."""
    if not SEND_SENDER_RECORDS and rpc.HasField("senderRecord"):
        rpc.ClearField("senderRecord")
    return rpc


def make_pubsub(host: IHost, router: GossipSub) -> Pubsub:
    """Pubsub with strict signing. Starts a sweeper thread: call `seen_messages.stop()` after."""
    return HardenedPubsub(host, router, strict_signing=True)


def parse_multiaddr(addr: str) -> multiaddr.Multiaddr:
    """Raises ValueError with the address in the message."""
    try:
        return multiaddr.Multiaddr(addr)
    except Exception as e:  # the multiaddr package raises a zoo of ValueError/LookupError types
        raise ValueError(f"not a multiaddr: {addr!r} ({e})") from e


harden_library()
