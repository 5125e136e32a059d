"""The seen store: envelopes a node has accepted recently, bounded in time and count.

Full records (topic, msg_id, wire bytes, receipt time on trio's clock) are kept for
`recent_window` seconds: they are what anti-entropy advertises and serves. Bare ids are kept
`id_window` seconds (ten windows by default) so that an envelope re-offered by a peer that
received it later than we did is still known as a duplicate after its record is gone.
Receipt times only grow, so insertion order is age order and pruning pops from the front.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    msg_id: bytes
    wire: bytes  # exactly the bytes we accepted, served as-is to peers that lack them
    received_at: float


class SeenStore:
    """Bounded recent store. One owner (the GossipNode's validation path) writes it."""

    def __init__(
        self,
        recent_window: float,
        *,
        id_window: float | None = None,
        max_records: int = 100_000,
        max_ids: int = 1_000_000,
    ) -> None:
        if recent_window <= 0:
            raise ValueError(f"recent_window must be positive, got {recent_window}")
        self.recent_window = recent_window
        self.id_window = max(id_window if id_window is not None else 10 * recent_window, recent_window)
        self.max_records, self.max_ids = max_records, max_ids
        self._records: OrderedDict[bytes, Record] = OrderedDict()
        self._by_topic: dict[str, OrderedDict[bytes, Record]] = {}
        self._ids: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._records)

    def add(self, topic: str, msg_id: bytes, wire: bytes, now: float) -> None:
        assert msg_id not in self._ids, "callers check membership first"
        record = Record(topic, msg_id, wire, now)
        self._ids[msg_id] = now
        self._records[msg_id] = record
        self._by_topic.setdefault(topic, OrderedDict())[msg_id] = record
        self.prune(now)

    def prune(self, now: float) -> None:
        horizon = now - self.recent_window
        while self._records:
            oldest = next(iter(self._records.values()))
            if oldest.received_at >= horizon and len(self._records) <= self.max_records:
                break
            self._records.popitem(last=False)
            by_topic = self._by_topic[oldest.topic]
            del by_topic[oldest.msg_id]
            if not by_topic:
                del self._by_topic[oldest.topic]
        id_horizon = now - self.id_window
        while self._ids:
            _, received_at = next(iter(self._ids.items()))
            if received_at >= id_horizon and len(self._ids) <= self.max_ids:
                break
            self._ids.popitem(last=False)

    def recent(self, topic: str, now: float) -> list[Record]:
        """Records of topic still in the window, oldest first."""
        self.prune(now)
        return list(self._by_topic.get(topic, {}).values())

    def newest(self, topic: str, now: float, span: float, limit: int | None = None) -> list[Record]:
        """Records of topic received in the last `span` seconds, newest first, at most `limit`.

        Costs O(records returned): the walk starts at the newest record and stops at the horizon.
        """
        self.prune(now)
        records = self._by_topic.get(topic)
        if not records or span <= 0:
            return []
        horizon = now - span
        out: list[Record] = []
        for record in reversed(records.values()):
            if record.received_at < horizon or (limit is not None and len(out) >= limit):
                break
            out.append(record)
        return out

    def recent_ids(self, topic: str, now: float, limit: int) -> list[bytes]:
        """Ids of topic still in the window; the newest `limit` of them if there are more."""
        self.prune(now)
        records = self._by_topic.get(topic)
        if not records or limit <= 0:
            return []
        ids = list(records)
        return ids[-limit:] if len(ids) > limit else ids
