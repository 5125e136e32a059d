"""Effects: what the core asks its driver to do. The core never does I/O itself.

The driver executes the effects of one call in list order. Contracts:

* `PersistLastSigned` always comes right before the `Broadcast` of the message it covers;
  the driver must make it durable (fsync) before sending that message, so a restart can
  never sign a second, different message for the same (height, round, step).
* `ScheduleTimeout` asks for `Timeout(kind, height, round)` to be fed back after
  `duration_ms`; stale timeouts are harmless (the core ignores them), so the driver never
  needs to cancel one.
* `RequestProposal` is answered, whenever ready, with `ProposedValue(height, round, value)`.
* `Decide` is final for its height; the driver stores (value, commit) in one transaction,
  then calls `start_height(height + 1, next_validator_set)`.
* `Evidence` holds a verified double sign to put in a future block (and gossip).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.consensus.evidence import DuplicateVoteEvidence
from ledger.consensus.types import Commit, LastSigned, Proposal, Step, TimeoutKind, Vote


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Gossip a signed proposal or vote to every validator (own, or relayed proof-of-lock)."""

    message: Proposal | Vote


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    kind: TimeoutKind
    height: int
    round: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class PersistLastSigned:
    """Make `record` durable before the Broadcast that follows; restore it into Core()."""

    record: LastSigned

    @property
    def height(self) -> int:
        return self.record.height

    @property
    def round(self) -> int:
        return self.record.round

    @property
    def step(self) -> Step:
        return self.record.step


@dataclass(frozen=True, slots=True)
class RequestProposal:
    """We propose in (height, round): build a value and feed back ProposedValue."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class Decide:
    """`value` is decided at `height` (in `round`), proved by `commit`."""

    height: int
    round: int
    value: bytes
    commit: Commit


@dataclass(frozen=True, slots=True)
class Evidence:
    evidence: DuplicateVoteEvidence


Effect = Broadcast | ScheduleTimeout | PersistLastSigned | RequestProposal | Decide | Evidence
