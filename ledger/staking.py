"""Validator self-stake, delegation, unbonding, unjailing and the choice of the validator set.

Rules:
- stake needs the account registered as "validator"; the first stake creates the validator
  record with the tx sender's key and fixes its commission (<= params.max_commission_bps);
  later stakes must repeat that commission.
- unstake / undelegate move tokens into an unbonding entry keyed (owner, validator) that is
  released to the owner's balance at begin_block of creation height + params.unbonding_blocks.
  At most params.max_unbonding_entries entries per pair.
- A validator record is never deleted (its slashing history and commission stay).
- Validator set: the top params.max_validators non-jailed validators by bonded stake
  (self + delegations, ties by address), power = bonded // params.power_reduction, zero-power
  ones left out. end_block at H schedules a changed set for H + 2. An empty set is never
  scheduled: consensus cannot run without validators, so the last non-empty set stays.
"""

from __future__ import annotations

from dataclasses import replace

from ledger.accounts import credit, debit
from ledger.errors import (
    CommissionMismatch,
    CommissionTooHigh,
    InsufficientStake,
    NotJailed,
    NotRegistered,
    SelfDelegation,
    StillJailed,
    TooManyUnbondings,
    UnknownDelegation,
    UnknownValidator,
)
from ledger.state import Journal, State, UnbondingEntry, Validator, ValidatorPower, ValidatorSet
from ledger.tx import Tx


def _validator(j: Journal, address: str) -> Validator:
    v = j.state.validators.get(address)
    if v is None:
        raise UnknownValidator(address)
    return v


def _add_unbonding(j: Journal, owner: str, validator: str, amount: int) -> None:
    key = (owner, validator)
    entries = j.state.unbonding.get(key, ())
    limit = j.state.params.max_unbonding_entries
    if len(entries) >= limit:
        raise TooManyUnbondings(limit)
    h = j.state.height
    j.put("unbonding", key, (*entries, UnbondingEntry(amount, h, h + j.state.params.unbonding_blocks)))


def stake(j: Journal, tx: Tx, sender: str) -> None:
    amount, commission = tx.body["amount"], tx.body["commission_bps"]
    acct = j.state.accounts.get(sender)
    if acct is None or not acct.has_role("validator"):
        raise NotRegistered(sender, "validator")
    v = j.state.validators.get(sender)
    if v is None:
        limit = j.state.params.max_commission_bps
        if commission > limit:
            raise CommissionTooHigh(limit, commission)
        v = Validator(pubkey=tx.sender, self_stake=0, delegated=0, commission_bps=commission)
    elif commission != v.commission_bps:
        raise CommissionMismatch(v.commission_bps, commission)
    debit(j, sender, amount)
    j.put("validators", sender, replace(v, self_stake=v.self_stake + amount))


def unstake(j: Journal, tx: Tx, sender: str) -> None:
    amount = tx.body["amount"]
    v = _validator(j, sender)
    if amount > v.self_stake:
        raise InsufficientStake(amount, v.self_stake)
    j.put("validators", sender, replace(v, self_stake=v.self_stake - amount))
    _add_unbonding(j, sender, sender, amount)


def delegate(j: Journal, tx: Tx, sender: str) -> None:
    target, amount = tx.body["validator"], tx.body["amount"]
    if target == sender:
        raise SelfDelegation(sender)
    v = _validator(j, target)
    debit(j, sender, amount)
    key = (sender, target)
    j.put("delegations", key, j.state.delegations.get(key, 0) + amount)
    j.put("validators", target, replace(v, delegated=v.delegated + amount))


def undelegate(j: Journal, tx: Tx, sender: str) -> None:
    target, amount = tx.body["validator"], tx.body["amount"]
    key = (sender, target)
    current = j.state.delegations.get(key)
    if current is None:
        raise UnknownDelegation(sender, target)
    if amount > current:
        raise InsufficientStake(amount, current)
    v = j.state.validators[target]
    if amount == current:
        j.delete("delegations", key)
    else:
        j.put("delegations", key, current - amount)
    j.put("validators", target, replace(v, delegated=v.delegated - amount))
    _add_unbonding(j, sender, target, amount)


def unjail(j: Journal, tx: Tx, sender: str) -> None:
    v = _validator(j, sender)
    if not v.jailed:
        raise NotJailed(sender)
    if j.state.height < v.jailed_until:
        raise StillJailed(v.jailed_until, j.state.height)
    j.put("validators", sender, replace(v, jailed=False))


def release_matured(j: Journal) -> int:
    """Pay out every unbonding entry whose release height has come. Returns the amount released."""
    height, released = j.state.height, 0
    for key in sorted(j.state.unbonding):
        entries = j.state.unbonding[key]
        due = sum(e.amount for e in entries if e.release_height <= height)
        if not due:
            continue
        left = tuple(e for e in entries if e.release_height > height)
        if left:
            j.put("unbonding", key, left)
        else:
            j.delete("unbonding", key)
        credit(j, key[0], due)
        released += due
    return released


def compute_validator_set(state: State) -> ValidatorSet:
    """The set the current stake would give, ordered by power (desc) then address."""
    p = state.params
    ranked = sorted(
        (-v.bonded, addr)
        for addr, v in state.validators.items()
        if not v.jailed and v.bonded >= p.power_reduction
    )
    chosen = ranked[: p.max_validators]
    return tuple(
        ValidatorPower(addr, state.validators[addr].pubkey, -neg // p.power_reduction) for neg, addr in chosen
    )


def schedule_validator_set(j: Journal) -> ValidatorSet | None:
    """end_block step: if the set changed, schedule it for height + 2 and return it; else None."""
    s = j.state
    new = compute_validator_set(s)
    latest = s.pending_sets[max(s.pending_sets)] if s.pending_sets else s.validator_set
    if new == latest or not new:
        return None
    j.put("pending_sets", s.height + 2, new)
    return new


def promote_validator_set(j: Journal) -> None:
    """begin_block step: the set scheduled for this height becomes the active one."""
    s = j.state
    for h in sorted(s.pending_sets):
        if h <= s.height:
            j.set("validator_set", s.pending_sets[h])
            j.delete("pending_sets", h)
