"""Checkpoint states written by a writer thread (peer/market/writeback.py): in order, all of them by
the end of the block, without holding up the training thread, and failures are not lost."""

from __future__ import annotations

import threading

import pytest

from peer.market.writeback import WRITE_AHEAD, written_in_background


def test_states_are_written_in_order_and_all_by_the_end_of_the_block() -> None:
    written: list[tuple[int, bytes, str]] = []
    record = lambda step, state: written.append((step, state, threading.current_thread().name))  # noqa: E731
    with written_in_background(record) as write:
        for step in range(20):
            write(step, b"state %d" % step)
    assert [(s, b) for s, b, _ in written] == [(s, b"state %d" % s) for s in range(20)]
    assert {name for _, _, name in written} == {"checkpoint-writer"}  # not the training thread


def test_training_goes_on_while_a_state_is_being_written() -> None:
    started, release = threading.Event(), threading.Event()
    written: list[int] = []

    def slow(step: int, state: bytes) -> None:
        started.set()
        assert release.wait(30)
        written.append(step)

    with written_in_background(slow) as write:
        write(0, b"first")
        assert started.wait(30)  # the writer is busy with it...
        for step in range(1, WRITE_AHEAD + 1):
            write(step, b"queued")  # ...and these return at once (no deadlock: the test finishes)
        assert written == []
        release.set()
    assert written == list(range(WRITE_AHEAD + 1))


def test_a_failed_write_is_raised_on_the_training_thread() -> None:
    def failing(step: int, state: bytes) -> None:
        raise OSError(28, f"no space left for step {step}")

    with pytest.raises(OSError, match="no space left for step 0"), written_in_background(failing) as write:
        write(0, b"state")
    with pytest.raises(OSError, match="step 0"), written_in_background(failing) as write:
        write(0, b"state")
        for step in range(1, 1_000):  # raised at a later checkpoint at the latest on leaving
            write(step, b"state")


def test_an_exception_from_training_wins_over_a_failed_write() -> None:
    def failing(step: int, state: bytes) -> None:
        raise OSError("disk gone")

    with pytest.raises(KeyboardInterrupt), written_in_background(failing) as write:
        write(0, b"state")
        raise KeyboardInterrupt  # e.g. the job was cancelled
