"""Market arithmetic and settlement: price splits, bonds, winner scores, reputation, payouts.

Arithmetic (integers only; 10_000 bps = 100%). Rounding rule: every share is floored and the
remainder goes to one named party, so the parts always add up to the whole and nothing is lost.
- Price split of a finalized job: royalty = price * royalty_bps // 10_000 (to the model's owner
  at payout time), verifiers = price * job_verifier_share_bps // 10_000 (to the verifier pool),
  treasury = price * job_treasury_share_bps // 10_000 (to the treasury); the solver gets the
  remainder. royalty_bps = min(model royalty, params.max_royalty_bps) at payout time, so a
  royalty registered before governance lowered the cap is cut to the cap (params guarantee
  max_royalty_bps + verifier share + treasury share <= 10_000, so the solver's part is >= 0).
- Minimum bond of a bid: ceil(price * min_solver_bond_bps / 10_000), rounded up so the bond is
  never below the stated share.
- Slashing a bond: the named party (the submitter on a missed deadline, the challenger on a lost
  dispute) gets bond * bps // 10_000; the remainder is burned.
- Winner score of a bid (higher wins; ties go to the lower address, see ledger.jobs):
    w_price * (bounty - price) * 10_000 // bounty
  + w_reputation * reputation                               (0..10_000)
  + w_stake * min(stake, bounty) * 10_000 // bounty         (stake = bonded stake + bid bond)
- Reputation, per (address, role), an integer EMA in [0, 10_000]:
    r' = (r * (10_000 - a) + target * a) // 10_000
  with target 10_000 and a = reputation_gain_bps when a solver's job is finalized (or a
  challenger wins a dispute), target 0 and a = reputation_miss_bps on a missed deadline, target
  0 and a = reputation_dispute_bps when a solver (or a challenger) loses a dispute. Floor
  rounding keeps r' in [0, 10_000]. An address never rated has params.reputation_default.

Settlement functions (`pay_finalized`, `pay_missed`, `pay_reversed`) move the tokens a job holds
and update reputation through a journal; the caller (ledger.jobs) changes the job's status in
the same journal, which is what releases the escrow and bond from the supply count.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.accounts import burn, credit
from ledger.params import BPS, Params
from ledger.state import REPUTATION_MAX, Job, Journal, State


@dataclass(frozen=True, slots=True)
class PriceSplit:
    solver: int
    royalty: int
    verifiers: int
    treasury: int


def share(amount: int, bps: int) -> int:
    """floor(amount * bps / 10_000)."""
    assert amount >= 0 and 0 <= bps <= BPS, (amount, bps)
    return amount * bps // BPS


def split_price(price: int, royalty_bps: int, verifier_bps: int, treasury_bps: int) -> PriceSplit:
    """Floor each non-solver share; the solver gets the remainder (see the module docstring)."""
    assert royalty_bps + verifier_bps + treasury_bps <= BPS, (royalty_bps, verifier_bps, treasury_bps)
    royalty, verifiers, treasury = (share(price, b) for b in (royalty_bps, verifier_bps, treasury_bps))
    return PriceSplit(price - royalty - verifiers - treasury, royalty, verifiers, treasury)


def job_split(params: Params, price: int, model_royalty_bps: int) -> PriceSplit:
    """The split of `price` under `params` for a model registered with `model_royalty_bps`."""
    royalty_bps = min(model_royalty_bps, params.max_royalty_bps)
    return split_price(price, royalty_bps, params.job_verifier_share_bps, params.job_treasury_share_bps)


def min_bond(price: int, bond_bps: int) -> int:
    """ceil(price * bond_bps / 10_000)."""
    return -(-price * bond_bps // BPS)


def bid_score(params: Params, bounty: int, price: int, reputation: int, stake: int) -> int:
    """The winner score of a bid (see the module docstring). Requires 0 < price <= bounty."""
    assert 0 < price <= bounty and 0 <= reputation <= REPUTATION_MAX and stake >= 0
    return (
        params.bid_weight_price * ((bounty - price) * BPS // bounty)
        + params.bid_weight_reputation * reputation
        + params.bid_weight_stake * (min(stake, bounty) * BPS // bounty)
    )


def ema(score: int, target: int, alpha_bps: int) -> int:
    """One integer EMA step of `score` towards `target`, floored."""
    assert 0 <= alpha_bps <= BPS
    return (score * (BPS - alpha_bps) + target * alpha_bps) // BPS


def reputation_of(state: State, address: str, role: str) -> int:
    """The reputation of `address` in `role` (params.reputation_default if never rated)."""
    return state.reputation.get((address, role), state.params.reputation_default)


def rate(j: Journal, address: str, role: str, *, up: bool, alpha_bps: int) -> int:
    """Move the reputation of (address, role) one EMA step up (to 10_000) or down (to 0)."""
    new = ema(reputation_of(j.state, address, role), REPUTATION_MAX if up else 0, alpha_bps)
    j.put("reputation", (address, role), new)
    return new


def _pool(j: Journal, name: str, amount: int) -> None:
    if amount:
        j.set(name, getattr(j.state, name) + amount)


def pay_finalized(j: Journal, job: Job) -> PriceSplit:
    """A job whose result stands: split the price, refund bounty - price, return the bond."""
    s = j.state
    split = job_split(s.params, job.price, s.models[job.model_hash].royalty_bps)
    credit(j, job.solver, split.solver + job.bond)
    if split.royalty:
        credit(j, s.models[job.model_hash].owner, split.royalty)
    _pool(j, "verifier_pool", split.verifiers)
    _pool(j, "treasury", split.treasury)
    if job.bounty > job.price:
        credit(j, job.submitter, job.bounty - job.price)
    rate(j, job.solver, "solver", up=True, alpha_bps=s.params.reputation_gain_bps)
    return split


def _slash_bond(j: Journal, job: Job, to: str, bps: int) -> int:
    """Pay `bps` of the job's bond to `to`, burn the rest. Returns the amount paid."""
    paid = share(job.bond, bps)
    if paid:
        credit(j, to, paid)
    if job.bond > paid:
        burn(j, job.bond - paid)
    return paid


def pay_missed(j: Journal, job: Job) -> int:
    """Deadline missed: full bounty back to the submitter, bond slashed. Returns the compensation."""
    p = j.state.params
    credit(j, job.submitter, job.bounty)
    paid = _slash_bond(j, job, job.submitter, p.job_miss_compensation_bps)
    rate(j, job.solver, "solver", up=False, alpha_bps=p.reputation_miss_bps)
    return paid


def pay_reversed(j: Journal, job: Job, challenger: str, jackpot_bps: int) -> int:
    """Lost dispute: full bounty back to the submitter, jackpot_bps of the bond to the challenger,
    the rest of the bond burned. Returns the jackpot."""
    p = j.state.params
    credit(j, job.submitter, job.bounty)
    jackpot = _slash_bond(j, job, challenger, jackpot_bps)
    rate(j, job.solver, "solver", up=False, alpha_bps=p.reputation_dispute_bps)
    rate(j, challenger, "verifier", up=True, alpha_bps=p.reputation_gain_bps)
    return jackpot
