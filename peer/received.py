"""A bounded log of the gossip envelopes this peer received, one per topic.

Operators and tests read it through `GET /gossip/received?topic=...&since=N`: every entry
gets a per-topic index (1, 2, ...) and `since=N` returns the entries after index N, so a
client polls with the highest index it has seen.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

from gossip.envelope import Envelope

DEFAULT_MAX_ENTRIES = 1024


def jsonable(value: Any) -> Any:
    """Map a decoded msgpack body onto JSON types (bytes become hex strings)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else jsonable(k) if isinstance(k, bytes) else str(k): jsonable(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def entry_of(envelope: Envelope, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "msg_id": envelope.msg_id.hex(),
        "author": envelope.author_id,
        "kind": envelope.kind,
        "seq": envelope.seq,
        "body": jsonable(envelope.body),
        "received_at": time.time(),
    }


class ReceivedLog:
    """The last `max_entries` envelopes of one topic. Only its drain task appends."""

    def __init__(self, topic: str, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.topic = topic
        self._entries: deque[dict[str, Any]] = deque(maxlen=max_entries)
        self._next_index = 1

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, envelope: Envelope) -> dict[str, Any]:
        entry = entry_of(envelope, self._next_index)
        self._next_index += 1
        self._entries.append(entry)
        return entry

    def since(self, index: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries with an index above `index`, oldest first (at most `limit`)."""
        out = [e for e in self._entries if e["index"] > index]
        return out[:limit] if limit is not None else out

    async def drain(self, channel: trio.MemoryReceiveChannel[Envelope]) -> None:
        """Append every envelope from the gossip node's subscription until it closes."""
        async with channel:
            async for envelope in channel:
                self.append(envelope)
