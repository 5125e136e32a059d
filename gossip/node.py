"""GossipNode: one per peer; turns a best-effort Transport into exactly-once topic delivery.

Every message offered to the node, by gossip or by anti-entropy, goes through one
synchronous path, `admit`: banned forwarder -> IGNORE; not a topic we subscribe -> IGNORE;
envelope that does not decode or verify -> REJECT and a penalty for the forwarder; id already
seen -> IGNORE; the topic's validator -> REJECT (penalty) / IGNORE; otherwise the envelope is
delivered on the topic's channel and recorded in the seen store. That path is the only
writer of the seen store and runs without awaiting, so there is no lock and no race between
gossip and sync. A full delivery channel makes admit IGNORE without recording, so the
envelope comes again (by gossip or sync) once the subscriber has caught up.

Metrics live in the node's own CollectorRegistry: hivemesh_gossip_received_total{topic,
verdict}, hivemesh_gossip_published_total{topic}, hivemesh_gossip_recovered_by_sync_total
{topic}, hivemesh_gossip_sync_rounds_total{result}, hivemesh_gossip_penalties_total,
hivemesh_gossip_bans_total and the gauge hivemesh_gossip_recent_messages.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from gossip.antientropy import MAX_SYNC_REQUEST, SYNC_PROTOCOL, AntiEntropy
from gossip.envelope import Envelope, decode
from gossip.errors import GossipError, InvalidMessage, MessageTooLarge
from gossip.identity import Identity
from gossip.reqresp import RequestResponse
from gossip.scoring import PeerScores
from gossip.seen import SeenStore
from gossip.transport import GossipMessage, PeerId, Transport, Verdict

log = structlog.get_logger(__name__)

DELIVERY_BUFFER = 4_096  # envelopes waiting per topic for the application to take them
_OTHER_TOPIC = "other"  # metric label for topics we do not subscribe (labels stay bounded)
_POLICE_INTERVAL = 1.0  # how often connected peers are checked against the ban list
_DISCONNECT_TIMEOUT = 5.0

AppValidator = Callable[[Envelope], Verdict]
STAT_NAMES = (
    "received",  # offered by others, by gossip or sync; = accepted + rejected + ignored
    "accepted",
    "rejected",
    "ignored",
    "recovered_by_sync",  # accepted envelopes that came by anti-entropy, not gossip
    "published",
    "sync_rounds",
    "sync_failures",
    "backlogged",  # ignored because the topic's delivery channel was full
)


@dataclass(slots=True)
class _Subscription:
    validate: AppValidator | None
    send: trio.MemorySendChannel[Envelope]


class _Metrics:
    def __init__(self, registry: CollectorRegistry, seen: SeenStore) -> None:
        self.received = Counter(
            "hivemesh_gossip_received",
            "Envelopes offered by peers, by verdict",
            ["topic", "verdict"],
            registry=registry,
        )
        self.published = Counter(
            "hivemesh_gossip_published", "Envelopes we published", ["topic"], registry=registry
        )
        self.recovered = Counter(
            "hivemesh_gossip_recovered_by_sync",
            "Envelopes accepted via anti-entropy",
            ["topic"],
            registry=registry,
        )
        self.sync_rounds = Counter(
            "hivemesh_gossip_sync_rounds", "Anti-entropy rounds", ["result"], registry=registry
        )
        self.penalties = Counter(
            "hivemesh_gossip_penalties", "Score penalties given to peers", registry=registry
        )
        self.bans = Counter("hivemesh_gossip_bans", "Peers banned", registry=registry)
        recent = Gauge("hivemesh_gossip_recent_messages", "Envelopes in the recent window", registry=registry)
        recent.set_function(lambda: len(seen))


class GossipNode:
    """Validation, de-duplication, delivery, scoring and anti-entropy for one peer.

    Usage: subscribe() to every topic first, then `await nursery.start(node.serve)` while
    the transport is serving. publish() works once serving.
    """

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        registry: CollectorRegistry | None = None,
        *,
        sync_interval: float = 1.0,
        recent_window: float = 120.0,
    ) -> None:
        if transport.peer_id != identity.peer_id:
            raise ValueError(f"transport is {transport.peer_id} but identity is {identity.peer_id}")
        self.transport = transport
        self.identity = identity
        self.peer_id: PeerId = identity.peer_id
        self.scores = PeerScores(on_ban=self._on_ban)
        self.rpc = RequestResponse(transport, on_misbehaviour=self.penalize)
        self.seen = SeenStore(recent_window)
        self.random = random.Random(identity.public)  # reproducible peer choice per identity
        self.sync = AntiEntropy(self, interval=sync_interval)
        self._subs: dict[str, _Subscription] = {}
        self._outgoing: set[bytes] = set()  # digests of our own publishes in flight through the transport
        self._seq = time.time_ns()  # seqs stay unique across restarts, so ids do too
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._metrics = _Metrics(registry if registry is not None else CollectorRegistry(), self.seen)
        self._bans_send, self._bans_recv = trio.open_memory_channel[PeerId](256)
        self._serving = False
        transport.set_validator(self._validate)
        self.rpc.set_handler(SYNC_PROTOCOL, self.sync.handle, max_request=MAX_SYNC_REQUEST)

    # -- public API -------------------------------------------------------------------------

    def subscribe(
        self, topic: str, validate: AppValidator | None = None
    ) -> trio.MemoryReceiveChannel[Envelope]:
        """Every accepted envelope of topic, ours included, exactly once. Call before serve().

        validate(envelope) runs on every new envelope of topic. Return REJECT only for what
        no honest peer would relay (malformed or forged bodies): it penalises the forwarder,
        and a peer that keeps offering it by sync is penalised each time. Use IGNORE for
        conditions that depend on local state (stale, unknown account, ...).
        """
        if self._serving:
            raise RuntimeError("subscribe() must be called before serve()")
        if topic in self._subs:
            raise ValueError(f"already subscribed to {topic}")
        send, recv = trio.open_memory_channel[Envelope](DELIVERY_BUFFER)
        self._subs[topic] = _Subscription(validate, send)
        return recv

    def topics(self) -> list[str]:
        return list(self._subs)

    async def publish(self, topic: str, kind: str, body: Any) -> Envelope:
        """Sign, deliver locally, record and gossip an envelope.

        Raises MessageTooLarge over the gossip limit, InvalidMessage if the topic's own
        validator rejects it, GossipError if our own delivery channel for topic is full.
        """
        self._seq += 1
        envelope = Envelope.create(self.identity, kind, self._seq, body)
        data = envelope.encode()
        sub = self._subs.get(topic)
        if sub is not None:
            if self._app_verdict(sub, envelope) is not Verdict.ACCEPT:
                raise InvalidMessage(f"our own {kind} envelope was not accepted by the {topic} validator")
            try:
                sub.send.send_nowait(envelope)
            except trio.WouldBlock as e:
                raise GossipError(
                    f"delivery channel for {topic} is full; the subscriber is not reading"
                ) from e
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # nobody listens locally; peers still get it
        self.seen.add(topic, envelope.msg_id, data, trio.current_time())
        digest = hashlib.sha256(data).digest()
        self._outgoing.add(digest)
        try:
            await self.transport.publish(topic, data)
        finally:
            self._outgoing.discard(digest)
        self._stats["published"] += 1
        self._metrics.published.labels(self._label(topic)).inc()
        return envelope

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run anti-entropy and housekeeping until cancelled; the transport must already be serving."""
        if self._serving:
            raise RuntimeError("GossipNode.serve() is already running")
        self._serving = True
        try:
            async with trio.open_nursery() as nursery:
                for topic in self._subs:
                    channel = await self.transport.subscribe(topic)  # joins the topic's mesh
                    nursery.start_soon(self._drain_transport, channel)
                nursery.start_soon(self._police)
                nursery.start_soon(self.sync.run)
                task_status.started()
        finally:
            for sub in self._subs.values():
                sub.send.close()  # subscribers' `async for` ends with the node

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    # -- the one validation path ------------------------------------------------------------

    def _validate(self, message: GossipMessage) -> Verdict:
        """The transport's validator: our own publishes pass, everything else goes through admit."""
        if self._outgoing:
            digest = hashlib.sha256(message.data).digest()
            if digest in self._outgoing:
                self._outgoing.discard(digest)
                return Verdict.ACCEPT  # already recorded and delivered by publish()
        return self.admit(message.topic, message.data, message.forwarder, via_sync=False)

    def admit(self, topic: str, data: bytes, forwarder: PeerId, *, via_sync: bool) -> Verdict:
        """Validate an envelope offered by forwarder; deliver and record it when accepted."""
        sub = self._subs.get(topic)
        if self.scores.is_banned(forwarder) or sub is None:
            return self._verdict(Verdict.IGNORE, topic)
        try:
            envelope = decode(data)
        except (InvalidMessage, MessageTooLarge) as e:
            self.penalize(forwarder, f"invalid envelope on {topic}: {e}")
            return self._verdict(Verdict.REJECT, topic)
        if envelope.msg_id in self.seen:
            return self._verdict(Verdict.IGNORE, topic)
        verdict = self._app_verdict(sub, envelope)
        if verdict is Verdict.REJECT:
            self.penalize(forwarder, f"{topic} validator rejected a {envelope.kind} envelope")
        if verdict is not Verdict.ACCEPT:
            return self._verdict(verdict, topic)
        try:
            sub.send.send_nowait(envelope)
        except trio.WouldBlock:
            self._stats["backlogged"] += 1  # not recorded: it will be offered again
            return self._verdict(Verdict.IGNORE, topic)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return self._verdict(Verdict.IGNORE, topic)  # the subscriber has gone
        self.seen.add(topic, envelope.msg_id, data, trio.current_time())
        if via_sync:
            self._stats["recovered_by_sync"] += 1
            self._metrics.recovered.labels(topic).inc()
        return self._verdict(Verdict.ACCEPT, topic)

    def _app_verdict(self, sub: _Subscription, envelope: Envelope) -> Verdict:
        if sub.validate is None:
            return Verdict.ACCEPT
        try:
            return sub.validate(envelope)
        except Exception as e:
            # A validator tripping over a hostile body must not crash the transport's task.
            log.error("topic validator raised; rejecting", kind=envelope.kind, exc_info=e)
            return Verdict.REJECT

    def _verdict(self, verdict: Verdict, topic: str) -> Verdict:
        self._stats["received"] += 1
        self._stats[
            {Verdict.ACCEPT: "accepted", Verdict.REJECT: "rejected", Verdict.IGNORE: "ignored"}[verdict]
        ] += 1
        self._metrics.received.labels(self._label(topic), verdict.value).inc()
        return verdict

    def _label(self, topic: str) -> str:
        return topic if topic in self._subs else _OTHER_TOPIC

    # -- scores and bans --------------------------------------------------------------------

    def penalize(self, peer: PeerId, reason: str) -> None:
        """Lower peer's score for misbehaviour (never our own)."""
        if peer == self.peer_id:
            return
        self._metrics.penalties.inc()
        self.scores.penalize(peer, reason)

    def note_sync_round(self, *, ok: bool) -> None:
        self._stats["sync_rounds" if ok else "sync_failures"] += 1
        self._metrics.sync_rounds.labels("ok" if ok else "failed").inc()

    def _on_ban(self, peer: PeerId) -> None:
        self._metrics.bans.inc()
        try:
            self._bans_send.send_nowait(peer)
        except trio.WouldBlock:
            pass  # the periodic sweep in _police catches it

    async def _police(self) -> None:
        """Disconnect banned peers: at once when banned, and again if they reconnect."""
        while True:
            with trio.move_on_after(_POLICE_INTERVAL):
                await self._bans_recv.receive()
            for peer in self.transport.connected_peers():
                if self.scores.is_banned(peer):
                    with trio.move_on_after(_DISCONNECT_TIMEOUT):
                        try:
                            await self.transport.disconnect(peer)
                        except GossipError as e:
                            log.debug("disconnecting banned peer failed", peer=peer, error=str(e))

    async def _drain_transport(self, channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        # Delivery happens in admit(); this only keeps the transport's queue from filling.
        async with channel:
            async for _ in channel:
                pass
