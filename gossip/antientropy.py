"""Anti-entropy: periodic pull sync, so a gossip message lost on the way still arrives.

Every `interval` seconds (jittered, so a mesh of peers does not sync in lockstep) the node
picks a random connected peer and asks on SYNC_PROTOCOL with the ids it holds in its recent
window, per subscribed topic. The peer answers with the envelopes it holds that the asker
lacks, bounded in count and bytes; whatever is left over comes in a later round. Answers go
through the node's normal validation path, so forged envelopes cost the server its score
exactly as they would cost a gossiping peer.

Wire (msgpack, inside request/response frames):
  request  {"t": {topic: [msg_id, ...]}}   ids are 32-byte sha256 digests
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
MAX_SYNC_TOPICS = 64
MAX_SYNC_IDS = 16_384  # ids per request, all topics together (~560 KB of msgpack)
MAX_SYNC_REQUEST = 1 << 20
MAX_SYNC_ENVELOPES = 2_048  # envelopes per response
MAX_SYNC_RESPONSE_BYTES = 4 << 20  # wire bytes per response; the rest waits for the next round
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

    async def run(self) -> None:
        """Sync with a random peer every interval (jittered by +-50%), forever."""
        while True:
            await trio.sleep(self.interval * self.node.random.uniform(0.5, 1.5))
            await self.sync_once()

    # -- asking ------------------------------------------------------------------------------

    async def sync_once(self, peer: PeerId | None = None) -> int:
        """One round with peer (or a random connected one). Returns how many envelopes it recovered."""
        node = self.node
        if peer is None:
            candidates = [p for p in node.transport.connected_peers() if not node.scores.is_banned(p)]
            if not candidates:
                return 0
            peer = node.random.choice(candidates)
        now = trio.current_time()
        topics = node.topics()
        budget = MAX_SYNC_IDS // max(1, len(topics))
        request = {"t": {topic: node.seen.recent_ids(topic, now, budget) for topic in topics}}
        try:
            reply = await node.rpc.request(
                peer,
                SYNC_PROTOCOL,
                request,
                timeout=self.timeout,
                max_response=MAX_SYNC_RESPONSE_BYTES + _RESPONSE_SLACK,
            )
        except (
            GossipError
        ) as e:  # unreachable, slow or refusing peers are normal; garbage is already penalised
            log.debug("sync round failed", peer=peer, error=str(e))
            node.note_sync_round(ok=False)
            return 0
        node.note_sync_round(ok=True)
        return self._absorb(peer, set(topics), reply)

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
        """Server side: the envelopes we hold in the window that the asker did not list."""
        await trio.lowlevel.checkpoint()
        node = self.node
        if node.scores.is_banned(peer):
            raise GossipError("refused: you are banned by this peer")
        try:
            wanted = _parse_request(body)
        except InvalidMessage:
            node.penalize(peer, "malformed sync request")
            raise
        now = trio.current_time()
        out: list[list[Any]] = []
        size = 0
        for topic, have in wanted.items():
            for record in node.seen.recent(topic, now):
                if record.msg_id in have:
                    continue
                cost = len(record.wire) + len(topic) + _ITEM_OVERHEAD
                if size + cost > MAX_SYNC_RESPONSE_BYTES or len(out) >= MAX_SYNC_ENVELOPES:
                    return {"e": out}
                out.append([topic, record.wire])
                size += cost
        return {"e": out}


def _parse_request(body: Any) -> dict[str, set[bytes]]:
    """Validate a sync request from the network. Raises InvalidMessage."""
    if not isinstance(body, dict) or set(body) != {"t"} or not isinstance(body["t"], dict):
        raise InvalidMessage("sync request must be {t: {topic: [msg_id, ...]}}")
    if len(body["t"]) > MAX_SYNC_TOPICS:
        raise InvalidMessage(f"sync request names {len(body['t'])} topics (limit {MAX_SYNC_TOPICS})")
    wanted: dict[str, set[bytes]] = {}
    total = 0
    for topic, ids in body["t"].items():
        if not isinstance(topic, str) or not isinstance(ids, list):
            raise InvalidMessage("sync request topics must map a name to a list of ids")
        total += len(ids)
        if total > MAX_SYNC_IDS:
            raise InvalidMessage(f"sync request lists more than {MAX_SYNC_IDS} ids")
        if not all(isinstance(i, bytes) and len(i) == 32 for i in ids):
            raise InvalidMessage("sync request ids must be 32-byte digests")
        wanted[topic] = set(ids)
    return wanted
