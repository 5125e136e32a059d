"""Waiting on a condition with a deadline: the only way tests synchronise (never bare sleeps)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll predicate (sync or async; any truthy result counts) until it holds.

    Raises trio.TooSlowError when it still does not hold after timeout seconds.
    """
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(interval)
