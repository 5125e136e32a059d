"""What a solver runs in its compute worker process (compute/worker.py): one job, as its behaviour runs it.

Module-level and free of the daemon's state so the worker can import and call it: the job's
spec, model and private input go over the pipe; each training checkpoint state comes back as
an event ((step, state bytes), kept by the solver's checkpoint store as it arrives), and the
result comes back with the wall and CPU time the computation took in the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compute.executor import CancelFlag, InferenceResult, Progress, resume_training
from compute.jobs import InferenceSpec, JobSpec
from compute.models import Model
from compute.trace import CheckpointTrace
from peer.market.behaviours import SolverBehaviour
from peer.market.checkpoints import Resume


@dataclass(frozen=True)
class Solved:
    """A job's output: an InferenceResult, or (final weights, trace) of a training run."""

    output: InferenceResult | tuple[bytes, CheckpointTrace]
    start_step: int  # the first step this run computed (a resumed run's checkpoint, else 0)
    wall_s: float
    cpu_s: float  # CPU time of the computing thread


def solve(
    behaviour: SolverBehaviour,
    job_id: str,
    spec: JobSpec,
    model: Model,
    private: bytes | None,
    resumed: Resume | None,
    *,
    cancel: CancelFlag,
    progress: Progress,
    emit: Callable[[Any], None],
) -> Solved:
    """Run the job. Raises what the executor raises (compute.errors), e.g. CheckpointError
    when `resumed` does not fit the spec (the caller then starts afresh)."""
    wall, cpu = time.perf_counter(), time.thread_time()

    def on_checkpoint(step: int, state: bytes) -> None:
        emit((step, state))

    output: Any
    start = 0
    if isinstance(spec, InferenceSpec):
        output, _ = behaviour.infer(
            spec, model, private or b"", job_id=job_id, progress=progress, cancel=cancel
        )
    elif resumed is not None:
        progress(resumed.step, spec.steps)
        output = resume_training(
            spec,
            model,
            private,
            resumed.checkpoints,
            resumed.state,
            progress=progress,
            cancel=cancel,
            on_checkpoint=on_checkpoint,
        )
        start = resumed.step
    else:
        weights, trace, _ = behaviour.train(
            spec, model, private, job_id=job_id, progress=progress, cancel=cancel, on_checkpoint=on_checkpoint
        )
        output = (weights, trace)
    return Solved(output, start, time.perf_counter() - wall, time.thread_time() - cpu)
