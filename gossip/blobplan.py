"""Which chunks of a download are still wanted, and which provider is fetching which: no I/O.

gossip.blobfetch asks it for the next batch for a provider, tells it when a batch has been
read off the stream, when a chunk was verified (done) or failed its hash (retry), and when a
provider is gone (release: its unfinished batches go back to the pool for the others).

When the pool is empty, a provider with nothing in flight may duplicate a batch another
provider is still fetching ("steal"): the first copy to be verified wins, so one slow
provider cannot hold up the end of a download. Each batch is duplicated at most once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from gossip.transport import PeerId

Batch = tuple[int, int]  # chunk indices [start, end)


class ChunkPlan:
    """The chunks still wanted and who is fetching them; callers run in one trio thread."""

    def __init__(self, missing: Iterable[int], batch_chunks: int) -> None:
        if batch_chunks < 1:
            raise ValueError(f"batch_chunks must be at least 1, got {batch_chunks}")
        self._wanted = set(missing)  # not yet verified and written
        self._pending = sorted(self._wanted)  # wanted and handed to nobody, ascending
        self._batch_chunks = batch_chunks
        self._assigned: dict[PeerId, list[Batch]] = {}
        self._duplicated: set[Batch] = set()

    @property
    def complete(self) -> bool:
        return not self._wanted

    @property
    def wanted(self) -> int:
        return len(self._wanted)

    def has_work(self, peer: PeerId) -> bool:
        """Whether take(peer, steal=True) would return a batch now."""
        self._skip_done()
        return bool(self._pending) or self._stealable(peer) is not None

    def take(self, peer: PeerId, *, steal: bool) -> Batch | None:
        """The next run of up to batch_chunks pending chunks for peer; with steal, a duplicate if none."""
        self._skip_done()
        if self._pending:
            start = end = self._pending[0]
            pending, limit = self._pending, start + self._batch_chunks
            while end - start < len(pending) and end < limit and pending[end - start] == end:
                end += 1
            del pending[: end - start]
            batch = (start, end)
        else:
            victim = self._stealable(peer) if steal else None
            if victim is None:
                return None
            self._duplicated.add(victim)
            first = next(i for i in range(*victim) if i in self._wanted)
            last = max(i for i in range(*victim) if i in self._wanted)
            batch = (first, last + 1)
            self._duplicated.add(batch)  # a copy is not copied again
        self._assigned.setdefault(peer, []).append(batch)
        return batch

    def fetched(self, peer: PeerId, batch: Batch) -> None:
        """Every chunk of batch was read from peer (and handed on for verification)."""
        batches = self._assigned.get(peer, [])
        if batch in batches:
            batches.remove(batch)

    def release(self, peer: PeerId) -> None:
        """peer fetches nothing more: its unfinished chunks go back to the pool."""
        for batch in self._assigned.pop(peer, []):
            for index in range(*batch):
                self._requeue(index)

    def done(self, index: int) -> None:
        self._wanted.discard(index)

    def retry(self, index: int) -> None:
        """The chunk failed verification: it is wanted from someone else."""
        self._requeue(index)

    def _requeue(self, index: int) -> None:
        if index in self._wanted:
            at = bisect.bisect_left(self._pending, index)
            if at == len(self._pending) or self._pending[at] != index:
                self._pending.insert(at, index)

    def _skip_done(self) -> None:
        """Drop chunks a duplicate already delivered from the head of the pool."""
        while self._pending and self._pending[0] not in self._wanted:
            del self._pending[0]

    def _stealable(self, peer: PeerId) -> Batch | None:
        for other, batches in self._assigned.items():
            if other == peer:
                continue
            for batch in batches:
                if batch not in self._duplicated and any(i in self._wanted for i in range(*batch)):
                    return batch
        return None
