"""Spot checks: sample seeds, the verify_report tx, and the settlement of verifier reports.

Sampling. When a job's result is committed at height H, its sample seed is drawn at end_block
of H + 1 (the block entropy of H + 1, which did not exist when the solver committed), together
with the spot-check rate, fixed then from the solver's reputation r (0..10_000):

    rate_bps = spot_check_min_bps + (spot_check_max_bps - spot_check_min_bps) * (10_000 - r) // 10_000

so a solver of perfect reputation is sampled at the minimum rate, one of reputation 0 at the
maximum, linearly in between (floored). A verifier re-runs the items
`ledger.randomness.sample_indices(seed, job_id, n_items, rate_bps)` (n_items: the job's
checkpoints or batches) and reports.

verify_report {job_id, verdict: "ok" | "bad", sample_seed_used} by a registered "verifier" that is
neither the job's solver nor its submitter, while the job is "committed", its seed is drawn and
its canary (if any) is not yet revealed: sample_seed_used must equal the job's seed (proof that
the verifier sampled what the ledger chose), one report per verifier, at most
params.max_reports_per_job. The report locks params.verify_report_bond.

Settlement (`settle_job`, called when the job leaves "committed"/"disputed"): the truth is known
when the job's canary was revealed (the output is right iff it equals the canary's expected
output) or a dispute decided it (right iff the solver won); otherwise it is unknown. A report
shown wrong by the truth loses its bond (burned) and its verifier's reputation moves down by
reputation_dispute_bps; every other report gets its bond back plus params.verify_reward from
the verifier pool (while the pool lasts, in verifier address order), and a report shown right
also moves its verifier's reputation up by reputation_gain_bps. With canaries hidden among
decoys, a lazy "ok" loses its bond with the probability that the job is a failing canary, so
the bond should be at least verify_reward / that probability (Truebit's forced-error rule).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ledger.accounts import burn, credit, debit
from ledger.errors import NotRegistered, ReportRejected, UnknownJob, WrongJobStatus, WrongSampleSeed
from ledger.params import Params
from ledger.payout import rate, reputation_of
from ledger.records_disputes import Audit, Report
from ledger.state import REPUTATION_MAX, Journal, State
from ledger.tx import Tx


def spot_check_rate(params: Params, reputation: int) -> int:
    """The sampled share (bps) of a job's items for a solver of `reputation` (module docstring)."""
    assert 0 <= reputation <= REPUTATION_MAX, reputation
    lo, hi = params.spot_check_min_bps, params.spot_check_max_bps
    return lo + (hi - lo) * (REPUTATION_MAX - reputation) // REPUTATION_MAX


def reports_of(state: State, job_id: str) -> list[tuple[str, Report]]:
    """(verifier, report) of every unsettled report on `job_id`, sorted by verifier."""
    return sorted((v, r) for (jid, v), r in state.reports.items() if jid == job_id)


def on_commit(j: Journal, job_id: str) -> None:
    """Hook of job_commit: schedule the sample seed draw for end_block of the next height."""
    h = j.state.height + 1
    j.put("audits", job_id, replace(j.state.audits.get(job_id, Audit()), seed_height=h))
    j.put("game_timers", (h, "seed", job_id), "seed")


def process_due(j: Journal) -> list[str]:
    """end_block step: draw the sample seed of every job whose draw is due. Returns their ids."""
    s = j.state
    due = sorted(k for k in s.game_timers if k[1] == "seed" and k[0] <= s.height)
    for key in due:
        job_id = key[2]
        j.delete("game_timers", key)
        job = s.jobs[job_id]
        rate_bps = spot_check_rate(s.params, reputation_of(s, job.solver, "solver"))
        audit = replace(s.audits[job_id], sample_seed=s.entropy, sample_rate_bps=rate_bps, seed_height=0)
        j.put("audits", job_id, audit)
    return [key[2] for key in due]


def verify_report(j: Journal, tx: Tx, sender: str) -> None:
    b, s = tx.body, j.state
    job_id = b["job_id"]
    job = s.jobs.get(job_id)
    if job is None:
        raise UnknownJob(job_id)
    acct = s.accounts.get(sender)
    if acct is None or not acct.has_role("verifier"):
        raise NotRegistered(sender, "verifier")
    if job.status != "committed":
        raise WrongJobStatus(job_id, job.status, "committed (inside its challenge window)")
    if sender in (job.solver, job.submitter):
        raise ReportRejected(f"{sender} is the solver or submitter of job {job_id}")
    audit = s.audits[job_id]
    if not audit.sample_seed:
        raise ReportRejected(
            f"job {job_id}: the sample seed is drawn at the end of block {audit.seed_height}"
        )
    if audit.canary_expected:
        raise ReportRejected(f"job {job_id}: its canary is revealed, reports are closed")
    if b["sample_seed_used"] != audit.sample_seed:
        raise WrongSampleSeed(job_id, audit.sample_seed, b["sample_seed_used"])
    if (job_id, sender) in s.reports:
        raise ReportRejected(f"{sender} already reported on job {job_id}")
    if len(reports_of(s, job_id)) >= s.params.max_reports_per_job:
        raise ReportRejected(f"job {job_id} already has {s.params.max_reports_per_job} reports (the limit)")
    bond = s.params.verify_report_bond
    debit(j, sender, bond)
    j.put("reports", (job_id, sender), Report(verdict=b["verdict"], bond=bond, height=s.height))


def settle_job(j: Journal, job_id: str, output_ok: bool | None) -> None:
    """Settle the reports and drop the audit of `job_id`, which is leaving committed/disputed.

    output_ok: True / False when a dispute decided whether the committed output is right, None
    when nothing did (then a revealed canary decides, if there is one).
    """
    s = j.state
    p = s.params
    audit = s.audits.get(job_id)
    if output_ok is None and audit is not None and audit.canary_expected:
        output_ok = audit.canary_expected == s.jobs[job_id].output_hash
    for verifier, report in reports_of(s, job_id):
        j.delete("reports", (job_id, verifier))
        right = None if output_ok is None else (report.verdict == "ok") == output_ok
        if right is False:
            burn(j, report.bond)
            rate(j, verifier, "verifier", up=False, alpha_bps=p.reputation_dispute_bps)
            continue
        reward = min(p.verify_reward, s.verifier_pool)
        if reward:
            j.set("verifier_pool", s.verifier_pool - reward)
        credit(j, verifier, report.bond + reward)
        if right:
            rate(j, verifier, "verifier", up=True, alpha_bps=p.reputation_gain_bps)
    if audit is not None:
        if audit.seed_height:
            j.delete("game_timers", (audit.seed_height, "seed", job_id))
        j.delete("audits", job_id)


# ---- queries (pure, read-only) ------------------------------------------------------------


def audit(state: State, job_id: str) -> dict[str, Any]:
    """The audit of a job as a plain dict: canary, sample seed (hex, "" until drawn), rate, reports."""
    if job_id not in state.jobs:
        raise UnknownJob(job_id)
    record = state.audits.get(job_id, Audit())
    return {
        "job_id": job_id,
        "canary": record.canary,
        "canary_expected": record.canary_expected,
        "sample_seed": record.sample_seed.hex(),
        "sample_rate_bps": record.sample_rate_bps,
        "seed_height": record.seed_height,
        "reports": [
            {"verifier": v, "verdict": r.verdict, "bond": r.bond, "height": r.height}
            for v, r in reports_of(state, job_id)
        ],
    }
