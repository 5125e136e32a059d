"""job_award (post + assign to a quoting solver in one tx) and job_accept (the submitter finalizes a
committed job before its challenge window ends) in the ledger state machine."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from ledger import errors
from ledger.apply import Receipt, begin_block, deliver_tx, end_block
from ledger.audits import audit
from ledger.canary import canary_commitment
from ledger.jobs import award_job_id, job, jobs_by_status, open_dispute
from ledger.quotes import Quote
from ledger.state import balance, check_invariants
from ledger.tx import sign_tx
from tests import trust_chain as tc
from tests.test_market_state import (
    CHAIN,
    CHALLENGER,
    IDS,
    KEY,
    MODEL,
    PARAMS,
    POST,
    PROPOSER,
    S1,
    S3,
    START,
    SUBMITTER,
    A,
    Market,
    assert_failed,
    assigned_job,
)

AWARD = {k: v for k, v in POST.items() if k != "bid_window_blocks"} | {
    "price": 6_001,
    "bond": 1_000,
    "encryption_key": KEY,
    "canary": "",
}
QUOTED = ("spec_hash", "deadline_blocks", "price", "bond", "encryption_key", "quote_expires")


def quote_sig(
    m: Market,
    body: dict[str, Any],
    *,
    submitter: int = 2,
    signer: int = 5,
    salt: bytes | None = None,
    chain: str = CHAIN,
) -> bytes:
    """`signer`'s signature of the quote for the terms in `body`, for the job the submitter's tx
    with `salt` (default: the body's) posts."""
    job_id = award_job_id(chain, A[submitter], body["job_salt"] if salt is None else salt)
    q = Quote(job_id, *(body[k] for k in QUOTED))
    return q.sign(IDS[signer], chain)


def _salt(m: Market, submitter: int) -> bytes:
    """A salt fresh for each tx of `submitter` (and the same in two markets in the same state)."""
    return hashlib.sha256(b"salt %d/%d" % (submitter, m.state.accounts[A[submitter]].nonce)).digest()[:16]


def award(
    m: Market,
    solver: int = 5,
    *,
    after: dict[str, Any] | None = None,
    submitter: int = 2,
    signer: int | None = None,
    salt: bytes | None = None,
    chain: str = CHAIN,
    **terms: Any,
) -> dict[str, Any]:
    """A job_award body from `submitter` carrying `solver`'s quote on `terms` (AWARD by default,
    valid until 5 blocks from now); `after` changes fields once the quote is signed."""
    fresh = {"solver": A[solver], "quote_expires": m.state.height + 5, "job_salt": _salt(m, submitter)}
    body = AWARD | fresh | terms
    body["quote_sig"] = quote_sig(
        m, body, submitter=submitter, signer=solver if signer is None else signer, salt=salt, chain=chain
    )
    return body | (after or {})


def awarded(m: Market, solver: int = 5, **terms: Any) -> str:
    body = award(m, solver, **terms)
    m.ok(2, "job_award", body)
    return award_job_id(CHAIN, SUBMITTER, body["job_salt"])


def commit_body(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "output_hash": hashlib.sha256(b"output").hexdigest(),
            "trace_root": hashlib.sha256(b"trace").hexdigest(), "result_size": 4096}  # fmt: skip


def refused(m: Market, i: int, tx_type: str, body: dict[str, Any], err: type[errors.LedgerError]) -> Receipt:
    """Deliver one tx that must fail with `err`, check that it moved nothing but its sender's nonce
    (fees are 0 in Market), and finish the block."""
    h = m.state.height + 1
    s = begin_block(m.state, h, h * 1_000, PROPOSER)
    after, r = deliver_tx(s, m.tx(i, tx_type, body))
    assert_failed(r, err)
    expected = s.copy()
    acct = expected.accounts[A[i]]
    expected.accounts[A[i]] = replace(acct, nonce=acct.nonce + 1)
    assert after == expected, "a failed tx must change nothing but its sender's nonce and fee"
    m.state, _ = end_block(after)
    check_invariants(m.state)
    return r


# ---- body schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tx_type", "change", "needle"),
    [
        ("job_award", {"quote_sig": bytes(63)}, "64-byte Ed25519 signature"),
        ("job_award", {"quote_sig": "00" * 64}, "64-byte Ed25519 signature"),
        ("job_award", {"solver": "nobody"}, "peer id"),
        ("job_award", {"price": 0}, "positive"),
        ("job_award", {"bond": -1}, "unsigned"),
        ("job_award", {"quote_expires": 2**64}, "unsigned"),
        ("job_award", {"encryption_key": KEY[:31]}, "X25519"),
        ("job_award", {"bid_window_blocks": 1}, "exactly the fields"),
        ("job_award", {"job_salt": bytes(15)}, "job_salt"),
        ("job_award", {"job_salt": "00" * 16}, "job_salt"),
        ("job_award", {"canary": "x"}, "lowercase hex"),
        ("job_accept", {"job_id": MODEL.upper()}, "lowercase hex"),
        ("job_accept", {"extra": 1}, "exactly the fields"),
    ],
)
def test_bodies_are_checked(tx_type: str, change: dict[str, Any], needle: str):
    m = Market()
    base = award(m) if tx_type == "job_award" else {"job_id": MODEL}
    sign_tx(IDS[0], tx_type, base, nonce=0, fee=0, chain_id=CHAIN)  # the unchanged body is fine
    with pytest.raises(errors.InvalidTx, match=needle):
        sign_tx(IDS[0], tx_type, base | change, nonce=0, fee=0, chain_id=CHAIN)


# ---- the award ----------------------------------------------------------------------------------


def test_award_assigns_at_the_post_height_and_finalizes_with_the_exact_split():
    m = Market()
    job_id = awarded(m)
    at = m.state.height
    j = job(m.state, job_id)
    assert (j["status"], j["solver"], j["price"], j["bond"], j["encryption_key"]) == (
        "assigned",
        S3,
        6_001,
        1_000,
        KEY.hex(),
    )
    assert (j["post_height"], j["assigned_height"], j["bid_window_blocks"], j["bids_close"]) == (
        at,
        at,
        0,
        at,
    )
    assert (j["deadline"], j["due_height"], j["held"], j["bids"]) == (at + 4, at + 4, 11_000, [])
    assert m.state.job_timers == {(at + 4, job_id): "assigned"} and not m.state.bids
    assert m.bal(2) == START - 10_000 and m.bal(5) == START - 100 - 1_000
    assert jobs_by_status(m.state, "assigned", solver=S3) == [job_id]

    assert m.commit(5, job_id).ok
    committed = m.state.height
    m.skip_to(committed + 4)
    assert job(m.state, job_id)["status"] == "committed"
    m.block()
    j = job(m.state, job_id)
    assert (j["status"], j["closed_height"], j["held"]) == ("finalized", committed + 5, 0)
    # price 6_001: royalty 480 (800 bps), verifiers 300, treasury 120, solver the rest 5_101
    assert m.bal(5) == START - 100 + 5_101 and m.bal(1) == START - 100 + 480
    assert (m.state.verifier_pool, m.state.treasury) == (300, 120)
    assert m.bal(2) == START - 10_000 + 3_999
    assert m.rep(5) == 5_250 and not m.state.job_timers


def _ledger_of(m: Market) -> tuple[Any, ...]:
    balances = {a: balance(m.state, a) for a in A}
    return balances, m.state.verifier_pool, m.state.treasury, m.state.burned, dict(m.state.reputation)


@pytest.mark.parametrize("outcome", ["finalized", "missed"])
def test_an_awarded_job_settles_exactly_like_one_won_by_a_bid(outcome: str):
    by_bid, by_award = Market(), Market()
    bid_job = assigned_job(by_bid, winner=5, price=6_001, bond=1_000)
    award_job = awarded(by_award)
    for m, job_id in ((by_bid, bid_job), (by_award, award_job)):
        if outcome == "finalized":
            assert m.commit(5, job_id).ok
            m.skip_to(job(m.state, job_id)["challenge_end"])
        else:
            m.skip_to(job(m.state, job_id)["deadline"])
        assert job(m.state, job_id)["status"] == outcome
    assert _ledger_of(by_bid) == _ledger_of(by_award)
    assert by_award.bal(5) != START - 100, "the solver's balance moved"


def test_award_to_a_validator_counts_its_stake_and_bond_may_be_zero_when_the_minimum_is():
    m = Market()
    # solver 0 has 5_000 self-stake: 5_000 + 600 >= 5_600
    job_id = awarded(m, 0, price=6_000, bond=600, requirements={"min_stake": 5_600})
    assert job(m.state, job_id)["solver"] == A[0] and m.bal(0) == START - 100 - 600
    free = Market(replace(PARAMS, min_solver_bond_bps=0))
    job_id = awarded(free, price=6_000, bond=0)
    assert job(free.state, job_id)["held"] == 10_000 and free.bal(5) == START - 100


def test_bids_on_an_awarded_job_are_refused():
    m = Market()
    job_id = awarded(m)
    assert_failed(m.bid(4, job_id, 5_000, 500), errors.BidWindowClosed)


def test_quote_is_accepted_up_to_its_expiry_height():
    m = Market()
    h = m.state.height + 1  # the height of the block that carries the tx
    job_id = awarded(m, quote_expires=h)
    assert job(m.state, job_id)["status"] == "assigned" and m.state.height == h
    r = refused(m, 2, "job_award", award(m, quote_expires=m.state.height), errors.QuoteExpired)
    assert f"expired at height {h}" in r.message and f"height is {h + 1}" in r.message


# ---- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "after",
    [
        {"price": 6_002},
        {"bond": 1_001},
        {"spec_hash": hashlib.sha256(b"other spec").hexdigest()},
        {"deadline_blocks": 5},
        {"encryption_key": bytes(32)},
        {"quote_expires": 10**6},
        {"solver": A[4]},
    ],
    ids=lambda d: next(iter(d)),
)
def test_terms_changed_after_signing_are_refused(after: dict[str, Any]):
    m = Market()
    r = refused(m, 2, "job_award", award(m, after=after), errors.BadQuote)
    assert after.get("solver", S3) in r.message and not m.state.jobs


@pytest.mark.parametrize(
    "how",
    [
        {"signer": 4},  # another solver's key
        {"signer": 2},  # the submitter's own key
        {"salt": b"another job salt"},  # a quote for another job of the submitter
        {"submitter": 1},  # a quote for another submitter's job
        {"chain": "another-chain"},
    ],
    ids=["other_key", "submitter_key", "other_salt", "other_submitter", "other_chain"],
)
def test_quotes_not_signed_by_the_solver_for_this_job_are_refused(how: dict[str, Any]):
    m = Market()
    r = refused(m, 2, "job_award", award(m, **how), errors.BadQuote)
    assert f"does not match solver {S3}" in r.message and not m.state.jobs


def test_award_refusals():
    m = Market()
    unknown = hashlib.sha256(b"unknown").hexdigest()
    refused(m, 2, "job_award", award(m, model_hash=unknown), errors.UnknownModel)
    for field, value in [
        ("deadline_blocks", 0),
        ("deadline_blocks", 51),
        ("challenge_window_blocks", 1),
        ("challenge_window_blocks", 51),
    ]:
        r = refused(m, 2, "job_award", award(m, **{field: value}), errors.WindowOutOfRange)
        assert field in r.message
    refused(m, 2, "job_award", award(m, 6), errors.NotRegistered)  # a verifier
    r = refused(m, 2, "job_award", award(m, 7), errors.NotRegistered)  # no role at all
    assert A[7] in r.message
    m.ok(2, "register", {"role": "solver"})
    refused(m, 2, "job_award", award(m, 2), errors.SelfDealing)
    refused(m, 2, "job_award", award(m, price=10_001, bond=2_000), errors.PriceTooHigh)
    reqs = {"max_price": 7_000}
    r = refused(m, 2, "job_award", award(m, price=7_001, bond=1_000, requirements=reqs), errors.PriceTooHigh)
    assert "max_price 7000" in r.message
    r = refused(m, 2, "job_award", award(m, price=6_001, bond=600), errors.BondTooLow)
    assert "minimum 601" in r.message
    r = refused(m, 2, "job_award", award(m, requirements={"min_reputation": 5_001}), errors.RequirementNotMet)
    assert "reputation >= 5001" in r.message
    reqs = {"min_stake": 2_000}
    r = refused(
        m, 2, "job_award", award(m, price=6_000, bond=1_999, requirements=reqs), errors.RequirementNotMet
    )
    assert "stake" in r.message
    assert not m.state.jobs and m.bal(2) == START - 100 and m.bal(5) == START - 100
    assert awarded(m, price=6_000, bond=2_000, requirements=reqs) in m.state.jobs


def test_a_solver_short_of_its_bond_fails_the_award_and_moves_nothing():
    m = Market()
    # the submitter's bounty is debited first: the failed bond debit must roll it back too
    r = refused(m, 2, "job_award", award(m, bond=START), errors.InsufficientBalance)
    assert str(START) in r.message
    assert not m.state.jobs and m.bal(2) == START and m.bal(5) == START - 100
    r = refused(m, 2, "job_award", award(m, bounty=START + 1, price=6_001), errors.InsufficientBalance)
    assert not m.state.jobs and m.bal(2) == START and m.bal(5) == START - 100


# ---- job_accept ---------------------------------------------------------------------------------


def test_accept_finalizes_at_once_with_the_challenge_end_payout():
    accepted, waited = Market(), Market()
    for m in (accepted, waited):
        job_id = awarded(m)
        assert m.commit(5, job_id).ok
    committed = accepted.state.height
    accepted.ok(2, "job_accept", {"job_id": job_id})
    j = job(accepted.state, job_id)
    assert (j["status"], j["closed_height"], j["held"], j["due_height"]) == ("finalized", committed + 1, 0, 0)
    assert not accepted.state.job_timers and accepted.rep(5) == 5_250
    assert accepted.bal(5) == START - 100 + 5_101 and accepted.bal(2) == START - 10_000 + 3_999
    waited.skip_to(job(waited.state, job_id)["challenge_end"])
    assert job(waited.state, job_id)["status"] == "finalized"
    assert _ledger_of(accepted) == _ledger_of(waited)
    accepted.skip_to(committed + 10)
    assert job(accepted.state, job_id)["closed_height"] == committed + 1, "a finalized job has no timer left"


def test_accept_in_the_commit_block_drops_the_pending_seed_draw():
    m = Market()
    job_id = awarded(m)
    receipts = m.block(m.tx(5, "job_commit", commit_body(job_id)), m.tx(2, "job_accept", {"job_id": job_id}))
    assert [r.ok for r in receipts] == [True, True]
    assert job(m.state, job_id)["status"] == "finalized"
    assert job_id not in m.state.audits and not m.state.game_timers


def test_accept_settles_verifier_reports_like_a_normal_finalization():
    accepted, waited = tc.TrustChain(), tc.TrustChain()
    for c in (accepted, waited):
        job_id = c.committed_job(tc.Trace(4))
        c.block()  # the sample seed is drawn
        body = {"job_id": job_id, "verdict": "ok", "sample_seed_used": c.state.audits[job_id].sample_seed}
        c.ok(tc.CHALLENGER, "verify_report", body)
        assert c.bal(tc.CHALLENGER) == tc.START - 100 - tc.PARAMS.verify_report_bond
    accepted.ok(tc.SUBMITTER, "job_accept", {"job_id": job_id})
    waited.skip_to(job(waited.state, job_id)["challenge_end"])
    for c in (accepted, waited):
        assert job(c.state, job_id)["status"] == "finalized"
        assert not c.state.reports and job_id not in c.state.audits
        assert c.bal(tc.CHALLENGER) == tc.START - 100 + tc.PARAMS.verify_reward  # bond back + reward
    assert {a: balance(accepted.state, a) for a in tc.A} == {a: balance(waited.state, a) for a in tc.A}
    assert accepted.state.verifier_pool == waited.state.verifier_pool > 0


def test_accept_drops_a_sealed_canary():
    c = tc.TrustChain()
    job_id = c.assigned_job()
    commitment = canary_commitment(tc.h("good-output"), bytes(16))
    c.ok(tc.SUBMITTER, "canary_seal", {"job_id": job_id, "commitment": commitment})
    c.commit(job_id, tc.Trace(4).root)
    assert audit(c.state, job_id)["canary"] == commitment
    c.ok(tc.SUBMITTER, "job_accept", {"job_id": job_id})
    assert job(c.state, job_id)["status"] == "finalized" and job_id not in c.state.audits


def test_accept_refusals():
    m = Market()
    open_job = m.post()
    assigned = awarded(m)
    assert_failed(m.run(2, "job_accept", {"job_id": MODEL}), errors.UnknownJob)
    for job_id in (open_job, assigned):
        r = refused(m, 2, "job_accept", {"job_id": job_id}, errors.WrongJobStatus)
        assert "committed" in r.message
    assert m.commit(5, assigned).ok
    for i in (5, 6, 3):  # the solver, a verifier, another solver
        r = refused(m, i, "job_accept", {"job_id": assigned}, errors.NotSubmitter)
        assert SUBMITTER in r.message
    assert job(m.state, assigned)["status"] == "committed"
    m.state = open_dispute(m.state, assigned, CHALLENGER)
    r = refused(m, 2, "job_accept", {"job_id": assigned}, errors.WrongJobStatus)
    assert "disputed" in r.message

    done = awarded(m, 3)
    assert m.commit(3, done).ok
    m.ok(2, "job_accept", {"job_id": done})
    assert job(m.state, done)["solver"] == S1
    r = refused(m, 2, "job_accept", {"job_id": done}, errors.WrongJobStatus)
    assert "finalized" in r.message
    assert job(m.state, open_job)["status"] == "expired"  # no bids: its bid window ran out
    r = refused(m, 2, "job_accept", {"job_id": open_job}, errors.WrongJobStatus)
    assert "expired" in r.message


def test_an_award_salt_is_used_once_and_its_canary_is_sealed_with_it():
    m = Market()
    commitment = hashlib.sha256(b"canary").hexdigest()
    body = award(m, canary=commitment)
    m.ok(2, "job_award", body)
    job_id = award_job_id(CHAIN, SUBMITTER, body["job_salt"])
    assert m.state.jobs[job_id].status == "assigned"
    assert m.state.audits[job_id].canary == commitment  # sealed before any result can exist
    again = award(m, job_salt=body["job_salt"])  # a fresh quote, the same job id
    refused(m, 2, "job_award", again, errors.DuplicateJob)
    plain = awarded(m)  # canary "": none sealed
    assert plain not in m.state.audits or not m.state.audits[plain].canary
