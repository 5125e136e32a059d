"""Ledger parameters: every tunable number of the state machine, all integers, all governable.

Rates are basis points (1 bps = 1/10_000). Durations are in blocks. A `Params` is immutable;
governance replaces it as a whole through `Params.with_changes`, which validates the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ledger.errors import InvalidParams

BPS = 10_000

# Inclusive bounds for each parameter; a value outside them is refused at genesis and by governance.
BOUNDS: dict[str, tuple[int, int]] = {
    "min_fee": (0, 10**12),
    "registration_burn": (0, 10**15),
    "max_commission_bps": (0, BPS),
    "unbonding_blocks": (1, 10**8),
    "max_unbonding_entries": (1, 100),
    "double_sign_slash_bps": (0, BPS),
    "jail_blocks": (0, 10**8),
    "evidence_max_age_blocks": (1, 10**8),
    "max_validators": (1, 1_000),
    "power_reduction": (1, 10**15),
    "gov_voting_blocks": (1, 10**8),
    "gov_quorum_bps": (1, BPS),
    "gov_threshold_bps": (0, BPS - 1),
    "gov_deposit": (0, 10**15),
    "max_royalty_bps": (0, BPS),
    "job_verifier_share_bps": (0, BPS),
    "job_treasury_share_bps": (0, BPS),
    "min_solver_bond_bps": (0, 10 * BPS),
    "min_challenge_window_blocks": (1, 10**6),
    "max_job_window_blocks": (1, 10**8),
    "max_bids_per_job": (1, 1_000),
    "job_miss_compensation_bps": (0, BPS),
    "bid_weight_price": (0, 100),
    "bid_weight_reputation": (0, 100),
    "bid_weight_stake": (0, 100),
    "reputation_default": (0, BPS),
    "reputation_gain_bps": (0, BPS),
    "reputation_miss_bps": (0, BPS),
    "reputation_dispute_bps": (0, BPS),
    # dispute game, audits and reputation votes (ledger.disputes, ledger.audits, ledger.repvote)
    "dispute_min_bond": (1, 10**15),
    "dispute_step_blocks": (1, 10**6),
    "dispute_referee_blocks": (1, 10**6),
    "dispute_committee_size": (1, 101),
    "dispute_jackpot_bps": (0, BPS),
    "dispute_committee_reward_bps": (0, BPS),
    "reputation_referee_bps": (0, BPS),
    "verify_report_bond": (0, 10**15),
    "verify_reward": (0, 10**15),
    "max_reports_per_job": (1, 1_000),
    "spot_check_min_bps": (1, BPS),
    "spot_check_max_bps": (1, BPS),
    "repvote_min_deposit": (0, 10**15),
    "repvote_commit_blocks": (1, 10**6),
    "repvote_reveal_blocks": (1, 10**6),
    "repvote_quorum_bps": (0, BPS),
    "repvote_kappa_bps": (1, BPS),
    "repvote_alpha_bps": (0, BPS),
    "repvote_tolerance": (0, BPS),
    "repvote_penalty_bps": (0, BPS),
}


@dataclass(frozen=True, slots=True)
class Params:
    """Parameters in force. Field meanings:

    min_fee: smallest fee a tx may pay. registration_burn: burned by each register tx.
    max_commission_bps: ceiling on a validator's commission. unbonding_blocks: delay before
    unstaked or undelegated tokens return. max_unbonding_entries: per (owner, validator) pair.
    double_sign_slash_bps: share of self-stake, delegations and young unbonding entries burned
    on duplicate-vote evidence. jail_blocks: how long a slashed validator stays jailed.
    evidence_max_age_blocks: older evidence is ignored (must not exceed unbonding_blocks, or
    stake could escape before it is slashed). max_validators: size of the active set.
    power_reduction: voting power = bonded stake // power_reduction. gov_voting_blocks: voting
    period. gov_quorum_bps: share of all bonded stake that must vote. gov_threshold_bps: a
    proposal passes when yes * 10_000 > threshold * (yes + no). gov_deposit: taken from the
    proposer, refunded when the vote reaches quorum, burned otherwise.

    Market (ledger.jobs, ledger.payout): max_royalty_bps: ceiling on a model's royalty (share of
    a job's price). job_verifier_share_bps / job_treasury_share_bps: shares of the price paid to
    the verifier pool and the treasury; the solver gets the rest (royalty + both shares may not
    exceed 10_000). min_solver_bond_bps: a bid's bond must be at least this share of its price.
    min_challenge_window_blocks / max_job_window_blocks: bounds on a job's windows.
    max_bids_per_job: distinct bidders per job. job_miss_compensation_bps: share of a slashed
    bond paid to the submitter when the solver misses its deadline (the rest is burned).
    bid_weight_price / _reputation / _stake: weights of the winner score. reputation_default:
    score of an address never rated in a role. reputation_gain_bps / _miss_bps / _dispute_bps:
    EMA step towards 10_000 on a finalized job, towards 0 on a missed deadline / lost dispute.

    Dispute game (ledger.disputes): dispute_min_bond: smallest challenger bond.
    dispute_step_blocks: blocks a party has for each move (reveal, bisect, respond) before it
    loses by timeout. dispute_referee_blocks: blocks the committee has to vote.
    dispute_committee_size: validators drawn to referee the final step. dispute_jackpot_bps:
    share of the loser's bond paid to the winner (challenger jackpot, or solver compensation).
    dispute_committee_reward_bps: share of the loser's bond split among the committee members
    who voted with the majority (jackpot + reward may not exceed 10_000; the rest is burned).
    reputation_referee_bps: EMA step towards 0 of the validator reputation of a committee member
    that voted against the majority or did not vote.

    Audits (ledger.audits): verify_report_bond: locked by each verify_report until the job settles
    (burned if the report is shown wrong). verify_reward: paid from the verifier pool (while it
    lasts) for each report not shown wrong. max_reports_per_job: reports accepted per job.
    spot_check_min_bps / _max_bps: sampled share of a job's items for a solver of reputation
    10_000 / 0 (linear in between; min <= max).

    Reputation votes (ledger.repvote): repvote_min_deposit: smallest deposit of a vote_open
    (refunded on quorum, burned otherwise). repvote_commit_blocks / _reveal_blocks: phase
    lengths. repvote_quorum_bps: share of all bonded stake that must reveal. repvote_kappa_bps:
    the consensus score is the highest score backed by at least this share of the revealed
    stake (5_000: the stake-weighted median). repvote_alpha_bps: EMA step of the subject's
    reputation towards the tally. repvote_tolerance: a voter whose score is further than this
    from the consensus loses repvote_penalty_bps (EMA step towards 0) of validator reputation.
    """

    min_fee: int = 1
    registration_burn: int = 1_000
    max_commission_bps: int = 5_000
    unbonding_blocks: int = 100
    max_unbonding_entries: int = 7
    double_sign_slash_bps: int = 500
    jail_blocks: int = 1_000
    evidence_max_age_blocks: int = 100
    max_validators: int = 100
    power_reduction: int = 1
    gov_voting_blocks: int = 100
    gov_quorum_bps: int = 3_340
    gov_threshold_bps: int = 5_000
    gov_deposit: int = 10_000
    max_royalty_bps: int = 1_000
    job_verifier_share_bps: int = 500
    job_treasury_share_bps: int = 200
    min_solver_bond_bps: int = 1_000
    min_challenge_window_blocks: int = 10
    max_job_window_blocks: int = 100_000
    max_bids_per_job: int = 64
    job_miss_compensation_bps: int = 5_000
    bid_weight_price: int = 5
    bid_weight_reputation: int = 3
    bid_weight_stake: int = 2
    reputation_default: int = 5_000
    reputation_gain_bps: int = 500
    reputation_miss_bps: int = 2_000
    reputation_dispute_bps: int = 5_000
    dispute_min_bond: int = 1_000
    dispute_step_blocks: int = 10
    dispute_referee_blocks: int = 20
    dispute_committee_size: int = 3
    dispute_jackpot_bps: int = 3_000
    dispute_committee_reward_bps: int = 1_000
    reputation_referee_bps: int = 1_000
    verify_report_bond: int = 100
    verify_reward: int = 10
    max_reports_per_job: int = 16
    spot_check_min_bps: int = 500
    spot_check_max_bps: int = 5_000
    repvote_min_deposit: int = 1_000
    repvote_commit_blocks: int = 20
    repvote_reveal_blocks: int = 20
    repvote_quorum_bps: int = 3_340
    repvote_kappa_bps: int = 5_000
    repvote_alpha_bps: int = 2_000
    repvote_tolerance: int = 2_000
    repvote_penalty_bps: int = 500

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidParams(f"param {f.name} must be an integer, got {type(value).__name__}")
            lo, hi = BOUNDS[f.name]
            if not lo <= value <= hi:
                raise InvalidParams(f"param {f.name}={value} is outside [{lo}, {hi}]")
        if self.evidence_max_age_blocks > self.unbonding_blocks:
            raise InvalidParams(
                f"evidence_max_age_blocks ({self.evidence_max_age_blocks}) must not exceed "
                f"unbonding_blocks ({self.unbonding_blocks})"
            )
        cut = self.max_royalty_bps + self.job_verifier_share_bps + self.job_treasury_share_bps
        if cut > BPS:
            raise InvalidParams(
                f"max_royalty_bps + job_verifier_share_bps + job_treasury_share_bps ({cut}) must not "
                f"exceed {BPS}: the solver's share would be negative"
            )
        if self.min_challenge_window_blocks > self.max_job_window_blocks:
            raise InvalidParams(
                f"min_challenge_window_blocks ({self.min_challenge_window_blocks}) must not exceed "
                f"max_job_window_blocks ({self.max_job_window_blocks})"
            )

        self._check_game_params()

    def _check_game_params(self) -> None:
        if self.dispute_jackpot_bps + self.dispute_committee_reward_bps > BPS:
            raise InvalidParams(
                f"dispute_jackpot_bps + dispute_committee_reward_bps "
                f"({self.dispute_jackpot_bps + self.dispute_committee_reward_bps}) must not exceed {BPS}"
            )
        if self.spot_check_min_bps > self.spot_check_max_bps:
            raise InvalidParams(
                f"spot_check_min_bps ({self.spot_check_min_bps}) must not exceed "
                f"spot_check_max_bps ({self.spot_check_max_bps})"
            )

    def to_dict(self) -> dict[str, int]:
        """Plain dict with keys in sorted order (canonical)."""
        return dict(sorted(asdict(self).items()))

    @classmethod
    def from_dict(cls, raw: Any) -> Params:
        """Strict: unknown keys are refused; missing keys take their defaults."""
        if not isinstance(raw, dict):
            raise InvalidParams(f"params must be a map, got {type(raw).__name__}")
        unknown = sorted(str(k) for k in raw if k not in BOUNDS)
        if unknown:
            raise InvalidParams(f"unknown params: {', '.join(unknown)}")
        return cls(**raw)

    def with_changes(self, changes: dict[str, int]) -> Params:
        """A new Params with `changes` applied; raises InvalidParams on any unknown name or bad value."""
        unknown = sorted(k for k in changes if k not in BOUNDS)
        if unknown:
            raise InvalidParams(f"unknown params: {', '.join(unknown)}")
        return replace(self, **changes)


PARAM_NAMES: tuple[str, ...] = tuple(sorted(BOUNDS))
assert set(PARAM_NAMES) == {f.name for f in fields(Params)}, "BOUNDS and Params must list the same names"
