"""A commit sent before a restart that lands while the restarted solver runs the job again: the run
stops, the work record is not failed, and the journaled result is served. Real market services
over the memory transport (tests/market_net.py); the restarted solver agent is a fresh `Solver`
that loads the journal its predecessor left."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from compute.datasets import SyntheticClasses
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model
from ledger.jobs import job_id_for
from peer.market import wire
from peer.market.bundles import model_bundle
from peer.market.journal import Journal, note_to_json
from peer.market.solver import JOURNAL_NAME, Solver, SolverPolicy
from tests.market_net import GENESIS, MLP, assign, market_net
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


async def test_a_commit_landing_during_the_rerun_stops_it_without_failing_the_job(tmp_path: Path) -> None:
    async with market_net(tmp_path) as net:
        submitter, solver = net["submitter"], net["solver"]
        model = Model.init(MLP, seed=0)
        await submitter.ledger.send(
            "model_register", {"model_hash": model.hash, "arch": "mlp", "royalty_bps": 0}
        )
        # Minutes of training: only the commit can end this run within the test.
        spec = TrainingSpec(
            model.hash,
            SyntheticClasses(1, 96, (16,), 4),
            OptimizerSpec.sgd("1/10"),
            1_000_000,
            16,
            3,
            100_000,
        )
        spec_blob = await submitter.put_blob(spec.encode())
        model_blob = await submitter.put_blob(model_bundle(model))
        body = {
            "spec_hash": spec.hash,
            "model_hash": model.hash,
            "kind": "training",
            "bounty": 1_000,
            "bid_window_blocks": 2,
            "deadline_blocks": 500,
            "challenge_window_blocks": 500,
            "requirements": {},
        }
        posted = await submitter.ledger.send("job_post", body)
        job_id = job_id_for(GENESIS.chain_id, submitter.ledger.address, posted["nonce"])
        await assign(net, job_id)

        # What the solver left before it was killed: the job and a result, journaled before its commit.
        note = wire.JobNote(
            job_id, spec.hash, spec_blob, model.hash, model_blob, "training", 1_000, {},
            submitter.ledger.address, False,
        )  # fmt: skip
        result_blob = await solver.put_blob(b"the result bundle of the run before the restart")
        entry = {"note": note_to_json(note), "result_blob": result_blob, "size": 48}
        await solver.in_thread(Journal(solver.data_dir / "market" / JOURNAL_NAME).put, job_id, entry)

        restarted = Solver(solver, SolverPolicy(enabled=False))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(restarted.run)
            await wait_until(lambda: job_id in restarted.records, timeout=45)
            record = restarted.records[job_id]
            await wait_until(lambda: record.phase == "running" and record.done > 0, timeout=60)

            commitment = {"output_hash": "11" * 32, "trace_root": "22" * 32, "result_size": 48}
            await solver.ledger.send("job_commit", {"job_id": job_id, **commitment})
            await wait_until(lambda: record.phase in ("committed", "serving"), timeout=45)
            assert record.error == "" and "failed" not in record.times
            assert solver.executor.running == 0 and record.done < spec.steps  # the run stopped
            # The journaled result of the earlier run is what the solver now announces.
            await wait_until(lambda: record.phase == "serving", timeout=45)
            assert record.result_blob == result_blob and record.error == ""
            nursery.cancel_scope.cancel()
