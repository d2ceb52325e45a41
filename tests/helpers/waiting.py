"""Wait for a condition instead of sleeping for a guessed time.

A test that sleeps "long enough" is slow when the machine is idle and flaky when it is busy.
These helpers poll ``predicate`` until it holds and fail with a message naming what never
happened; ``timeout`` only bounds a hang, it is never the thing under test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["ConditionTimeout", "wait_until", "wait_until_async"]

_FIRST_POLL = 0.001  # seconds; doubles up to _MAX_POLL, so quick conditions cost little
_MAX_POLL = 0.05


class ConditionTimeout(AssertionError):
    """The condition did not hold within the timeout (a test failure, not an error)."""


def _message(what: str, timeout: float, last: object) -> str:
    detail = f" (last value: {last!r})" if last is not None and last is not False else ""
    return f"timed out after {timeout:g} s waiting until {what}{detail}"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, *, what: str = "") -> object:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`ConditionTimeout` naming ``what`` (default: the predicate's name) when it
    is still falsy after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    poll = _FIRST_POLL
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ConditionTimeout(_message(what or _name(predicate), timeout, value))
        time.sleep(poll)
        poll = min(poll * 2, _MAX_POLL)


async def wait_until_async(
    predicate: Callable[[], object], timeout: float = 10.0, *, what: str = ""
) -> object:
    """:func:`wait_until` for coroutines: polls without blocking the running event loop."""
    deadline = time.monotonic() + timeout
    poll = _FIRST_POLL
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ConditionTimeout(_message(what or _name(predicate), timeout, value))
        await asyncio.sleep(poll)
        poll = min(poll * 2, _MAX_POLL)


def _name(predicate: Callable[[], object]) -> str:
    name = getattr(predicate, "__name__", "")
    return "the condition holds" if not name or name == "<lambda>" else f"{name}() holds"
