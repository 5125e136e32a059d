"""Comparing outputs (or checkpoint states): bitwise in strict mode, within bounds in tolerant mode.

Tolerant mode accepts two tensors when every element satisfies

    a == b  or  both NaN  or  |a - b| <= atol + rtol * max(|a|, |b|)

with `atol`/`rtol` exact rationals carried in the job spec. Integer tensors must match
exactly in either mode. `calibrate` derives bounds from runs observed on different
hardware (largest error seen, times a safety factor), so float noise from another GPU or
CPU passes while a perturbed output fails. The fp32 defaults (atol 1e-5, rtol 1e-4) sit far
above float32 rounding (~6e-8 relative) and far below a meaningful change; jobs that need
tighter or looser bounds carry calibrated ones in their spec.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from compute import canonical
from compute.determinism import bit_view
from compute.errors import InputError, JobSpecError, WeightsError
from compute.models import decode_weights

MODES = ("strict", "tolerant")


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative error bounds, as exact rationals (strings like "1e-5" are accepted)."""

    atol: Fraction
    rtol: Fraction

    def __post_init__(self) -> None:
        problems = []
        for name in ("atol", "rtol"):
            try:
                value = canonical.parse_rational(getattr(self, name))
            except ValueError as e:
                problems.append(f"tolerance {name}: {e}")
                continue
            if not 0 <= value <= 1:
                problems.append(f"tolerance {name} must be in [0, 1], got {value}")
            object.__setattr__(self, name, value)
        if problems:
            raise JobSpecError(problems)

    def to_wire(self) -> dict[str, str]:
        return {"atol": canonical.rational_str(self.atol), "rtol": canonical.rational_str(self.rtol)}

    @classmethod
    def from_wire(cls, obj: Any) -> Tolerance:
        if not isinstance(obj, Mapping) or set(obj) != {"atol", "rtol"}:
            raise JobSpecError(f"tolerance must be a map with exactly 'atol' and 'rtol', got {obj!r}")
        return cls(obj["atol"], obj["rtol"])


FP32_TOLERANCE = Tolerance(Fraction(1, 10**5), Fraction(1, 10**4))
BF16_TOLERANCE = Tolerance(Fraction(1, 16), Fraction(1, 16))


def default_tolerance(precision: str) -> Tolerance:
    return BF16_TOLERANCE if precision == "bf16" else FP32_TOLERANCE


@dataclass(frozen=True)
class Comparison:
    """The verdict and the evidence: largest errors seen and the items (dim-0 rows) out of bounds."""

    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    bad_items: dict[str, tuple[int, ...]] = field(default_factory=dict)
    reason: str = ""


def _as_tensors(value: bytes | Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return decode_weights(value, what=what)
        except WeightsError as e:
            raise InputError(e.problems) from e
    return dict(value)


def _bad_rows(bad: torch.Tensor) -> tuple[int, ...]:
    rows = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.dim() else bad.reshape(1)
    return tuple(int(i) for i in rows.nonzero().flatten().tolist())


def _compare_one(
    a: torch.Tensor, b: torch.Tensor, mode: str, tol: Tolerance
) -> tuple[torch.Tensor, float, float]:
    a64, b64 = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    diff = (a64 - b64).abs()
    scale = torch.maximum(a64.abs(), b64.abs())
    same = (a64 == b64) | (a64.isnan() & b64.isnan())
    finite = torch.isfinite(diff) & ~same
    max_abs = float(diff[finite].max()) if finite.any() else 0.0
    rel = diff[finite] / scale[finite]
    max_rel = float(rel.max()) if rel.numel() else 0.0
    if mode == "strict":
        bad = bit_view(a) != bit_view(b)
    elif not a.is_floating_point():
        bad = ~same
    else:
        bad = ~(same | (torch.isfinite(diff) & (diff <= float(tol.atol) + float(tol.rtol) * scale)))
    return bad, max_abs, max_rel


def compare_report(
    a: bytes | Mapping[str, torch.Tensor],
    b: bytes | Mapping[str, torch.Tensor],
    mode: str = "tolerant",
    tolerance: Tolerance | None = None,
) -> Comparison:
    """Compare two sets of named tensors (or their safetensors bytes) under `mode`.

    Raises:
        InputError: either side is not valid safetensors.
        JobSpecError: unknown mode.
    """
    if mode not in MODES:
        raise JobSpecError(f"mode must be one of {MODES}, got {mode!r}")
    tol = tolerance or FP32_TOLERANCE
    ta, tb = _as_tensors(a, "first outputs"), _as_tensors(b, "second outputs")
    if set(ta) != set(tb):
        return Comparison(False, reason=f"tensor names differ: {sorted(ta)} vs {sorted(tb)}")
    max_abs = max_rel = 0.0
    bad_items: dict[str, tuple[int, ...]] = {}
    for name in sorted(ta):
        x, y = ta[name], tb[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return Comparison(
                False, reason=f"{name!r}: {x.dtype} {list(x.shape)} vs {y.dtype} {list(y.shape)}"
            )
        bad, abs_err, rel_err = _compare_one(x, y, mode, tol)
        max_abs, max_rel = max(max_abs, abs_err), max(max_rel, rel_err)
        if bool(bad.any()):
            bad_items[name] = _bad_rows(bad)
    reason = f"{sum(map(len, bad_items.values()))} item(s) out of bounds" if bad_items else ""
    return Comparison(not bad_items, max_abs, max_rel, bad_items, reason)


def compare(
    a: bytes | Mapping[str, torch.Tensor],
    b: bytes | Mapping[str, torch.Tensor],
    mode: str = "tolerant",
    tolerance: Tolerance | None = None,
) -> bool:
    """True when `a` and `b` agree under `mode` (see the module docstring)."""
    return compare_report(a, b, mode, tolerance).ok


def _round_up(x: float) -> Fraction:
    """`x` rounded up to two significant digits, as an exact rational."""
    if x <= 0:
        return Fraction(0)
    exponent = math.floor(math.log10(x)) - 1
    unit = Fraction(10) ** exponent
    return math.ceil(Fraction(x) / unit) * unit


def calibrate(
    runs: Iterable[tuple[Mapping[str, torch.Tensor] | bytes, Mapping[str, torch.Tensor] | bytes]],
    safety: int = 10,
    floor: Tolerance = FP32_TOLERANCE,
) -> Tolerance:
    """Bounds from observed (reference, other-hardware) output pairs: the largest absolute and
    relative errors seen, times `safety`, never below `floor` and never above 1."""
    max_abs = max_rel = 0.0
    for a, b in runs:
        report = compare_report(a, b, "tolerant", Tolerance(1, 1))
        if not report.ok:
            raise InputError(f"calibration runs disagree in structure: {report.reason}")
        max_abs, max_rel = max(max_abs, report.max_abs), max(max_rel, report.max_rel)
    return Tolerance(
        min(Fraction(1), max(floor.atol, _round_up(max_abs * safety))),
        min(Fraction(1), max(floor.rtol, _round_up(max_rel * safety))),
    )
