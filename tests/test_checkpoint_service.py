"""Checkpoint states and private inputs served to verifiers: real market services over the memory
transport (tests/market_net.py: solver, submitter, registered verifier, outsider on one chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compute.datasets import encode_inputs
from compute.models import Model
from compute.train_state import state_hash
from gossip.blobs import BlobTooLarge
from peer.market.behaviours import SolverBehaviour
from peer.market.bundles import training_bundle
from peer.market.checkpoints import BadCheckpoint, CheckpointError, fetch_checkpoint
from peer.market.inputs import InputUnavailable, fetch_input
from tests.market_net import MLP, Net, assign, committed, market_net
from tests.training_job import post_job, train, training_spec
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


async def _training_job(net: Net) -> tuple[dict[str, Any], dict[int, bytes]]:
    """A training job run by the solver (its states kept by the checkpoint store) and committed."""
    spec, model = training_spec(12, 3)
    job_id = await post_job(net, spec, model)
    await assign(net, job_id)
    states: dict[int, bytes] = {}
    weights, trace, _ = train(net["solver"], job_id, spec, model, SolverBehaviour(), also=states.__setitem__)
    _, result = training_bundle(job_id, weights, trace)
    return await committed(net, job_id, result.commitment()), states


async def test_fetch_checkpoint_returns_verified_states_and_refuses_bad_ones(tmp_path: Path) -> None:
    async with market_net(tmp_path) as net:
        job, states = await _training_job(net)
        verifier, solver = net["verifier"], net["solver"]
        for index, step in enumerate([0, 3, 6, 9, 12]):
            cp = await fetch_checkpoint(verifier, job, index)
            assert (cp.index, cp.step, cp.n_leaves) == (index, step, 5)
            assert cp.state == states[step] and cp.state_hash == state_hash(states[step])
        with pytest.raises(CheckpointError, match="no index 5"):
            await fetch_checkpoint(verifier, job, 5)

        entry = solver.checkpoints.entry(job["job_id"])
        assert entry is not None
        leaves = [list(leaf) for leaf in entry["leaves"]]
        wrong_state = [*leaves[:2], [leaves[2][0], leaves[2][1], leaves[1][2]], *leaves[3:]]
        solver.checkpoints.put_index(job["job_id"], entry["root"], wrong_state)
        with pytest.raises(BadCheckpoint, match="hashes to"):
            await fetch_checkpoint(verifier, job, 2)  # the proof holds, the state served is another one

        wrong_leaf = [*leaves[:2], [leaves[2][0], leaves[1][1], leaves[1][2]], *leaves[3:]]
        solver.checkpoints.put_index(job["job_id"], entry["root"], wrong_leaf)
        with pytest.raises(BadCheckpoint, match="does not verify against trace root"):
            await fetch_checkpoint(verifier, job, 2)  # a state that does not belong in the committed trace

        bad = dict(job, job_id="cd" * 32)
        with pytest.raises(CheckpointError, match="not the solver"):
            await fetch_checkpoint(verifier, bad, 0)


async def test_fetch_input_only_for_registered_verifiers(tmp_path: Path) -> None:
    async with market_net(tmp_path) as net:
        submitter, solver = net["submitter"], net["solver"]
        model = Model.init(MLP, seed=0)
        weights = tmp_path / "model.safetensors"
        weights.write_bytes(model.weights)
        await submitter.register_model(MLP, str(weights), 0)
        inputs = encode_inputs(torch.randn(20, 16, generator=torch.Generator().manual_seed(3)))
        (tmp_path / "x.safetensors").write_bytes(inputs)
        view = await submitter.submitter.submit(
            {
                "model_hash": model.hash,
                "kind": "inference",
                "bounty": 1_000,
                "spec": {"batch_size": 8},
                "inputs_path": str(tmp_path / "x.safetensors"),
                "bid_window_blocks": 2,
                "challenge_window_blocks": 500,
            }
        )
        job_id = view["job_id"]
        await assign(net, job_id)
        await wait_until(lambda: submitter.submitter.own_input(job_id) is not None, timeout=45)
        verifier = net["verifier"]
        await wait_until(lambda: (job_id, submitter.ledger.address) in verifier.book.jobs, timeout=45)
        for market in net.markets.values():  # the solver agent runs the job it won and commits
            await wait_until(
                lambda m=market: (m.ledger.job(job_id) or {}).get("status") == "committed", timeout=30
            )
        job = verifier.ledger.job(job_id) or {}
        kept = solver.checkpoints.entry(job_id)  # the solver agent indexed its trace for a dispute
        assert kept is not None and kept["root"] == job["trace_root"] and len(kept["leaves"]) == 3
        assert await fetch_input(verifier, job) == inputs

        outsider = net["outsider"]
        await wait_until(lambda: (job_id, submitter.ledger.address) in outsider.book.jobs, timeout=45)
        with pytest.raises(InputUnavailable, match="neither a registered verifier"):
            await fetch_input(outsider, outsider.ledger.job(job_id) or {})
        await wait_until(lambda: (job_id, submitter.ledger.address) in solver.book.jobs, timeout=45)
        with pytest.raises(InputUnavailable, match="solver of a job"):
            await fetch_input(solver, solver.ledger.job(job_id) or {})


async def test_a_blob_larger_than_the_caller_expects_is_refused(tmp_path: Path) -> None:
    async with market_net(tmp_path) as net:
        solver, verifier = net["solver"], net["verifier"]
        data = bytes(range(256)) * 4096  # 1 MiB: what a solver might serve instead of a small result
        blob = await solver.put_blob(data)
        with pytest.raises(BlobTooLarge):
            await verifier.fetch_blob(blob, [solver.identity.peer_id], max_size=len(data) - 1)
        assert not await verifier.in_thread(verifier.store.has, blob)  # nothing of it was kept
        assert await verifier.fetch_blob(blob, [solver.identity.peer_id], max_size=len(data)) == data
