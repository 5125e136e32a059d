"""Anti-entropy: periodic pull sync, so a gossip message lost on the way still arrives.

Every round the node picks a random connected peer and tells it, per subscribed topic, a span
of seconds and the 8-byte id prefixes of *every* envelope it received within that span. The
peer answers with the envelopes it received within the span (less SYNC_MARGIN, which absorbs
the difference in arrival times between the two) whose prefix was not listed, bounded in
count and bytes; whatever is left over comes in a later round. Because the listing is
complete for its span, the answer never contains what the asker already holds. Only
durations cross the wire, so the two clocks need not agree. Answers go through the node's
normal validation path, so forged envelopes cost the server its score exactly as they would
cost a gossiping peer.

Cheap at steady state: most rounds are *fresh*, listing only the last FRESH_SPAN seconds, plus
a digest of the rest: how many envelopes the asker holds in its whole recent window. A peer
holding more than that within the window (less the margin) certainly has something the
asker lacks and says so; the asker then runs a *deep* round with it at once, listing its
whole window. Deep rounds also run first, every DEEP_EVERY-th round, and after a round that
recovered something or failed. A round that finds nothing doubles the wait before the next,
up to MAX_BACKOFF times `interval`; anything else resets it. If the ids of a span exceed
MAX_SYNC_IDS, the newest are listed and the span shrinks to what they cover.

Wire (msgpack, inside request/response frames):
  request  {"t": {topic: {"s": span_s, "i": [id_prefix, ...], "w": window_s, "n": count}}}
  response {"e": [[topic, envelope_wire_bytes], ...], "more": [topic, ...]}   "more" may be absent
"""

from __future__ import annotations

from dataclasses import dataclass
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
FRESH_SPAN = 10.0  # seconds listed by a fresh round
DEEP_EVERY = 10  # rounds
MAX_BACKOFF = 4  # the wait between quiet rounds grows up to this many intervals
_ITEM_OVERHEAD = 16  # msgpack headers around one [topic, wire] pair, rounded up
_RESPONSE_SLACK = 1024  # the {"ok": {"e": [...], "more": [...]}} wrapping


@dataclass(frozen=True, slots=True)
class _Wanted:
    """One topic of a parsed request."""

    span: float
    have: set[bytes]
    window: float
    count: int


class AntiEntropy:
    """Both sides of the sync protocol for one GossipNode."""

    def __init__(self, node: GossipNode, *, interval: float, timeout: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError(f"sync interval must be positive, got {interval}")
        self.node = node
        self.interval = interval
        self.timeout = timeout
        self._deep_next = True  # the first round catches up on the whole window
        self._since_deep = 0
        self._quiet = False  # the last round succeeded and found nothing missing

    async def run(self) -> None:
        """Sync forever: every interval (jittered by +-50%), backing off while rounds find nothing."""
        wait = self.interval
        while True:
            await trio.sleep(wait * self.node.random.uniform(0.5, 1.5))
            await self.sync_once()
            # Found something, failed or had nobody to ask: stay alert. Quiet: slow down.
            wait = min(wait * 2, self.interval * MAX_BACKOFF) if self._quiet else self.interval

    # -- asking ------------------------------------------------------------------------------

    async def sync_once(self, peer: PeerId | None = None, *, deep: bool | None = None) -> int:
        """One round with peer (or a random connected one). Returns how many envelopes it recovered.

        deep: list the whole recent window (True), only FRESH_SPAN (False), or as scheduled (None).
        A fresh round that learns the peer holds more is followed at once by a deep one.
        """
        node = self.node
        self._quiet = False
        if peer is None:
            candidates = [p for p in node.transport.connected_peers() if not node.scores.is_banned(p)]
            if not candidates:
                return 0
            peer = node.random.choice(candidates)
        if deep is None:
            deep = self._deep_next or self._since_deep + 1 >= DEEP_EVERY
        outcome = await self._round(peer, deep)
        if outcome is not None and outcome[1] and not deep:  # the peer holds more than we do
            deeper = await self._round(peer, True)
            outcome = None if deeper is None else (outcome[0] + deeper[0], deeper[1])
        if outcome is None:
            self._deep_next = True
            return 0
        recovered, behind = outcome
        self._deep_next = recovered > 0
        self._quiet = recovered == 0 and not behind
        return recovered

    async def _round(self, peer: PeerId, deep: bool) -> tuple[int, bool] | None:
        """One request: (envelopes recovered, whether the peer says it holds more), or None if it failed."""
        node = self.node
        self._since_deep = 0 if deep else self._since_deep + 1
        window = node.seen.recent_window
        topics = node.topics()
        listing = self._listing(topics, trio.current_time(), window if deep else min(FRESH_SPAN, window))
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
            return None
        node.note_sync_round(ok=True)
        return self._absorb(peer, set(topics), reply)

    def _listing(self, topics: list[str], now: float, span: float) -> dict[str, dict[str, Any]]:
        """Per topic: the span covered, the id prefixes received within it, and the window digest."""
        seen = self.node.seen
        found = {topic: seen.newest(topic, now, span, MAX_SYNC_IDS + 1) for topic in topics}
        budgets = share(MAX_SYNC_IDS, {topic: len(records) for topic, records in found.items()})
        listing: dict[str, dict[str, Any]] = {}
        for topic, records in found.items():
            listed = records[: budgets[topic]]
            covered = span
            if len(listed) < len(records):  # too many: the newest are listed, the span shrinks to them
                covered = now - listed[-1].received_at if listed else 0.0
            listing[topic] = {
                "s": covered,
                "i": [r.msg_id[:ID_PREFIX] for r in listed],
                "w": seen.recent_window,
                "n": seen.count(topic, now),
            }
        return listing

    def _absorb(self, peer: PeerId, asked: set[str], reply: Any) -> tuple[int, bool]:
        well_formed = isinstance(reply, dict) and "e" in reply and set(reply) <= {"e", "more"}
        items = reply["e"] if well_formed else None
        more = reply.get("more", []) if well_formed else None
        if not isinstance(items, list) or len(items) > MAX_SYNC_ENVELOPES or not isinstance(more, list):
            self.node.penalize(peer, "malformed sync response")
            return 0, False
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
        return recovered, any(isinstance(topic, str) and topic in asked for topic in more[:MAX_SYNC_TOPICS])

    # -- answering ---------------------------------------------------------------------------

    async def handle(self, peer: PeerId, body: Any) -> dict[str, Any]:
        """Server side: the envelopes we received within each span that the asker did not list,
        and the topics where we hold more of the asker's window than it does."""
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
        more = [
            topic
            for topic, want in wanted.items()
            if node.seen.count(topic, now, want.window - SYNC_MARGIN) > want.count
        ]
        out: list[list[Any]] = []
        size = 0
        for topic, want in wanted.items():
            for record in reversed(node.seen.newest(topic, now, want.span - SYNC_MARGIN)):  # oldest first
                if record.msg_id[:ID_PREFIX] in want.have:
                    continue
                cost = len(record.wire) + len(topic) + _ITEM_OVERHEAD
                if size + cost > MAX_SYNC_RESPONSE_BYTES or len(out) >= MAX_SYNC_ENVELOPES:
                    return {"e": out, "more": more}
                out.append([topic, record.wire])
                size += cost
        return {"e": out, "more": more}


def share(total: int, needs: dict[str, int]) -> dict[str, int]:
    """Split total between topics: each gets what it needs, the busiest split what is left evenly."""
    out: dict[str, int] = {}
    left = total
    for i, (topic, need) in enumerate(sorted(needs.items(), key=lambda item: item[1])):
        out[topic] = min(need, left // (len(needs) - i))
        left -= out[topic]
    return out


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SPAN:
        raise InvalidMessage(f"sync request {what} must be a number of seconds in [0, {MAX_SPAN:g}]")
    return float(value)


def _parse_request(body: Any) -> dict[str, _Wanted]:
    """Validate a sync request from the network. Raises InvalidMessage."""
    if not isinstance(body, dict) or set(body) != {"t"} or not isinstance(body["t"], dict):
        raise InvalidMessage("sync request must be {t: {topic: {s, i, w, n}}}")
    if len(body["t"]) > MAX_SYNC_TOPICS:
        raise InvalidMessage(f"sync request names {len(body['t'])} topics (limit {MAX_SYNC_TOPICS})")
    wanted: dict[str, _Wanted] = {}
    total = 0
    for topic, entry in body["t"].items():
        if not isinstance(topic, str) or not isinstance(entry, dict) or set(entry) != {"s", "i", "w", "n"}:
            raise InvalidMessage(
                "sync request topics must map a name to {s: span, i: ids, w: window, n: count}"
            )
        ids, count = entry["i"], entry["n"]
        if not isinstance(ids, list):
            raise InvalidMessage("sync request ids must be a list")
        total += len(ids)
        if total > MAX_SYNC_IDS:
            raise InvalidMessage(f"sync request lists more than {MAX_SYNC_IDS} ids")
        if not all(isinstance(i, bytes) and len(i) == ID_PREFIX for i in ids):
            raise InvalidMessage(f"sync request ids must be {ID_PREFIX}-byte id prefixes")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidMessage("sync request count must be a non-negative integer")
        wanted[topic] = _Wanted(_seconds(entry["s"], "span"), set(ids), _seconds(entry["w"], "window"), count)
    return wanted
