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

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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


class _Handle:
    """The state one job shares between the event loop and its worker thread."""

    def __init__(self, job: Job[Any], progress: Progress | None, count: Callable[[int], None]) -> None:
        self.job, self.progress, self.count = job, progress, count
        self.token = trio.lowlevel.current_trio_token()
        self.cancel, self.done = threading.Event(), trio.Event()
        self.lock = threading.Lock()
        self.phase = "queued"  # -> "running" (worker picked it up) or "abandoned" (caller cancelled)
        self.latest, self.pending = (0, 0), False  # coalesced progress: the loop sees the newest
        self.callback_error: Exception | None = None

    def post(self, step: int, total: int) -> None:  # worker side
        with self.lock:
            self.latest = (step, total)
            if self.pending:
                return
            self.pending = True
        self.token.run_sync_soon(self.report)

    def report(self) -> None:  # event-loop side
        with self.lock:
            (step, total), self.pending = self.latest, False
        if self.progress is None or self.callback_error is not None:
            return
        try:
            self.progress(step, total)
        except Exception as e:  # a broken callback stops the job instead of crashing the loop
            self.callback_error = e
            self.cancel.set()

    def work(self) -> Any:  # worker side
        with self.lock:
            if self.phase == "abandoned":
                raise JobCancelled(0)
            self.phase = "running"
        self.count(+1)
        try:
            return self.job(self.cancel, self.post)
        finally:
            self.count(-1)
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self.done.set)

    def abandon(self) -> bool:
        """Mark the job abandoned; True if its worker had already started (and must be awaited)."""
        self.cancel.set()
        with self.lock:
            started, self.phase = self.phase == "running", "abandoned"
        return started


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

    def _count(self, delta: int) -> None:
        with self._lock:
            self._running += delta

    async def run(self, job: Job[T], progress: Progress | None = None) -> T:
        """Run `job(cancel, progress)` in a worker thread; see the module docstring.

        Raises:
            trio.Cancelled: the caller's scope was cancelled (after the worker stopped).
            Whatever `job` raises, and whatever `progress` raised on the event loop.
        """
        handle = _Handle(job, progress, self._count)
        try:
            result = await trio.to_thread.run_sync(handle.work, abandon_on_cancel=True, limiter=self._limiter)
        except trio.Cancelled:
            if handle.abandon():
                with trio.CancelScope(shield=True):
                    await handle.done.wait()
            raise
        except JobCancelled:
            if handle.callback_error is not None:
                raise handle.callback_error from None
            raise
        await handle.done.wait()  # progress reports posted before `done` have now all been delivered
        if handle.callback_error is not None:
            raise handle.callback_error
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
