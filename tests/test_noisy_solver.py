"""The "noisy" TEST behaviour: an honest solver on another machine passes tolerant checks only.

Its outputs are never bitwise the honest run's, yet every tolerant check passes; the same noise
at 4x the tolerance bound fails them; on a strict job it runs honestly.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from compute.datasets import SyntheticClasses, encode_inputs, inputs_hash
from compute.determinism import tensors_hash
from compute.executor import run_inference, run_training
from compute.jobs import InferenceSpec, OptimizerSpec, TrainingSpec
from compute.models import Model, decode_weights
from compute.tolerance import Tolerance
from compute.verify import check_batches, check_segment
from peer.market.behaviours import NOISE_SHARE, SolverBehaviour, tolerance_noise

MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
JOB_ID = "cd" * 32
TOLERANCE = Tolerance("1e-5", "1e-4")  # the fp32 defaults: noise of a quarter of them is tiny
OUTSIDE = 4 / NOISE_SHARE  # a noise_share of 4x the bound


def _inference(mode: str) -> tuple[InferenceSpec, Model, bytes]:
    model = Model.init(MLP, seed=0)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    tol = TOLERANCE if mode == "tolerant" else None
    return InferenceSpec(model.hash, inputs_hash(x), 8, mode=mode, tolerance=tol), model, encode_inputs(x)


def _training(mode: str) -> tuple[TrainingSpec, Model]:
    model = Model.init(MLP, seed=0)
    fields: dict[str, Any] = {"mode": mode, "tolerance": TOLERANCE} if mode == "tolerant" else {}
    spec = TrainingSpec(
        model_hash=model.hash,
        dataset=SyntheticClasses(1, 96, (16,), 4),
        optimizer=OptimizerSpec.sgd("0.1", "0.9"),
        steps=12,
        batch_size=16,
        seed=11,
        checkpoint_every=4,
        **fields,
    )
    return spec, model


def _infer_checks(share: float, mode: str = "tolerant") -> tuple[list[bool], bool]:
    """(each batch's verdict, whether the outputs are bitwise the honest run's)."""
    spec, model, inputs = _inference(mode)
    honest = run_inference(spec, model, inputs)
    result, faked = SolverBehaviour("noisy", noise_share=share).infer(spec, model, inputs, job_id=JOB_ID)
    assert faked == ()
    every = list(range(len(result.batch_hashes)))
    checks = check_batches(spec, model, inputs, result.outputs, result.batch_hashes, every)
    return [c.ok for c in checks], result.outputs_hash == honest.outputs_hash


def _train_checks(share: float, mode: str = "tolerant") -> tuple[list[bool], bool]:
    """(each segment's verdict, re-executed from the solver's own states, and whether the final
    weights are bitwise the honest run's)."""
    spec, model = _training(mode)
    honest_weights, _ = run_training(spec, model)
    states: dict[int, bytes] = {}
    weights, trace, faked = SolverBehaviour("noisy", noise_share=share).train(
        spec, model, None, job_id=JOB_ID, on_checkpoint=states.__setitem__
    )
    assert faked == () and sorted(states) == trace.steps == [0, 4, 8, 12]
    verdicts = []
    for start, end in itertools.pairwise(trace.steps):
        start_state = None if start == 0 else states[start]
        check = check_segment(spec, model, None, start_state, start, end, trace.hash_at(end), states[end])
        verdicts.append(check.ok)
    same = tensors_hash(decode_weights(weights)) == tensors_hash(decode_weights(honest_weights))
    return verdicts, same


def test_noisy_tolerant_inference_passes_every_check_without_being_bitwise_honest() -> None:
    verdicts, bitwise = _infer_checks(NOISE_SHARE)
    assert verdicts == [True] * 5 and not bitwise


def test_noisy_tolerant_training_passes_every_segment_without_being_bitwise_honest() -> None:
    verdicts, bitwise = _train_checks(NOISE_SHARE)
    assert verdicts == [True] * 3 and not bitwise


def test_the_same_noise_at_four_times_the_bound_fails() -> None:
    verdicts, _ = _infer_checks(OUTSIDE)
    assert verdicts == [False] * 5
    verdicts, _ = _train_checks(OUTSIDE)
    assert verdicts == [False] * 3


def test_noisy_runs_a_strict_job_honestly() -> None:
    verdicts, bitwise = _infer_checks(NOISE_SHARE, "strict")
    assert verdicts == [True] * 5 and bitwise
    verdicts, bitwise = _train_checks(NOISE_SHARE, "strict")
    assert verdicts == [True] * 3 and bitwise


def test_noise_moves_finite_floats_only() -> None:
    x = torch.tensor([0.5, -2.0, float("inf"), float("nan")])
    n = torch.tensor([1, 2, 3])
    out = tolerance_noise({"x": x, "n": n}, TOLERANCE, NOISE_SHARE, seed=3)
    assert torch.equal(out["n"], n)
    moved = (out["x"][:2] - x[:2]).abs().to(torch.float64)
    bound = float(TOLERANCE.atol) + float(TOLERANCE.rtol) * x[:2].abs().to(torch.float64)
    assert bool(((moved > 0) & (moved < bound)).all())
    assert out["x"][2] == float("inf") and bool(out["x"][3].isnan())
