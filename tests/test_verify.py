"""Re-execution checks (compute.verify) against honest results and every test solver behaviour."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from compute.datasets import SyntheticClasses, encode_inputs, inputs_hash
from compute.determinism import tensors_hash
from compute.errors import InputError
from compute.executor import run_inference
from compute.jobs import InferenceSpec, OptimizerSpec, TrainingSpec
from compute.models import Model, decode_weights, encode_weights
from compute.tolerance import Tolerance
from compute.train_state import decode_state, encode_state, state_hash
from compute.verify import check_batches, check_segment
from peer.market.behaviours import SolverBehaviour, faked_units

MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
JOB_ID = "ab" * 32


def _inference(mode: str = "strict", n: int = 50, batch: int = 8) -> tuple[InferenceSpec, Model, bytes]:
    model = Model.init(MLP, seed=0)
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    tol = Tolerance("1e-4", "1e-3") if mode == "tolerant" else None
    return InferenceSpec(model.hash, inputs_hash(x), batch, mode=mode, tolerance=tol), model, encode_inputs(x)


def _training(steps: int = 20, every: int = 2, **kw: Any) -> tuple[TrainingSpec, Model]:
    model = Model.init(MLP, seed=0)
    fields: dict[str, Any] = dict(
        model_hash=model.hash,
        dataset=SyntheticClasses(1, 96, (16,), 4),
        optimizer=OptimizerSpec.sgd("0.1", "0.9"),
        steps=steps,
        batch_size=16,
        seed=11,
        checkpoint_every=every,
    )
    return TrainingSpec(**{**fields, **kw}), model


def _failing_batches(
    spec: InferenceSpec, model: Model, inputs: bytes, name: str
) -> tuple[set[int], set[int]]:
    result, faked = SolverBehaviour(name, fraction=0.3).infer(spec, model, inputs, job_id=JOB_ID)
    every = range(len(result.batch_hashes))
    checks = check_batches(spec, model, inputs, result.outputs, result.batch_hashes, list(every))
    assert [c.index for c in checks] == list(every)
    return {c.index for c in checks if not c.ok}, set(faked)


def test_honest_inference_batches_pass_bitwise() -> None:
    spec, model, inputs = _inference()
    result = run_inference(spec, model, inputs)
    checks = check_batches(spec, model, inputs, result.outputs, result.batch_hashes, [0, 3, 6])
    assert [(c.index, c.ok) for c in checks] == [(0, True), (3, True), (6, True)]
    assert all(c.claimed_hash == c.recomputed_hash for c in checks)
    assert check_batches(spec, model, inputs, None, result.batch_hashes, [6])[0].ok  # last, short batch
    assert check_batches(spec, model, inputs, result.outputs, result.batch_hashes, []) == []


@pytest.mark.parametrize("name", ["lazy", "wrong", "swap-model"])
def test_each_cheating_inference_fails_exactly_on_its_faked_batches(name: str) -> None:
    spec, model, inputs = _inference()
    failed, faked = _failing_batches(spec, model, inputs, name)
    assert faked and failed == faked
    if name == "wrong":
        assert len(faked) == 2  # round(7 batches * 0.3)


def test_fake_train_and_honest_inference_agree() -> None:
    spec, model, inputs = _inference()
    failed, faked = _failing_batches(spec, model, inputs, "fake-train")  # inference is run honestly
    assert failed == faked == set()


def test_claimed_outputs_must_match_the_claimed_batch_hashes() -> None:
    spec, model, inputs = _inference()
    result = run_inference(spec, model, inputs)
    y = decode_weights(result.outputs)["y"]
    y[9] += 1  # batch 1, while its hash still claims the honest value
    checks = check_batches(spec, model, inputs, encode_weights({"y": y}), result.batch_hashes, [0, 1])
    assert [c.ok for c in checks] == [True, False] and "claimed outputs" in checks[1].reason
    with pytest.raises(InputError, match="batch hashes"):
        check_batches(spec, model, inputs, result.outputs, result.batch_hashes[:-1], [0])
    with pytest.raises(InputError, match="inputs"):
        check_batches(spec, model, None, result.outputs, result.batch_hashes, [0])


def test_tolerant_inference_accepts_noise_inside_the_bounds_only() -> None:
    spec, model, inputs = _inference("tolerant")
    result = run_inference(spec, model, inputs)
    y = decode_weights(result.outputs)["y"]

    def claim(noisy: torch.Tensor) -> tuple[bytes, list[str]]:
        hashes = [tensors_hash({"y": noisy[i : i + 8]}) for i in range(0, noisy.shape[0], 8)]
        return encode_weights({"y": noisy}), hashes

    inside, outside = y.clone(), y.clone()
    inside[:8] += 1e-5 * torch.sign(inside[:8])  # other hardware's rounding: far below atol + rtol*|y|
    outside[8:16] += 0.05  # a real change
    out_in, hashes_in = claim(inside)
    out_out, hashes_out = claim(outside)
    assert [c.ok for c in check_batches(spec, model, inputs, out_in, hashes_in, [0, 1])] == [True, True]
    checks = check_batches(spec, model, inputs, out_out, hashes_out, [0, 1])
    assert [c.ok for c in checks] == [True, False] and "out of bounds" in checks[1].reason
    strict = InferenceSpec(spec.model_hash, spec.inputs_hash, 8)
    assert not check_batches(strict, model, inputs, out_in, hashes_in, [0])[0].ok  # strict is bitwise


def _segments(spec: TrainingSpec, model: Model, name: str, fraction: float) -> tuple[set[int], set[int]]:
    states: dict[int, bytes] = {}
    _, trace, faked = SolverBehaviour(name, fraction=fraction).train(
        spec, model, None, job_id=JOB_ID, on_checkpoint=states.__setitem__
    )
    steps = trace.steps
    assert sorted(states) == steps
    failed = set()
    for i, (start, end) in enumerate(itertools.pairwise(steps)):
        start_state = None if start == 0 else states[start]  # segment 0 starts from the spec's state
        check = check_segment(spec, model, None, start_state, start, end, trace.hash_at(end))
        assert (check.start, check.end, check.claimed_hash) == (start, end, trace.hash_at(end))
        if not check.ok:
            failed.add(i)
    return failed, set(faked)


def test_honest_training_segments_pass_bitwise() -> None:
    spec, model = _training()
    failed, faked = _segments(spec, model, "honest", 0.1)
    assert failed == faked == set()


@pytest.mark.parametrize(
    ("name", "n_faked"), [("fake-train", 2), ("wrong", 2), ("lazy", 10), ("swap-model", 1)]
)
def test_each_cheating_training_fails_exactly_on_its_faked_segments(name: str, n_faked: int) -> None:
    spec, model = _training()
    failed, faked = _segments(spec, model, name, 0.2)
    assert len(faked) == n_faked and failed == faked
    if name == "swap-model":
        assert faked == {0}


def test_faked_units_are_reproducible_and_at_least_one() -> None:
    assert faked_units(100, 0.1, "x") == faked_units(100, 0.1, "x") != faked_units(100, 0.1, "y")
    assert len(faked_units(100, 0.1, "x")) == 10 and len(faked_units(3, 0.1, "x")) == 1
    assert faked_units(5, 0.0, "x") == () and faked_units(0, 0.5, "x") == ()


def test_tolerant_segment_compares_states_within_bounds() -> None:
    spec, model = _training(steps=4, every=2, mode="tolerant", tolerance=Tolerance("1e-4", "1e-3"))
    states: dict[int, bytes] = {}
    SolverBehaviour().train(spec, model, None, on_checkpoint=states.__setitem__)

    def noisy(scale: float) -> bytes:
        tensors = decode_state(states[4])
        return encode_state(
            {k: v + scale * torch.sign(v) if v.is_floating_point() else v for k, v in tensors.items()}
        )

    inside, outside = noisy(1e-6), noisy(1e-2)
    ok = check_segment(spec, model, None, states[2], 2, 4, state_hash(inside), inside)
    bad = check_segment(spec, model, None, states[2], 2, 4, state_hash(outside), outside)
    assert ok.ok and ok.recomputed_hash == state_hash(states[4]) != ok.claimed_hash
    assert not bad.ok and "out of bounds" in bad.reason
    lying = check_segment(spec, model, None, states[2], 2, 4, state_hash(outside), inside)
    assert not lying.ok and "does not hash" in lying.reason  # the bytes must be what the hash commits to
    no_bytes = check_segment(spec, model, None, states[2], 2, 4, state_hash(inside))
    assert not no_bytes.ok  # without the claimed state only a bitwise match passes
