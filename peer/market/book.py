"""What this peer heard on the tasks topic: announced models, jobs, inputs, progress and results.

Every note is kept under (subject, author): a peer can only speak for itself, and the
consumer asks for the author the ledger names (a job's input from its submitter, its progress
and result from its assigned solver), so a third peer cannot pre-empt or overwrite them.
Each table keeps its newest MAX_ENTRIES notes; `addrs` keeps the addresses each author gave
in its latest note (the validator made sure they name the author), for dialing it later.

Ownership: only the market service's inbox task calls `add`; every other task reads, and waits
for changes with `wait_for` (the owner swaps a trio.Event on each change, so readers never
write).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import trio

from peer.market.wire import InputNote, JobNote, ModelNote, Note, ProgressNote, ResultNote

T = TypeVar("T")
MAX_ENTRIES = 10_000
Key = tuple[str, str]  # (model hash or job id, author peer id)


class _Table(OrderedDict[Key, T]):
    def put(self, key: Key, value: T) -> None:
        self.pop(key, None)
        self[key] = value
        while len(self) > MAX_ENTRIES:
            self.popitem(last=False)


class Book:
    """Notes heard on the tasks topic, newest per (subject, author)."""

    def __init__(self) -> None:
        self.models: _Table[ModelNote] = _Table()
        self.jobs: _Table[JobNote] = _Table()
        self.inputs: _Table[InputNote] = _Table()
        self.progress: _Table[ProgressNote] = _Table()
        self.results: _Table[ResultNote] = _Table()
        self.addrs: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # peer -> its own addresses
        self._changed = trio.Event()

    def add(self, note: Note, author: str) -> bool:
        """Record a note from `author`; True if it is new or changes what we knew (owner only)."""
        if note.addrs:
            self.addrs.pop(author, None)
            self.addrs[author] = note.addrs
            while len(self.addrs) > MAX_ENTRIES:
                self.addrs.popitem(last=False)
        table: _Table[Note]
        match note:
            case ModelNote():
                table, key = self.models, (note.model_hash, author)  # type: ignore[assignment]
            case JobNote():
                table, key = self.jobs, (note.job_id, author)  # type: ignore[assignment]
            case InputNote():
                table, key = self.inputs, (note.job_id, author)  # type: ignore[assignment]
            case ProgressNote():
                table, key = self.progress, (note.job_id, author)  # type: ignore[assignment]
                old = self.progress.get(key)
                if old is not None and old.total == note.total and old.done >= note.done:
                    return False  # a re-broadcast or an old report arriving late
            case ResultNote():
                table, key = self.results, (note.job_id, author)  # type: ignore[assignment]
        if table.get(key) == note:
            return False
        table.put(key, note)
        self._changed.set()
        self._changed = trio.Event()
        return True

    def model_sources(self, model_hash: str) -> list[tuple[str, ModelNote]]:
        """(peer, note) of every peer that announced it serves `model_hash`."""
        return [(author, note) for (h, author), note in self.models.items() if h == model_hash]

    async def wait_for(self, lookup: Callable[[], T | None]) -> T:
        """Wait until `lookup()` returns something (re-checked after every change)."""
        while True:
            found = lookup()
            if found is not None:
                return found
            await self._changed.wait()
