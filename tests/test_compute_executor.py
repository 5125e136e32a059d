"""The blocking executors: inference, strict training, checkpoint traces and segment re-runs."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from compute.datasets import (
    BlobDataset,
    Dataset,
    SyntheticClasses,
    SyntheticTokens,
    encode_inputs,
    inputs_hash,
)
from compute.errors import CheckpointError, DatasetError, HashMismatch, InputError, JobCancelled, JobSpecError
from compute.executor import run_inference, run_training, run_training_segment
from compute.jobs import InferenceSpec, OptimizerSpec, TrainingSpec
from compute.models import Model, decode_weights, encode_weights, load_model
from compute.tolerance import BF16_TOLERANCE, compare, compare_report
from compute.trace import item_leaf, merkle_proof, verify_proof
from compute.train_state import state_hash, weights_of

MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
CNN = {"arch": "cnn", "in_shape": [1, 12, 12], "channels": [4, 8], "out": 3}
LM = {"arch": "transformer", "vocab": 16, "context": 8, "d_model": 16, "heads": 2, "layers": 1}
CASES = {
    "mlp-sgd-momentum": (MLP, SyntheticClasses(1, 96, (16,), 4), OptimizerSpec.sgd("0.1", "0.9")),
    "cnn-adam": (CNN, SyntheticClasses(2, 64, (1, 12, 12), 3), OptimizerSpec.adam("0.01")),
    "lm-adam": (LM, SyntheticTokens(3, 64, 8, 16), OptimizerSpec.adam("0.01")),
}


def _job(case: str, steps: int = 14, every: int = 4, **kw: Any) -> tuple[TrainingSpec, Model]:
    arch, dataset, optimizer = CASES[case]
    model = Model.init(arch, seed=0)
    fields: dict[str, Any] = dict(
        model_hash=model.hash,
        dataset=dataset,
        optimizer=optimizer,
        steps=steps,
        batch_size=16,
        seed=11,
        checkpoint_every=every,
    )
    return TrainingSpec(**{**fields, **kw}), model


@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_training_is_reproducible_and_resumable_from_any_checkpoint(case: str) -> None:
    spec, model = _job(case)
    states: dict[int, bytes] = {}
    seen: list[tuple[int, int]] = []
    weights, trace = run_training(
        spec, model, on_checkpoint=states.__setitem__, progress=lambda *p: seen.append(p)
    )
    weights2, trace2 = run_training(spec, model)
    assert trace == trace2 and weights == weights2
    assert trace.steps == [0, 4, 8, 12, 14] == sorted(states)
    assert all(state_hash(states[s]) == trace.hash_at(s) for s in trace.steps)
    assert weights_of(states[14]) == weights
    assert weights != model.weights and len(set(dict(trace.checkpoints).values())) == 5
    assert seen == [(s, 14) for s in range(1, 15)]
    for start, end in [(4, 12), (8, 14), (0, 4)]:
        assert run_training_segment(spec, model, None, states[start], start, end) == states[end], (start, end)
    one_step = run_training_segment(spec, model, None, states[12], 12, 13)  # what a dispute referee runs
    assert run_training_segment(spec, model, None, one_step, 13, 14) == states[14]
    assert run_training(_job(case, seed=12)[0], model)[1].hash_at(4) != trace.hash_at(4)


def test_training_learns_the_synthetic_task() -> None:
    spec, model = _job("mlp-sgd-momentum", steps=60, every=60)
    data = CASES["mlp-sgd-momentum"][1].generate()

    def accuracy(weights: bytes) -> float:
        with torch.no_grad():
            return float((load_model(MLP, weights)(data.x).argmax(1) == data.y).float().mean())

    weights, _ = run_training(spec, model)
    assert accuracy(model.weights) < 0.6 < 0.95 <= accuracy(weights)


def test_training_from_a_dataset_blob_and_with_mse_loss() -> None:
    data = CASES["mlp-sgd-momentum"][1].generate()
    regression = Dataset(data.x, torch.nn.functional.one_hot(data.y, 4).float())
    spec, model = _job("mlp-sgd-momentum", dataset=BlobDataset(regression.hash), loss="mse")
    _weights, trace = run_training(spec, model, regression.to_bytes())
    assert run_training(spec, model, regression)[1] == trace
    with pytest.raises(HashMismatch):
        run_training(spec, model, data.to_bytes())
    with pytest.raises(DatasetError, match="must be supplied"):
        run_training(spec, model)


def test_datasets_that_do_not_fit_the_model_are_rejected() -> None:
    spec, model = _job("mlp-sgd-momentum", dataset=SyntheticTokens(1, 64, 8, 16))
    with pytest.raises(DatasetError, match=r"dataset x dtype must be torch\.float32"):
        run_training(spec, model)
    spec, model = _job("mlp-sgd-momentum", dataset=SyntheticClasses(1, 64, (16,), 9))
    with pytest.raises(DatasetError, match=r"class targets must lie in \[0, 4\)"):
        run_training(spec, model)
    spec, model = _job("mlp-sgd-momentum", batch_size=200)
    with pytest.raises(DatasetError, match="fewer than one batch"):
        run_training(spec, model)
    spec, model = _job("mlp-sgd-momentum", loss="mse")
    with pytest.raises(DatasetError, match="mse targets must be float32"):
        run_training(spec, model)
    spec, _ = _job("mlp-sgd-momentum")
    with pytest.raises(HashMismatch, match="model hash mismatch"):
        run_training(spec, Model.init(MLP, seed=1))


def test_segments_reject_bad_states_and_ranges() -> None:
    spec, model = _job("cnn-adam", steps=4, every=2)
    states: dict[int, bytes] = {}
    run_training(spec, model, on_checkpoint=states.__setitem__)
    other_spec, other = _job("mlp-sgd-momentum", steps=4, every=2)
    other_states: dict[int, bytes] = {}
    run_training(other_spec, other, on_checkpoint=other_states.__setitem__)
    for bad, message in [
        (b"junk", "not valid safetensors"),
        (other_states[2], "missing tensor"),
        (model.weights, "missing tensor"),  # bare weights are not a training state
    ]:
        with pytest.raises(CheckpointError, match=message):
            run_training_segment(spec, model, None, bad, 2, 4)
    tensors = decode_weights(states[2])
    partial = {k: v for k, v in tensors.items() if k != "optim.0.weight.exp_avg"}
    reshaped = {**tensors, "optim.0.weight.exp_avg": torch.zeros(3)}
    for bad, message in [
        (partial, "must give every parameter exactly"),
        (reshaped, "must match its parameter"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            run_training_segment(spec, model, None, encode_weights(bad), 2, 4)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        run_training_segment(spec, model, None, states[2], 0, 2)
    for start, end in [(2, 2), (-1, 2), (3, 5)]:
        with pytest.raises(JobSpecError, match="segment must satisfy"):
            run_training_segment(spec, model, None, states[2], start, end)


def test_a_set_cancel_flag_stops_training_between_steps() -> None:
    spec, model = _job("mlp-sgd-momentum", steps=1000, every=100)
    cancel = threading.Event()

    def progress(step: int, total: int) -> None:
        if step == 7:
            cancel.set()

    with pytest.raises(JobCancelled) as info:
        run_training(spec, model, progress=progress, cancel=cancel)
    assert info.value.step == 7


def _inference(arch: dict, x: torch.Tensor, **kw: Any) -> tuple[InferenceSpec, Model]:
    model = Model.init(arch, seed=4)
    return InferenceSpec(model.hash, inputs_hash(x), batch_size=4, **kw), model


@pytest.mark.parametrize("arch", [MLP, CNN, LM], ids=["mlp", "cnn", "lm"])
def test_inference_outputs_and_hashes_are_stable(arch: dict) -> None:
    data = {"mlp": CASES["mlp-sgd-momentum"], "cnn": CASES["cnn-adam"], "transformer": CASES["lm-adam"]}
    x = data[arch["arch"]][1].generate().x[:10]
    spec, model = _inference(arch, x)
    result = run_inference(spec, model, encode_inputs(x))
    again = run_inference(spec, model, x)
    assert result == again
    assert len(result.batch_hashes) == 3 and result.root is not None
    with torch.no_grad():
        assert compare({"y": model.module()(x)}, result.outputs, "tolerant")
    # a verifier re-runs one sampled batch and checks it against the solver's commitment
    sampled = run_inference(spec, model, x, batches=[2])
    assert sampled.batch_hashes == (result.batch_hashes[2],) and sampled.root is None
    leaves = [item_leaf(i, h) for i, h in enumerate(result.batch_hashes)]
    assert verify_proof(
        bytes.fromhex(result.root), item_leaf(2, sampled.batch_hashes[0]), 2, 3, merkle_proof(leaves, 2)
    )


def test_inference_rejects_inputs_that_are_not_the_jobs() -> None:
    x = torch.randn(6, 16)
    spec, model = _inference(MLP, x)
    with pytest.raises(HashMismatch, match="inputs hash mismatch"):
        run_inference(spec, model, x + 1)
    with pytest.raises(HashMismatch, match="model hash mismatch"):
        run_inference(spec, Model.init(MLP, seed=5), x)
    with pytest.raises(InputError, match="not valid safetensors"):
        run_inference(spec, model, b"not safetensors")
    wrong = torch.randn(6, 15)
    with pytest.raises(InputError, match=r"items must have shape \(16\)"):
        run_inference(_inference(MLP, wrong)[0], model, wrong)
    for batches in ([2], [], [0, 0], [True]):
        with pytest.raises(JobSpecError, match="batch indices"):
            run_inference(spec, model, x, batches=batches)
    with pytest.raises(InputError, match="safetensors bytes or a tensor"):
        run_inference(spec, model, [[0.0] * 16])  # type: ignore[arg-type]


def test_tolerant_bf16_inference_is_close_to_strict_fp32() -> None:
    x = CASES["cnn-adam"][1].generate().x[:8]
    strict, model = _inference(CNN, x)
    tolerant, _ = _inference(CNN, x, mode="tolerant", precision="bf16")
    exact, approx = run_inference(strict, model, x), run_inference(tolerant, model, x)
    assert exact.outputs_hash != approx.outputs_hash
    assert compare(exact.outputs, approx.outputs, "tolerant", BF16_TOLERANCE)
    assert not compare_report(exact.outputs, approx.outputs, "strict").ok
