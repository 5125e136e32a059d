"""Re-execution checks of a solver's claims: sampled inference batches and training segments.

A verifier (or a dispute's challenger or referee) holds the job's spec and model, the
private input, and what the solver committed: per-batch output hashes of an inference run,
or checkpoint state hashes of a training run. It re-runs a few units and compares.

- `check_batches`: re-runs the chosen inference batches (the batch composition is the job's,
  so strict outputs match bitwise). Strict mode: ok when the recomputed batch hash equals the
  claimed one. Tolerant mode: the claimed batch (sliced from the solver's outputs, which must
  hash to the claimed batch hash) must agree with the recomputed one within the spec's
  tolerance (compute.tolerance).
- `check_segment`: re-executes training steps [start, end) from the state at `start` and
  compares the state reached with the claimed one at `end`: by hash in strict mode, tensor by
  tensor within tolerance in tolerant mode (which needs the claimed state's bytes; without
  them only a bitwise match passes).

Both are blocking (torch): run them on the compute Executor or in a worker thread.

Error handling: inputs that are not what the spec names raise the executor's errors
(HashMismatch, InputError, DatasetError, CheckpointError, JobSpecError). A claim that simply
differs is not an error: it is a check with ok=False and a reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from compute.datasets import Dataset, decode_inputs
from compute.determinism import tensors_hash
from compute.errors import CheckpointError, InputError, JobSpecError
from compute.executor import CancelFlag, run_inference, run_training_segment
from compute.jobs import InferenceSpec, TrainingSpec
from compute.models import Model, decode_weights
from compute.tolerance import compare_report, default_tolerance
from compute.train_state import encode_state, initial_state, state_hash


@dataclass(frozen=True)
class BatchCheck:
    """One re-run inference batch: what the solver claimed, what we got, and the verdict."""

    index: int
    claimed_hash: str
    recomputed_hash: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class SegmentCheck:
    """One re-executed training segment [start, end) and the verdict on the state at `end`.

    `end_state` holds the recomputed state bytes (a challenger continues from them).
    """

    start: int
    end: int
    claimed_hash: str
    recomputed_hash: str
    ok: bool
    reason: str = ""
    end_state: bytes = field(default=b"", repr=False)


def _claimed_outputs(outputs: bytes | None) -> torch.Tensor | None:
    if outputs is None or outputs == b"":
        return None
    tensors = decode_weights(outputs, what="claimed outputs")
    if set(tensors) != {"y"}:
        raise InputError(f"claimed outputs must hold exactly tensor 'y', got {sorted(tensors)}")
    return tensors["y"]


def check_batches(
    spec: InferenceSpec,
    model: Model,
    inputs: bytes | None,
    outputs: bytes | None,
    batch_hashes: Sequence[str],
    indices: Sequence[int],
    *,
    cancel: CancelFlag | None = None,
) -> list[BatchCheck]:
    """Re-run inference batches `indices` and compare each with the solver's claim.

    Args:
        inputs: the job's inputs (safetensors {"x"}), checked against spec.inputs_hash.
        outputs: the solver's full outputs ({"y"}); needed in tolerant mode, optional in strict.
        batch_hashes: the solver's per-batch output hashes (one per batch of the job).
        indices: the batches to re-run (e.g. `ledger.randomness.sample_indices`).

    Raises:
        InputError: no inputs, malformed outputs, or a batch_hashes list that does not cover the job.
        HashMismatch, JobSpecError: as for `executor.run_inference`.
    """
    if inputs is None:
        raise InputError("re-running inference needs the job's inputs")
    if not indices:
        return []
    x = decode_inputs(inputs)
    n_batches = math.ceil(x.shape[0] / spec.batch_size)
    if len(batch_hashes) != n_batches:
        raise InputError(f"the claim has {len(batch_hashes)} batch hashes for a job of {n_batches} batches")
    claimed_y = _claimed_outputs(outputs)
    if spec.mode == "tolerant" and claimed_y is None:
        raise InputError("a tolerant check needs the solver's outputs")
    result = run_inference(spec, model, x, batches=list(indices), cancel=cancel)
    recomputed = decode_weights(result.outputs, what="outputs")["y"]
    checks = []
    offset = 0
    tol = spec.tolerance or default_tolerance(spec.precision)
    for index, got_hash in zip(result.batches, result.batch_hashes, strict=True):
        claimed_hash = batch_hashes[index]
        size = min(spec.batch_size, x.shape[0] - index * spec.batch_size)
        mine = recomputed[offset : offset + size]
        offset += size
        ok, reason = got_hash == claimed_hash, ""
        if claimed_y is not None:
            theirs = claimed_y[index * spec.batch_size : index * spec.batch_size + size]
            if tensors_hash({"y": theirs}) != claimed_hash:
                ok, reason = False, "the claimed outputs do not hash to the claimed batch hash"
            elif spec.mode == "tolerant":
                report = compare_report({"y": mine}, {"y": theirs}, "tolerant", tol)
                ok, reason = report.ok, report.reason
        if not ok and not reason:
            reason = "recomputed batch hash differs"
        checks.append(BatchCheck(index, claimed_hash, got_hash, ok, reason))
    return checks


def check_segment(
    spec: TrainingSpec,
    model: Model,
    dataset: Dataset | bytes | None,
    start_state: bytes | None,
    start: int,
    end: int,
    claimed_end_hash: str,
    claimed_end_state: bytes | None = None,
    *,
    cancel: CancelFlag | None = None,
) -> SegmentCheck:
    """Re-execute steps [start, end) from `start_state` and judge the claimed state at `end`.

    Args:
        start_state: the (verified) state bytes at step `start`; None at step 0 means the
            spec's initial state (the model's weights, no optimizer state).
        claimed_end_state: the solver's state bytes at `end` (tolerant mode compares tensors).

    Raises:
        CheckpointError: a malformed state; JobSpecError: a bad segment; HashMismatch,
        DatasetError: as for `executor.run_training_segment`.
    """
    if start_state is None:
        if start != 0:
            raise JobSpecError(f"a segment starting at step {start} needs its start state")
        start_state = encode_state(initial_state(model))
    end_state = run_training_segment(spec, model, dataset, start_state, start, end, cancel=cancel)
    recomputed = state_hash(end_state)
    ok, reason = recomputed == claimed_end_hash, ""
    if not ok and spec.mode == "tolerant" and claimed_end_state is not None:
        try:
            claimed_hash = state_hash(claimed_end_state)
        except CheckpointError as e:
            claimed_hash, reason = "", f"the claimed state is malformed: {e}"
        if claimed_hash != claimed_end_hash:
            reason = reason or "the claimed state does not hash to the claimed hash"
        else:
            tol = spec.tolerance or default_tolerance(spec.precision)
            report = compare_report(end_state, claimed_end_state, "tolerant", tol)
            ok, reason = report.ok, report.reason
    elif not ok:
        reason = "recomputed state hash differs"
    return SegmentCheck(start, end, claimed_end_hash, recomputed, ok, reason, end_state)
