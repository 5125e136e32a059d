"""Errors raised by the consensus package.

Two families tell the driver what to do with the peer that relayed a message:

* `RejectedMessage` — the input is false or hostile (malformed, badly signed, from a
  non-validator, from the wrong proposer, a forged commit or evidence): penalise the sender.
* `IgnoredMessage` — the input is harmless but useless now (stale height, too far ahead,
  a duplicate of what we hold): drop it without a penalty.

Every error carries a human-readable reason as its message. Nothing raised here leaves the
core in a changed state: a message is fully checked before anything is stored.
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Base of every error this package raises on purpose."""


class RejectedMessage(ConsensusError):
    """A message that no honest node would send; the relaying peer deserves a penalty."""


class MalformedMessage(RejectedMessage):
    """Wrong shape, types or ranges (also raised when decoding wire objects)."""


class InvalidSignature(RejectedMessage):
    """A signature that does not verify against the claimed validator's key."""


class UnknownValidator(RejectedMessage):
    """A vote or proposal signed in the name of an address outside the validator set."""


class WrongProposer(RejectedMessage):
    """A proposal from a validator that is not the proposer of its (height, round)."""


class ConflictingProposal(RejectedMessage):
    """A second, different proposal from the same proposer for the same (height, round)."""


class InvalidCommit(RejectedMessage):
    """A commit certificate that does not prove > 2/3 of the power precommitted the value."""


class InvalidEvidence(RejectedMessage):
    """Duplicate-vote evidence that does not prove a double sign."""


class IgnoredMessage(ConsensusError):
    """A well-formed message that is of no use now; drop it without penalty."""


class StaleMessage(IgnoredMessage):
    """For a height below ours, or for the height we have already decided."""


class FutureMessage(IgnoredMessage):
    """For a height or round too far ahead to hold; a hint that we may be lagging.

    Attributes:
        height: the height the message is for.
        round: the round the message is for.
    """

    def __init__(self, reason: str, height: int, round: int) -> None:
        super().__init__(reason)
        self.height, self.round = height, round


class DuplicateMessage(IgnoredMessage):
    """A message identical to one already held (gossip and re-broadcasts make these common)."""


class NotRunning(IgnoredMessage):
    """The core has not been given a height yet (`start_height` was never called)."""


class InvalidValidatorSet(ConsensusError, ValueError):
    """A validator set that breaks a rule (empty, duplicate keys, bad power, bad address)."""


class ConsensusStateError(ConsensusError):
    """The driver misused the core (for example, asked it to start a height it has passed)."""
