"""Running jobs on the hardware: inference, training, and training segments for re-execution.

All three are plain blocking functions (the trio adapter is `compute.runner`). Devices come
from accelerate (GPU when present, CPU otherwise). Strict jobs run under
`strict_settings()`; tolerant ones may use bf16 autocast.

Training is resumable from any checkpoint (`resume_training` finishes an interrupted run).
The only randomness is the data order: the batch for step t is slice t mod E of a
permutation drawn from a generator seeded by (seed, epoch t div E), where
E = len(dataset) // batch_size. The architectures draw no randomness in forward or
backward. So `run_training_segment(spec, ..., state_s, s, e)`
reproduces the state at step e bitwise in strict mode on the same machine and software.

Error handling: bad input raises a ComputeError subclass (HashMismatch for content that is
not what the spec names, InputError/DatasetError/CheckpointError for tensors that do not fit
the model); a set cancel flag raises JobCancelled between steps.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch.nn import functional as F

from compute.architectures import check_inputs, input_signature
from compute.datasets import Dataset, decode_inputs, inputs_hash, resolve_dataset
from compute.determinism import strict_settings, tensors_hash
from compute.errors import CheckpointError, DatasetError, HashMismatch, InputError, JobCancelled, JobSpecError
from compute.jobs import InferenceSpec, TrainingSpec
from compute.models import Model, encode_weights, load_model
from compute.trace import CheckpointTrace, checkpoint_steps, item_leaf, merkle_root
from compute.train_state import (
    build_optimizer,
    capture,
    decode_state,
    encode_state,
    initial_state,
    restore_optimizer,
    split,
    weights_of,
)
from gossip.envelope import packb

Progress = Callable[[int, int], None]  # (steps or batches done, total)
OnCheckpoint = Callable[[int, bytes], None]  # (step, state bytes), called in the worker thread


class CancelFlag(Protocol):
    """Anything with `is_set()`, e.g. threading.Event; checked between steps."""

    def is_set(self) -> bool: ...


_accelerator_lock = threading.Lock()


def accelerator() -> Accelerator:
    """A fresh Accelerator (a new one per job, so it keeps no references to old modules).

    It places modules and runs backward. Precision is always "no" here: accelerate's precision
    is process-wide and strict jobs need fp32, so tolerant bf16 jobs use torch.autocast on the
    accelerator's device instead; with no grad scaling, the optimizer is stepped directly.
    """
    with _accelerator_lock:
        return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")


def _settings(mode: str) -> contextlib.AbstractContextManager[None]:
    return strict_settings() if mode == "strict" else contextlib.nullcontext()


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_model(spec: InferenceSpec | TrainingSpec, model: Model) -> None:
    if model.hash != spec.model_hash:
        raise HashMismatch("model", spec.model_hash, model.hash)


def _check_cancel(cancel: CancelFlag | None, done: int) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled(done)


# ---------------------------------------------------------------- inference


@dataclass(frozen=True)
class InferenceResult:
    """Outputs of the batches run (safetensors {"y": ...}), their hash, and per-batch hashes.

    `root` is the Merkle root over (batch index, batch hash) leaves; set for full runs only.
    """

    outputs: bytes
    outputs_hash: str
    batches: tuple[int, ...]
    batch_hashes: tuple[str, ...]
    root: str | None


def batch_root(batch_hashes: Sequence[str]) -> str:
    """Merkle root committing to the per-batch output hashes of a full inference run."""
    return merkle_root([item_leaf(i, h) for i, h in enumerate(batch_hashes)]).hex()


def _select_batches(batches: Sequence[int] | None, n_batches: int) -> tuple[int, ...]:
    if batches is None:
        return tuple(range(n_batches))
    selected = tuple(batches)
    valid = all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < n_batches for b in selected)
    if not selected or not valid or len(set(selected)) < len(selected):
        raise JobSpecError(f"batch indices must be distinct ints in [0, {n_batches}), got {list(selected)}")
    return selected


def run_inference(
    spec: InferenceSpec,
    model: Model,
    inputs: bytes | torch.Tensor,
    *,
    batches: Sequence[int] | None = None,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> InferenceResult:
    """Run `model` over `inputs` in batches of `spec.batch_size`.

    Args:
        batches: run only these batch indices (a verifier re-running sampled items); the
            batch composition is the job's, so strict outputs match the solver's bitwise.

    Raises:
        HashMismatch: the model or inputs are not the ones the spec names.
        InputError: malformed inputs, or inputs the architecture cannot take.
        JobSpecError: a batch index out of range.
        JobCancelled: the cancel flag was set.
    """
    _check_model(spec, model)
    x = decode_inputs(inputs) if isinstance(inputs, bytes | bytearray | memoryview) else inputs
    if not isinstance(x, torch.Tensor):
        raise InputError(f"inputs must be safetensors bytes or a tensor, got {type(x).__name__}")
    if (digest := inputs_hash(x)) != spec.inputs_hash:
        raise HashMismatch("inputs", spec.inputs_hash, digest)
    check_inputs(model.spec, x)
    selected = _select_batches(batches, math.ceil(x.shape[0] / spec.batch_size))
    acc = accelerator()
    outputs: list[torch.Tensor] = []
    with _settings(spec.mode), torch.inference_mode():
        module = acc.prepare_model(model.module(), evaluation_mode=True)
        for done, b in enumerate(selected):
            _check_cancel(cancel, done)
            xb = x[b * spec.batch_size : (b + 1) * spec.batch_size].to(acc.device)
            with _autocast(spec.precision, acc.device):
                outputs.append(module(xb).float().cpu())
            if progress is not None:
                progress(done + 1, len(selected))
    hashes = tuple(tensors_hash({"y": y}) for y in outputs)
    y = torch.cat(outputs)
    return InferenceResult(
        outputs=encode_weights({"y": y}),
        outputs_hash=tensors_hash({"y": y}),
        batches=selected,
        batch_hashes=hashes,
        root=batch_root(hashes) if batches is None else None,
    )


# ---------------------------------------------------------------- training


def _derive_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(packb(["hivemesh/data-order/v1", seed, epoch])).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class BatchOrder:
    """Which items make up the batch of each step: a function of (seed, step) only."""

    def __init__(self, seed: int, n_items: int, batch_size: int) -> None:
        self.seed, self.n_items, self.batch_size = seed, n_items, batch_size
        self.per_epoch = n_items // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_derive_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n_items, generator=g)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]


def _check_dataset(spec: TrainingSpec, arch: Mapping[str, Any], data: Dataset) -> None:
    """Raise DatasetError unless the dataset fits the model, the loss and the batch size."""
    try:
        check_inputs(arch, data.x, what="dataset x")
    except InputError as e:
        raise DatasetError(e.problems) from e
    sig = input_signature(arch)
    width = arch["vocab"] if arch["arch"] == "transformer" else arch["out"]
    out_shape = (*data.x.shape[: 2 if sig.max_len else 1], width)
    problems = []
    if len(data) < spec.batch_size:
        problems.append(f"{len(data)} items is fewer than one batch of {spec.batch_size}")
    if spec.loss == "cross_entropy":
        if data.y.dtype != torch.int64 or tuple(data.y.shape) != out_shape[:-1]:
            want, got = list(out_shape[:-1]), f"{data.y.dtype} {list(data.y.shape)}"
            problems.append(f"cross_entropy targets must be int64 {want}, got {got}")
        elif not (0 <= int(data.y.min()) and int(data.y.max()) < width):
            problems.append(f"class targets must lie in [0, {width})")
    elif data.y.dtype != torch.float32 or tuple(data.y.shape) != out_shape:
        problems.append(
            f"mse targets must be float32 {list(out_shape)}, got {data.y.dtype} {list(data.y.shape)}"
        )
    if problems:
        raise DatasetError(problems)


def _loss(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "cross_entropy":
        return F.cross_entropy(out.float().flatten(0, -2), y.flatten())
    return F.mse_loss(out.float(), y)


def _train(
    spec: TrainingSpec,
    model: Model,
    data: Dataset,
    state: Mapping[str, torch.Tensor],
    start: int,
    end: int,
    progress: Progress | None,
    cancel: CancelFlag | None,
) -> Iterator[tuple[int, Callable[[], dict[str, torch.Tensor]]]]:
    """Apply updates `start`..`end`-1; after each, yield (steps done, a snapshot of the live state)."""
    weights, per_param = split(model.spec, spec.optimizer, state)
    acc = accelerator()
    module = acc.prepare_model(load_model(model.spec, weights).train())
    optimizer = build_optimizer(spec.optimizer, module.parameters())
    restore_optimizer(optimizer, module, per_param)
    order = BatchOrder(spec.seed, len(data), spec.batch_size)
    snapshot = functools.partial(capture, module, optimizer)
    for step in range(start, end):
        _check_cancel(cancel, step)
        idx = order.indices(step)
        x, y = data.x[idx].to(acc.device), data.y[idx].to(acc.device)
        with _autocast(spec.precision, acc.device):
            loss = _loss(spec.loss, module(x), y)
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        optimizer.step()
        yield step + 1, snapshot
        if progress is not None:
            progress(step + 1, end)


def _prepare(spec: TrainingSpec, model: Model, dataset: Dataset | bytes | None) -> Dataset:
    _check_model(spec, model)
    data = resolve_dataset(spec.dataset, dataset)
    _check_dataset(spec, model.spec, data)
    return data


def run_training(
    spec: TrainingSpec,
    model: Model,
    dataset: Dataset | bytes | None = None,
    *,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
    on_checkpoint: OnCheckpoint | None = None,
) -> tuple[bytes, CheckpointTrace]:
    """Train for `spec.steps` updates; return (final weights bytes, checkpoint trace).

    Args:
        dataset: the dataset blob (bytes or Dataset) for a BlobDataset reference; None for
            synthetic datasets, which are generated from the spec.
        on_checkpoint: receives (step, state bytes) at every checkpoint, step 0 included, so
            a solver can keep the states it must serve in a dispute.

    Raises:
        HashMismatch, DatasetError, JobCancelled (see the module docstring).
    """
    data = _prepare(spec, model, dataset)
    state = initial_state(model)
    if on_checkpoint is not None:
        on_checkpoint(0, encode_state(state))
    return _train_on(spec, model, data, state, [(0, tensors_hash(state))], progress, cancel, on_checkpoint)


def resume_training(
    spec: TrainingSpec,
    model: Model,
    dataset: Dataset | bytes | None,
    done: Sequence[tuple[int, str]],
    state: bytes,
    *,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
    on_checkpoint: OnCheckpoint | None = None,
) -> tuple[bytes, CheckpointTrace]:
    """Finish an interrupted `run_training` from its last checkpoint; the same result, bitwise in strict mode.

    Args:
        done: (step, state hash) of the checkpoints the interrupted run reached, in order: a
            prefix of the run's checkpoint steps, starting at 0.
        state: the state bytes at the last of them.
        on_checkpoint: receives only the checkpoints after the last of `done`.

    Raises:
        CheckpointError: `done` is not a prefix of the run's checkpoints, or `state` is
            malformed or not the state whose hash `done` ends with.
        HashMismatch, DatasetError, JobCancelled: as for run_training.
    """
    marks = checkpoint_steps(spec.steps, spec.checkpoint_every)
    steps = [s for s, _ in done]
    if not steps or steps != marks[: len(steps)]:
        raise CheckpointError(f"checkpoint steps {steps[:8]} do not begin this run's {marks[:8]}")
    tensors = decode_state(state)
    if tensors_hash(tensors) != done[-1][1]:
        raise CheckpointError(f"the state at step {steps[-1]} does not hash to its recorded checkpoint")
    data = _prepare(spec, model, dataset)
    return _train_on(spec, model, data, tensors, list(done), progress, cancel, on_checkpoint)


def _train_on(
    spec: TrainingSpec,
    model: Model,
    data: Dataset,
    state: dict[str, torch.Tensor],
    checkpoints: list[tuple[int, str]],
    progress: Progress | None,
    cancel: CancelFlag | None,
    on_checkpoint: OnCheckpoint | None,
) -> tuple[bytes, CheckpointTrace]:
    """Train from `state` at the last of `checkpoints` to `spec.steps`; (final weights, full trace)."""
    marks = set(checkpoint_steps(spec.steps, spec.checkpoint_every))
    start = checkpoints[-1][0]
    with _settings(spec.mode):
        for step, snapshot in _train(spec, model, data, state, start, spec.steps, progress, cancel):
            if step in marks:
                state = snapshot()
                checkpoints.append((step, tensors_hash(state)))
                if on_checkpoint is not None:
                    on_checkpoint(step, encode_state(state))
    return weights_of(state), CheckpointTrace.build(checkpoints)


def run_training_segment(
    spec: TrainingSpec,
    model: Model,
    dataset: Dataset | bytes | None,
    state: bytes,
    start: int,
    end: int,
    *,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> bytes:
    """Resume from the state at step `start` and return the state bytes at step `end`.

    This is the re-execution verifiers and dispute referees run (one step: end = start + 1).

    Raises:
        JobSpecError: not 0 <= start < end <= spec.steps.
        CheckpointError: `state` is malformed or does not fit the model and optimizer.
        HashMismatch, DatasetError, JobCancelled: as for run_training.
    """
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= spec.steps):
        raise JobSpecError(f"segment must satisfy 0 <= start < end <= {spec.steps}, got [{start}, {end})")
    data = _prepare(spec, model, dataset)
    tensors = decode_state(state)
    if start == 0 and any(not k.startswith("model.") for k in tensors):
        raise CheckpointError("the state at step 0 has no optimizer state")
    with _settings(spec.mode):
        for step, snapshot in _train(spec, model, data, tensors, start, end, progress, cancel):
            if step == end:
                tensors = snapshot()
    return encode_state(tensors)
