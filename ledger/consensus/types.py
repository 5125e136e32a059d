"""Consensus messages, certificates and the bytes that get signed.

Every message is a frozen dataclass that checks its own shape on construction, so an
instance is always well formed; `to_wire()` gives a msgpack-ready list and `from_wire()`
(or `decode_message`) turns an untrusted decoded object back, raising MalformedMessage.

Sign bytes are a domain tag plus the canonical msgpack of a list that starts with the
message kind and the chain id, so a signature is valid for one kind on one chain only.
Values are opaque bytes (a block); a value is named by its id, sha256(value); a vote for
"nil" has value_id None.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from gossip.envelope import packb
from ledger.consensus.errors import MalformedMessage

SIGN_DOMAIN = b"hivemesh/consensus/v1\x00"
MAX_HEIGHT = 2**62
MAX_ROUND = 2**31
MAX_ADDRESS_CHARS = 128
MAX_CHAIN_ID_CHARS = 64
MAX_COMMIT_SIGNATURES = 10_000
ID_BYTES = 32
SIGNATURE_BYTES = 64

Signer = Callable[[bytes], bytes]


class VoteType(IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


class Step(IntEnum):
    """Where a round is; also the kind of the last thing signed (PROPOSE = a proposal)."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    COMMIT = 3


class TimeoutKind(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    REBROADCAST = 3


VOTE_STEP = {VoteType.PREVOTE: Step.PREVOTE, VoteType.PRECOMMIT: Step.PRECOMMIT}


def value_id(value: bytes) -> bytes:
    """The id of a value: sha256 of its bytes."""
    return hashlib.sha256(value).digest()


def check_chain_id(chain_id: Any) -> str:
    if not isinstance(chain_id, str) or not 0 < len(chain_id) <= MAX_CHAIN_ID_CHARS:
        raise MalformedMessage(f"chain id must be a string of 1..{MAX_CHAIN_ID_CHARS} characters")
    return chain_id


def _int(x: Any, name: str, low: int, high: int) -> None:
    if not isinstance(x, int) or isinstance(x, bool) or not low <= x < high:
        raise MalformedMessage(f"{name} must be an integer in [{low}, {high}), got {x!r}")


def _bytes(x: Any, name: str, size: int | None = None) -> None:
    if not isinstance(x, bytes) or (size is not None and len(x) != size):
        want = f"{size} bytes" if size is not None else "bytes"
        raise MalformedMessage(f"{name} must be {want}, got {type(x).__name__} of length {_len(x)}")


def _len(x: Any) -> int | None:
    return len(x) if isinstance(x, bytes | str | list | tuple) else None


def _address(x: Any, name: str) -> None:
    if not isinstance(x, str) or not 0 < len(x) <= MAX_ADDRESS_CHARS:
        raise MalformedMessage(f"{name} must be an address string of 1..{MAX_ADDRESS_CHARS} characters")


def _value_id(x: Any, nil_ok: bool) -> None:
    if x is None and nil_ok:
        return
    _bytes(x, "value id", ID_BYTES)


def _list(obj: Any, tag: str | None, length: int) -> list[Any]:
    if not isinstance(obj, list | tuple) or len(obj) != length or (tag is not None and obj[0] != tag):
        raise MalformedMessage(f"expected a {tag or 'wire'} list of {length} items")
    return list(obj)


def proposal_sign_bytes(
    chain_id: str, height: int, round: int, vid: bytes, pol_round: int, proposer: str
) -> bytes:
    return SIGN_DOMAIN + packb(["proposal", chain_id, height, round, vid, pol_round, proposer])


def vote_sign_bytes(
    chain_id: str, vote_type: VoteType, height: int, round: int, vid: bytes | None, validator: str
) -> bytes:
    return SIGN_DOMAIN + packb(["vote", chain_id, int(vote_type), height, round, vid, validator])


@dataclass(frozen=True, slots=True)
class Proposal:
    """PROPOSAL(height, round, value, pol_round) signed by the round's proposer."""

    height: int
    round: int
    value: bytes
    pol_round: int  # the proposer's valid round, -1 if none
    proposer: str
    signature: bytes
    _value_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _int(self.height, "height", 0, MAX_HEIGHT)
        _int(self.round, "round", 0, MAX_ROUND)
        _bytes(self.value, "value")
        _int(self.pol_round, "pol_round", -1, self.round)
        _address(self.proposer, "proposer")
        _bytes(self.signature, "signature", SIGNATURE_BYTES)
        object.__setattr__(self, "_value_id", value_id(self.value))  # hashed once, values can be large

    @property
    def value_id(self) -> bytes:
        return self._value_id

    def sign_bytes(self, chain_id: str) -> bytes:
        return proposal_sign_bytes(
            chain_id, self.height, self.round, self.value_id, self.pol_round, self.proposer
        )

    @classmethod
    def create(
        cls, sign: Signer, chain_id: str, height: int, round: int, value: bytes, pol_round: int, proposer: str
    ) -> Proposal:
        msg = proposal_sign_bytes(chain_id, height, round, value_id(value), pol_round, proposer)
        return cls(height, round, value, pol_round, proposer, sign(msg))

    def to_wire(self) -> list[Any]:
        return [
            "proposal",
            self.height,
            self.round,
            self.value,
            self.pol_round,
            self.proposer,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> Proposal:
        _, height, round, value, pol_round, proposer, signature = _list(obj, "proposal", 7)
        return cls(height, round, value, pol_round, proposer, signature)


@dataclass(frozen=True, slots=True)
class Vote:
    """PREVOTE or PRECOMMIT for a value id (None = nil) at (height, round)."""

    vote_type: VoteType
    height: int
    round: int
    value_id: bytes | None
    validator: str
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.vote_type, VoteType):
            raise MalformedMessage(f"vote type must be a VoteType, got {self.vote_type!r}")
        _int(self.height, "height", 0, MAX_HEIGHT)
        _int(self.round, "round", 0, MAX_ROUND)
        _value_id(self.value_id, nil_ok=True)
        _address(self.validator, "validator")
        _bytes(self.signature, "signature", SIGNATURE_BYTES)

    def sign_bytes(self, chain_id: str) -> bytes:
        return vote_sign_bytes(
            chain_id, self.vote_type, self.height, self.round, self.value_id, self.validator
        )

    @classmethod
    def create(
        cls,
        sign: Signer,
        chain_id: str,
        vote_type: VoteType,
        height: int,
        round: int,
        vid: bytes | None,
        validator: str,
    ) -> Vote:
        signature = sign(vote_sign_bytes(chain_id, vote_type, height, round, vid, validator))
        return cls(vote_type, height, round, vid, validator, signature)

    def to_wire(self) -> list[Any]:
        return [
            "vote",
            int(self.vote_type),
            self.height,
            self.round,
            self.value_id,
            self.validator,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> Vote:
        _, vote_type, height, round, vid, validator, signature = _list(obj, "vote", 7)
        if not isinstance(vote_type, int) or isinstance(vote_type, bool) or vote_type not in (1, 2):
            raise MalformedMessage(f"vote type must be 1 (prevote) or 2 (precommit), got {vote_type!r}")
        return cls(VoteType(vote_type), height, round, vid, validator, signature)


@dataclass(frozen=True, slots=True)
class CommitSig:
    """One precommit inside a commit certificate: who signed, and the signature."""

    validator: str
    signature: bytes

    def __post_init__(self) -> None:
        _address(self.validator, "commit validator")
        _bytes(self.signature, "commit signature", SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class Commit:
    """Precommits for `value_id` at (height, round), one per validator, sorted by address.

    Each entry is the signature of PRECOMMIT(height, round, value_id) by that validator, so
    the votes can be rebuilt (`precommits()`) and verified (see commit.py).
    """

    height: int
    round: int
    value_id: bytes
    signatures: tuple[CommitSig, ...]

    def __post_init__(self) -> None:
        _int(self.height, "commit height", 0, MAX_HEIGHT)
        _int(self.round, "commit round", 0, MAX_ROUND)
        _value_id(self.value_id, nil_ok=False)
        if not isinstance(self.signatures, tuple) or not all(
            isinstance(s, CommitSig) for s in self.signatures
        ):
            raise MalformedMessage("commit signatures must be a tuple of CommitSig")
        if not 0 < len(self.signatures) <= MAX_COMMIT_SIGNATURES:
            raise MalformedMessage(f"a commit holds 1..{MAX_COMMIT_SIGNATURES} signatures")
        addresses = [s.validator for s in self.signatures]
        if any(a >= b for a, b in itertools.pairwise(addresses)):
            raise MalformedMessage("commit signatures must be sorted by validator with no repeats")

    def precommits(self) -> list[Vote]:
        return [
            Vote(VoteType.PRECOMMIT, self.height, self.round, self.value_id, s.validator, s.signature)
            for s in self.signatures
        ]

    @classmethod
    def from_votes(cls, votes: list[Vote]) -> Commit:
        """Build from precommits that all share (height, round, value_id)."""
        first = votes[0]
        assert all(
            (v.vote_type, v.height, v.round, v.value_id)
            == (VoteType.PRECOMMIT, first.height, first.round, first.value_id)
            for v in votes
        ), "a commit is made of precommits for one (height, round, value)"
        assert first.value_id is not None, "a commit certifies a value, never nil"
        sigs = tuple(CommitSig(v.validator, v.signature) for v in sorted(votes, key=lambda v: v.validator))
        return cls(first.height, first.round, first.value_id, sigs)

    def to_wire(self) -> list[Any]:
        return [self.height, self.round, self.value_id, [[s.validator, s.signature] for s in self.signatures]]

    @classmethod
    def from_wire(cls, obj: Any) -> Commit:
        height, round, vid, sigs = _list(obj, None, 4)
        if not isinstance(sigs, list | tuple) or len(sigs) > MAX_COMMIT_SIGNATURES:
            raise MalformedMessage("commit signatures must be a list")
        return cls(height, round, vid, tuple(CommitSig(*_list(s, None, 2)) for s in sigs))


@dataclass(frozen=True, slots=True)
class DecidedBlock:
    """A decided value with the commit that proves it (what block sync hands the core)."""

    height: int
    value: bytes
    commit: Commit

    def __post_init__(self) -> None:
        _int(self.height, "height", 0, MAX_HEIGHT)
        _bytes(self.value, "value")
        if not isinstance(self.commit, Commit):
            raise MalformedMessage("decided block needs a Commit")

    def to_wire(self) -> list[Any]:
        return ["decided", self.height, self.value, self.commit.to_wire()]

    @classmethod
    def from_wire(cls, obj: Any) -> DecidedBlock:
        _, height, value, commit = _list(obj, "decided", 4)
        return cls(height, value, Commit.from_wire(commit))


@dataclass(frozen=True, slots=True)
class LastSigned:
    """The double-sign guard: the last (height, round, step) signed, and the lock held then.

    The lock (locked_round, locked_value_id) is part of the record because a validator
    that forgets its lock after a restart could help decide a conflicting value.
    """

    height: int
    round: int
    step: Step
    locked_round: int = -1
    locked_value_id: bytes | None = None

    def __post_init__(self) -> None:
        _int(self.height, "height", 0, MAX_HEIGHT)
        _int(self.round, "round", 0, MAX_ROUND)
        if not isinstance(self.step, Step) or self.step is Step.COMMIT:
            raise MalformedMessage(
                f"last signed step must be PROPOSE, PREVOTE or PRECOMMIT, got {self.step!r}"
            )
        _int(self.locked_round, "locked round", -1, self.round + 1)
        _value_id(self.locked_value_id, nil_ok=self.locked_round == -1)
        if self.locked_round == -1 and self.locked_value_id is not None:
            raise MalformedMessage("a locked value needs a locked round")

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.height, self.round, int(self.step))

    def to_wire(self) -> list[Any]:
        return [self.height, self.round, int(self.step), self.locked_round, self.locked_value_id]

    @classmethod
    def from_wire(cls, obj: Any) -> LastSigned:
        height, round, step, locked_round, locked_vid = _list(obj, None, 5)
        if not isinstance(step, int) or isinstance(step, bool) or step not in (0, 1, 2):
            raise MalformedMessage(f"bad last-signed step {step!r}")
        return cls(height, round, Step(step), locked_round, locked_vid)


@dataclass(frozen=True, slots=True)
class Timeout:
    """Event: a timeout scheduled by ScheduleTimeout has fired."""

    kind: TimeoutKind
    height: int
    round: int


@dataclass(frozen=True, slots=True)
class ProposedValue:
    """Event: the driver's answer to RequestProposal(height, round)."""

    height: int
    round: int
    value: bytes


ConsensusMessage = Proposal | Vote
Event = Proposal | Vote | DecidedBlock | Timeout | ProposedValue

_DECODERS: dict[str, Callable[[Any], Proposal | Vote | DecidedBlock]] = {
    "proposal": Proposal.from_wire,
    "vote": Vote.from_wire,
    "decided": DecidedBlock.from_wire,
}


def decode_message(obj: Any) -> Proposal | Vote | DecidedBlock:
    """Turn an untrusted decoded wire object into a message; raises MalformedMessage."""
    if not isinstance(obj, list | tuple) or not obj or not isinstance(obj[0], str) or obj[0] not in _DECODERS:
        raise MalformedMessage("not a consensus message (expected a list tagged proposal, vote or decided)")
    try:
        return _DECODERS[obj[0]](obj)
    except MalformedMessage:
        raise
    except (TypeError, ValueError) as e:  # e.g. wrong arity or an unhashable item from hostile input
        raise MalformedMessage(f"malformed {obj[0]}: {e}") from e
