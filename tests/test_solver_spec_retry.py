"""The solver asks again for a job's spec while bids are open: real market services over the memory
transport (tests/market_net.py), the submitter cut off by a network partition when its jobs are
announced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from compute.datasets import SyntheticClasses
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model
from ledger.jobs import job_id_for
from peer.market import wire
from peer.market.solver import SolverPolicy
from tests.market_net import GENESIS, MLP, Net, market_net
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


async def _post(net: Net, spec: TrainingSpec, model_blob: str, bid_window_blocks: int) -> wire.JobNote:
    """Post a training job from the submitter (its spec blob only there) and make its announcement."""
    submitter = net["submitter"]
    spec_blob = await submitter.put_blob(spec.encode())
    body = {
        "spec_hash": spec.hash,
        "model_hash": spec.model_hash,
        "kind": "training",
        "bounty": 1_000,
        "bid_window_blocks": bid_window_blocks,
        "deadline_blocks": 200,
        "challenge_window_blocks": 500,
        "requirements": {},
    }
    posted = await submitter.ledger.send("job_post", body)
    job_id = job_id_for(GENESIS.chain_id, submitter.ledger.address, posted["nonce"])
    await wait_until(lambda: net["solver"].ledger.job(job_id) is not None, timeout=45)
    address = submitter.ledger.address
    return wire.JobNote(
        job_id, spec.hash, spec_blob, spec.model_hash, model_blob, "training", 1_000, {}, address, False
    )


def _phase(net: Net, job_id: str) -> str:
    record = net["solver"].solver.records.get(job_id)
    return record.phase if record is not None else ""


async def test_the_solver_bids_once_an_unreachable_submitter_is_back_within_the_bid_window(
    tmp_path: Path,
) -> None:
    async with market_net(tmp_path) as net:
        submitter, solver = net["submitter"], net["solver"]
        model = Model.init(MLP, seed=0)
        await submitter.ledger.send(
            "model_register", {"model_hash": model.hash, "arch": "mlp", "royalty_bps": 0}
        )
        model_blob = await submitter.put_blob(model.weights)
        specs = [
            TrainingSpec(
                model.hash, SyntheticClasses(s, 96, (16,), 4), OptimizerSpec.sgd("1/10"), 6, 16, s, 3
            )
            for s in (1, 2)
        ]
        back_in_time = await _post(net, specs[0], model_blob, bid_window_blocks=60)  # outlasts the backoff
        too_late = await _post(net, specs[1], model_blob, bid_window_blocks=3)

        solver.solver.policy = SolverPolicy()  # bid from now on
        network = solver.transport.network
        network.partition([submitter.identity.peer_id])  # the submitter is restarting, say
        with capture_logs() as logs:
            solver.solver.notify(back_in_time)
            solver.solver.notify(too_late)
            # Bids on the second job close while the submitter is away: the solver gives up on it.
            await wait_until(lambda: _phase(net, too_late.job_id) == "no bid", timeout=45)
            assert _phase(net, back_in_time.job_id) == "bidding"  # still asking, within its window
            network.heal()
            await wait_until(lambda: _phase(net, back_in_time.job_id) == "bid", timeout=45)

        retried = [e for e in logs if e["event"] == "spec fetch failed, will retry"]
        assert {e["job"] for e in retried} == {back_in_time.job_id[:16], too_late.job_id[:16]}
        gave_up = solver.solver.records[too_late.job_id]
        assert "closed before its spec could be had" in gave_up.error

        def job(job_id: str) -> dict[str, Any]:
            return solver.ledger.job(job_id) or {}

        await wait_until(lambda: job(back_in_time.job_id).get("status") == "assigned", timeout=60)
        assert job(back_in_time.job_id)["solver"] == solver.ledger.address
        assert job(too_late.job_id)["status"] != "assigned" and not job(too_late.job_id)["bids"]
