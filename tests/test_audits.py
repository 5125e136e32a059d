"""Spot-check sampling, verifier reports and canaries on a real chain."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import replace

import pytest

from ledger import errors
from ledger.audits import audit, spot_check_rate
from ledger.canary import canary_commitment
from ledger.jobs import job, job_id_for
from ledger.payout import ema, share
from ledger.randomness import sample_count, sample_indices
from tests.trust_chain import (
    BOUNTY,
    CHAIN,
    CHALLENGER,
    JOB_BOND,
    MODEL,
    PARAMS,
    PRICE,
    SOLVER,
    SPEC,
    START,
    SUBMITTER,
    VERIFIER2,
    VERIFIER3,
    A,
    Trace,
    TrustChain,
    h,
)

SALT = bytes(range(16))
GOOD = h("good-output")
REPORT_BOND, REWARD = PARAMS.verify_report_bond, PARAMS.verify_reward

# ---- sampling ---------------------------------------------------------------------------------------


def test_sample_indices_are_deterministic_distinct_sorted_and_sized():
    seed = hashlib.sha256(b"e").digest()
    for n, rate in [(1, 1), (10, 500), (100, 500), (101, 5_000), (1_000, 10_000), (7, 0)]:
        picked = sample_indices(seed, "job", n, rate)
        assert picked == sample_indices(seed, "job", n, rate) == sorted(set(picked))
        assert len(picked) == sample_count(n, rate) == min(n, max(1, -(-n * rate // 10_000)))
        assert all(0 <= i < n for i in picked)
    assert sample_indices(seed, "job", 0, 500) == []
    assert sample_indices(seed, "job", 1_000, 10_000) == list(range(1_000))
    assert sample_indices(seed, "job", 500, 1_000) != sample_indices(seed, "other-job", 500, 1_000)
    assert sample_indices(seed, "job", 500, 1_000) != sample_indices(b"\x01" * 32, "job", 500, 1_000)
    with pytest.raises(ValueError):
        sample_indices(seed, "job", 10, 10_001)


def test_sample_indices_cover_items_uniformly():
    counts: collections.Counter[int] = collections.Counter()
    for i in range(2_000):
        counts.update(sample_indices(hashlib.sha256(b"%d" % i).digest(), "j", 20, 2_500))  # 5 of 20
    assert set(counts) == set(range(20))
    assert all(abs(c - 500) < 100 for c in counts.values()), counts


def test_spot_check_rate_rises_as_reputation_falls():
    assert spot_check_rate(PARAMS, 10_000) == 500 and spot_check_rate(PARAMS, 0) == 5_000
    assert spot_check_rate(PARAMS, 5_000) == 2_750 and spot_check_rate(PARAMS, 9_999) == 500
    rates = [spot_check_rate(PARAMS, r) for r in range(0, 10_001, 250)]
    assert rates == sorted(rates, reverse=True)
    with pytest.raises(errors.InvalidParams, match="spot_check_min_bps"):
        replace(PARAMS, spot_check_min_bps=6_000)


# ---- reports ----------------------------------------------------------------------------------------


def report(c: TrustChain, i: int, job_id: str, verdict: str, seed: bytes | None = None):
    body = {
        "job_id": job_id,
        "verdict": verdict,
        "sample_seed_used": seed or c.state.audits[job_id].sample_seed,
    }
    return c.run(i, "verify_report", body)


def test_seed_is_drawn_after_the_commit_and_reports_must_use_it():
    c = TrustChain()
    job_id = c.committed_job(Trace(4))
    commit_height = c.state.height
    assert (
        c.state.audits[job_id].sample_seed == b"" and c.state.audits[job_id].seed_height == commit_height + 1
    )
    r = report(c, CHALLENGER, job_id, "ok", b"\x00" * 32)
    assert (r.ok, r.code) == (False, errors.ReportRejected.code)  # drawn at the end of this block
    drawn = c.state.audits[job_id]
    assert drawn.sample_seed == c.state.entropy and drawn.seed_height == 0
    assert drawn.sample_rate_bps == spot_check_rate(PARAMS, c.rep(SOLVER, "solver")) == 2_750
    assert report(c, CHALLENGER, job_id, "ok", b"\x01" * 32).code == errors.WrongSampleSeed.code
    assert report(c, SOLVER, job_id, "ok").code == errors.NotRegistered.code
    assert report(c, CHALLENGER, job_id, "ok").ok
    assert report(c, CHALLENGER, job_id, "bad").code == errors.ReportRejected.code
    assert c.bal(CHALLENGER) == START - 100 - REPORT_BOND
    assert [r["verifier"] for r in audit(c.state, job_id)["reports"]] == [A[CHALLENGER]]


def test_report_limit_and_parties_cannot_report():
    c = TrustChain(replace(PARAMS, max_reports_per_job=2))
    c.ok(SOLVER, "register", {"role": "verifier"})
    job_id = c.committed_job(Trace(4))
    c.block()
    assert report(c, SOLVER, job_id, "ok").code == errors.ReportRejected.code
    assert report(c, CHALLENGER, job_id, "ok").ok and report(c, VERIFIER2, job_id, "bad").ok
    assert report(c, VERIFIER3, job_id, "ok").code == errors.ReportRejected.code


def test_reports_on_an_unchallenged_job_are_rewarded_from_the_pool():
    c = TrustChain(replace(PARAMS, job_verifier_share_bps=0))
    job_id = c.committed_job(Trace(4))
    c.block()
    assert report(c, CHALLENGER, job_id, "ok").ok and report(c, VERIFIER2, job_id, "bad").ok
    c.state = replace(c.state.copy(), verifier_pool=15, minted=c.state.minted + 15)  # < two rewards
    c.minted += 15
    c.skip_to(job(c.state, job_id)["challenge_end"])
    assert (
        job(c.state, job_id)["status"] == "finalized" and not c.state.reports and job_id not in c.state.audits
    )
    # address order decides who is paid first while the pool lasts
    first, second = sorted([CHALLENGER, VERIFIER2], key=lambda i: A[i])
    assert c.bal(first) == START - 100 + REWARD and c.bal(second) == START - 100 + 5
    assert c.state.verifier_pool == 0
    assert c.rep(CHALLENGER, "verifier") == 5_000 == c.rep(VERIFIER2, "verifier"), (
        "no truth, no reputation change"
    )


def test_reports_on_a_disputed_job_follow_the_verdict():
    c = TrustChain(replace(PARAMS, dispute_step_blocks=1))
    truth, cheat = Trace(4), Trace(4, diverge=1)
    job_id = c.committed_job(cheat)
    c.block()
    assert report(c, VERIFIER2, job_id, "ok").ok and report(c, VERIFIER3, job_id, "bad").ok
    burned = c.state.burned
    c.ok(
        CHALLENGER,
        "dispute_open",
        {"job_id": job_id, "bond": 1_000, "claim": {"index": 2, "hash": truth.hash_at(2)}},
    )
    c.block()  # the solver stays silent and loses
    assert job(c.state, job_id)["status"] == "reversed"
    assert c.bal(VERIFIER2) == START - 100 - REPORT_BOND and c.rep(VERIFIER2, "verifier") == 2_500
    # the verifier pool is empty (no job has finalized yet), so the right report gets no reward
    assert c.bal(VERIFIER3) == START - 100 and c.rep(VERIFIER3, "verifier") == ema(5_000, 10_000, 500)
    assert c.state.burned == burned + REPORT_BOND + JOB_BOND - share(JOB_BOND, 3_000)


# ---- canaries ---------------------------------------------------------------------------------------


def canary_job(c: TrustChain, output: str, expected: str = GOOD) -> str:
    job_id = c.assigned_job()
    c.ok(SUBMITTER, "canary_seal", {"job_id": job_id, "commitment": canary_commitment(expected, SALT)})
    c.commit(job_id, Trace(4).root, output)
    c.block()
    return job_id


def reveal(c: TrustChain, job_id: str, expected: str = GOOD, salt: bytes = SALT):
    return c.run(
        SUBMITTER, "canary_reveal", {"job_id": job_id, "expected_output_hash": expected, "salt": salt}
    )


def test_passed_canary_rewards_ok_and_slashes_bad_reports():
    c = TrustChain()
    job_id = canary_job(c, GOOD)
    assert report(c, CHALLENGER, job_id, "ok").ok and report(c, VERIFIER2, job_id, "bad").ok
    assert reveal(c, job_id).ok
    assert report(c, VERIFIER3, job_id, "ok").code == errors.ReportRejected.code, (
        "reports close at the reveal"
    )
    assert job(c.state, job_id)["status"] == "committed"
    c.skip_to(job(c.state, job_id)["challenge_end"])
    assert job(c.state, job_id)["status"] == "finalized"
    assert c.bal(CHALLENGER) == START - 100 + REWARD and c.rep(CHALLENGER, "verifier") == 5_250
    assert c.bal(VERIFIER2) == START - 100 - REPORT_BOND and c.rep(VERIFIER2, "verifier") == 2_500


def test_failed_canary_slashes_the_solver_and_the_lazy_verifier():
    c = TrustChain()
    job_id = canary_job(c, h("lazy-output"))
    assert report(c, CHALLENGER, job_id, "ok").ok and report(c, VERIFIER2, job_id, "bad").ok
    burned, pool = c.state.burned, c.state.verifier_pool
    assert reveal(c, job_id).ok
    assert job(c.state, job_id)["status"] == "reversed" and job(c.state, job_id)["held"] == 0
    assert c.bal(SOLVER) == START - 100 - JOB_BOND and c.rep(SOLVER, "solver") == 2_500
    assert c.bal(SUBMITTER) == START - PRICE, "a canary submitter still pays the price: lying gains nothing"
    assert pool == 0 and c.state.verifier_pool == PRICE, "reports are paid before the price reaches the pool"
    assert c.bal(CHALLENGER) == START - 100 - REPORT_BOND and c.rep(CHALLENGER, "verifier") == 2_500
    assert c.bal(VERIFIER2) == START - 100 and c.rep(VERIFIER2, "verifier") == 5_250
    assert c.rep(SUBMITTER, "verifier") == 5_000 and (SUBMITTER, "verifier") not in c.state.reputation
    assert c.state.burned == burned + JOB_BOND + REPORT_BOND
    assert not c.state.reports and job_id not in c.state.audits


def test_canary_errors():
    c = TrustChain()
    job_id = c.assigned_job()
    seal = {"job_id": job_id, "commitment": canary_commitment(GOOD, SALT)}
    assert c.run(CHALLENGER, "canary_seal", seal).code == errors.NotSubmitter.code
    c.ok(SUBMITTER, "canary_seal", seal)
    assert c.run(SUBMITTER, "canary_seal", seal).code == errors.CanaryError.code
    assert reveal(c, job_id).code == errors.WrongJobStatus.code, "no reveal before the result"
    c.commit(job_id, Trace(4).root, GOOD)
    assert reveal(c, job_id, salt=b"\x07" * 16).code == errors.CanaryError.code
    assert reveal(c, job_id, expected=h("other")).code == errors.CanaryError.code
    assert reveal(c, job_id).ok
    assert reveal(c, job_id).code == errors.CanaryError.code
    plain = c.committed_job(Trace(4))
    assert reveal(c, plain).code == errors.CanaryError.code
    assert (
        c.run(SUBMITTER, "canary_seal", {"job_id": plain, "commitment": GOOD}).code
        == errors.WrongJobStatus.code
    )


def test_a_canary_can_be_sealed_while_the_job_is_still_open():
    c = TrustChain()
    job_id = job_id_for(CHAIN, A[SUBMITTER], c.state.accounts[A[SUBMITTER]].nonce)
    post = {"spec_hash": SPEC, "model_hash": MODEL, "kind": "training", "bounty": BOUNTY,
            "bid_window_blocks": 20, "deadline_blocks": 10, "challenge_window_blocks": 30,
            "requirements": {}}  # fmt: skip
    c.ok(SUBMITTER, "job_post", post)
    assert job(c.state, job_id)["status"] == "open"
    c.ok(SUBMITTER, "canary_seal", {"job_id": job_id, "commitment": canary_commitment(GOOD, SALT)})
    again = c.run(SUBMITTER, "canary_seal", {"job_id": job_id, "commitment": GOOD})
    assert again.code == errors.CanaryError.code
    cancelled = job_id_for(CHAIN, A[SUBMITTER], c.state.accounts[A[SUBMITTER]].nonce)
    c.ok(SUBMITTER, "job_post", post)
    c.ok(SUBMITTER, "canary_seal", {"job_id": cancelled, "commitment": GOOD})
    c.ok(SUBMITTER, "job_cancel", {"job_id": cancelled})
    assert cancelled not in c.state.audits  # the seal leaves with the job (checked by the invariants too)
    c.skip_to(job(c.state, job_id)["bids_close"])  # no bid: the job expires, its seal goes too
    assert job(c.state, job_id)["status"] == "expired" and job_id not in c.state.audits


def test_sealed_canary_of_a_missed_job_is_dropped():
    c = TrustChain()
    job_id = c.assigned_job()
    c.ok(SUBMITTER, "canary_seal", {"job_id": job_id, "commitment": canary_commitment(GOOD, SALT)})
    assert job_id in c.state.audits
    c.skip_to(job(c.state, job_id)["deadline"])
    assert job(c.state, job_id)["status"] == "missed" and job_id not in c.state.audits
