"""Duplicate-vote evidence: the proof that a validator signed two votes for one slot.

A validator double-signs when it signs two votes with the same (height, round, type) but
different value ids (nil counts as a value). The evidence carries both signed votes in a
canonical order (the smaller value id first, nil before any id), so the same offence always
encodes to the same bytes and `evidence_id` can dedupe it. `verify_evidence` is stateless:
it needs only the validator set of the evidence's height and the chain id; the ledger state
machine uses it before slashing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from gossip.envelope import packb
from ledger.consensus.commit import check_vote_signature
from ledger.consensus.errors import InvalidEvidence, MalformedMessage
from ledger.consensus.types import Vote
from ledger.consensus.validators import ValidatorSet


def _order(vote: Vote) -> bytes:
    return b"" if vote.value_id is None else vote.value_id


@dataclass(frozen=True, slots=True)
class DuplicateVoteEvidence:
    """Two conflicting votes by one validator; build with `of()` to get the canonical order."""

    vote_a: Vote
    vote_b: Vote

    def __post_init__(self) -> None:
        if not isinstance(self.vote_a, Vote) or not isinstance(self.vote_b, Vote):
            raise MalformedMessage("evidence needs two votes")
        if not _order(self.vote_a) < _order(self.vote_b):
            raise MalformedMessage("evidence votes must have distinct value ids, the smaller (or nil) first")

    @classmethod
    def of(cls, one: Vote, other: Vote) -> DuplicateVoteEvidence:
        a, b = sorted((one, other), key=_order)
        return cls(a, b)

    @property
    def validator(self) -> str:
        return self.vote_a.validator

    @property
    def height(self) -> int:
        return self.vote_a.height

    def to_wire(self) -> list[Any]:
        return ["duplicate_vote", self.vote_a.to_wire(), self.vote_b.to_wire()]

    @classmethod
    def from_wire(cls, obj: Any) -> DuplicateVoteEvidence:
        if not isinstance(obj, list | tuple) or len(obj) != 3 or obj[0] != "duplicate_vote":
            raise MalformedMessage("expected a duplicate_vote list of 3 items")
        try:
            return cls(Vote.from_wire(obj[1]), Vote.from_wire(obj[2]))
        except (TypeError, ValueError) as e:
            raise MalformedMessage(f"malformed evidence: {e}") from e

    def evidence_id(self) -> bytes:
        return hashlib.sha256(packb(self.to_wire())).digest()


def verify_evidence(evidence: DuplicateVoteEvidence, validator_set: ValidatorSet, *, chain_id: str) -> None:
    """Check that `evidence` proves a double sign by a member of `validator_set`.

    `validator_set` must be the set of the evidence's height.

    Raises:
        InvalidEvidence: different validators, heights, rounds or types; equal value ids;
            a validator outside the set; or a signature that does not verify.
    """
    if not isinstance(evidence, DuplicateVoteEvidence):
        raise InvalidEvidence(f"expected DuplicateVoteEvidence, got {type(evidence).__name__}")
    a, b = evidence.vote_a, evidence.vote_b
    for field in ("validator", "height", "round", "vote_type"):
        if getattr(a, field) != getattr(b, field):
            raise InvalidEvidence(f"evidence votes differ in {field}")
    if a.value_id == b.value_id:
        raise InvalidEvidence("evidence votes are for the same value")
    if a.validator not in validator_set:
        raise InvalidEvidence(f"{a.validator} is not a validator at height {a.height}")
    for vote in (a, b):
        if not check_vote_signature(vote, validator_set, chain_id):
            raise InvalidEvidence(f"bad signature on evidence vote by {vote.validator}")


def is_valid_evidence(evidence: DuplicateVoteEvidence, validator_set: ValidatorSet, *, chain_id: str) -> bool:
    try:
        verify_evidence(evidence, validator_set, chain_id=chain_id)
    except InvalidEvidence:
        return False
    return True
