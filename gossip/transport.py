"""The transport interface: what the rest of hivemesh may ask of the network.

Two real implementations: `gossip.libp2p_transport.Libp2pTransport` (TCP, Noise, Yamux,
GossipSub) and `gossip.memory_transport.MemoryTransport` (many peers in one process, with
drop / delay / duplicate / partition controls). Everything above this file (envelopes,
request/response, anti-entropy, blobs, the daemon) is written once against it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

PeerId = str  # base58 libp2p peer id ("12D3KooW..."), derived from the Ed25519 public key


class Verdict(enum.Enum):
    """Outcome of validating one gossip message (as in go-libp2p-pubsub)."""

    ACCEPT = "accept"  # deliver and forward
    IGNORE = "ignore"  # drop quietly: duplicate, stale, not for us; no penalty
    REJECT = "reject"  # drop and penalise the peer that forwarded it


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A gossip message as the transport hands it up."""

    topic: str
    data: bytes
    forwarder: PeerId  # the neighbour it came from (not necessarily its author)


# Sync validator called for every inbound gossip message before it is forwarded.
Validator = Callable[[GossipMessage], Verdict]


class ByteStream(Protocol):
    """A reliable, ordered, bidirectional byte stream to one remote peer."""

    remote_peer: PeerId

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to max_bytes; b"" at end of stream. Raises StreamBroken on reset."""
        ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...


StreamHandler = Callable[[ByteStream], Awaitable[None]]


class Transport(Protocol):
    """One peer's view of the network.

    Lifecycle: `await nursery.start(t.serve)` returns once listening; cancelling the
    nursery closes every connection and releases the listen address.
    """

    peer_id: PeerId

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    def listen_addrs(self) -> list[str]:
        """Full addresses others dial to reach us (for libp2p: multiaddrs ending /p2p/<id>)."""
        ...

    async def connect(self, addr: str, timeout: float = 10.0) -> PeerId:
        """Dial addr; returns the remote peer id. Raises DialError (never hangs past timeout)."""
        ...

    async def disconnect(self, peer: PeerId) -> None: ...

    def connected_peers(self) -> list[PeerId]: ...

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Accepted messages of topic (our own publishes included)."""
        ...

    def set_validator(self, validator: Validator) -> None:
        """One validator for every topic; REJECT drops the message and is reported upward."""
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Best effort: never raises on loss. Raises MessageTooLarge over MAX_GOSSIP_BYTES."""
        ...

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    async def open_stream(self, peer: PeerId, protocol: str, timeout: float = 10.0) -> ByteStream:
        """Raises DialError / ProtocolNotSupported (never hangs past timeout)."""
        ...


# Gossip carries small messages only; weights and datasets travel as blobs over streams.
MAX_GOSSIP_BYTES = 512 * 1024
