"""Compute worker processes (compute/worker.py): jobs run in a child process and come back intact.

- a training job runs in another process with the same result as in this one, its progress
  and checkpoint states delivered in order;
- exceptions come back with their type, message and attributes, even those whose __init__
  takes other arguments than the message;
- cancelling stops the job (JobCancelled) and keeps the worker; a job that ignores its cancel
  flag is killed after the grace period, and so is its worker;
- a worker that dies mid-job is reported (WorkerCrashed) and replaced by the next call;
- a result that cannot be sent back fails the job, the worker kept;
- a callback of ours that raises stops the job and is raised, the worker kept;
- through the Executor, cancelling the caller's scope stops the job in the worker.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import trio

from compute import worker
from compute.datasets import SyntheticClasses
from compute.errors import ComputeError, HashMismatch, JobCancelled, JobSpecError
from compute.executor import CancelFlag, Progress, run_training
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model
from compute.runner import Executor
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}


def _spec(model: Model, steps: int = 12) -> TrainingSpec:
    return TrainingSpec(
        model.hash,
        SyntheticClasses(1, 64, (16,), 4),
        OptimizerSpec.sgd("0.1"),
        steps,
        16,
        3,
        checkpoint_every=4,
    )


# ---- functions run in the worker (module level: the worker imports them) ---------------------


def train(spec: TrainingSpec, model: Model, *, cancel: CancelFlag, progress: Progress, emit: Any) -> Any:
    def on_checkpoint(step: int, state: bytes) -> None:
        emit((step, state))

    return os.getpid(), run_training(
        spec, model, progress=progress, cancel=cancel, on_checkpoint=on_checkpoint
    )


def pid(*, cancel: CancelFlag, progress: Progress, emit: Any) -> int:
    return os.getpid()


def fail(kind: str, *, cancel: CancelFlag, progress: Progress, emit: Any) -> None:
    if kind == "mismatch":
        raise HashMismatch("weights", "aa", "bb")
    raise JobSpecError(["steps must be positive", "batch_size must be positive"])


def wait_for_cancel(*, cancel: CancelFlag, progress: Progress, emit: Any) -> None:
    progress(1, 2)
    while not cancel.is_set():
        time.sleep(0.01)
    raise JobCancelled(1)


def ignore_cancel(*, cancel: CancelFlag, progress: Progress, emit: Any) -> None:
    progress(1, 2)
    while True:
        time.sleep(0.05)


def die(*, cancel: CancelFlag, progress: Progress, emit: Any) -> None:
    os._exit(3)


def unpicklable(*, cancel: CancelFlag, progress: Progress, emit: Any) -> Any:
    return threading.Lock()


def emit_forever(*, cancel: CancelFlag, progress: Progress, emit: Any) -> int:
    n = 0
    while not cancel.is_set():
        emit(n)
        n += 1
        time.sleep(0.01)
    raise JobCancelled(n)


# ---- tests ----------------------------------------------------------------------------------


def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    return worker.call(fn, args, cancel=kw.pop("cancel", threading.Event()), **kw)


def test_a_training_job_runs_in_another_process_with_the_same_result_and_ordered_callbacks() -> None:
    model = Model.init(MLP, seed=0)
    spec = _spec(model)
    steps: list[tuple[int, int]] = []
    states: list[tuple[int, bytes]] = []
    child, (weights, trace) = _call(train, spec, model, progress=lambda d, t: steps.append((d, t)),
                                    on_event=states.append)  # fmt: skip
    assert child != os.getpid()
    local_states: list[tuple[int, bytes]] = []
    local_weights, local_trace = run_training(
        spec, model, on_checkpoint=lambda s, b: local_states.append((s, b))
    )
    assert (weights, trace.root) == (local_weights, local_trace.root)
    assert states == local_states and [s for s, _ in states] == [0, 4, 8, 12]
    assert steps == [(i, 12) for i in range(1, 13)]
    assert _call(pid) == child  # the idle worker is reused


@pytest.mark.parametrize("kind", ["mismatch", "problems"])
def test_exceptions_come_back_with_their_type_message_and_attributes(kind: str) -> None:
    expected = (
        HashMismatch("weights", "aa", "bb")
        if kind == "mismatch"
        else JobSpecError(["steps must be positive", "batch_size must be positive"])
    )
    with pytest.raises(type(expected)) as raised:
        _call(fail, kind)
    assert str(raised.value) == str(expected) and vars(raised.value) == vars(expected)


def test_cancelling_stops_the_job_and_keeps_the_worker() -> None:
    before = _call(pid)
    cancel, reached = threading.Event(), threading.Event()

    def progress(done: int, total: int) -> None:
        reached.set()
        cancel.set()

    with pytest.raises(JobCancelled):
        _call(wait_for_cancel, cancel=cancel, progress=progress)
    assert reached.is_set() and _call(pid) == before


def test_a_job_that_ignores_its_cancel_flag_is_killed_with_its_worker() -> None:
    before = _call(pid)
    cancel = threading.Event()
    start = time.monotonic()
    with pytest.raises(JobCancelled):
        _call(ignore_cancel, cancel=cancel, progress=lambda d, t: cancel.set(), grace=0.5)
    assert time.monotonic() - start < 30
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)  # gone
    assert _call(pid) != before  # a fresh worker


def test_a_worker_that_dies_is_reported_and_replaced() -> None:
    before = _call(pid)
    with pytest.raises(worker.WorkerCrashed, match="exit code 3"):
        _call(die)
    after = _call(pid)
    assert after != before and _call(pid) == after


def test_a_result_that_does_not_pickle_fails_the_job_not_the_worker() -> None:
    before = _call(pid)
    with pytest.raises(ComputeError, match="result cannot be sent"):
        _call(unpicklable)
    assert _call(pid) == before


def test_a_callback_that_raises_stops_the_job_and_is_raised_the_worker_kept() -> None:
    before = _call(pid)
    seen: list[int] = []

    def on_event(n: int) -> None:
        seen.append(n)
        if n == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _call(emit_forever, on_event=on_event)
    assert seen == [0, 1, 2, 3] and _call(pid) == before


async def test_cancelling_the_callers_scope_stops_the_job_in_the_worker() -> None:
    executor = Executor()
    reported: list[tuple[int, int]] = []

    def job(cancel: threading.Event, post: Progress) -> None:
        worker.call(wait_for_cancel, (), cancel=cancel, progress=post)

    with trio.move_on_after(60) as scope:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await executor.run(job, lambda d, t: reported.append((d, t)))

            nursery.start_soon(run)
            await wait_until(lambda: reported == [(1, 2)], timeout=30)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught and executor.running == 0
