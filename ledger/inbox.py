"""The ledger owner task's inbox: the events other tasks send it, and how it answers them.

Every piece of mutable ledger state belongs to one task (LedgerNode's owner). Other tasks
never touch it: they put one of these events in its inbox, and when they need an answer they
pass a one-slot reply channel and wait on the other end. The owner answers with `answer`,
which never blocks and never fails, because the asker may have given up in the meantime.
Consensus timers send `ledger.consensus.Timeout` and `ledger.driver.HeightDue` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from gossip.envelope import Envelope
from gossip.transport import PeerId
from ledger.apply import Receipt
from ledger.compact import CompactProposal
from ledger.errors import LedgerError

Placed = tuple[int, int, Receipt]  # where a tx was committed: (height, index in block, receipt)


@dataclass(frozen=True, slots=True)
class Gossiped:
    """An envelope accepted on TOPIC_TX or TOPIC_CONSENSUS."""

    topic: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Submit:
    """A tx from our own API: answered with its hash or the mempool's LedgerError."""

    tx: bytes
    reply: trio.MemorySendChannel[bytes | LedgerError]


@dataclass(frozen=True, slots=True)
class SubmitBatch:
    """Txs from our own API, admitted in one owner step: answered with a hash or error per tx."""

    txs: tuple[bytes, ...]
    reply: trio.MemorySendChannel[list[bytes | LedgerError]]


@dataclass(frozen=True, slots=True)
class Watch:
    """Answer with the tx's placement once it is committed (stop=True: forget this waiter)."""

    tx_hash: bytes
    reply: trio.MemorySendChannel[Placed]
    stop: bool = False


@dataclass(frozen=True, slots=True)
class Synced:
    """A block fetched by block sync: answered True if applied (or already held)."""

    peer: PeerId
    height: int
    block: bytes
    commit: bytes
    more: bool  # more blocks of this sync run follow: do not start consensus yet
    reply: trio.MemorySendChannel[bool]


@dataclass(frozen=True, slots=True)
class Fetched:
    """Txs fetched from peers for a compact proposal we could not assemble from our own txs."""

    proposal: CompactProposal
    author: PeerId
    txs: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class SyncDone:
    """A block-sync round that delivered blocks is over."""


@dataclass(frozen=True, slots=True)
class Join:
    """The initial block sync is over: consensus may start."""


def answer(channel: trio.MemorySendChannel[Any], value: Any) -> None:
    """Answer an asker that may have given up (cancelled or timed out) in the meantime."""
    try:
        channel.send_nowait(value)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
