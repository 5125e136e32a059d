"""A training run cut off mid-way goes on from its last persisted checkpoint (real compute, a real
blob store and checkpoint store reloaded from disk) and ends bitwise where an uninterrupted run
ends: the same checkpoint hashes, trace root and weights."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from compute.datasets import SyntheticClasses
from compute.errors import CheckpointError, JobCancelled
from compute.executor import resume_training, run_training
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model
from gossip.blobs import BlobStore
from peer.market.checkpoints import RUNS_DIR, CheckpointStore

pytestmark = pytest.mark.timeout(120)

MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
JOB = "ab" * 32


def _spec(model: Model, optimizer: OptimizerSpec) -> TrainingSpec:
    return TrainingSpec(model.hash, SyntheticClasses(1, 96, (16,), 4), optimizer, 24, 16, 11, 3)


def _stores(root: Path) -> tuple[BlobStore, CheckpointStore]:
    blobs = BlobStore(root / "blobs")
    return blobs, CheckpointStore(blobs, root / "checkpoints")


def _cut_off(root: Path, spec: TrainingSpec, model: Model, at_step: int) -> None:
    """Run `spec` with a recorder until the checkpoint at `at_step` is kept, then cancel it (a kill)."""
    blobs, store = _stores(root)
    recorder, cancel = store.recorder(JOB), threading.Event()

    def record(step: int, state: bytes) -> None:
        recorder(step, state)
        if step == at_step:
            cancel.set()

    with pytest.raises(JobCancelled):
        run_training(spec, model, on_checkpoint=record, cancel=cancel)
    blobs.close()


@pytest.mark.parametrize("optimizer", [OptimizerSpec.sgd("1/10", "9/10"), OptimizerSpec.adam("1/100")])
def test_a_resumed_run_ends_bitwise_where_an_uninterrupted_one_does(
    tmp_path: Path, optimizer: OptimizerSpec
) -> None:
    model = Model.init(MLP, seed=0)
    spec = _spec(model, optimizer)
    weights, trace = run_training(spec, model)

    _cut_off(tmp_path, spec, model, at_step=12)
    blobs, store = _stores(tmp_path)  # a restarted peer: everything comes from disk
    assert store.running() == [JOB]
    resume = store.resume_point(JOB)
    assert resume is not None and resume.step == 12
    assert resume.checkpoints == trace.checkpoints[:5]  # steps 0, 3, 6, 9, 12 and their hashes

    later: list[int] = []
    recorder = store.recorder(JOB, resume)
    keep = lambda step, state: (later.append(step), recorder(step, state))  # noqa: E731
    resumed_weights, resumed = resume_training(
        spec, model, None, resume.checkpoints, resume.state, on_checkpoint=keep
    )
    assert later == [15, 18, 21, 24]  # no step before the resume point ran again
    assert (resumed.root, resumed.checkpoints) == (trace.root, trace.checkpoints)
    assert resumed_weights == weights

    store.seal(JOB, resumed)  # every state of the run is indexed, the unfinished list is gone
    entry = store.entry(JOB)
    assert entry is not None and entry["root"] == trace.root
    assert [leaf[0] for leaf in entry["leaves"]] == [s for s, _ in trace.checkpoints]
    assert store.running() == [] and not (tmp_path / "checkpoints" / RUNS_DIR / f"{JOB}.json").exists()
    blobs.close()


def test_an_unusable_run_list_resumes_from_what_is_sound_or_not_at_all(tmp_path: Path) -> None:
    model = Model.init(MLP, seed=0)
    spec = _spec(model, OptimizerSpec.sgd("1/10", "9/10"))
    _, trace = run_training(spec, model)
    _cut_off(tmp_path, spec, model, at_step=9)
    path = tmp_path / "checkpoints" / RUNS_DIR / f"{JOB}.json"
    listed = json.loads(path.read_text())["checkpoints"]

    blobs, store = _stores(tmp_path)
    lost = [*listed[:2], [listed[2][0], "ee" * 32], *listed[3:]]  # the state at step 6 is not in the store
    path.write_text(json.dumps({"version": 1, "checkpoints": lost}))
    resume = store.resume_point(JOB)
    assert resume is not None and resume.checkpoints == trace.checkpoints[:2]  # steps 0 and 3

    hostile = [
        "{not json",
        '{"version": 9, "checkpoints": []}',
        '{"version": 1, "checkpoints": [[3, 4]]}',
        json.dumps({"version": 1, "checkpoints": [listed[1], listed[0]]}),  # out of order
    ]
    for text in hostile:
        path.write_text(text)
        assert store.resume_point(JOB) is None

    path.write_text(json.dumps({"version": 1, "checkpoints": listed}))
    resume = store.resume_point(JOB)
    assert resume is not None and resume.step == 9
    with pytest.raises(CheckpointError, match="does not hash to"):  # a state that is not the recorded one
        wrong = [*resume.checkpoints[:-1], (9, trace.checkpoints[2][1])]
        resume_training(spec, model, None, wrong, resume.state)
    with pytest.raises(CheckpointError, match="do not begin"):
        resume_training(spec, model, None, resume.checkpoints[1:], resume.state)
    blobs.close()
