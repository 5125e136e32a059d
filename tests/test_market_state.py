"""Unit tests of the market in the ledger state machine: models, jobs, payouts, reputation, disputes."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from gossip.identity import Identity
from ledger import errors, payout
from ledger.apply import Receipt, apply_block
from ledger.genesis import Genesis, genesis_state
from ledger.jobs import job, job_id_for, jobs_by_status, open_dispute, resolve_dispute
from ledger.models import model, models
from ledger.params import Params
from ledger.state import app_hash, balance, check_invariants, decode_state, encode_state, total_supply
from ledger.tx import sign_tx

CHAIN = "hm-market"
IDS = [Identity.from_seed(hashlib.sha256(b"market-%d" % i).digest()) for i in range(9)]
A = [i.peer_id for i in IDS]
OWNER, SUBMITTER, S1, S2, S3, CHALLENGER, PROPOSER = A[1], A[2], A[3], A[4], A[5], A[6], A[8]
PARAMS = Params(
    min_fee=0,
    registration_burn=100,
    max_royalty_bps=1_000,
    job_verifier_share_bps=500,
    job_treasury_share_bps=200,
    min_solver_bond_bps=1_000,
    min_challenge_window_blocks=2,
    max_job_window_blocks=50,
    max_bids_per_job=3,
    job_miss_compensation_bps=5_000,
    bid_weight_price=5,
    bid_weight_reputation=3,
    bid_weight_stake=2,
    reputation_default=5_000,
    reputation_gain_bps=500,
    reputation_miss_bps=2_000,
    reputation_dispute_bps=5_000,
)
START = 100_000
MODEL = hashlib.sha256(b"model").hexdigest()
SPEC = hashlib.sha256(b"spec").hexdigest()
OUT = hashlib.sha256(b"output").hexdigest()
ROOT = hashlib.sha256(b"trace").hexdigest()
KEY = bytes(range(32))
POST = {
    "spec_hash": SPEC,
    "model_hash": MODEL,
    "kind": "training",
    "bounty": 10_000,
    "bid_window_blocks": 10,
    "deadline_blocks": 4,
    "challenge_window_blocks": 5,
    "requirements": {},
}


class Market:
    """A chain with a model owner (1), a submitter (2), solvers (3, 4, 5, 0) and a verifier (6).

    Fees are 0, so balances change only by what the market does. Account 0 is the one validator.
    """

    def __init__(self, params: Params = PARAMS) -> None:
        genesis = Genesis.from_dict(
            {
                "chain_id": CHAIN,
                "balances": {a: START for a in A},
                "validators": [
                    {"address": A[0], "pubkey": IDS[0].public.hex(), "self_stake": 5_000, "commission_bps": 0}
                ],
                "params": params.to_dict(),
            }
        )
        self.state = genesis_state(genesis)
        self.minted = self.state.minted
        roles = [
            (1, "model_owner"),
            (3, "solver"),
            (4, "solver"),
            (5, "solver"),
            (0, "solver"),
            (6, "verifier"),
        ]
        assert all(r.ok for r in self.block(*(self.tx(i, "register", {"role": role}) for i, role in roles)))
        self.ok(1, "model_register", {"model_hash": MODEL, "arch": "mlp-v1", "royalty_bps": 800})

    def tx(self, i: int, tx_type: str, body: dict[str, Any]):
        return sign_tx(IDS[i], tx_type, body, nonce=self.state.accounts[A[i]].nonce, fee=0, chain_id=CHAIN)

    def block(self, *txs) -> list[Receipt]:
        h = self.state.height + 1
        new, receipts, digest = apply_block(self.state, h, h * 1_000, PROPOSER, list(txs))
        check_invariants(new)
        assert new.minted == self.minted and total_supply(new) + new.burned == self.minted
        assert digest == app_hash(new)
        self.state = new
        return receipts

    def run(self, i: int, tx_type: str, body: dict[str, Any]) -> Receipt:
        return self.block(self.tx(i, tx_type, body))[0]

    def ok(self, i: int, tx_type: str, body: dict[str, Any]) -> Receipt:
        r = self.run(i, tx_type, body)
        assert r.ok, r
        return r

    def post(self, i: int = 2, **override: Any) -> str:
        job_id = job_id_for(CHAIN, A[i], self.state.accounts[A[i]].nonce)
        self.ok(i, "job_post", POST | override)
        return job_id

    def bid(self, i: int, job_id: str, price: int, bond: int) -> Receipt:
        return self.run(i, "job_bid", {"job_id": job_id, "price": price, "bond": bond, "encryption_key": KEY})

    def commit(self, i: int, job_id: str) -> Receipt:
        body = {"job_id": job_id, "output_hash": OUT, "trace_root": ROOT, "result_size": 4096}
        return self.run(i, "job_commit", body)

    def skip_to(self, height: int) -> None:
        while self.state.height < height:
            self.block()

    def bal(self, i: int) -> int:
        return balance(self.state, A[i])

    def rep(self, i: int, role: str = "solver") -> int:
        return payout.reputation_of(self.state, A[i], role)


def assert_failed(r: Receipt, err: type[errors.LedgerError]) -> None:
    assert (r.ok, r.code, r.charged) == (False, err.code, True), r


def assigned_job(m: Market, winner: int = 5, price: int = 6_001, bond: int = 1_000) -> str:
    """A job posted at height h, one bid by `winner`, assigned at the end of h + 10."""
    job_id = m.post()
    assert m.bid(winner, job_id, price, bond).ok
    m.skip_to(job(m.state, job_id)["bids_close"])
    assert job(m.state, job_id)["status"] == "assigned"
    return job_id


# ---- params and arithmetic --------------------------------------------------------------------


def test_market_params_are_cross_checked():
    with pytest.raises(errors.InvalidParams, match="solver's share"):
        replace(PARAMS, max_royalty_bps=9_400)
    with pytest.raises(errors.InvalidParams, match="min_challenge_window_blocks"):
        replace(PARAMS, min_challenge_window_blocks=51)
    with pytest.raises(errors.InvalidParams, match="bid_weight_stake"):
        replace(PARAMS, bid_weight_stake=101)


def test_split_and_bond_arithmetic():
    s = payout.split_price(6_001, 800, 500, 200)
    assert (s.royalty, s.verifiers, s.treasury, s.solver) == (480, 300, 120, 5_101)
    assert payout.split_price(1, 800, 500, 200) == payout.PriceSplit(1, 0, 0, 0)
    capped = payout.job_split(replace(PARAMS, max_royalty_bps=100), 10_000, 800)
    assert capped.royalty == 100 and capped.solver == 10_000 - 100 - 500 - 200
    assert [payout.min_bond(p, 1_000) for p in (6_000, 6_001, 1, 0)] == [600, 601, 1, 0]
    assert payout.min_bond(7, 25_000) == 18
    assert payout.ema(5_000, 10_000, 500) == 5_250 and payout.ema(5_000, 0, 2_000) == 4_000
    assert payout.ema(1, 0, 2_000) == 0 and payout.ema(9_999, 10_000, 1) == 9_999
    assert payout.bid_score(PARAMS, 10_000, 6_000, 5_000, 600) == 5 * 4_000 + 3 * 5_000 + 2 * 600
    assert payout.bid_score(PARAMS, 10_000, 10_000, 0, 50_000) == 2 * 10_000  # stake is capped at the bounty


# ---- body schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tx_type", "body", "needle"),
    [
        ("model_register", {"model_hash": MODEL.upper(), "arch": "mlp", "royalty_bps": 1}, "lowercase hex"),
        ("model_register", {"model_hash": MODEL[:-2], "arch": "mlp", "royalty_bps": 1}, "64"),
        ("model_register", {"model_hash": MODEL, "arch": "MLP!", "royalty_bps": 1}, "arch"),
        ("model_register", {"model_hash": MODEL, "arch": "m" * 33, "royalty_bps": 1}, "arch"),
        ("model_register", {"model_hash": MODEL, "arch": "mlp", "royalty_bps": 10_001}, "basis points"),
        ("model_transfer", {"model_hash": MODEL, "to": "nobody"}, "peer id"),
        ("job_post", POST | {"kind": "mining"}, "job kind"),
        ("job_post", POST | {"bounty": 0}, "positive"),
        ("job_post", POST | {"requirements": {"min_gpus": 1}}, "requirements"),
        ("job_post", POST | {"requirements": {"min_reputation": 10_001}}, "min_reputation"),
        ("job_post", POST | {"requirements": {"max_price": -1}}, "max_price"),
        ("job_post", {k: v for k, v in POST.items() if k != "requirements"}, "exactly the fields"),
        ("job_bid", {"job_id": MODEL, "price": 5, "bond": 1, "encryption_key": KEY[:31]}, "X25519"),
        ("job_bid", {"job_id": MODEL, "price": 0, "bond": 1, "encryption_key": KEY}, "positive"),
        ("job_commit", {"job_id": MODEL, "output_hash": OUT, "trace_root": "", "result_size": 1}, "hex"),
        ("job_cancel", {"job_id": 7}, "hex"),
    ],
)
def test_market_bodies_are_checked(tx_type: str, body: dict[str, Any], needle: str):
    with pytest.raises(errors.InvalidTx, match=needle):
        sign_tx(IDS[0], tx_type, body, nonce=0, fee=0, chain_id=CHAIN)


# ---- model registry ---------------------------------------------------------------------------


def test_model_register_transfer_and_errors():
    m = Market()
    assert model(m.state, MODEL) == {
        "model_hash": MODEL,
        "owner": OWNER,
        "arch": "mlp-v1",
        "royalty_bps": 800,
        "registered_height": 2,
    }
    other = hashlib.sha256(b"other").hexdigest()
    assert_failed(
        m.run(1, "model_register", {"model_hash": MODEL, "arch": "x", "royalty_bps": 0}), errors.ModelExists
    )
    assert_failed(
        m.run(2, "model_register", {"model_hash": other, "arch": "x", "royalty_bps": 0}), errors.NotRegistered
    )
    r = m.run(1, "model_register", {"model_hash": other, "arch": "x", "royalty_bps": 1_001})
    assert_failed(r, errors.RoyaltyTooHigh)
    assert "maximum 1000" in r.message and other not in m.state.models
    assert_failed(m.run(2, "model_transfer", {"model_hash": MODEL, "to": A[2]}), errors.NotModelOwner)
    assert_failed(m.run(1, "model_transfer", {"model_hash": other, "to": A[2]}), errors.UnknownModel)
    m.ok(1, "model_transfer", {"model_hash": MODEL, "to": A[7]})
    assert model(m.state, MODEL)["owner"] == A[7] and models(m.state, owner=OWNER) == []
    assert [x["model_hash"] for x in models(m.state)] == [MODEL]
    with pytest.raises(errors.UnknownModel):
        model(m.state, other)


# ---- the full life -------------------------------------------------------------------------------


def test_full_life_post_bid_assign_commit_finalize():
    m = Market()
    job_id = m.post()
    posted = m.state.height
    assert m.bal(2) == START - 10_000 and job(m.state, job_id)["held"] == 10_000
    assert job_id == job_id_for(CHAIN, SUBMITTER, 0) and jobs_by_status(m.state, "open") == [job_id]
    bids = [(3, 8_000, 800), (4, 6_000, 600), (5, 6_001, 1_000)]
    body = {"job_id": job_id, "encryption_key": KEY}
    receipts = m.block(*(m.tx(i, "job_bid", body | {"price": p, "bond": b}) for i, p, b in bids))
    assert all(r.ok for r in receipts)
    assert [b["solver"] for b in job(m.state, job_id)["bids"]] == sorted([S1, S2, S3])
    assert (m.bal(3), m.bal(4), m.bal(5)) == (START - 100 - 800, START - 100 - 600, START - 100 - 1_000)
    # scores: S1 5*2_000 + 3*5_000 + 2*800 = 26_600; S2 20_000 + 15_000 + 1_200 = 36_200;
    # S3 5*3_999 + 15_000 + 2*1_000 = 36_995: the dearer but better-bonded S3 wins.
    m.skip_to(posted + 9)
    assert job(m.state, job_id)["status"] == "open" and job(m.state, job_id)["bids_close"] == posted + 10
    m.block()
    j = job(m.state, job_id)
    assert (j["status"], j["solver"], j["price"], j["bond"], j["held"]) == (
        "assigned",
        S3,
        6_001,
        1_000,
        11_000,
    )
    assert (j["encryption_key"], j["assigned_height"], j["deadline"]) == (KEY.hex(), posted + 10, posted + 14)
    assert j["bids"] == [] and not m.state.bids
    assert (m.bal(3), m.bal(4), m.bal(5)) == (START - 100, START - 100, START - 1_100)

    assert m.commit(5, job_id).ok
    committed = m.state.height
    j = job(m.state, job_id)
    assert (j["status"], j["output_hash"], j["trace_root"], j["result_size"]) == (
        "committed",
        OUT,
        ROOT,
        4096,
    )
    assert j["challenge_end"] == committed + 5
    m.skip_to(committed + 4)
    assert job(m.state, job_id)["status"] == "committed"
    m.block()
    j = job(m.state, job_id)
    assert (j["status"], j["closed_height"], j["held"]) == ("finalized", committed + 5, 0)
    # price 6_001: royalty 480 (800 bps), verifiers 300, treasury 120, solver the rest 5_101
    assert m.bal(5) == START - 100 + 5_101
    assert m.bal(1) == START - 100 + 480
    assert (m.state.verifier_pool, m.state.treasury) == (300, 120)
    assert m.bal(2) == START - 10_000 + 3_999
    assert m.rep(5) == 5_250 and m.rep(4) == 5_000
    assert jobs_by_status(m.state, "finalized", solver=S3) == [job_id] and not m.state.job_timers


def test_royalty_goes_to_the_owner_at_payout_time():
    m = Market()
    job_id = assigned_job(m, price=10_000, bond=1_000)
    m.ok(1, "model_transfer", {"model_hash": MODEL, "to": A[7]})
    m.commit(5, job_id)
    m.skip_to(job(m.state, job_id)["challenge_end"])
    assert (m.bal(7), m.bal(1)) == (START + 800, START - 100)


def test_tie_goes_to_the_lower_address_and_rebid_replaces():
    m = Market()
    job_id = m.post()
    assert m.bid(3, job_id, 5_000, 500).ok and m.bid(4, job_id, 5_000, 500).ok
    assert m.bid(5, job_id, 9_000, 900).ok
    assert m.bid(5, job_id, 5_000, 500).ok  # replaces the first bid; its bond comes back
    assert m.bal(5) == START - 100 - 500 and len(m.state.bids) == 3
    assert [b["price"] for b in job(m.state, job_id)["bids"] if b["solver"] == S3] == [5_000]
    m.skip_to(job(m.state, job_id)["bids_close"])
    assert job(m.state, job_id)["solver"] == min(S1, S2, S3)


def test_failed_rebid_keeps_the_old_bid():
    m = Market()
    job_id = m.post()
    assert m.bid(3, job_id, 5_000, 500).ok
    r = m.bid(3, job_id, 5_000, START)  # the old bond is refunded first, still not enough balance
    assert_failed(r, errors.InsufficientBalance)
    assert m.state.bids[(job_id, S1)].bond == 500 and m.bal(3) == START - 100 - 500


def test_no_bids_expires_and_refunds():
    m = Market()
    job_id = m.post()
    m.skip_to(job(m.state, job_id)["bids_close"])
    j = job(m.state, job_id)
    assert (j["status"], j["held"], j["solver"]) == ("expired", 0, "") and m.bal(2) == START
    assert_failed(m.bid(3, job_id, 5_000, 500), errors.BidWindowClosed)


def test_requirements_are_checked_again_when_bids_close():
    m = Market()
    job_id = m.post(requirements={"min_stake": 4_000, "min_reputation": 5_000})
    assert m.bid(0, job_id, 5_000, 500).ok  # 5_000 self-stake + 500 bond
    m.ok(0, "unstake", {"amount": 2_000})  # now 3_500 < 4_000
    m.skip_to(job(m.state, job_id)["bids_close"])
    assert job(m.state, job_id)["status"] == "expired" and m.bal(0) == START - 100


# ---- errors ------------------------------------------------------------------------------------


def test_job_post_errors():
    m = Market()
    unknown = hashlib.sha256(b"unknown").hexdigest()
    assert_failed(m.run(2, "job_post", POST | {"model_hash": unknown}), errors.UnknownModel)
    assert_failed(m.run(2, "job_post", POST | {"bounty": START + 1}), errors.InsufficientBalance)
    for field, value in [("bid_window_blocks", 0), ("deadline_blocks", 51), ("challenge_window_blocks", 1)]:
        r = m.run(2, "job_post", POST | {field: value})
        assert_failed(r, errors.WindowOutOfRange)
        assert field in r.message
    assert not m.state.jobs and m.bal(2) == START


def test_job_bid_errors():
    m = Market()
    missed = assigned_job(m, winner=3)
    m.skip_to(job(m.state, missed)["deadline"])
    assert m.rep(3) == 4_000  # S1 missed a deadline
    job_id = m.post(requirements={"max_price": 7_000, "min_reputation": 4_001}, bid_window_blocks=20)
    assert_failed(m.bid(3, MODEL, 5_000, 500), errors.UnknownJob)
    assert_failed(m.bid(2, job_id, 5_000, 500), errors.SelfDealing)
    assert_failed(m.bid(6, job_id, 5_000, 500), errors.NotRegistered)
    assert_failed(m.bid(3, job_id, 10_001, 2_000), errors.PriceTooHigh)
    r = m.bid(3, job_id, 7_001, 1_000)
    assert_failed(r, errors.PriceTooHigh)
    assert "max_price 7000" in r.message
    r = m.bid(3, job_id, 6_001, 600)
    assert_failed(r, errors.BondTooLow)
    assert "minimum 601" in r.message
    assert_failed(m.bid(4, job_id, 6_000, START), errors.InsufficientBalance)
    r = m.bid(3, job_id, 6_000, 600)
    assert_failed(r, errors.RequirementNotMet)
    assert "reputation >= 4001" in r.message
    assert (
        m.bid(4, job_id, 6_000, 600).ok
        and m.bid(5, job_id, 6_000, 600).ok
        and m.bid(0, job_id, 6_000, 600).ok
    )
    m.ok(2, "job_post", POST)  # another job's bids do not count towards this job's limit
    m.ok(1, "register", {"role": "solver"})
    assert_failed(m.bid(1, job_id, 6_000, 600), errors.TooManyBids)  # max_bids_per_job = 3
    assert len(m.state.bids) == 3 and m.bal(1) == START - 200
    m.skip_to(job(m.state, job_id)["bids_close"])
    assert_failed(m.bid(4, job_id, 6_000, 600), errors.BidWindowClosed)


def test_min_stake_requirement_at_bid_time():
    m = Market()
    job_id = m.post(requirements={"min_stake": 2_000})
    r = m.bid(3, job_id, 6_000, 1_999)
    assert_failed(r, errors.RequirementNotMet)
    assert "stake" in r.message
    assert m.bid(3, job_id, 6_000, 2_000).ok


def test_job_commit_errors():
    m = Market()
    job_id = m.post()
    assert_failed(m.commit(5, job_id), errors.WrongJobStatus)  # not assigned yet
    assert m.bid(5, job_id, 6_000, 600).ok
    m.skip_to(job(m.state, job_id)["bids_close"])
    assert_failed(m.commit(4, job_id), errors.NotAssignedSolver)
    assert_failed(m.commit(5, MODEL), errors.UnknownJob)
    assert m.commit(5, job_id).ok
    assert_failed(m.commit(5, job_id), errors.AlreadyCommitted)

    late = assigned_job(m)
    m.skip_to(job(m.state, late)["deadline"])
    r = m.commit(5, late)
    assert_failed(r, errors.DeadlinePassed)
    assert job(m.state, late)["status"] == "missed"


def test_commit_in_the_deadline_block_counts():
    m = Market()
    job_id = assigned_job(m)
    m.skip_to(job(m.state, job_id)["deadline"] - 1)
    assert m.commit(5, job_id).ok and job(m.state, job_id)["status"] == "committed"


def test_deadline_miss_refunds_and_slashes():
    m = Market()
    job_id = assigned_job(m, price=6_000, bond=1_001)
    burned = m.state.burned
    m.skip_to(job(m.state, job_id)["deadline"] - 1)
    assert job(m.state, job_id)["status"] == "assigned"
    m.block()
    j = job(m.state, job_id)
    assert (j["status"], j["held"]) == ("missed", 0)
    assert m.bal(2) == START + 500  # full bounty back plus floor(1_001 / 2) of the bond
    assert m.state.burned == burned + 501 and m.bal(5) == START - 100 - 1_001
    assert m.rep(5) == 4_000 and m.state.verifier_pool == m.state.treasury == 0


def test_cancel_before_assignment_only():
    m = Market()
    job_id = m.post()
    assert m.bid(3, job_id, 5_000, 500).ok
    assert_failed(m.run(3, "job_cancel", {"job_id": job_id}), errors.NotSubmitter)
    assert_failed(m.run(2, "job_cancel", {"job_id": MODEL}), errors.UnknownJob)
    m.ok(2, "job_cancel", {"job_id": job_id})
    j = job(m.state, job_id)
    assert (j["status"], j["held"]) == ("cancelled", 0) and not m.state.bids and not m.state.job_timers
    assert m.bal(2) == START and m.bal(3) == START - 100
    assert_failed(m.bid(4, job_id, 5_000, 500), errors.WrongJobStatus)
    assert_failed(m.run(2, "job_cancel", {"job_id": job_id}), errors.WrongJobStatus)
    assigned = assigned_job(m)
    r = m.run(2, "job_cancel", {"job_id": assigned})
    assert_failed(r, errors.WrongJobStatus)
    assert "assigned" in r.message and job(m.state, assigned)["status"] == "assigned"


# ---- disputes ---------------------------------------------------------------------------------


def committed_job(m: Market) -> str:
    job_id = assigned_job(m, price=6_001, bond=1_000)
    assert m.commit(5, job_id).ok
    return job_id


def test_dispute_blocks_finalization_and_honest_solver_is_paid():
    m = Market()
    job_id = committed_job(m)
    m.state = open_dispute(m.state, job_id, CHALLENGER)
    check_invariants(m.state)
    m.skip_to(job(m.state, job_id)["challenge_end"] + 5)
    j = job(m.state, job_id)
    assert (j["status"], j["held"], j["challenger"]) == ("disputed", 11_000, CHALLENGER)
    before = m.state
    m.state = resolve_dispute(m.state, job_id, True, CHALLENGER, 3_000)
    assert job(before, job_id)["status"] == "disputed", "resolve_dispute must not mutate its input"
    check_invariants(m.state)
    assert job(m.state, job_id)["status"] == "finalized"
    assert (m.bal(5), m.bal(1), m.bal(2)) == (START - 100 + 5_101, START - 100 + 480, START - 6_001)
    assert (m.state.verifier_pool, m.state.treasury) == (300, 120)
    assert m.rep(5) == 5_250 and m.rep(6, "verifier") == 2_500 and m.bal(6) == START - 100


def test_dispute_lost_reverses_the_payout():
    m = Market()
    job_id = committed_job(m)
    burned = m.state.burned
    m.state = open_dispute(m.state, job_id, CHALLENGER)
    m.state = resolve_dispute(m.state, job_id, False, CHALLENGER, 3_000)
    check_invariants(m.state)
    j = job(m.state, job_id)
    assert (j["status"], j["held"]) == ("reversed", 0)
    assert m.bal(2) == START and m.bal(6) == START - 100 + 300 and m.bal(5) == START - 100 - 1_000
    assert m.state.burned == burned + 700 and m.bal(1) == START - 100
    assert m.rep(5) == 2_500 and m.rep(6, "verifier") == 5_250
    m.block()  # nothing left for end_block to do
    assert job(m.state, job_id)["status"] == "reversed"


def test_dispute_errors():
    m = Market()
    job_id = assigned_job(m)
    with pytest.raises(errors.WrongJobStatus, match="committed"):
        open_dispute(m.state, job_id, CHALLENGER)
    with pytest.raises(errors.UnknownJob):
        open_dispute(m.state, MODEL, CHALLENGER)
    assert m.commit(5, job_id).ok
    with pytest.raises(errors.InvalidDispute, match="own result"):
        open_dispute(m.state, job_id, S3)
    with pytest.raises(errors.InvalidDispute, match="challenger"):
        open_dispute(m.state, job_id, "nobody")
    with pytest.raises(errors.WrongJobStatus, match="disputed"):
        resolve_dispute(m.state, job_id, False, CHALLENGER, 3_000)
    disputed = open_dispute(m.state, job_id, CHALLENGER)
    for bad in (10_001, -1, True):
        with pytest.raises(errors.InvalidDispute, match="jackpot_bps"):
            resolve_dispute(disputed, job_id, False, CHALLENGER, bad)
    m.skip_to(job(m.state, job_id)["challenge_end"])
    with pytest.raises(errors.WrongJobStatus, match="finalized"):
        open_dispute(m.state, job_id, CHALLENGER)


# ---- state encoding and invariants ---------------------------------------------------------------


def busy_market() -> Market:
    m = Market()
    missed = assigned_job(m, winner=4)
    m.skip_to(job(m.state, missed)["deadline"])
    committed_job(m)
    open_job = m.post(requirements={"max_price": 9_000, "min_reputation": 1})
    m.bid(3, open_job, 5_000, 500)
    return m


def test_market_state_encoding_roundtrip():
    s = busy_market().state
    assert s.jobs and s.bids and s.job_timers and s.reputation and s.models
    again = decode_state(encode_state(s))
    assert again == s and app_hash(again) == app_hash(s)
    assert app_hash(replace(s.copy(), treasury=s.treasury + 1)) != app_hash(s)


@pytest.mark.parametrize("corrupt", ["bond", "status", "timer", "stray_bid", "reputation", "pool"])
def test_check_invariants_catches_market_corruption(corrupt: str):
    s = busy_market().state.copy()
    committed = jobs_by_status(s, "committed")[0]
    record = s.jobs[committed]
    if corrupt == "bond":
        s.jobs[committed] = replace(record, bond=record.bond + 1)
    elif corrupt == "status":
        s.jobs[committed] = replace(record, status="disputed")  # without dropping its timer
    elif corrupt == "timer":
        s.job_timers.pop((record.due_height, committed))
    elif corrupt == "stray_bid":
        s.bids[(committed, S1)] = next(iter(s.bids.values()))
        s.burned -= s.bids[(committed, S1)].bond
    elif corrupt == "reputation":
        s.reputation[(S1, "solver")] = 10_001
    else:
        s.treasury, s.burned = -1, s.burned + 1
    with pytest.raises(AssertionError, match="invariants"):
        check_invariants(s)
