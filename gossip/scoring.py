"""Peer scores: penalties for misbehaviour, decaying toward zero, and bans.

Every penalty lowers a peer's score by its weight; the score creeps back toward zero with a
half-life, so a peer that erred once long ago is forgiven while one that keeps sending
garbage crosses `ban_threshold` and is banned for `ban_duration` seconds. Only REJECT-worthy
behaviour is penalised (garbage, forgeries, protocol abuse), never mere loss or duplicates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gossip.transport import PeerId

log = structlog.get_logger(__name__)

_FORGET_BELOW = 0.01  # a score this close to zero is dropped from the table
_MAX_TRACKED = 10_000  # past this many entries, forgotten scores are swept out


@dataclass(slots=True)
class _Entry:
    score: float
    updated: float
    banned_until: float | None = None
    last_reason: str = ""


class PeerScores:
    """Per-peer scores (0 is neutral, negative is bad). Not thread-safe; used from the event loop."""

    def __init__(
        self,
        ban_threshold: float = -100.0,
        on_ban: Callable[[PeerId], None] | None = None,
        *,
        half_life: float = 600.0,
        ban_duration: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ban_threshold >= 0:
            raise ValueError(f"ban_threshold must be negative, got {ban_threshold}")
        self.ban_threshold = ban_threshold
        self.on_ban = on_ban
        self.half_life = half_life
        self.ban_duration = ban_duration
        self._clock = clock
        self._entries: dict[PeerId, _Entry] = {}

    def _current(self, entry: _Entry, now: float) -> float:
        elapsed = max(0.0, now - entry.updated)
        return entry.score * math.pow(0.5, elapsed / self.half_life)

    def penalize(self, peer: PeerId, reason: str, weight: float = 10.0) -> None:
        """Lower peer's score by weight; crossing ban_threshold bans it and calls on_ban once."""
        if weight < 0:
            raise ValueError(f"penalty weight must be >= 0, got {weight}")
        now = self._clock()
        entry = self._entries.get(peer)
        if entry is None:
            entry = self._entries[peer] = _Entry(score=0.0, updated=now)
            if len(self._entries) > _MAX_TRACKED:
                self._sweep(now)
        entry.score = self._current(entry, now) - weight
        entry.updated = now
        entry.last_reason = reason
        log.debug("peer penalised", peer=peer, reason=reason, weight=weight, score=round(entry.score, 2))
        if entry.score <= self.ban_threshold and not self._banned(entry, now):
            entry.banned_until = now + self.ban_duration
            log.warning("peer banned", peer=peer, reason=reason, seconds=self.ban_duration)
            if self.on_ban is not None:
                self.on_ban(peer)

    def score(self, peer: PeerId) -> float:
        entry = self._entries.get(peer)
        return 0.0 if entry is None else self._current(entry, self._clock())

    def is_banned(self, peer: PeerId) -> bool:
        entry = self._entries.get(peer)
        return entry is not None and self._banned(entry, self._clock())

    def last_reason(self, peer: PeerId) -> str:
        """Why the peer was last penalised ("" if never)."""
        entry = self._entries.get(peer)
        return "" if entry is None else entry.last_reason

    def snapshot(self) -> dict[PeerId, float]:
        now = self._clock()
        return {peer: self._current(entry, now) for peer, entry in self._entries.items()}

    def _banned(self, entry: _Entry, now: float) -> bool:
        if entry.banned_until is None:
            return False
        if now < entry.banned_until:
            return True
        # The ban has been served: start again from neutral rather than one penalty from a new ban.
        entry.banned_until, entry.score, entry.updated = None, 0.0, now
        return False

    def _sweep(self, now: float) -> None:
        for peer, entry in list(self._entries.items()):
            if not self._banned(entry, now) and abs(self._current(entry, now)) < _FORGET_BELOW:
                del self._entries[peer]
