"""Anti-entropy: periodic pull sync, so a gossip message lost on the way still arrives.

Every round the node picks a random connected peer and tells it, per subscribed topic, a span
of seconds and the 8-byte id prefixes of *every* envelope it received within that span (its
whole recent window). The peer answers with the envelopes it received within the span, less
SYNC_MARGIN (which absorbs the difference in arrival times between the two), whose prefix was
not listed, bounded in count and bytes; whatever is left over comes in a later round. Because
the listing is complete for its span, the answer never holds what the asker already has: if
a window holds more than MAX_SYNC_IDS ids, the newest are listed and the span shrinks to what
they cover, instead of inviting the peer to resend the rest every round. Only durations cross
the wire, so the two clocks need not agree. Answers go through the node's normal validation
path, so forged envelopes cost the server its score exactly as they would cost a gossiping
peer.

Cheap at steady state: a round costs a stream (a few ms of CPU in py-libp2p, whatever it
carries) plus ~1 µs per listed id, so a round that recovers nothing doubles the wait before
the next, up to MAX_BACKOFF times `interval`; recovering something, failing or having nobody
to ask resets it.

Wire (msgpack, inside request/response frames):
  request  {"t": {topic: {"s": span_seconds, "i": [id_prefix, ...]}}}
  response {"e": [[topic, envelope_wire_bytes], ...]}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio

from gossip.errors import GossipError, InvalidMessage
from gossip.transport import PeerId, Verdict

if TYPE_CHECKING:
    from gossip.node import GossipNode

log = structlog.get_logger(__name__)

SYNC_PROTOCOL = "/hivemesh/sync/1"
ID_PREFIX = 8  # bytes of a msg id listed in requests (a collision only costs one missed offer)
MAX_SYNC_TOPICS = 64
MAX_SYNC_IDS = 16_384  # ids per request, all topics together (~164 KB of msgpack)
MAX_SYNC_REQUEST = 1 << 20
MAX_SYNC_ENVELOPES = 2_048  # envelopes per response
MAX_SYNC_RESPONSE_BYTES = 4 << 20  # wire bytes per response; the rest waits for the next round
MAX_SPAN = 86_400.0
SYNC_MARGIN = 2.0  # seconds: how much earlier than us the asker may have received an envelope
MAX_BACKOFF = 4  # the wait between quiet rounds grows up to this many intervals
_ITEM_OVERHEAD = 16  # msgpack headers around one [topic, wire] pair, rounded up
_RESPONSE_SLACK = 1024  # the {"ok": {"e": [...]}} wrapping


class AntiEntropy:
    """Both sides of the sync protocol for one GossipNode."""

    def __init__(self, node: GossipNode, *, interval: float, timeout: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError(f"sync interval must be positive, got {interval}")
        self.node = node
        self.interval = interval
        self.timeout = timeout
        self._quiet = False  # the last round succeeded and recovered nothing

    async def run(self) -> None:
        """Sync forever: every interval (jittered by +-50%), backing off while rounds find nothing."""
        wait = self.interval
        while True:
            await trio.sleep(wait * self.node.random.uniform(0.5, 1.5))
            await self.sync_once()
            # Found something, failed or had nobody to ask: stay alert. Quiet: slow down.
            wait = min(wait * 2, self.interval * MAX_BACKOFF) if self._quiet else self.interval

    # -- asking ------------------------------------------------------------------------------

    async def sync_once(self, peer: PeerId | None = None) -> int:
        """One round with peer (or a random connected one). Returns how many envelopes it recovered."""
        node = self.node
        self._quiet = False
        if peer is None:
            candidates = [p for p in node.transport.connected_peers() if not node.scores.is_banned(p)]
            if not candidates:
                return 0
            peer = node.random.choice(candidates)
        topics = node.topics()
        listing = self._listing(topics, trio.current_time(), node.seen.recent_window)
        try:
            reply = await node.rpc.request(
                peer,
                SYNC_PROTOCOL,
                {"t": listing},
                timeout=self.timeout,
                max_response=MAX_SYNC_RESPONSE_BYTES + _RESPONSE_SLACK,
            )
        except GossipError as e:  # unreachable, slow or refusing peers are normal; garbage is penalised
            log.debug("sync round failed", peer=peer, error=str(e))
            node.note_sync_round(ok=False)
            return 0
        node.note_sync_round(ok=True)
        recovered = self._absorb(peer, set(topics), reply)
        self._quiet = recovered == 0
        return recovered

    def _listing(self, topics: list[str], now: float, span: float) -> dict[str, dict[str, Any]]:
        """Per topic: the span covered and the id prefixes of everything received within it."""
        found = {topic: self.node.seen.newest(topic, now, span, MAX_SYNC_IDS + 1) for topic in topics}
        budgets = share(MAX_SYNC_IDS, {topic: len(records) for topic, records in found.items()})
        listing: dict[str, dict[str, Any]] = {}
        for topic, records in found.items():
            listed = records[: budgets[topic]]
            covered = span
            if len(listed) < len(records):  # too many: the newest are listed, the span shrinks to them
                covered = now - listed[-1].received_at if listed else 0.0
            listing[topic] = {"s": covered, "i": [r.msg_id[:ID_PREFIX] for r in listed]}
        return listing

    def _absorb(self, peer: PeerId, asked: set[str], reply: Any) -> int:
        items = reply.get("e") if isinstance(reply, dict) and len(reply) == 1 else None
        if not isinstance(items, list) or len(items) > MAX_SYNC_ENVELOPES:
            self.node.penalize(peer, "malformed sync response")
            return 0
        recovered = 0
        for item in items:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], bytes)
                and item[0] in asked
            ):
                self.node.penalize(peer, "malformed sync response item")
                break
            verdict = self.node.admit(item[0], item[1], peer, via_sync=True)
            if verdict is Verdict.ACCEPT:
                recovered += 1
            elif verdict is Verdict.REJECT:
                break  # already penalised; trust nothing else this peer sent in this answer
        return recovered

    # -- answering ---------------------------------------------------------------------------

    async def handle(self, peer: PeerId, body: Any) -> dict[str, Any]:
        """Server side: the envelopes we received within each span that the asker did not list."""
        await trio.lowlevel.checkpoint()
        node = self.node
        if node.scores.is_banned(peer):
            raise GossipError("refused: you are banned by this peer")
        try:
            wanted = _parse_request(body)
        except InvalidMessage as e:
            node.penalize(peer, f"malformed sync request: {e}")
            raise
        now = trio.current_time()
        out: list[list[Any]] = []
        size = 0
        for topic, (span, have) in wanted.items():
            for record in reversed(node.seen.newest(topic, now, span - SYNC_MARGIN)):  # oldest first
                if record.msg_id[:ID_PREFIX] in have:
                    continue
                cost = len(record.wire) + len(topic) + _ITEM_OVERHEAD
                if size + cost > MAX_SYNC_RESPONSE_BYTES or len(out) >= MAX_SYNC_ENVELOPES:
                    return {"e": out}
                out.append([topic, record.wire])
                size += cost
        return {"e": out}


def share(total: int, needs: dict[str, int]) -> dict[str, int]:
    """Split total between topics: each gets what it needs, the busiest split what is left evenly."""
    out: dict[str, int] = {}
    left = total
    for i, (topic, need) in enumerate(sorted(needs.items(), key=lambda item: item[1])):
        out[topic] = min(need, left // (len(needs) - i))
        left -= out[topic]
    return out


def _parse_request(body: Any) -> dict[str, tuple[float, set[bytes]]]:
    """Validate a sync request from the network. Raises InvalidMessage."""
    if not isinstance(body, dict) or set(body) != {"t"} or not isinstance(body["t"], dict):
        raise InvalidMessage("sync request must be {t: {topic: {s: span, i: [id_prefix, ...]}}}")
    if len(body["t"]) > MAX_SYNC_TOPICS:
        raise InvalidMessage(f"sync request names {len(body['t'])} topics (limit {MAX_SYNC_TOPICS})")
    wanted: dict[str, tuple[float, set[bytes]]] = {}
    total = 0
    for topic, entry in body["t"].items():
        if not isinstance(topic, str) or not isinstance(entry, dict) or set(entry) != {"s", "i"}:
            raise InvalidMessage("sync request topics must map a name to {s: span, i: [id_prefix, ...]}")
        span, ids = entry["s"], entry["i"]
        if isinstance(span, bool) or not isinstance(span, int | float) or not 0 <= span <= MAX_SPAN:
            raise InvalidMessage(f"sync request span must be a number of seconds in [0, {MAX_SPAN:g}]")
        if not isinstance(ids, list):
            raise InvalidMessage("sync request ids must be a list")
        total += len(ids)
        if total > MAX_SYNC_IDS:
            raise InvalidMessage(f"sync request lists more than {MAX_SYNC_IDS} ids")
        if not all(isinstance(i, bytes) and len(i) == ID_PREFIX for i in ids):
            raise InvalidMessage(f"sync request ids must be {ID_PREFIX}-byte id prefixes")
        wanted[topic] = (float(span), set(ids))
    return wanted
