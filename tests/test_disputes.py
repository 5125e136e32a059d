"""The dispute game on a real chain: full games, settlements, timeouts, the committee draw, errors."""

from __future__ import annotations

import collections
import hashlib
import math
from dataclasses import fields, replace

import pytest

from compute.trace import CheckpointTrace, merkle_proof, merkle_root
from compute.trace import leaf_hash as compute_leaf_hash
from ledger import errors
from ledger.apply import begin_block
from ledger.disputes import dispute, dispute_id_for, disputes_by, max_rounds, round_bound
from ledger.jobs import job
from ledger.merkle import leaf_hash, proof_of, root_of, tree_levels, verify_leaf
from ledger.payout import ema, share
from ledger.randomness import next_entropy, weighted_draw
from ledger.records_disputes import DECODERS as GAME_DECODERS
from ledger.records_disputes import Dispute
from ledger.state import app_hash, check_invariants, decode_state, encode_state
from ledger.tx import check_body
from tests import step_game
from tests.step_game import Run
from tests.trust_chain import (
    BOUNTY,
    CHALLENGER,
    JOB_BOND,
    OWNER,
    PARAMS,
    PRICE,
    SOLVER,
    STAKES,
    START,
    SUBMITTER,
    VALIDATORS,
    A,
    Trace,
    TrustChain,
    challenger_answer,
    h,
    solver_move,
)

BOND = 1_000
INDEX = {a: i for i, a in enumerate(A)}


def open_game(c: TrustChain, job_id: str, claimed: Trace | Run, index: int, bond: int = BOND) -> Dispute:
    claim = {"index": index, "hash": claimed.hash_at(index)}
    c.ok(CHALLENGER, "dispute_open", {"job_id": job_id, "bond": bond, "claim": claim})
    return c.dispute(job_id)


def play(c: TrustChain, d: Dispute, solver: Trace | Run, challenger: Trace | Run) -> None:
    """One honest move of the party to move, from its own trace (a `Run` also plays over steps)."""
    if d.phase == "respond":
        answer = step_game.challenger_answer if isinstance(challenger, Run) else challenger_answer
        c.ok(CHALLENGER, "dispute_respond", answer(d, challenger))  # type: ignore[arg-type]
    else:
        move = step_game.solver_move if isinstance(solver, Run) else solver_move
        c.ok(SOLVER, "dispute_bisect", move(d, solver))  # type: ignore[arg-type]


def bisect_to_end(c: TrustChain, job_id: str, solver: Trace | Run, challenger: Trace | Run) -> Dispute:
    """Both parties play honestly from their own traces until the game leaves the bisection."""
    d = c.dispute(job_id)
    moves = 0
    while d.phase in ("reveal", "bisect", "respond"):
        play(c, d, solver, challenger)
        d, moves = c.dispute(job_id), moves + 1
    assert moves <= 2 * max_rounds(max(d.claim_index, 1), getattr(solver, "every", 1)) + 1
    return d


def draw(c: TrustChain, job_id: str) -> Dispute:
    d = c.dispute(job_id)
    assert d.phase == "draw" and d.due_height == c.state.height + 1
    c.block()
    d = c.dispute(job_id)
    assert d.phase == "referee" and d.committee
    return d


def vote(c: TrustChain, job_id: str, member: str, honest: str) -> None:
    c.ok(INDEX[member], "dispute_verdict", {"dispute_id": dispute_id_for(job_id), "honest": honest})


def committee_pay(pot: int, members: list[tuple[str, int]]) -> dict[str, int]:
    total = sum(w for _, w in members)
    return {m: pot * w // total for m, w in members}


# ---- full games ---------------------------------------------------------------------------------


def test_challenger_right_solver_slashed_payout_reversed_jackpot_paid():
    c = TrustChain()
    truth, cheat = Run(75, 5), Run(75, 5, diverge=23)  # 16 checkpoints; leaf 5 (step 25) is wrong
    job_id = c.committed_job(cheat)  # type: ignore[arg-type]
    burned = c.state.burned
    open_game(c, job_id, truth, 15)
    assert job(c.state, job_id)["status"] == "disputed" and c.bal(CHALLENGER) == START - 100 - BOND
    d = bisect_to_end(c, job_id, cheat, truth)
    assert (d.lo, d.hi, d.phase, d.stepwise) == (4, 5, "draw", True)  # then over steps (20, 25]
    assert (d.lo_step, d.hi_step) == (22, 23)
    assert (d.lo_hash, d.hi_hash) == (truth.state_at(22), cheat.state_at(23))
    assert d.rounds <= max_rounds(15, 5) == 4 + 3
    d = draw(c, job_id)
    validator_balances = {m: c.bal(INDEX[m]) for m, _ in d.committee}
    for member, _ in d.committee:
        vote(c, job_id, member, "challenger")
    d = c.dispute(job_id)
    assert (d.phase, d.outcome, d.reason, d.bond, d.held()) == ("closed", "challenger", "referee", 0, 0)
    assert job(c.state, job_id)["status"] == "reversed"
    jackpot = share(JOB_BOND, 3_000)
    pot = share(JOB_BOND, 4_000) - jackpot
    pay = committee_pay(pot, list(d.committee))
    assert c.bal(CHALLENGER) == START - 100 + jackpot
    assert c.bal(SUBMITTER) == START and c.bal(SOLVER) == START - 100 - JOB_BOND
    assert {m: c.bal(INDEX[m]) - b for m, b in validator_balances.items()} == pay
    assert c.state.burned == burned + JOB_BOND - jackpot - sum(pay.values())
    assert c.rep(SOLVER, "solver") == 2_500 and c.rep(CHALLENGER, "verifier") == ema(5_000, 10_000, 500)
    assert all(c.rep(INDEX[m], "validator") == 5_000 for m, _ in d.committee)
    c.skip_to(c.state.height + 40)  # nothing is left to act on
    assert job(c.state, job_id)["status"] == "reversed" and not c.state.game_timers


def test_challenger_wrong_bond_slashed_solver_paid():
    c = TrustChain()
    honest, liar = Trace(40), Trace(40, diverge=23, tag="run")
    job_id = c.committed_job(honest)
    open_game(c, job_id, liar, 31)
    d = bisect_to_end(c, job_id, honest, liar)
    assert (d.lo, d.hi) == (22, 23) and d.hi_hash == honest.hash_at(23)
    d = draw(c, job_id)
    before = {m: c.bal(INDEX[m]) for m, _ in d.committee}
    for member, _ in d.committee:
        vote(c, job_id, member, "solver")
    d = c.dispute(job_id)
    assert (d.outcome, d.reason) == ("solver", "referee")
    assert job(c.state, job_id)["status"] == "finalized"
    royalty, pool, treasury = share(PRICE, 500), share(PRICE, 500), share(PRICE, 200)
    compensation = share(BOND, 3_000)
    assert c.bal(SOLVER) == START - 100 + PRICE - royalty - pool - treasury + compensation
    assert c.bal(OWNER) == START - 100 + royalty and c.bal(SUBMITTER) == START - PRICE
    assert c.bal(CHALLENGER) == START - 100 - BOND
    pay = committee_pay(share(BOND, 1_000), list(d.committee))
    assert {m: c.bal(INDEX[m]) - b for m, b in before.items()} == pay
    assert c.rep(SOLVER, "solver") == 5_250 and c.rep(CHALLENGER, "verifier") == 2_500


def test_claim_that_agrees_with_the_commitment_loses_at_the_reveal():
    c = TrustChain()
    honest = Trace(8)
    job_id = c.committed_job(honest)
    open_game(c, job_id, honest, 6)  # "disputes" a leaf with the solver's own value
    d = bisect_to_end(c, job_id, honest, honest)
    assert (d.phase, d.outcome, d.reason, d.n_leaves) == ("closed", "solver", "claim_agrees", 8)
    assert job(c.state, job_id)["status"] == "finalized" and c.bal(CHALLENGER) == START - 100 - BOND


def test_claim_outside_the_trace_loses_and_the_reveal_must_prove_the_count():
    c = TrustChain()
    honest = Trace(8)
    job_id = c.committed_job(honest)
    open_game(c, job_id, Trace(20, diverge=0), 12)
    d = c.dispute(job_id)
    body = solver_move(d, honest)
    assert body["mid"] == 7
    bad = c.run(
        SOLVER,
        "dispute_bisect",
        body | {"mid": 6, "step": 6, "hash": honest.hash_at(6), "proof": honest.proof(6)},
    )
    assert (bad.ok, bad.code) == (False, errors.BadBisection.code)
    lie = c.run(SOLVER, "dispute_bisect", body | {"n_leaves": 13, "mid": 12})
    assert (lie.ok, lie.code) == (False, errors.BadProof.code)
    c.ok(SOLVER, "dispute_bisect", body)
    d = c.dispute(job_id)
    assert (d.outcome, d.reason) == ("solver", "claim_out_of_range")


def test_inference_game_goes_straight_to_the_referee_on_one_batch():
    c = TrustChain()
    truth, cheat = Trace(30, tag="inf"), Trace(30, diverge=11, tag="inf")
    job_id = c.committed_job(cheat, kind="inference")
    open_game(c, job_id, truth, 17)
    d = c.dispute(job_id)
    wrong_step = c.run(SOLVER, "dispute_bisect", solver_move(d, cheat) | {"step": 3})
    assert (wrong_step.ok, wrong_step.code) == (False, errors.BadBisection.code)
    d = bisect_to_end(c, job_id, cheat, truth)
    assert (d.lo, d.hi, d.rounds, d.phase) == (16, 17, 0, "draw")
    d = draw(c, job_id)
    for member, _ in d.committee:
        vote(c, job_id, member, "challenger")
    assert c.dispute(job_id).outcome == "challenger" and job(c.state, job_id)["status"] == "reversed"


def test_inference_claim_on_batch_zero():
    c = TrustChain()
    truth, cheat = Trace(5, tag="b0"), Trace(5, diverge=0, tag="b0")
    job_id = c.committed_job(cheat, kind="inference")
    open_game(c, job_id, truth, 0)
    d = bisect_to_end(c, job_id, cheat, truth)
    assert (d.lo, d.hi, d.phase) == (-1, 0, "draw")


# ---- timeouts -------------------------------------------------------------------------------------


def play_until(
    c: TrustChain, job_id: str, solver: Trace | Run, challenger: Trace | Run, stop_phase: str, moves: int
) -> Dispute:
    """Play honestly, making `moves` moves, then stop when the game reaches `stop_phase`."""
    d = c.dispute(job_id)
    while not (moves <= 0 and d.phase == stop_phase):
        play(c, d, solver, challenger)
        d, moves = c.dispute(job_id), moves - 1
    return d


@pytest.mark.parametrize(
    ("silent_phase", "moves", "winner"),
    [
        ("reveal", 0, "challenger"),
        ("bisect", 3, "challenger"),
        ("respond", 0, "solver"),
        ("respond", 4, "solver"),
    ],
)
def test_silent_party_loses_by_timeout(silent_phase: str, moves: int, winner: str):
    c = TrustChain()
    truth, cheat = Trace(64), Trace(64, diverge=9)
    job_id = c.committed_job(cheat)
    open_game(c, job_id, truth, 63)
    d = play_until(c, job_id, cheat, truth, silent_phase, moves)
    assert d.phase == silent_phase
    burned = c.state.burned
    c.skip_to(d.due_height - 1)
    assert c.dispute(job_id).phase == silent_phase, "the deadline block itself still counts"
    c.block()
    d = c.dispute(job_id)
    assert (d.outcome, d.reason, d.committee) == (winner, "timeout", ())
    if winner == "challenger":
        jackpot = share(JOB_BOND, 3_000)  # no committee: no committee reward is taken
        assert job(c.state, job_id)["status"] == "reversed"
        assert c.bal(CHALLENGER) == START - 100 + jackpot and c.state.burned == burned + JOB_BOND - jackpot
    else:
        assert job(c.state, job_id)["status"] == "finalized"
        assert c.bal(CHALLENGER) == START - 100 - BOND and c.state.burned == burned + BOND - share(
            BOND, 3_000
        )


@pytest.mark.parametrize(("silent_phase", "winner"), [("bisect", "challenger"), ("respond", "solver")])
def test_silent_party_loses_in_the_step_stage(silent_phase: str, winner: str):
    c = TrustChain()
    truth, cheat = Run(64, 16), Run(64, 16, diverge=37)
    job_id = c.committed_job(cheat)  # type: ignore[arg-type]
    open_game(c, job_id, truth, truth.n - 1)
    d = c.dispute(job_id)
    while not (d.stepwise and d.phase == silent_phase and d.hi_step - d.lo_step < 16):
        play(c, d, cheat, truth)
        d = c.dispute(job_id)
    c.skip_to(d.due_height - 1)
    assert c.dispute(job_id).phase == silent_phase
    c.block()
    d = c.dispute(job_id)
    assert (d.outcome, d.reason, d.committee) == (winner, "timeout", ())
    assert job(c.state, job_id)["status"] == ("reversed" if winner == "challenger" else "finalized")


def test_step_stage_moves_are_validated():
    c = TrustChain(replace(PARAMS, dispute_step_blocks=20))
    truth, cheat = Run(40, 10), Run(40, 10, diverge=13)
    job_id = c.committed_job(cheat)  # type: ignore[arg-type]
    open_game(c, job_id, truth, 4)
    did = dispute_id_for(job_id)
    d = c.dispute(job_id)
    while not d.stepwise:
        play(c, d, cheat, truth)
        d = c.dispute(job_id)
    assert (d.phase, d.lo, d.hi, d.lo_step, d.hi_step) == ("bisect", 1, 2, 10, 20)
    query = dispute(c.state, did)
    assert (query["stage"], query["next_mid"], query["next_step"], query["to_move"]) == (
        "steps",
        15,
        15,
        "solver",
    )
    move = step_game.solver_move(d, cheat)
    assert (move["mid"], move["step"], move["proof"], move["n_leaves"]) == (15, 15, [], 5)
    for bad in (
        {"mid": 14, "step": 14},  # not the midpoint
        {"mid": 15, "step": 16},  # mid and step must both name it
        {"mid": 1},  # a leaf index is no step
        {"proof": cheat.proof(1)},  # nothing to prove against in the step stage
        {"n_leaves": 6},
        {"mid": 25, "step": 25},  # outside the interval
    ):
        assert c.run(SOLVER, "dispute_bisect", move | bad).code == errors.BadBisection.code, bad
    with pytest.raises(errors.InvalidTx):
        check_body("dispute_bisect", move | {"hash": "XYZ"})
    assert c.run(CHALLENGER, "dispute_bisect", move).code == errors.NotYourMove.code
    assert c.run(CHALLENGER, "dispute_respond", {"dispute_id": did, "agree": True}).code == (
        errors.WrongDisputePhase.code
    )
    c.ok(SOLVER, "dispute_bisect", move)
    d = c.dispute(job_id)
    assert (d.phase, d.mid_step, d.mid_hash, d.lo, d.hi) == ("respond", 15, cheat.state_at(15), 1, 2)
    assert dispute(c.state, did)["next_mid"] is None
    assert c.run(SOLVER, "dispute_bisect", move).code == errors.WrongDisputePhase.code
    assert (
        c.run(SOLVER, "dispute_respond", {"dispute_id": did, "agree": False}).code == errors.NotYourMove.code
    )
    c.ok(CHALLENGER, "dispute_respond", {"dispute_id": did, "agree": False})  # step 15 is wrong (13 on)
    d = c.dispute(job_id)
    assert (d.phase, d.lo_step, d.hi_step, d.hi_hash, d.lo, d.hi) == (
        "bisect",
        10,
        15,
        cheat.state_at(15),
        1,
        2,
    )
    d = bisect_to_end(c, job_id, cheat, truth)
    assert (d.phase, d.lo_step, d.hi_step) == ("draw", 12, 13)
    assert (d.lo_hash, d.hi_hash) == (truth.state_at(12), cheat.state_at(13))
    assert d.rounds <= max_rounds(4, 10) == 2 + 4


def referee_game(c: TrustChain) -> tuple[str, Dispute]:
    truth, cheat = Trace(32), Trace(32, diverge=20)
    job_id = c.committed_job(cheat)
    open_game(c, job_id, truth, 31)
    bisect_to_end(c, job_id, cheat, truth)
    return job_id, draw(c, job_id)


def test_silent_committee_is_no_fault_and_costs_the_members_reputation():
    c = TrustChain()
    job_id, d = referee_game(c)
    rep_before = c.rep(CHALLENGER, "verifier")
    c.skip_to(d.due_height)
    d = c.dispute(job_id)
    assert (d.outcome, d.reason) == ("no_fault", "referee")
    assert job(c.state, job_id)["status"] == "finalized"
    assert c.bal(CHALLENGER) == START - 100 and c.rep(CHALLENGER, "verifier") == rep_before
    assert all(c.rep(INDEX[m], "validator") == ema(5_000, 0, 1_000) for m, _ in d.committee)


def test_minority_vote_is_no_fault_and_majority_decides_at_the_deadline():
    c = TrustChain()
    job_id, d = referee_game(c)
    lightest = min(d.committee, key=lambda mw: mw[1])[0]
    vote(c, job_id, lightest, "challenger")
    c.skip_to(d.due_height)
    d = c.dispute(job_id)
    assert d.outcome == "no_fault"
    assert c.rep(INDEX[lightest], "validator") == 5_000
    assert all(c.rep(INDEX[m], "validator") == 4_500 for m, _ in d.committee if m != lightest)

    c2 = TrustChain()
    job_id, d = referee_game(c2)
    ranked = sorted(d.committee, key=lambda mw: -mw[1])
    assert 2 * (ranked[0][1] + ranked[1][1]) > sum(w for _, w in ranked)
    vote(c2, job_id, ranked[0][0], "challenger")
    vote(c2, job_id, ranked[1][0], "challenger")
    assert c2.dispute(job_id).phase == "referee", "the game waits for the last member or the deadline"
    c2.skip_to(d.due_height)
    d = c2.dispute(job_id)
    assert d.outcome == "challenger" and c2.rep(INDEX[ranked[2][0]], "validator") == 4_500


def test_members_voting_against_the_majority_lose_reputation_and_reward():
    c = TrustChain()
    job_id, d = referee_game(c)
    ranked = sorted(d.committee, key=lambda mw: -mw[1])
    before = {m: c.bal(INDEX[m]) for m, _ in ranked}
    vote(c, job_id, ranked[2][0], "solver")
    vote(c, job_id, ranked[0][0], "challenger")
    vote(c, job_id, ranked[1][0], "challenger")
    d = c.dispute(job_id)
    assert (d.outcome, d.closed_height) == ("challenger", c.state.height)
    pay = committee_pay(share(JOB_BOND, 4_000) - share(JOB_BOND, 3_000), ranked[:2])
    assert {m: c.bal(INDEX[m]) - b for m, b in before.items()} == pay | {ranked[2][0]: 0}
    assert (
        c.rep(INDEX[ranked[2][0]], "validator") == 4_500 and c.rep(INDEX[ranked[0][0]], "validator") == 5_000
    )


# ---- committee draw -------------------------------------------------------------------------------


def test_weighted_draw_is_deterministic_distinct_and_stake_weighted():
    candidates = [(A[i], s) for i, s in zip(VALIDATORS, STAKES, strict=True)]
    seed = hashlib.sha256(b"seed").digest()
    first = weighted_draw(seed, "x", candidates, 3)
    assert first == weighted_draw(seed, "x", list(reversed(candidates)), 3)
    assert len({m for m, _ in first}) == 3 and first == sorted(first)
    assert weighted_draw(seed, "x", candidates, 9) == sorted(candidates)
    assert weighted_draw(seed, "x", [(A[0], 0)], 1) == []
    counts = collections.Counter(
        weighted_draw(hashlib.sha256(b"%d" % i).digest(), "x", candidates, 1)[0][0] for i in range(6_000)
    )
    total = sum(STAKES)
    for addr, stake in candidates:
        expected = 6_000 * stake / total
        assert abs(counts[addr] - expected) < 4 * math.sqrt(expected), (stake, counts[addr], expected)


def test_committee_comes_from_block_entropy_and_excludes_the_parties():
    committees = set()
    for tag in (b"a", b"b", b"c", b"d", b"e", b"f"):
        c = TrustChain(entropy_tag=tag)
        job_id, d = referee_game(c)
        assert c.state.entropy and d.committee == tuple(
            weighted_draw(
                c.state.entropy,
                f"committee/{dispute_id_for(job_id)}",
                [(v.address, v.power) for v in c.state.validator_set],
                3,
            )
        )
        again = TrustChain(entropy_tag=tag)
        assert referee_game(again)[1].committee == d.committee and app_hash(again.state) == app_hash(c.state)
        committees.add(d.committee)
    assert len(committees) > 1, "different block entropy must be able to draw another committee"

    c = TrustChain(replace(PARAMS, dispute_committee_size=5))
    c.ok(0, "register", {"role": "verifier"})
    truth, cheat = Trace(4), Trace(4, diverge=1)
    job_id = c.committed_job(cheat)
    c.ok(0, "dispute_open", {"job_id": job_id, "bond": BOND, "claim": {"index": 1, "hash": truth.hash_at(1)}})
    c.ok(SOLVER, "dispute_bisect", solver_move(c.dispute(job_id), cheat))
    d = draw(c, job_id)
    assert [m for m, _ in d.committee] == sorted(A[i] for i in (1, 2, 3, 4)), "the challenger never referees"
    assert dict(d.committee) == {A[i]: STAKES[i] for i in (1, 2, 3, 4)}


def test_block_entropy_is_folded_in_begin_block():
    c = TrustChain()
    s1 = begin_block(c.state, c.state.height + 1, 10**9, A[0], entropy=b"x" * 32)
    s2 = begin_block(c.state, c.state.height + 1, 10**9, A[0], entropy=b"y" * 32)
    assert s1.entropy == next_entropy(c.state.entropy, c.state.height + 1, 10**9, A[0], b"x" * 32)
    assert s1.entropy != s2.entropy and len(s1.entropy) == 32
    with pytest.raises(errors.InvalidBlock, match="entropy"):
        begin_block(c.state, c.state.height + 1, 10**9, A[0], entropy=b"z" * 65)


# ---- rules and errors -------------------------------------------------------------------------------


def test_dispute_open_errors():
    c = TrustChain()
    truth, cheat = Trace(8), Trace(8, diverge=2)
    job_id = c.assigned_job()
    body = {"job_id": job_id, "bond": BOND, "claim": {"index": 3, "hash": truth.hash_at(3)}}
    assert c.run(CHALLENGER, "dispute_open", body).code == errors.WrongJobStatus.code
    c.commit(job_id, cheat.root)
    cases = [
        (SUBMITTER, body, errors.NotRegistered),
        (CHALLENGER, body | {"bond": 499}, errors.BondTooLow),
        (CHALLENGER, body | {"claim": {"index": 0, "hash": truth.hash_at(0)}}, errors.InvalidDispute),
        (CHALLENGER, body | {"job_id": h("nope")}, errors.UnknownJob),
    ]
    for sender, b, err in cases:
        r = c.run(sender, "dispute_open", b)
        assert (r.ok, r.code) == (False, err.code), (b, r)
    c.ok(CHALLENGER, "dispute_open", body)
    assert c.run(CHALLENGER, "dispute_open", body).code == errors.WrongJobStatus.code
    assert disputes_by(c.state, party=A[CHALLENGER], active=True) == [dispute_id_for(job_id)]


def test_moves_out_of_turn_and_malformed_moves_are_rejected():
    c = TrustChain(replace(PARAMS, dispute_step_blocks=20))
    truth, cheat = Trace(16), Trace(16, diverge=7)
    job_id = c.committed_job(cheat)
    open_game(c, job_id, truth, 15)
    did = dispute_id_for(job_id)
    d = c.dispute(job_id)
    reveal = solver_move(d, cheat)
    assert c.run(CHALLENGER, "dispute_bisect", reveal).code == errors.NotYourMove.code
    assert c.run(CHALLENGER, "dispute_respond", {"dispute_id": did, "agree": True}).code == (
        errors.WrongDisputePhase.code
    )
    bad_proof = reveal | {"hash": truth.hash_at(15)}
    assert c.run(SOLVER, "dispute_bisect", bad_proof).code == errors.BadProof.code
    c.ok(SOLVER, "dispute_bisect", reveal)
    d = c.dispute(job_id)
    assert dispute(c.state, did)["to_move"] == "solver" and dispute(c.state, did)["next_mid"] == 7
    move = solver_move(d, cheat)
    wrong_mid = move | {"mid": 6, "step": 6, "hash": cheat.hash_at(6), "proof": cheat.proof(6)}
    assert c.run(SOLVER, "dispute_bisect", wrong_mid).code == errors.BadBisection.code
    assert c.run(SOLVER, "dispute_bisect", move | {"n_leaves": 17}).code == errors.BadBisection.code
    assert c.run(SOLVER, "dispute_bisect", move | {"step": 15}).code == errors.BadBisection.code
    assert c.run(SOLVER, "dispute_verdict", {"dispute_id": did, "honest": "solver"}).code == (
        errors.WrongDisputePhase.code
    )
    c.ok(SOLVER, "dispute_bisect", move)
    assert (
        c.run(SOLVER, "dispute_respond", {"dispute_id": did, "agree": True}).code == errors.NotYourMove.code
    )
    assert c.run(CHALLENGER, "dispute_bisect", move).code == errors.WrongDisputePhase.code
    d = bisect_to_end(c, job_id, cheat, truth)
    d = draw(c, job_id)
    outsider = next(i for i in (0, 1, 2, 3, 4) if A[i] not in dict(d.committee))
    r = c.run(outsider, "dispute_verdict", {"dispute_id": did, "honest": "solver"})
    assert r.code == errors.NotOnCommittee.code
    member = d.committee[0][0]
    vote(c, job_id, member, "challenger")
    again = c.run(INDEX[member], "dispute_verdict", {"dispute_id": did, "honest": "solver"})
    assert again.code == errors.AlreadyVoted.code
    assert (
        c.run(SOLVER, "dispute_respond", {"dispute_id": h("x"), "agree": True}).code
        == errors.UnknownDispute.code
    )


def test_step_level_rounds_stay_within_one_of_log2_steps():
    for steps, every, diverge in [
        (2, 2, 1),
        (2, 2, 2),
        (100, 7, 50),
        (1000, 64, 999),
        (1000, 1000, 1),
        (4096, 4096, 4096),
    ]:
        c = TrustChain()
        truth, cheat = Run(steps, every), Run(steps, every, diverge=diverge)
        job_id = c.committed_job(cheat)  # type: ignore[arg-type]
        open_game(c, job_id, truth, truth.n - 1)
        d = bisect_to_end(c, job_id, cheat, truth)
        assert (d.phase, d.lo_step, d.hi_step) == ("draw", diverge - 1, diverge)
        assert d.rounds <= round_bound(steps, every) <= math.ceil(math.log2(steps)) + 1, (steps, every)


def test_rounds_are_logarithmic():
    for n, diverge in [(2, 1), (3, 2), (17, 16), (100, 1), (1000, 999), (4096, 2048)]:
        c = TrustChain()
        truth, cheat = Trace(n), Trace(n, diverge=diverge)
        job_id = c.committed_job(cheat)
        open_game(c, job_id, truth, n - 1)
        d = bisect_to_end(c, job_id, cheat, truth)
        assert (d.lo, d.hi) == (diverge - 1, diverge)
        assert d.rounds <= math.ceil(math.log2(n)) + 1, (n, d.rounds)


# ---- merkle, encoding, invariants ----------------------------------------------------------------------


def test_ledger_merkle_matches_compute_trace():
    for n in (1, 2, 3, 7, 8, 33):
        cps = [(i * 3, h(f"cp-{i}")) for i in range(n)]
        trace = CheckpointTrace.build(cps)
        levels = tree_levels([leaf_hash(s, x) for s, x in cps])
        assert root_of(levels) == trace.root == merkle_root([compute_leaf_hash(s, x) for s, x in cps]).hex()
        for i, (s, x) in enumerate(cps):
            assert (
                proof_of(levels, i)
                == trace.proof(i)
                == merkle_proof([compute_leaf_hash(*cp) for cp in cps], i)
            )
            assert verify_leaf(trace.root, s, x, i, n, trace.proof(i))
            assert not verify_leaf(trace.root, s, x, i, n + 1, trace.proof(i))
            assert not verify_leaf(trace.root, s + 1, x, i, n, trace.proof(i))


def test_a_step_stage_game_round_trips_and_old_records_decode():
    c = TrustChain()
    truth, cheat = Run(40, 10), Run(40, 10, diverge=13)
    job_id = c.committed_job(cheat)  # type: ignore[arg-type]
    open_game(c, job_id, truth, 4)
    d = c.dispute(job_id)
    while not d.stepwise:
        play(c, d, cheat, truth)
        d = c.dispute(job_id)
    again = decode_state(encode_state(c.state))
    assert again == c.state and app_hash(again) == app_hash(c.state)
    assert again.disputes[dispute_id_for(job_id)].stepwise
    row = [getattr(d, f.name) for f in fields(d)]
    assert row[-1] is True  # stepwise is the last field: a row written before it decodes with False
    assert GAME_DECODERS["disputes"](row[:-1]) == replace(d, stepwise=False)
    broken = c.state.copy()
    broken.disputes[dispute_id_for(job_id)] = replace(d, hi=d.lo + 2)
    with pytest.raises(AssertionError, match="step stage"):
        check_invariants(broken)


def test_state_with_games_round_trips_and_invariants_catch_corruption():
    c = TrustChain()
    job_id, d = referee_game(c)
    s = c.state
    assert s.disputes and s.game_timers
    again = decode_state(encode_state(s))
    assert again == s and app_hash(again) == app_hash(s)
    broken = s.copy()
    broken.game_timers.pop((d.due_height, "dispute", dispute_id_for(job_id)))
    with pytest.raises(AssertionError, match="game timers"):
        check_invariants(broken)
    broken = s.copy()
    broken.disputes[dispute_id_for(job_id)] = replace(d, bond=d.bond + 1)
    with pytest.raises(AssertionError, match="minted"):
        check_invariants(broken)
    assert BOUNTY == job(s, job_id)["bounty"]
