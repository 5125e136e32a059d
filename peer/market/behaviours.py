"""TEST BEHAVIOURS: solvers and verifiers that cheat on purpose (or, "noisy", drift within bounds),
to exercise hivemesh's checks.

Production peers run "honest" (the default). The others exist so spot checks, disputes,
canaries and reputation votes can be tested against real cheating on a test net; a peer that
runs one logs a WARNING at start-up. Every behaviour is a real code path over real compute.

Solver behaviours (`SolverBehaviour.name`, config `solver_behaviour`):
- honest: run the job as specified.
- lazy: do (almost) no work. Inference: run batch 0 and copy its outputs into every other
  batch. Training: run no step at all and fabricate every checkpoint.
- wrong: run the job, then perturb a fraction of the units (inference batches or training
  segments: the state at the segment's end is nudged, and training goes on from there).
- fake-train: training only (inference runs honestly): skip a fraction of the segments and
  fabricate their end checkpoints (the start state with its weights nudged), then train on
  from the fabricated state. Every other segment re-executes bitwise from the checkpoints
  the solver serves, so only the faked segments fail a spot check.
- swap-model: run a different model (the job's weights with seeded noise added). Inference:
  every batch is wrong. Training: the trace starts from the other model's state, so the
  first segment (from the spec's initial state) fails and the rest re-execute.
- noisy: honest, on a different machine. Tolerant jobs only: float noise of NOISE_SHARE of
  the spec's tolerance bound is added to the outputs (inference) or to the weights of every
  checkpoint state after the first (training, which goes on from the noisy state, as another
  machine's drift would). Every check passes, yet no output is bitwise the honest one. A
  strict job runs honestly (logged): there no noise is allowed.

"Units" are batch indices for inference and segment indices for training, where segment i
runs from checkpoint i to checkpoint i + 1 (so it is trace leaf i + 1 that is wrong). Which
units are faked is drawn from the job id (`faked_units`), so a run is reproducible.

Verifier behaviours (`VerifierBehaviour.name`, config `verifier_behaviour`): honest, or lazy
(reports "ok" without running anything).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import structlog
import torch

from compute.datasets import Dataset, decode_inputs, resolve_dataset
from compute.determinism import tensors_hash
from compute.executor import (
    CancelFlag,
    InferenceResult,
    OnCheckpoint,
    Progress,
    batch_root,
    run_inference,
    run_training,
    run_training_segment,
)
from compute.jobs import InferenceSpec, TrainingSpec
from compute.models import Model, decode_weights, encode_weights
from compute.tolerance import Tolerance, default_tolerance
from compute.trace import CheckpointTrace, checkpoint_steps
from compute.train_state import (
    MODEL_PREFIX,
    decode_state,
    encode_state,
    initial_state,
    state_hash,
    weights_of,
)

SOLVER_BEHAVIOURS = ("honest", "lazy", "wrong", "fake-train", "swap-model", "noisy")
VERIFIER_BEHAVIOURS = ("honest", "lazy")
FAKE_FRACTION = 0.1  # share of units that "wrong" and "fake-train" fake
NUDGE = 1e-3  # size of the noise added to fabricated weights: plausible, and never bitwise right
NOISE_SHARE = 0.25  # "noisy": share of the tolerance bound added to each float (well inside it)

log = structlog.get_logger(__name__)


def faked_units(n: int, fraction: float, seed: str) -> tuple[int, ...]:
    """Which of `n` units to fake: round(n * fraction) of them (at least one), drawn from `seed`."""
    if n <= 0 or fraction <= 0:
        return ()
    k = min(n, max(1, round(n * fraction)))
    rng = random.Random(hashlib.sha256(f"hivemesh/test-behaviour/{seed}".encode()).digest())
    return tuple(sorted(rng.sample(range(n), k)))


def _noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(like.shape, generator=gen, dtype=torch.float32).to(like.dtype) * NUDGE


def swapped_model(model: Model) -> Model:
    """A different model of the same architecture: the weights with seeded noise added."""
    tensors = model.tensors()
    other = {
        k: v + _noise(v, i) if v.is_floating_point() else v
        for i, (k, v) in enumerate(sorted(tensors.items()))
    }
    return Model.create(model.spec, encode_weights(other))


def nudge_state(state: bytes, seed: int) -> bytes:
    """A fabricated training state: `state` with seeded noise on its weights (optimizer kept)."""
    tensors = decode_state(state)
    for i, key in enumerate(sorted(tensors)):
        if key.startswith(MODEL_PREFIX) and tensors[key].is_floating_point():
            tensors[key] = tensors[key] + _noise(tensors[key], seed * 1000 + i)
    return encode_state(tensors)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def tolerance_noise(
    tensors: Mapping[str, torch.Tensor], tol: Tolerance, share: float, seed: int, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """`tensors` with every float element x moved by ±share * (atol + rtol * |x|), signs drawn from
    `seed` (only the names starting with `prefix`). share < 1 stays within `tol`; share > 1 leaves it."""
    atol, rtol = float(tol.atol), float(tol.rtol)
    out = dict(tensors)
    for i, name in enumerate(sorted(tensors)):
        x = tensors[name]
        if not name.startswith(prefix) or not x.is_floating_point():
            continue
        gen = torch.Generator().manual_seed((seed + i) % 2**63)
        sign = torch.randint(0, 2, x.shape, generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1
        x64 = x.detach().to(torch.float64)
        moved = x64 + sign * share * (atol + rtol * x64.abs())
        out[name] = torch.where(torch.isfinite(x64), moved, x64).to(x.dtype)  # inf and NaN stay as they are
    return out


def noisy_state(state: bytes, tol: Tolerance, seed: int, share: float = NOISE_SHARE) -> bytes:
    """A training state as another machine might reach it: noise within `tol` on the model weights
    (the optimizer's tensors are kept: noise could push e.g. second moments below zero)."""
    return encode_state(tolerance_noise(decode_state(state), tol, share, seed, MODEL_PREFIX))


def _inference_result(batches: Sequence[torch.Tensor]) -> InferenceResult:
    hashes = tuple(tensors_hash({"y": y}) for y in batches)
    y = torch.cat(list(batches))
    return InferenceResult(
        outputs=encode_weights({"y": y}),
        outputs_hash=tensors_hash({"y": y}),
        batches=tuple(range(len(batches))),
        batch_hashes=hashes,
        root=batch_root(hashes),
    )


def _split(result: InferenceResult, batch_size: int) -> list[torch.Tensor]:
    y = decode_weights(result.outputs, what="outputs")["y"]
    return [y[i : i + batch_size].clone() for i in range(0, y.shape[0], batch_size)]


@dataclass(frozen=True)
class SolverBehaviour:
    """How this solver runs jobs (see the module docstring); `fraction` applies to wrong/fake-train."""

    name: str = "honest"
    fraction: float = FAKE_FRACTION
    noise_share: float = NOISE_SHARE  # "noisy": share of the tolerance bound (above 1 it cheats)

    def __post_init__(self) -> None:
        if self.name not in SOLVER_BEHAVIOURS:
            raise ValueError(f"solver behaviour must be one of {SOLVER_BEHAVIOURS}, got {self.name!r}")

    @property
    def honest(self) -> bool:
        return self.name == "honest"

    @staticmethod
    def _noise_applies(spec: InferenceSpec | TrainingSpec, job_id: str) -> bool:
        if spec.mode == "tolerant":
            return True
        log.info("TEST BEHAVIOUR noisy: a strict job allows no noise, running it honestly", job=job_id[:16])
        return False

    def infer(
        self,
        spec: InferenceSpec,
        model: Model,
        inputs: bytes,
        *,
        job_id: str = "",
        progress: Progress | None = None,
        cancel: CancelFlag | None = None,
    ) -> tuple[InferenceResult, tuple[int, ...]]:
        """The inference result this behaviour commits to, and the batches it faked."""
        if self.name == "swap-model":
            other = swapped_model(model)
            other_spec = replace(spec, model_hash=other.hash)
            result = run_inference(other_spec, other, inputs, progress=progress, cancel=cancel)
            return result, tuple(range(len(result.batch_hashes)))
        if self.name == "lazy":
            # Only batch 0 is computed; every other batch is a copy of it.
            first = run_inference(spec, model, inputs, batches=[0], progress=progress, cancel=cancel)
            y0 = decode_weights(first.outputs, what="outputs")["y"]
            sizes = _batch_sizes(spec, inputs)
            return _inference_result([y0[:size].clone() for size in sizes]), tuple(range(1, len(sizes)))
        result = run_inference(spec, model, inputs, progress=progress, cancel=cancel)
        if self.name == "noisy" and self._noise_applies(spec, job_id):
            tol = spec.tolerance or default_tolerance(spec.precision)
            y = decode_weights(result.outputs, what="outputs")
            noisy = tolerance_noise(y, tol, self.noise_share, _seed("noisy", job_id))["y"]
            return _inference_result([b.clone() for b in noisy.split(spec.batch_size)]), ()
        if self.name != "wrong":
            return result, ()
        batches = _split(result, spec.batch_size)
        faked = faked_units(len(batches), self.fraction, job_id)
        for b in faked:
            batches[b] = batches[b] + 1.0
        return _inference_result(batches), faked

    def train(
        self,
        spec: TrainingSpec,
        model: Model,
        dataset: Dataset | bytes | None,
        *,
        job_id: str = "",
        progress: Progress | None = None,
        cancel: CancelFlag | None = None,
        on_checkpoint: OnCheckpoint | None = None,
    ) -> tuple[bytes, CheckpointTrace, tuple[int, ...]]:
        """(final weights, trace, faked segment indices) of this behaviour's training run."""
        n_segments = len(checkpoint_steps(spec.steps, spec.checkpoint_every)) - 1
        if self.name == "noisy" and self._noise_applies(spec, job_id):
            tol = spec.tolerance or default_tolerance(spec.precision)
            noise = (tol, self.noise_share, _seed("noisy", job_id))
            weights, trace = _train_by_segments(
                spec, model, dataset, set(), False, progress, cancel, on_checkpoint, noise
            )
            return weights, trace, ()
        if self.name in ("honest", "noisy"):
            out = run_training(
                spec, model, dataset, progress=progress, cancel=cancel, on_checkpoint=on_checkpoint
            )
            return (*out, ())
        if self.name == "swap-model":
            other = swapped_model(model)
            out = run_training(
                replace(spec, model_hash=other.hash),
                other,
                dataset,
                progress=progress,
                cancel=cancel,
                on_checkpoint=on_checkpoint,
            )
            return (*out, (0,))
        if self.name == "lazy":
            faked = tuple(range(n_segments))
        else:  # wrong, fake-train
            faked = faked_units(n_segments, self.fraction, job_id)
        weights, trace = _train_by_segments(
            spec, model, dataset, set(faked), self.name == "wrong", progress, cancel, on_checkpoint
        )
        return weights, trace, faked


def _batch_sizes(spec: InferenceSpec, inputs: bytes) -> list[int]:
    n = int(decode_inputs(inputs).shape[0])
    return [min(spec.batch_size, n - i) for i in range(0, n, spec.batch_size)]


def _train_by_segments(
    spec: TrainingSpec,
    model: Model,
    dataset: Dataset | bytes | None,
    faked: set[int],
    run_faked: bool,
    progress: Progress | None,
    cancel: CancelFlag | None,
    on_checkpoint: OnCheckpoint | None,
    noise: tuple[Tolerance, float, int] | None = None,
) -> tuple[bytes, CheckpointTrace]:
    """Train segment by segment; the end state of each faked segment is fabricated (nudged), after
    running it when `run_faked` (wrong) or without running it (fake-train, lazy). With `noise`
    (tolerance, share, seed: noisy), every end state gets that noise and training goes on from it."""
    data = resolve_dataset(spec.dataset, dataset)
    steps = checkpoint_steps(spec.steps, spec.checkpoint_every)
    state = encode_state(initial_state(model))
    checkpoints = [(0, state_hash(state))]
    if on_checkpoint is not None:
        on_checkpoint(0, state)
    for i, (start, end) in enumerate(itertools.pairwise(steps)):
        if i not in faked or run_faked:
            state = run_training_segment(spec, model, data, state, start, end, cancel=cancel)
        if i in faked:
            state = nudge_state(state, i + 1)
        if noise is not None:
            tol, share, seed = noise
            state = noisy_state(state, tol, seed + i + 1, share)
        checkpoints.append((end, state_hash(state)))
        if on_checkpoint is not None:
            on_checkpoint(end, state)
        if progress is not None:
            progress(end, spec.steps)
    return weights_of(state), CheckpointTrace.build(checkpoints)


@dataclass(frozen=True)
class VerifierBehaviour:
    """How this verifier checks: honest, or lazy (reports "ok" without running anything)."""

    name: str = "honest"

    def __post_init__(self) -> None:
        if self.name not in VERIFIER_BEHAVIOURS:
            raise ValueError(f"verifier behaviour must be one of {VERIFIER_BEHAVIOURS}, got {self.name!r}")

    @property
    def honest(self) -> bool:
        return self.name == "honest"

    @property
    def runs_checks(self) -> bool:
        """False for a lazy verifier: it reports "ok" without re-running anything."""
        return self.name == "honest"
