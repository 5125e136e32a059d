"""Property tests of the dispute game.

1. Bisection finds the first divergent step: for any number of steps, any checkpoint_every,
   any first divergent training step d of a cheating solver and any claimed leaf at or after
   the first bad checkpoint, honest play ends on exactly the one step (d - 1, d], over leaves
   then over steps, in at most ceil(log2(steps)) + 1 rounds. A lying challenger (agreeing or
   disagreeing with everything) still ends the game on one step, where the solver is right.
2. Supply is conserved through random games: random kinds, lengths, liars, silences and
   committee votes, with the ledger invariants (minted == supply + burned among them) checked
   after every block; every game closes, releases every bond it held and settles its job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compute.trace import checkpoint_steps
from ledger.disputes import dispute_id_for, max_rounds, round_bound
from ledger.jobs import job
from ledger.records_disputes import Dispute
from ledger.state import FINAL_STATUSES
from tests import step_game
from tests.step_game import Run
from tests.trust_chain import CHALLENGER, SOLVER, A, Trace, TrustChain, challenger_answer, h, solver_move

BASE = TrustChain()
BASE_JOB = BASE.assigned_job()
BASE_STATE = BASE.state
INFERENCE_JOB = BASE.assigned_job("inference")
BASE_STATE_2 = BASE.state  # both jobs assigned, neither committed


@st.composite
def divergences(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(steps, checkpoint_every, first divergent step d, claimed leaf >= the first bad one)."""
    steps = draw(st.integers(1, 5000))
    every = draw(st.integers(1, steps) | st.sampled_from([1, 2, steps]))
    d = draw(st.integers(1, steps))
    first_bad = Run(steps, every).first_leaf_at_or_after(d)
    c = draw(st.integers(first_bad, len(checkpoint_steps(steps, every)) - 1))
    return steps, every, d, c


def play_game(job_id: str, solver: Run, challenger: Run | str, claim: dict[str, object]) -> Dispute:
    """Open a dispute with `claim` and play until the bisection is over (solver from its own run)."""
    chain = BASE
    chain.state = BASE_STATE
    chain.commit(job_id, solver.root)
    chain.ok(CHALLENGER, "dispute_open", {"job_id": job_id, "bond": 1_000, "claim": claim})
    game = chain.dispute(job_id)
    while game.phase in ("reveal", "bisect", "respond"):
        if game.phase == "respond":
            chain.ok(CHALLENGER, "dispute_respond", step_game.challenger_answer(game, challenger))
        else:
            chain.ok(SOLVER, "dispute_bisect", step_game.solver_move(game, solver))
        game = chain.dispute(job_id)
    return game


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(divergences())
@example((1, 1, 1, 1))
@example((2, 2, 1, 1))
@example((4096, 1, 1, 4096))
@example((4096, 4096, 4096, 1))
@example((5000, 7, 2500, 714))
@example((5000, 64, 4999, 79))
def test_honest_bisection_ends_on_the_first_divergent_step(case: tuple[int, int, int, int]):
    steps, every, d, c = case
    truth, cheat = Run(steps, every), Run(steps, every, diverge=d)
    game = play_game(BASE_JOB, cheat, truth, {"index": c, "hash": truth.hash_at(c)})
    assert (game.phase, game.lo_step, game.hi_step) == ("draw", d - 1, d)
    assert game.hi_hash == cheat.state_at(d) and game.lo_hash in ("", truth.state_at(d - 1))
    # over steps exactly when the bad checkpoint interval is wider than one step
    assert game.hi == game.lo + 1
    assert game.stepwise == (cheat.checkpoints[game.hi] - cheat.checkpoints[game.lo] > 1)
    assert game.rounds <= round_bound(steps, every) <= math.ceil(math.log2(steps)) + 1
    assert game.rounds <= max_rounds(c, every)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(divergences(), st.sampled_from(["agree", "disagree"]))
def test_a_lying_challenger_still_ends_on_one_step(case: tuple[int, int, int, int], lie: str):
    steps, every, _, c = case
    honest = Run(steps, every)
    game = play_game(BASE_JOB, honest, lie, {"index": c, "hash": h("a lie")})
    assert game.phase == "draw" and game.hi_step == game.lo_step + 1
    claimed_step = honest.checkpoints[c]
    assert game.hi_step == (claimed_step if lie == "agree" else 1)
    assert game.hi_hash == honest.state_at(game.hi_step)  # the committee will find the solver right
    assert game.rounds <= round_bound(steps, every) <= math.ceil(math.log2(steps)) + 1


@dataclass(frozen=True)
class Plan:
    inference: bool
    n: int
    diverge: int
    claim: int
    solver_lies: bool  # else the challenger lies
    silent_after: int | None  # moves made before the party to move goes silent
    votes: tuple[str, ...]  # per committee member, by address order: "honest", "liar" or "absent"


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(2, 200))
    diverge = draw(st.integers(1, n - 1))
    return Plan(
        inference=draw(st.booleans()),
        n=n,
        diverge=diverge,
        claim=draw(st.integers(diverge, n - 1)),
        solver_lies=draw(st.booleans()),
        silent_after=draw(st.none() | st.integers(0, 10)),
        votes=tuple(draw(st.lists(st.sampled_from(["honest", "liar", "absent"]), min_size=3, max_size=3))),
    )


def run_plan(plan: Plan) -> tuple[TrustChain, Dispute, str]:
    """Play `plan`; returns the chain, the closed game and the party that went silent ("" if none)."""
    chain = BASE
    chain.state = BASE_STATE_2
    job_id = INFERENCE_JOB if plan.inference else BASE_JOB
    truth, wrong = Trace(plan.n), Trace(plan.n, diverge=plan.diverge)
    solver, challenger = (wrong, truth) if plan.solver_lies else (truth, wrong)
    chain.commit(job_id, solver.root)
    claim = {"index": plan.claim, "hash": challenger.hash_at(plan.claim)}
    chain.ok(CHALLENGER, "dispute_open", {"job_id": job_id, "bond": 1_000, "claim": claim})
    game, moves, silent = chain.dispute(job_id), 0, ""
    while game.phase in ("reveal", "bisect", "respond"):
        if plan.silent_after is not None and moves >= plan.silent_after:
            silent = silent or ("challenger" if game.phase == "respond" else "solver")
            chain.block()
        elif game.phase == "respond":
            chain.ok(CHALLENGER, "dispute_respond", challenger_answer(game, challenger))
        else:
            chain.ok(SOLVER, "dispute_bisect", solver_move(game, solver))
        game, moves = chain.dispute(job_id), moves + 1
    voted = False
    while game.phase in ("draw", "referee"):
        if game.phase == "referee" and not voted:
            voted = True
            for (member, _), choice in zip(game.committee, plan.votes, strict=False):
                if choice != "absent":
                    honest = "challenger" if plan.solver_lies == (choice == "honest") else "solver"
                    body = {"dispute_id": dispute_id_for(job_id), "honest": honest}
                    chain.ok(A.index(member), "dispute_verdict", body)
        else:
            chain.block()
        game = chain.dispute(job_id)
    return chain, game, silent


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_random_games_conserve_supply_and_settle_everything(plan: Plan):
    chain, game, silent = run_plan(plan)  # TrustChain.block checks invariants and supply after every block
    s = chain.state
    assert (
        game.phase == "closed" and game.held() == 0 and game.outcome in ("solver", "challenger", "no_fault")
    )
    status = job(s, game.job_id)["status"]
    assert status in FINAL_STATUSES and job(s, game.job_id)["held"] == 0
    assert status == ("reversed" if game.outcome == "challenger" else "finalized")
    assert not s.game_timers and not s.reports and not s.audits.get(game.job_id)
    truthful = "challenger" if plan.solver_lies else "solver"
    if silent:
        assert (game.reason, game.outcome) == ("timeout", "challenger" if silent == "solver" else "solver")
    else:
        expected = (plan.claim - 1, plan.claim) if plan.inference else (plan.diverge - 1, plan.diverge)
        assert game.reason == "referee" and (game.lo, game.hi) == expected
        if plan.votes.count("honest") == 3:
            assert game.outcome == truthful
        elif plan.votes.count("absent") == 3:
            assert game.outcome == "no_fault"
