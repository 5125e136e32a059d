"""The trio Executor: jobs run off the event loop, within the concurrency limit, and cancel promptly."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from compute.datasets import SyntheticClasses, inputs_hash
from compute.errors import JobSpecError
from compute.executor import run_inference, run_training
from compute.jobs import InferenceSpec, OptimizerSpec, TrainingSpec
from compute.models import Model
from compute.runner import Executor

MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
DATA = SyntheticClasses(1, 96, (16,), 4)


def _spec(model: Model, steps: int, seed: int = 0) -> TrainingSpec:
    return TrainingSpec(model.hash, DATA, OptimizerSpec.sgd("0.05"), steps, 16, seed, checkpoint_every=steps)


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.init(MLP, seed=0)


async def test_training_runs_without_blocking_the_event_loop(model: Model) -> None:
    executor, ticks = Executor(), [0]
    ticks_at_progress: list[tuple[int, int]] = []
    loop_thread = threading.get_ident()

    def progress(step: int, total: int) -> None:
        assert threading.get_ident() == loop_thread  # reports arrive on the event loop
        ticks_at_progress.append((step, ticks[0]))

    async def ticker() -> None:
        while True:
            ticks[0] += 1
            await trio.sleep(0.001)

    spec = _spec(model, steps=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        weights, trace = await executor.train(spec, model, progress=progress)
        nursery.cancel_scope.cancel()
    assert (weights, trace) == run_training(spec, model)  # same job, same bits, through the adapter
    assert ticks_at_progress[-1][0] == 1000
    mid_run = [t for step, t in ticks_at_progress if 0 < step < 1000]
    assert mid_run and mid_run[-1] > mid_run[0]  # the ticker kept running while training did


async def test_inference_and_segments_run_through_the_executor(model: Model) -> None:
    executor = Executor(max_concurrent=2)
    x = DATA.generate().x[:12]
    ispec = InferenceSpec(model.hash, inputs_hash(x), batch_size=5)
    assert await executor.infer(ispec, model, x) == run_inference(ispec, model, x)
    spec = TrainingSpec(model.hash, DATA, OptimizerSpec.adam("0.01"), 6, 16, 0, checkpoint_every=3)
    states: dict[int, bytes] = {}
    await executor.train(spec, model, on_checkpoint=states.__setitem__)
    assert await executor.train_segment(spec, model, None, states[3], 3, 6) == states[6]
    assert executor.running == 0


async def test_a_limit_of_one_runs_jobs_one_at_a_time(model: Model) -> None:
    executor = Executor(max_concurrent=1)
    events: list[tuple[int, int, int]] = []  # (job, step, jobs running when the report arrived)

    async def job(i: int) -> None:
        def progress(step: int, total: int) -> None:
            events.append((i, step, executor.running))

        await executor.train(_spec(model, 40, seed=i), model, progress=progress)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(job, i)
    order = [i for i, _, _ in events]
    assert sorted(set(order)) == [0, 1, 2]
    assert order == sorted(order, key=order.index)  # each job's reports form one unbroken run
    assert max(running for _, _, running in events) == 1


async def test_concurrent_strict_jobs_give_the_same_bits_as_sequential_ones(model: Model) -> None:
    executor, specs = Executor(max_concurrent=3), [_spec(model, 60, seed=i) for i in range(3)]
    results: dict[int, tuple[bytes, Any]] = {}

    async def job(i: int) -> None:
        results[i] = await executor.train(specs[i], model)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(job, i)
    assert [results[i] for i in range(3)] == [run_training(spec, model) for spec in specs]


async def test_jobs_run_concurrently_up_to_the_limit() -> None:
    executor, peak = Executor(max_concurrent=2), []
    # the barrier opens only once both jobs are in worker threads at the same time
    barrier = threading.Barrier(2, action=lambda: peak.append(executor.running), timeout=30)

    def job(cancel: threading.Event, post: Any) -> None:
        barrier.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(executor.run, job)
    assert peak == [2] and executor.running == 0


async def test_cancelling_the_scope_stops_training_promptly(model: Model) -> None:
    executor = Executor()
    spec, seen = _spec(model, steps=1_000_000), []
    with trio.CancelScope() as scope:

        def progress(step: int, total: int) -> None:
            seen.append(step)
            if step >= 5:
                scope.cancel()

        await executor.train(spec, model, progress=progress)
    assert scope.cancelled_caught
    assert executor.running == 0  # the worker has stopped, not merely been abandoned
    assert 5 <= seen[-1] < 1_000_000


async def test_cancelling_a_queued_job_never_starts_it(model: Model) -> None:
    executor, started = Executor(max_concurrent=1), trio.Event()
    release, ran = threading.Event(), []

    def blocker(cancel: threading.Event, post: Any) -> None:
        post(1, 1)
        release.wait(timeout=30)

    def queued(cancel: threading.Event, post: Any) -> None:
        ran.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: executor.run(blocker, lambda s, t: started.set()))
        await started.wait()
        with trio.CancelScope() as scope:
            scope.cancel()
            await executor.run(queued)
        release.set()
    assert scope.cancelled_caught and ran == [] and executor.running == 0


async def test_a_failing_progress_callback_stops_the_job_and_surfaces(model: Model) -> None:
    def progress(step: int, total: int) -> None:
        raise RuntimeError("dashboard is down")

    with pytest.raises(RuntimeError, match="dashboard is down"):
        await Executor().train(_spec(model, steps=100_000), model, progress=progress)


async def test_job_errors_propagate(model: Model) -> None:
    spec = _spec(model, steps=4)
    with pytest.raises(JobSpecError, match="segment must satisfy"):
        await Executor().train_segment(spec, model, None, b"", 3, 2)
    with pytest.raises(ValueError, match="max_concurrent"):
        Executor(max_concurrent=0)
