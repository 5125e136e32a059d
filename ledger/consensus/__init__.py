"""Tendermint BFT consensus as a pure core: events in, effects out.

Files and their jobs:

* `types.py`      — Proposal, Vote (prevote/precommit, nil = None), Commit, DecidedBlock,
                    LastSigned, events (Timeout, ProposedValue), enums, sign bytes (domain
                    tag + chain id), wire encoding and `decode_message`.
* `validators.py` — ValidatorSet: power, "> 2/3" and "> 1/3" thresholds in integers,
                    weighted round-robin proposer with priorities.
* `votekeeper.py` — tallies votes per (round, type) by power; spots equivocation; bounds
                    memory against hostile validators; the f+1 round-skip query.
* `core.py`       — Core, the state machine of Algorithm 1 (arXiv 1807.04938).
* `config.py`     — TimeoutConfig (init + round x delta per kind) and input bounds.
* `effects.py`    — what the core asks of its driver: Broadcast, ScheduleTimeout,
                    PersistLastSigned, RequestProposal, Decide, Evidence.
* `evidence.py`   — DuplicateVoteEvidence and its stateless verification.
* `commit.py`     — verify_commit / check_commit (used by block sync).
* `errors.py`     — ConsensusError and its two families, RejectedMessage (penalise the
                    sender) and IgnoredMessage (drop quietly).

The core imports nothing that does I/O; a driver (a trio adapter over gossip) feeds it
events and executes its effects in order.
"""

from ledger.consensus.commit import check_commit, verify_commit
from ledger.consensus.config import TimeoutConfig
from ledger.consensus.core import Core
from ledger.consensus.effects import (
    Broadcast,
    Decide,
    Effect,
    Evidence,
    PersistLastSigned,
    RequestProposal,
    ScheduleTimeout,
)
from ledger.consensus.errors import (
    ConflictingProposal,
    ConsensusError,
    ConsensusStateError,
    DuplicateMessage,
    FutureMessage,
    IgnoredMessage,
    InvalidCommit,
    InvalidEvidence,
    InvalidSignature,
    InvalidValidatorSet,
    MalformedMessage,
    NotRunning,
    RejectedMessage,
    StaleMessage,
    UnknownValidator,
    WrongProposer,
)
from ledger.consensus.evidence import DuplicateVoteEvidence, is_valid_evidence, verify_evidence
from ledger.consensus.types import (
    Commit,
    CommitSig,
    DecidedBlock,
    Event,
    LastSigned,
    Proposal,
    ProposedValue,
    Step,
    Timeout,
    TimeoutKind,
    Vote,
    VoteType,
    decode_message,
    proposal_sign_bytes,
    value_id,
)
from ledger.consensus.validators import Validator, ValidatorSet
from ledger.consensus.votekeeper import VoteKeeper

__all__ = [
    "Broadcast",
    "Commit",
    "CommitSig",
    "ConflictingProposal",
    "ConsensusError",
    "ConsensusStateError",
    "Core",
    "Decide",
    "DecidedBlock",
    "DuplicateMessage",
    "DuplicateVoteEvidence",
    "Effect",
    "Event",
    "Evidence",
    "FutureMessage",
    "IgnoredMessage",
    "InvalidCommit",
    "InvalidEvidence",
    "InvalidSignature",
    "InvalidValidatorSet",
    "LastSigned",
    "MalformedMessage",
    "NotRunning",
    "PersistLastSigned",
    "Proposal",
    "ProposedValue",
    "RejectedMessage",
    "RequestProposal",
    "ScheduleTimeout",
    "StaleMessage",
    "Step",
    "Timeout",
    "TimeoutConfig",
    "TimeoutKind",
    "UnknownValidator",
    "Validator",
    "ValidatorSet",
    "Vote",
    "VoteKeeper",
    "VoteType",
    "WrongProposer",
    "check_commit",
    "decode_message",
    "is_valid_evidence",
    "proposal_sign_bytes",
    "value_id",
    "verify_commit",
    "verify_evidence",
]
