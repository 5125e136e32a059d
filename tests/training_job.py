"""A training job on the in-memory market network (tests/market_net.py), set up step by step as the
tests need it: the spec, its posting by the submitter, its announcement (spec and model blobs
stored at the submitter), and a solver behaviour's run with every state kept in the solver's
checkpoint store. Assigning and committing are `assign` and `committed` of tests/market_net.py.
"""

from __future__ import annotations

from pathlib import Path

from compute.datasets import SyntheticClasses
from compute.executor import OnCheckpoint
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model
from compute.trace import CheckpointTrace
from ledger.jobs import job_id_for
from peer.market import wire
from peer.market.behaviours import SolverBehaviour
from peer.market.bundles import model_bundle
from peer.market.service import MarketService
from tests.market_net import GENESIS, MLP, Net

BOUNTY = 1_000
DATASET = SyntheticClasses(1, 96, (16,), 4)


def training_spec(steps: int, checkpoint_every: int) -> tuple[TrainingSpec, Model]:
    """An SGD training job of `steps` steps on the network's MLP (seed 0), batches of 16."""
    model = Model.init(MLP, seed=0)
    optimizer = OptimizerSpec.sgd("0.1", "0.9")
    return TrainingSpec(model.hash, DATASET, optimizer, steps, 16, 11, checkpoint_every), model


async def post_job(net: Net, spec: TrainingSpec, model: Model) -> str:
    """Register the model and post the job from the submitter (committed); its job id."""
    submitter = net["submitter"]
    await submitter.ledger.send("model_register", {"model_hash": model.hash, "arch": "mlp", "royalty_bps": 0})
    body = {
        "spec_hash": spec.hash,
        "model_hash": model.hash,
        "kind": "training",
        "bounty": BOUNTY,
        "bid_window_blocks": 2,
        "deadline_blocks": 200,
        "challenge_window_blocks": 500,
        "requirements": {},
    }
    posted = await submitter.ledger.send("job_post", body)
    return job_id_for(GENESIS.chain_id, submitter.ledger.address, posted["nonce"])


async def announcement(net: Net, job_id: str, spec: TrainingSpec, model: Model) -> wire.JobNote:
    """Store the spec and model blobs at the submitter; the job's announcement naming them (not
    published: each test hands it on as it needs)."""
    submitter = net["submitter"]
    spec_blob = await submitter.put_blob(spec.encode())
    model_blob = await submitter.put_blob(model_bundle(model))
    return wire.JobNote(
        job_id, spec.hash, spec_blob, model.hash, model_blob, "training", BOUNTY, {},
        submitter.ledger.address, False,
    )  # fmt: skip


def train(
    solver: MarketService,
    job_id: str,
    spec: TrainingSpec,
    model: Model,
    behaviour: SolverBehaviour,
    also: OnCheckpoint | None = None,
) -> tuple[bytes, CheckpointTrace, tuple[int, ...]]:
    """(weights, trace, faked segments) of `behaviour`'s run of the job, every state kept (and the
    trace sealed) in the solver's checkpoint store as the solver agent does; `also` sees each
    state too."""
    recorder = solver.checkpoints.recorder(job_id)

    def record(step: int, state: bytes) -> None:
        recorder(step, state)
        if also is not None:
            also(step, state)

    weights, trace, faked = behaviour.train(spec, model, None, job_id=job_id, on_checkpoint=record)
    solver.checkpoints.seal(job_id, trace)
    return weights, trace, faked


async def submit_private_training(net: Net, tmp_path: Path, steps: int, challenge_window_blocks: int) -> str:
    """Post an SGD training job on a private dataset file (checkpoint every 4) through the
    submitter agent, with the model registered first; its job id."""
    model = Model.init(MLP, seed=0)
    (tmp_path / "model.safetensors").write_bytes(model.weights)
    (tmp_path / "data.safetensors").write_bytes(DATASET.generate().to_bytes())
    submitter = net["submitter"]
    await submitter.register_model(MLP, str(tmp_path / "model.safetensors"), 0)
    view = await submitter.submitter.submit(
        {
            "model_hash": model.hash,
            "kind": "training",
            "bounty": BOUNTY,
            "spec": {
                "optimizer": {"name": "sgd", "lr": "1/10", "momentum": "9/10"},
                "steps": steps,
                "batch_size": 16,
                "seed": 11,
                "checkpoint_every": 4,
            },
            "dataset_path": str(tmp_path / "data.safetensors"),
            "bid_window_blocks": 2,
            "deadline_blocks": 200,
            "challenge_window_blocks": challenge_window_blocks,
        }
    )
    return str(view["job_id"])
