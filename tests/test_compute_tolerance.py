"""Strict and tolerant comparison of outputs."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from compute.errors import InputError, JobSpecError
from compute.models import encode_weights
from compute.tolerance import FP32_TOLERANCE, Tolerance, calibrate, compare, compare_report


def _outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"y": torch.randn(8, 10, generator=g), "tokens": torch.randint(0, 50, (8,), generator=g)}


def _noisy(out: dict[str, torch.Tensor], scale: float, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {**out, "y": out["y"] + scale * torch.randn(out["y"].shape, generator=g)}


def test_tolerant_accepts_float_noise_and_rejects_a_perturbed_item() -> None:
    ref = _outputs()
    assert compare(ref, _noisy(ref, 1e-6), "tolerant")
    assert compare(encode_weights(ref), encode_weights(_noisy(ref, 1e-6)), "tolerant")  # bytes work too
    perturbed = {**ref, "y": ref["y"].clone()}
    perturbed["y"][5, 3] += 1e-2
    report = compare_report(ref, perturbed, "tolerant")
    assert not report.ok and report.bad_items == {"y": (5,)}
    assert report.max_abs == pytest.approx(1e-2, rel=1e-3)
    assert not compare(ref, _noisy(ref, 1e-3), "tolerant")


def test_strict_is_bitwise() -> None:
    ref = _outputs()
    assert compare(ref, {k: v.clone() for k, v in ref.items()}, "strict")
    assert not compare(ref, _noisy(ref, 1e-7), "strict")
    zero, negzero = {"y": torch.zeros(2)}, {"y": -torch.zeros(2)}
    assert compare(zero, negzero, "tolerant") and not compare(zero, negzero, "strict")


def test_structure_nan_and_integers() -> None:
    ref = _outputs()
    assert not compare(ref, {"y": ref["y"]}, "tolerant")
    assert "names differ" in compare_report(ref, {"y": ref["y"]}).reason
    assert "[8, 10] vs torch.float32 [4, 10]" in compare_report(ref, {**ref, "y": ref["y"][:4]}).reason
    assert not compare(ref, {**ref, "y": ref["y"].double()})
    tokens = {**ref, "tokens": ref["tokens"].clone()}
    tokens["tokens"][2] += 1
    assert compare_report(ref, tokens, "tolerant", Tolerance(1, 1)).bad_items == {"tokens": (2,)}
    nan = {"y": torch.tensor([[float("nan"), 1.0]])}
    assert compare(nan, {"y": nan["y"].clone()})
    assert not compare(nan, {"y": torch.tensor([[0.0, 1.0]])}, "tolerant", Tolerance(1, 1))
    inf = {"y": torch.tensor([float("inf")])}
    assert compare(inf, inf) and not compare(inf, {"y": torch.tensor([float("-inf")])})


def test_calibrated_bounds_accept_observed_noise_and_reject_perturbation() -> None:
    ref = {"y": torch.randn(64, 16, generator=torch.Generator().manual_seed(3)) * 100}
    runs = [(ref, _noisy(ref, 1e-3, seed)) for seed in range(3)]  # as if seen on other hardware
    tolerance = calibrate(runs)
    assert tolerance.atol > FP32_TOLERANCE.atol
    assert all(compare(a, b, "tolerant", tolerance) for a, b in runs)
    assert compare(ref, _noisy(ref, 1e-3, seed=7), "tolerant", tolerance)
    perturbed = {"y": ref["y"].clone()}
    perturbed["y"][10] += 1.0
    assert compare_report(ref, perturbed, "tolerant", tolerance).bad_items == {"y": (10,)}
    assert calibrate([(ref, ref)]) == FP32_TOLERANCE  # never below the floor
    assert isinstance(tolerance.atol, Fraction) and tolerance.to_wire()["atol"] == str(tolerance.atol)


def test_bad_arguments() -> None:
    with pytest.raises(JobSpecError, match="mode"):
        compare(_outputs(), _outputs(), "approximately")
    with pytest.raises(InputError, match="not valid safetensors"):
        compare(b"junk", _outputs())
    with pytest.raises(InputError, match="disagree in structure"):
        calibrate([(_outputs(), {"y": torch.zeros(1)})])
