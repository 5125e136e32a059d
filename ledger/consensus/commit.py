"""Commit certificates: checking that > 2/3 of the voting power precommitted a value.

Block sync uses this to accept a decided block it did not watch being decided: block H is
proved by the commit stored with it (or carried in H+1), checked against the validator set
of height H. The check is strict: one bad entry (unknown validator, bad signature) makes the
whole certificate invalid, so nobody can pad a commit with junk.
"""

from __future__ import annotations

from gossip.identity import verify
from ledger.consensus.errors import InvalidCommit
from ledger.consensus.types import Commit, Vote, VoteType
from ledger.consensus.validators import ValidatorSet


def check_vote_signature(vote: Vote, validator_set: ValidatorSet, chain_id: str) -> bool:
    """True when the vote's validator is in the set and its signature verifies."""
    v = validator_set.get(vote.validator)
    return v is not None and verify(v.pubkey, vote.signature, vote.sign_bytes(chain_id))


def check_commit(
    validator_set: ValidatorSet, height: int, value_id: bytes, commit: Commit, *, chain_id: str
) -> int:
    """Verify a commit for `value_id` at `height`; returns the power that signed it.

    Raises:
        InvalidCommit: wrong height or value, an unknown validator, a bad signature, or
            not strictly more than 2/3 of the total power.
    """
    if not isinstance(commit, Commit):
        raise InvalidCommit(f"expected a Commit, got {type(commit).__name__}")
    if commit.height != height:
        raise InvalidCommit(f"commit is for height {commit.height}, expected {height}")
    if commit.value_id != value_id:
        raise InvalidCommit(
            f"commit is for value {commit.value_id.hex()[:16]}, expected {value_id.hex()[:16]}"
        )
    power = 0
    for vote in commit.precommits():  # Commit guarantees sorted, distinct validators
        assert vote.vote_type is VoteType.PRECOMMIT
        if vote.validator not in validator_set:
            raise InvalidCommit(f"commit signed by {vote.validator}, not a validator at height {height}")
        if not check_vote_signature(vote, validator_set, chain_id):
            raise InvalidCommit(f"bad precommit signature from {vote.validator} at height {height}")
        power += validator_set.power_of(vote.validator)
    if not validator_set.is_quorum(power):
        raise InvalidCommit(
            f"commit carries {power} of {validator_set.total_power} power; needs more than 2/3"
        )
    return power


def verify_commit(
    validator_set: ValidatorSet, height: int, value_id: bytes, commit: Commit, *, chain_id: str
) -> bool:
    """True when `commit` proves > 2/3 of the power precommitted `value_id` at `height`."""
    try:
        check_commit(validator_set, height, value_id, commit, chain_id=chain_id)
    except InvalidCommit:
        return False
    return True
