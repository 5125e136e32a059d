"""Slashing for duplicate-vote (double-sign) evidence that consensus has already verified.

For evidence (validator, infraction height) handled at block height H:
- ignored if the validator is unknown, if the height is not in [H - evidence_max_age_blocks, H),
  or if (validator, height) is tombstoned (already slashed: one slash per infraction height,
  however many duplicate votes of that height are reported);
- otherwise params.double_sign_slash_bps is cut from the self-stake, from every delegation to
  the validator and from every unbonding entry from it created at or after the infraction
  height (stake that was bonded when it misbehaved cannot escape by unbonding). Each holding
  loses floor(amount * bps / 10_000): rounding favours the holder. Everything cut is burned.
- the validator is jailed until H + params.jail_blocks (unjail tx after that) and the pair is
  tombstoned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from ledger.accounts import burn
from ledger.params import BPS
from ledger.state import Journal, UnbondingEntry


class EvidenceLike(Protocol):
    """What slashing reads from evidence (consensus's DuplicateVoteEvidence fits as it is)."""

    @property
    def validator(self) -> str: ...

    @property
    def height(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two conflicting signed votes by `validator` (an address) at `height`, checked by consensus."""

    validator: str
    height: int


def _cut(amount: int, bps: int) -> int:
    return amount * bps // BPS


def _slash_delegations(j: Journal, validator: str, bps: int) -> int:
    total = 0
    for key in sorted(k for k in j.state.delegations if k[1] == validator):
        amount = j.state.delegations[key]
        cut = _cut(amount, bps)
        if cut == amount:
            j.delete("delegations", key)
        elif cut:
            j.put("delegations", key, amount - cut)
        total += cut
    return total


def _slash_unbonding(j: Journal, validator: str, since: int, bps: int) -> int:
    total = 0
    for key in sorted(k for k in j.state.unbonding if k[1] == validator):
        entries: list[UnbondingEntry] = []
        for e in j.state.unbonding[key]:
            cut = _cut(e.amount, bps) if e.creation_height >= since else 0
            total += cut
            if e.amount > cut:
                entries.append(replace(e, amount=e.amount - cut))
        if entries:
            j.put("unbonding", key, tuple(entries))
        else:
            j.delete("unbonding", key)
    return total


def handle_evidence(j: Journal, ev: EvidenceLike) -> int:
    """Apply one piece of evidence at the current height. Returns the amount burned (0 if ignored)."""
    s = j.state
    p = s.params
    v = s.validators.get(ev.validator)
    key = (ev.validator, ev.height)
    if v is None or key in s.tombstones or not s.height - p.evidence_max_age_blocks <= ev.height < s.height:
        return 0
    bps = p.double_sign_slash_bps
    self_cut = _cut(v.self_stake, bps)
    delegated_cut = _slash_delegations(j, ev.validator, bps)
    unbonding_cut = _slash_unbonding(j, ev.validator, ev.height, bps)
    j.put(
        "validators",
        ev.validator,
        replace(
            v,
            self_stake=v.self_stake - self_cut,
            delegated=v.delegated - delegated_cut,
            jailed=True,
            jailed_until=max(v.jailed_until, s.height + p.jail_blocks),
        ),
    )
    j.put("tombstones", key, s.height)
    total = self_cut + delegated_cut + unbonding_cut
    burn(j, total)
    return total
