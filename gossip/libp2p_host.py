"""Builds a hardened py-libp2p 0.8.1 host, GossipSub router and Pubsub from an Identity.

py-libp2p's defaults are unsafe for us (see notes/libp2p-cheatsheet.md): a default host
accepts plaintext, the 120 s heartbeat and adaptive gossip slow mesh repair, spam protection
rate-limits our own publishes, and 32-slot queues silently drop bursts. Everything that
fixes those lives here, so the transport module only wires the pieces together.
"""

from __future__ import annotations

import contextlib
import logging
import os

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
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from gossip.identity import Identity

log = logging.getLogger(__name__)

# Per-peer outbound RPC queue (library default 32, drop-on-full: a burst loses ~97 %).
RPC_QUEUE_SIZE = 4096
# Per-subscription channel inside Pubsub (library default 32, drop-on-full).
LIBP2P_SUBSCRIPTION_BUFFER = 4096

GOSSIP_DEGREE, GOSSIP_DEGREE_LOW, GOSSIP_DEGREE_HIGH = 6, 4, 12


def harden_library() -> None:
    """Process-wide fixes to py-libp2p defaults; idempotent, applied when this module loads.

    Both knobs are read by the library at call time, so patching the defaults is enough and
    must happen before any peer connects.
    """
    _rpc_queue_module.RpcQueue.__init__.__defaults__ = (
        RPC_QUEUE_SIZE,
        _rpc_queue_module.DefaultMaxMessageSize,
    )
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = LIBP2P_SUBSCRIPTION_BUFFER
    serialize_yamux_writes()
    route_library_logging()


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


def make_router() -> GossipSub:
    """GossipSub with the settings measured to work (notes/libp2p-measurements.md)."""
    return GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=GOSSIP_DEGREE,
        degree_low=GOSSIP_DEGREE_LOW,
        degree_high=GOSSIP_DEGREE_HIGH,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=1,  # library default is 120 s
        adaptive_gossip_enabled=False,  # otherwise a sparse mesh stretches the heartbeat to 30 s
        spam_protection_enabled=False,  # otherwise >10 msg/s per (peer, topic) is dropped, ours too
    )


class HardenedPubsub(Pubsub):
    """Pubsub whose per-peer reader survives garbage.

    The library's stream handler only catches stream and varint errors, so one RPC that fails
    protobuf decoding escapes into the swarm's nursery and stops the whole host: any peer could
    crash us with a single malformed frame. Here such a peer loses its pubsub stream instead.
    """

    async def stream_handler(self, stream: INetStream) -> None:
        try:
            await super().stream_handler(stream)
        except Exception as error:  # whatever a hostile peer's bytes make the library raise
            peer_id = stream.muxed_conn.peer_id
            log.warning("dropping pubsub stream of %s after a malformed RPC: %r", peer_id, error)
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)


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
