"""The solver's dispute defence: a fake-train job is disputed and the defender bisects it in time.

The market network of tests/market_net.py; the solver runs the "fake-train" test behaviour
through its real solver code path (the checkpoint store keeps every state), and the test plays
an honest challenger from an honest local run of the same spec (checkpointed at every step).
The defender must reveal and bisect with valid proofs until the game narrows to the faked
checkpoint interval, then compute, keep and serve its states inside it until the game is down
to one training step. An honest solver whose market service restarts mid-dispute (a fresh
announcement book, the submitter gone) defends the step stage from its journal and blob store.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from compute.executor import run_training
from compute.train_state import state_hash
from ledger.disputes import dispute_id_for, max_rounds
from ledger.records_disputes import Dispute
from peer.market.behaviours import SolverBehaviour
from peer.market.bundles import training_bundle
from peer.market.challenger import gather
from peer.market.checkpoints import CheckpointError, fetch_state
from peer.market.defender import next_move
from tests.market_net import assign, committed, market_net
from tests.training_job import announcement, post_job, submit_private_training, train, training_spec
from tests.trust_chain import Trace
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


def test_next_move_proves_the_leaf_the_phase_asks_for() -> None:
    trace = Trace(9)

    def leaf(i: int) -> tuple[int, str, list[bytes], int] | None:
        return (*trace.leaf(i), trace.proof(i), trace.n) if 0 <= i < trace.n else None

    job = "ab" * 32
    reveal = Dispute(job, "c", "s", "training", 1, 5, "x", "reveal", 9, 1)
    assert next_move("d", reveal, leaf)["mid"] == 5
    beyond = Dispute(job, "c", "s", "training", 1, 20, "x", "reveal", 9, 1)
    assert next_move("d", beyond, leaf)["mid"] == 8  # the claim lies past the trace: prove the last leaf
    bisect = Dispute(job, "c", "s", "training", 1, 5, "x", "bisect", 9, 1, lo=0, hi=5)
    body = next_move("d", bisect, leaf)
    assert (body["mid"], body["step"], body["hash"], body["n_leaves"]) == (2, 2, trace.hash_at(2), 9)
    assert body["proof"] == trace.proof(2)
    with pytest.raises(LookupError):
        next_move("d", bisect, lambda i: None)
    steps = Dispute(job, "c", "s", "training", 1, 5, "x", "bisect", 9, 1, lo=4, hi=5, lo_step=16, hi_step=20)
    steps = replace(steps, stepwise=True, n_leaves=9)
    body = next_move("d", steps, leaf, lambda step: f"{step:064x}")
    assert (body["mid"], body["step"], body["hash"], body["proof"], body["n_leaves"]) == (
        18,
        18,
        f"{18:064x}",
        [],
        9,
    )
    with pytest.raises(LookupError):
        next_move("d", steps, leaf, lambda step: None)


async def test_defender_bisects_a_disputed_fake_train_job_down_to_one_step(tmp_path: Path) -> None:
    spec, model = training_spec(16, 4)
    _, honest = run_training(replace(spec, checkpoint_every=1), model)
    truth = dict(honest.checkpoints)  # the honest state hash at every step
    async with market_net(tmp_path) as net:
        submitter, solver, verifier = net["submitter"], net["solver"], net["verifier"]
        job_id = await post_job(net, spec, model)
        await assign(net, job_id)
        note = await announcement(net, job_id, spec, model)
        behaviour = SolverBehaviour("fake-train", fraction=0.25)
        weights, trace, faked = train(solver, job_id, spec, model, behaviour)
        assert len(faked) == 1  # of 4 segments of 4 steps
        _, result = training_bundle(job_id, weights, trace)
        job = await committed(net, job_id, result.commitment())
        # The announcement the defender loads the spec from; only now, or the solver agent would
        # run the assigned job honestly itself and index its own trace over the faked one.
        solver.book.add(note, submitter.ledger.address)

        bad = next(i for i, (step, digest) in enumerate(trace.checkpoints) if truth[step] != digest)
        assert bad == faked[0] + 1  # the end leaf of the faked segment
        bad_step = trace.checkpoints[bad][0]
        claim = {"index": bad, "hash": truth[bad_step]}
        await verifier.ledger.send("dispute_open", {"job_id": job["job_id"], "bond": 1_000, "claim": claim})
        dispute_id = dispute_id_for(job_id)

        def game() -> Dispute:
            return verifier.ledger.state.disputes[dispute_id]

        answered: set[int] = set()
        served = 0
        while game().phase in ("reveal", "bisect", "respond"):  # the defender moves; we answer honestly
            await wait_until(lambda: game().phase not in ("reveal", "bisect"), timeout=45)
            d = game()
            if d.phase == "respond" and d.rounds not in answered:
                answered.add(d.rounds)
                if d.stepwise:  # the solver serves the state it posted, and no other
                    state = await fetch_state(
                        verifier, job, d.mid_step, d.mid_hash, [solver.identity.peer_id]
                    )
                    assert state_hash(state) == d.mid_hash == truth[d.mid_step]
                    with pytest.raises(CheckpointError):
                        await fetch_state(
                            verifier, job, d.mid_step + 1, truth[d.mid_step + 1], [solver.identity.peer_id]
                        )
                    served += 1
                agree = truth[d.mid_step] == d.mid_hash
                await verifier.ledger.send("dispute_respond", {"dispute_id": dispute_id, "agree": agree})
                await wait_until(lambda n=d.rounds: game().rounds > n, timeout=45)
        d = game()
        assert d.stepwise and (d.lo, d.hi) == (bad - 1, bad)  # the faked segment, then its last step
        assert (d.lo_step, d.hi_step) == (bad_step - 1, bad_step) and served == 2
        assert d.rounds == len(answered) <= max_rounds(bad, 4)
        assert d.n_leaves == len(trace.checkpoints)
        moves = solver.defender.moves
        assert moves[0].phase == "reveal" and moves[0].mid == bad and not any(m.error for m in moves)
        assert [m.phase for m in moves[1:]] == ["bisect"] * d.rounds
        assert [m.mid for m in moves if m.stepwise] == [bad_step - 2, bad_step - 1]
        await wait_until(lambda: game().phase == "closed", timeout=45)
        assert game().reason == "no_committee"  # the only validator is the solver itself


async def test_a_restarted_solver_defends_the_step_game_from_its_journal(tmp_path: Path) -> None:
    """An honest solver restarted mid-dispute, with the submitter gone (so the job is never
    announced to it again), still names its states at the steps of the last interval: the spec,
    model and sealed private dataset come from its journal and blob store. The real challenger
    agrees with every move, the game reaches the draw and nobody is slashed."""
    async with market_net(tmp_path) as net:
        submitter, verifier = net["submitter"], net["verifier"]
        job_id = await submit_private_training(net, tmp_path, 16, 500)
        await assign(net, job_id)  # the solver agent fetches, opens the input, trains and commits
        for market in net.markets.values():
            await wait_until(
                lambda m=market: (m.ledger.job(job_id) or {}).get("status") == "committed", timeout=60
            )
        job = verifier.ledger.job(job_id) or {}
        material = await gather(verifier, job)  # the challenger re-executes from this
        journaled = await net["solver"].solver.journaled(job_id)
        assert journaled is not None and {"note", "input_blob", "result_blob"} <= set(journaled[1])
        await net.stop("submitter")  # nobody announces the job any more

        dispute_id = await verifier.challenger.open(material, 4, "ff" * 32)  # a wrong claim

        def game() -> Dispute:
            return verifier.ledger.state.disputes[dispute_id]

        await wait_until(lambda: game().phase == "respond", timeout=45)
        assert not game().stepwise  # the step stage is still ahead
        solver = await net.restart("solver")
        await wait_until(lambda: game().phase == "closed", timeout=90)
        d = game()
        assert (d.outcome, d.reason) == ("no_fault", "no_committee")  # not lost by timeout
        assert d.stepwise and (d.lo, d.hi, d.lo_step, d.hi_step) == (3, 4, 15, 16)
        steps = [m for m in solver.defender.moves if m.stepwise]
        assert [m.mid for m in steps] == [14, 15] and not any(m.error for m in steps)
        assert (job_id, submitter.ledger.address) not in solver.book.jobs  # moved from the journal alone
        await wait_until(lambda: (solver.ledger.job(job_id) or {}).get("status") == "finalized", timeout=45)
        await wait_until(lambda: job_id not in solver.solver.journal.records(), timeout=45)
