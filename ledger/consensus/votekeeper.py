"""The vote keeper: every vote of one height, tallied by voting power.

Per (round, type) each validator counts once towards "any value" (its first valid vote)
and at most once towards each value id, as in the paper, where "2f+1 PREVOTE(h, r, id)"
counts distinct senders of that exact message. A second valid vote from a validator for
the same slot with another value id is an equivocation: the keeper returns
DuplicateVoteEvidence holding both signed votes (once per validator and slot).

An equivocating vote still counts for its value when that value can matter: nil, or the
value of a proposal we hold. This keeps the network live when a byzantine validator shows
different votes to different nodes: the prevote that completed a polka at one node can be
relayed (with the proof of lock) to another node and counted there, even if that node saw
the byzantine's other vote first. Votes for any other value are not stored, so a byzantine
validator cannot make the keeper grow by signing many values.

Memory is bounded against hostile validators in rounds too: votes are stored only for
rounds up to `current_round + rounds_ahead`. A vote further ahead is still verified and
remembered as its validator's highest round, which is all the round-skip rule ("f+1 in a
higher round", line 55 of Algorithm 1) needs: the keeper skips to the highest round R
such that validators with more than 1/3 of the power have voted in round R or later, so at
least one honest validator has reached R.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

from gossip.identity import verify
from ledger.consensus.errors import DuplicateMessage, InvalidSignature, UnknownValidator
from ledger.consensus.evidence import DuplicateVoteEvidence
from ledger.consensus.types import Vote, VoteType
from ledger.consensus.validators import ValidatorSet

ROUNDS_AHEAD = 2


class Added(Enum):
    STORED = "stored"  # counted in its round's tally
    ROUND_HINT = "round_hint"  # too far ahead to store; only raised the validator's highest round
    EQUIVOCATION = "equivocation"  # conflicts with the validator's first vote in this slot


@dataclass(slots=True)
class _Tally:
    first: dict[str, Vote] = field(default_factory=dict)  # each validator's first vote
    by_value: dict[bytes | None, dict[str, Vote]] = field(default_factory=dict)
    power: dict[bytes | None, int] = field(default_factory=dict)
    total: int = 0  # power of the validators that voted at all

    def count(self, vote: Vote, power: int) -> None:
        self.by_value.setdefault(vote.value_id, {})[vote.validator] = vote
        self.power[vote.value_id] = self.power.get(vote.value_id, 0) + power


class VoteKeeper:
    """Votes of one height, checked against that height's validator set.

    Args:
        height: the height every vote must carry (the caller filters other heights).
        validator_set: who may vote, and with what power.
        chain_id: part of the signed bytes.
        rounds_ahead: how many rounds past the caller's current round are stored.
    """

    def __init__(
        self, height: int, validator_set: ValidatorSet, chain_id: str, rounds_ahead: int = ROUNDS_AHEAD
    ) -> None:
        self.height = height
        self.validator_set = validator_set
        self.chain_id = chain_id
        self.rounds_ahead = rounds_ahead
        self._tallies: dict[tuple[int, VoteType], _Tally] = {}
        self._highest_round: dict[str, int] = {}
        self._reported: set[tuple[str, int, VoteType]] = set()

    def add(
        self,
        vote: Vote,
        current_round: int,
        *,
        trusted: bool = False,
        known_values: Collection[bytes] = (),
    ) -> tuple[Added, DuplicateVoteEvidence | None]:
        """Verify and record one vote of this height.

        Args:
            vote: the vote; its height must equal the keeper's.
            current_round: the caller's round (bounds what is stored).
            trusted: skip the signature check (our own freshly signed votes).
            known_values: value ids of the proposals held; an equivocating vote for one of
                these (or for nil) is counted for that value.

        Returns:
            What happened, and the evidence when the vote is a first equivocation.

        Raises:
            UnknownValidator: the voter is not in the set.
            InvalidSignature: the signature does not verify.
            DuplicateMessage: nothing new (this vote is held, or an already reported
                equivocation for a value that cannot matter).
        """
        assert vote.height == self.height, "the caller routes votes by height"
        validator = self.validator_set.get(vote.validator)
        if validator is None:
            raise UnknownValidator(f"vote from {vote.validator}, not a validator at height {self.height}")
        kind = vote.vote_type.name.lower()
        tally = self._tallies.get((vote.round, vote.vote_type))
        if tally is not None and vote.validator in tally.by_value.get(vote.value_id, {}):
            raise DuplicateMessage(f"already hold this {kind} from {vote.validator}")
        if not trusted and not verify(validator.pubkey, vote.signature, vote.sign_bytes(self.chain_id)):
            raise InvalidSignature(f"bad {kind} signature from {vote.validator}")
        first = tally.first.get(vote.validator) if tally is not None else None
        if first is not None and tally is not None:
            slot = (vote.validator, vote.round, vote.vote_type)
            evidence = None if slot in self._reported else DuplicateVoteEvidence.of(first, vote)
            self._reported.add(slot)
            counted = vote.value_id is None or vote.value_id in known_values
            if counted:
                tally.count(vote, validator.power)
            elif evidence is None:
                raise DuplicateMessage(
                    f"{vote.validator} equivocated here already; this {kind} cannot matter"
                )
            return Added.EQUIVOCATION, evidence
        self._highest_round[vote.validator] = max(vote.round, self._highest_round.get(vote.validator, -1))
        if vote.round > current_round + self.rounds_ahead:
            return Added.ROUND_HINT, None
        if tally is None:
            tally = self._tallies[(vote.round, vote.vote_type)] = _Tally()
        tally.first[vote.validator] = vote
        tally.count(vote, validator.power)
        tally.total += validator.power
        return Added.STORED, None

    # -- queries ---------------------------------------------------------------------------

    def power_for(self, round: int, vote_type: VoteType, value_id: bytes | None) -> int:
        tally = self._tallies.get((round, vote_type))
        return tally.power.get(value_id, 0) if tally else 0

    def total_power(self, round: int, vote_type: VoteType) -> int:
        tally = self._tallies.get((round, vote_type))
        return tally.total if tally else 0

    def has_quorum_for(self, round: int, vote_type: VoteType, value_id: bytes | None) -> bool:
        """More than 2/3 of the power voted for `value_id` (None = nil) in this round."""
        return self.validator_set.is_quorum(self.power_for(round, vote_type, value_id))

    def has_quorum_any(self, round: int, vote_type: VoteType) -> bool:
        """More than 2/3 of the power voted at all (values and nil) in this round."""
        return self.validator_set.is_quorum(self.total_power(round, vote_type))

    def votes_for(self, round: int, vote_type: VoteType, value_id: bytes | None) -> list[Vote]:
        """The votes counted for `value_id`, sorted by validator."""
        tally = self._tallies.get((round, vote_type))
        if tally is None:
            return []
        return sorted(tally.by_value.get(value_id, {}).values(), key=lambda v: v.validator)

    def vote_of(self, validator: str, round: int, vote_type: VoteType) -> Vote | None:
        """The validator's first vote in this slot."""
        tally = self._tallies.get((round, vote_type))
        return tally.first.get(validator) if tally else None

    def skip_round(self, current_round: int) -> int | None:
        """The highest round R > current_round reached by more than 1/3 of the power, if any."""
        reached = sorted(
            (
                (r, self.validator_set.power_of(a))
                for a, r in self._highest_round.items()
                if r > current_round
            ),
            reverse=True,
        )
        power = 0
        for round, p in reached:
            power += p
            if self.validator_set.is_one_third(power):
                return round
        return None
