"""Validator sets: voting power, thresholds and the weighted round-robin proposer.

Thresholds are integer comparisons, never fractions:

* `is_quorum(p)`     p is strictly more than 2/3 of the total  (3p > 2T)  — "2f+1"
* `is_one_third(p)`  p is strictly more than 1/3 of the total  (3p > T)   — "f+1"

Proposer selection is CometBFT's weighted round robin. Each validator has a priority; one
step adds every validator's power to its priority, picks the highest (ties go to the
smaller address) and subtracts the total power from the one picked. The proposer of round
r at a height is the pick of step r+1 from the set handed to that height; the set for the
next height is `advance(1)` (or `update(...)` when powers change), so over many heights
each validator proposes in proportion to its power.

Priorities are consensus state: every node must hand the core the same set, priorities
included, for a height, or they disagree on proposers (safe, but proposals from the
"wrong" proposer are rejected and rounds fail). Derive the set of height 1 as
`ValidatorSet(genesis_rows)` and each next one from the previous with `advance` / `update`,
and persist `to_wire()` with each block so a restart resumes the same sequence. A set
rebuilt from rows alone (priorities 0) still works but proposes with the same validator
in round 0 of every height.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gossip.envelope import packb
from gossip.identity import peer_id_from_public
from ledger.consensus.errors import InvalidValidatorSet

MAX_TOTAL_POWER = 2**60
MAX_VALIDATORS = 10_000


class ValidatorLike(Protocol):
    """Anything with an address, a 32-byte Ed25519 public key and a power (e.g. ledger rows)."""

    @property
    def address(self) -> str: ...
    @property
    def pubkey(self) -> bytes: ...
    @property
    def power(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Validator:
    """One validator. The address is the peer id of the public key."""

    address: str
    pubkey: bytes
    power: int

    @classmethod
    def from_public(cls, pubkey: bytes, power: int) -> Validator:
        return cls(peer_id_from_public(pubkey), pubkey, power)


def _checked(v: ValidatorLike) -> Validator:
    power, pubkey, address = v.power, v.pubkey, v.address
    if not isinstance(power, int) or isinstance(power, bool) or power <= 0:
        raise InvalidValidatorSet(f"validator {address!r}: power must be a positive integer, got {power!r}")
    if not isinstance(pubkey, bytes) or len(pubkey) != 32:
        raise InvalidValidatorSet(f"validator {address!r}: public key must be 32 bytes")
    if address != peer_id_from_public(pubkey):
        raise InvalidValidatorSet(f"validator {address!r}: address is not the peer id of its public key")
    return Validator(address, pubkey, power)


class ValidatorSet:
    """An immutable set of validators with proposer priorities.

    Args:
        validators: rows with address, pubkey and power (any order; stored sorted by address).
        priorities: proposer priority per address; missing addresses start at 0.

    Raises:
        InvalidValidatorSet: empty, too large, duplicate address or key, bad power or address.
    """

    __slots__ = ("_by_address", "_priorities", "_total", "validators")

    def __init__(
        self, validators: Iterable[ValidatorLike], priorities: Mapping[str, int] | None = None
    ) -> None:
        vals = sorted((_checked(v) for v in validators), key=lambda v: v.address)
        if not 0 < len(vals) <= MAX_VALIDATORS:
            raise InvalidValidatorSet(
                f"a validator set holds 1..{MAX_VALIDATORS} validators, got {len(vals)}"
            )
        self._by_address = {v.address: v for v in vals}
        if len(self._by_address) != len(vals) or len({v.pubkey for v in vals}) != len(vals):
            raise InvalidValidatorSet("duplicate validator address or public key")
        self._total = sum(v.power for v in vals)
        if self._total > MAX_TOTAL_POWER:
            raise InvalidValidatorSet(f"total power {self._total} exceeds {MAX_TOTAL_POWER}")
        prios = dict(priorities or {})
        if any(not isinstance(p, int) or isinstance(p, bool) for p in prios.values()):
            raise InvalidValidatorSet("priorities must be integers")
        self.validators: tuple[Validator, ...] = tuple(vals)
        self._priorities = {v.address: prios.get(v.address, 0) for v in vals}

    # -- lookups ---------------------------------------------------------------------------

    @property
    def total_power(self) -> int:
        return self._total

    def get(self, address: str) -> Validator | None:
        return self._by_address.get(address)

    def power_of(self, address: str) -> int:
        v = self._by_address.get(address)
        return v.power if v else 0

    def priority(self, address: str) -> int:
        return self._priorities[address]

    def __contains__(self, address: object) -> bool:
        return address in self._by_address

    def __len__(self) -> int:
        return len(self.validators)

    def __iter__(self) -> Iterator[Validator]:
        return iter(self.validators)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValidatorSet):
            return NotImplemented
        return self.validators == other.validators and self._priorities == other._priorities

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ValidatorSet({len(self)} validators, total power {self._total})"

    def hash(self) -> bytes:
        """sha256 of the canonical (address, pubkey, power) list; priorities excluded."""
        return hashlib.sha256(packb([[v.address, v.pubkey, v.power] for v in self.validators])).digest()

    def to_wire(self) -> list[list[Any]]:
        """[[address, pubkey, power, priority], ...] sorted by address: persist this per height."""
        return [[v.address, v.pubkey, v.power, self._priorities[v.address]] for v in self.validators]

    @classmethod
    def from_wire(cls, obj: Any) -> ValidatorSet:
        """Inverse of to_wire for untrusted input; raises InvalidValidatorSet."""
        if not isinstance(obj, list | tuple) or not all(
            isinstance(r, list | tuple) and len(r) == 4 for r in obj
        ):
            raise InvalidValidatorSet("expected a list of [address, pubkey, power, priority] rows")
        rows = [Validator(a, k, p) for a, k, p, _ in obj]
        if not all(isinstance(r[0], str) for r in obj) or len({r[0] for r in obj}) != len(obj):
            raise InvalidValidatorSet("validator addresses must be distinct strings")
        return cls(rows, {r[0]: r[3] for r in obj})

    # -- thresholds ------------------------------------------------------------------------

    def is_quorum(self, power: int) -> bool:
        """Strictly more than 2/3 of the total power."""
        return 3 * power > 2 * self._total

    def is_one_third(self, power: int) -> bool:
        """Strictly more than 1/3 of the total power (at least one honest validator)."""
        return 3 * power > self._total

    # -- proposer rotation -----------------------------------------------------------------

    def _step(self, prios: dict[str, int]) -> str:
        chosen, best = "", 0
        for v in self.validators:  # sorted by address: on a tie the smaller address stays chosen
            prios[v.address] += v.power
            if not chosen or prios[v.address] > best:
                chosen, best = v.address, prios[v.address]
        prios[chosen] -= self._total
        return chosen

    def proposers(self, rounds: int) -> list[str]:
        """Proposers of rounds 0 .. rounds-1 at the height this set is for."""
        prios = dict(self._priorities)
        return [self._step(prios) for _ in range(rounds)]

    def proposer(self, round: int = 0) -> str:
        return self.proposers(round + 1)[round]

    def advance(self, steps: int = 1) -> ValidatorSet:
        """The same validators after `steps` proposer steps: the set for the next height."""
        prios = dict(self._priorities)
        for _ in range(steps):
            self._step(prios)
        return ValidatorSet(self.validators, prios)

    def update(self, changes: Mapping[str, tuple[bytes, int]]) -> ValidatorSet:
        """The set for the next height with power changes applied (power 0 removes).

        Continuing validators keep their priority after one step (as `advance(1)`); a new
        validator starts at -(1.125 x new total) so it cannot propose at once; priorities are
        then re-centred on zero and scaled down if they spread over more than 2 x total.
        """
        stepped = self.advance(1)._priorities
        rows = {v.address: v for v in self.validators}
        for address, (pubkey, power) in sorted(changes.items()):
            if power == 0:
                rows.pop(address, None)
            else:
                rows[address] = Validator(address, pubkey, power)
        plain = ValidatorSet(rows.values())  # validates the new rows
        total = plain.total_power
        prios = {v.address: stepped.get(v.address, -(total + total // 8)) for v in plain}
        return ValidatorSet(plain.validators, _rescaled(_centred(prios), total))


def _centred(prios: dict[str, int]) -> dict[str, int]:
    if not prios:
        return prios
    avg = sum(prios.values()) // len(prios)
    return {a: p - avg for a, p in prios.items()}


def _rescaled(prios: dict[str, int], total: int) -> dict[str, int]:
    if not prios or total <= 0:
        return prios
    spread = max(prios.values()) - min(prios.values())
    limit = 2 * total
    if spread <= limit:
        return prios
    ratio = -(-spread // limit)  # ceiling division
    return {a: abs(p) // ratio * (1 if p >= 0 else -1) for a, p in prios.items()}  # truncates toward 0
