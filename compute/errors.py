"""Errors raised by the compute package. Catch `ComputeError` at I/O edges.

Every error a caller can provoke with bad input (an unknown architecture, a malformed job
spec, weights or tensors of the wrong shape, a bad checkpoint) is one of these types, with a
message that says what is wrong; a torch crash on bad input is a bug.
"""

from __future__ import annotations

from collections.abc import Sequence


class ComputeError(Exception):
    """Base of every error this package raises on purpose."""


class _ProblemsError(ComputeError):
    """An error that carries a list of everything found wrong, not just the first thing."""

    what = "input"

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__(f"invalid {self.what}: " + "; ".join(self.problems))


class ArchitectureError(_ProblemsError):
    """An architecture spec names an unknown architecture or has missing/unknown/bad fields."""

    what = "architecture spec"


class WeightsError(_ProblemsError):
    """Weights bytes that are not safetensors or do not match the architecture (names, shapes, dtypes)."""

    what = "weights"


class JobSpecError(_ProblemsError):
    """A job spec (inference or training) that is malformed or inconsistent."""

    what = "job spec"


class DatasetError(_ProblemsError):
    """A dataset that is malformed or does not fit the model it is used with."""

    what = "dataset"


class InputError(_ProblemsError):
    """Inference inputs (or outputs being compared) with the wrong names, dtypes or shapes."""

    what = "tensors"


class CheckpointError(_ProblemsError):
    """A training checkpoint state that is malformed or does not fit the model and optimizer."""

    what = "checkpoint"


class TraceError(_ProblemsError):
    """A checkpoint trace or Merkle proof that is malformed."""

    what = "trace"


class HashMismatch(ComputeError):
    """Content whose hash is not the one the job spec commits to."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what} hash mismatch: expected {expected}, got {actual}")
        self.what, self.expected, self.actual = what, expected, actual


class DeterminismError(ComputeError):
    """Strict-mode settings that conflict with settings already pinned in this process."""


class JobCancelled(ComputeError):
    """A job stopped because its cancel flag was set; `step` is the last completed step."""

    def __init__(self, step: int) -> None:
        super().__init__(f"job cancelled after step {step}")
        self.step = step
