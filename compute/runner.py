"""The async adapter: runs compute jobs off the trio event loop.

`Executor` runs each job in a worker thread (`trio.to_thread.run_sync`) behind a
`trio.CapacityLimiter`, so at most `max_concurrent` jobs use the device at once and the
event loop never blocks. Progress reaches the caller as `progress(done, total)` calls made on
the event loop thread; when the loop is slower than the job, reports coalesce to the newest
(the last one is always delivered before the call returns). Cancelling the caller's scope
sets the job's cancel flag; the worker stops at the next step boundary, and the call
returns (raising Cancelled) only once the worker has stopped, so a cancelled job never
keeps running in the background.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import trio

from compute.datasets import Dataset
from compute.errors import JobCancelled
from compute.executor import (
    InferenceResult,
    OnCheckpoint,
    Progress,
    run_inference,
    run_training,
    run_training_segment,
)
from compute.jobs import InferenceSpec, TrainingSpec
from compute.models import Model
from compute.trace import CheckpointTrace

T = TypeVar("T")
Job = Callable[[threading.Event, Progress], T]  # (cancel flag, thread-side progress) -> result


class Executor:
    """Runs compute jobs in worker threads, at most `max_concurrent` at a time.

    Args:
        max_concurrent: jobs allowed on the device at once (queued callers wait their turn).
    """

    def __init__(self, max_concurrent: int = 1) -> None:
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a positive int, got {max_concurrent!r}")
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._lock = threading.Lock()
        self._running = 0

    @property
    def max_concurrent(self) -> int:
        return int(self._limiter.total_tokens)

    @property
    def running(self) -> int:
        """Jobs executing in worker threads right now."""
        with self._lock:
            return self._running

    async def run(self, job: Job[T], progress: Progress | None = None) -> T:
        """Run `job(cancel, progress)` in a worker thread; see the module docstring.

        Raises:
            trio.Cancelled: the caller's scope was cancelled (after the worker stopped).
            Whatever `job` raises, and whatever `progress` raised on the event loop.
        """
        token = trio.lowlevel.current_trio_token()
        cancel, done = threading.Event(), trio.Event()
        phase_lock, phase = threading.Lock(), ["queued"]
        callback_error: list[BaseException] = []

        latest, pending = [(0, 0)], [False]  # coalesced reports: the loop sees the newest one

        def report() -> None:  # event-loop side
            with phase_lock:
                step, total = latest[0]
                pending[0] = False
            if progress is None or callback_error:
                return
            try:
                progress(step, total)
            except Exception as e:  # a broken callback stops the job instead of crashing the loop
                callback_error.append(e)
                cancel.set()

        def post(step: int, total: int) -> None:  # worker side
            with phase_lock:
                latest[0] = (step, total)
                if pending[0]:
                    return
                pending[0] = True
            token.run_sync_soon(report)

        def work() -> T:
            with phase_lock:
                if phase[0] == "abandoned":
                    raise JobCancelled(0)
                phase[0] = "running"
            with self._lock:
                self._running += 1
            try:
                return job(cancel, post)
            finally:
                with self._lock:
                    self._running -= 1
                try:
                    token.run_sync_soon(done.set)
                except trio.RunFinishedError:
                    pass

        try:
            result = await trio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=self._limiter)
        except trio.Cancelled:
            cancel.set()
            with phase_lock:
                started, phase[0] = phase[0] == "running", "abandoned"
            if started:
                with trio.CancelScope(shield=True):
                    await done.wait()
            raise
        except JobCancelled:
            if callback_error:
                raise callback_error[0] from None
            raise
        await done.wait()  # progress reports posted before `done` have now all been delivered
        if callback_error:
            raise callback_error[0]
        return result

    async def infer(
        self,
        spec: InferenceSpec,
        model: Model,
        inputs: bytes | torch.Tensor,
        *,
        batches: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> InferenceResult:
        """`executor.run_inference` off the event loop."""

        def job(cancel: threading.Event, post: Progress) -> InferenceResult:
            return run_inference(spec, model, inputs, batches=batches, progress=post, cancel=cancel)

        return await self.run(job, progress)

    async def train(
        self,
        spec: TrainingSpec,
        model: Model,
        dataset: Dataset | bytes | None = None,
        *,
        progress: Progress | None = None,
        on_checkpoint: OnCheckpoint | None = None,
    ) -> tuple[bytes, CheckpointTrace]:
        """`executor.run_training` off the event loop (`on_checkpoint` runs in the worker thread)."""
        run = functools.partial(run_training, spec, model, dataset, on_checkpoint=on_checkpoint)
        return await self.run(lambda cancel, post: run(progress=post, cancel=cancel), progress)

    async def train_segment(
        self,
        spec: TrainingSpec,
        model: Model,
        dataset: Dataset | bytes | None,
        state: bytes,
        start: int,
        end: int,
        *,
        progress: Progress | None = None,
    ) -> bytes:
        """`executor.run_training_segment` off the event loop."""
        run = functools.partial(run_training_segment, spec, model, dataset, state, start, end)
        return await self.run(lambda cancel, post: run(progress=post, cancel=cancel), progress)
