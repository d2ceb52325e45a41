"""The one retry layer of the registry client.

Only :class:`~nydus_exporter.errors.RegistryError` values with ``.temporary`` set are retried
(connection failures, timeouts, 408/429/5xx): jittered exponential backoff, ``Retry-After``
honoured, a bounded number of attempts and a deadline. Everything else fails at once. Code
above :class:`~nydus_exporter.registry.client.RegistryClient` must not retry again (retry
amplification: N layers of M attempts are M**N requests against a struggling registry).

The deadline bounds retrying: no new attempt starts and no backoff sleep reaches past it. An
attempt in flight is bounded by the per-request stall timeouts of the transport, so a registry
that never answers fails after at most ``deadline`` + one stall timeout. Long chunked uploads
call :meth:`Backoff.progress` after each accepted chunk, which restarts the attempt count and
the deadline: the deadline limits time *without progress*, not the length of an upload.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from nydus_exporter.errors import RegistryError, RegistryUnavailableError

__all__ = ["Backoff", "RetryPolicy", "with_retries"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How temporary registry failures are retried.

    ``attempts`` counts the first try; the n-th retry waits a random time in
    ``[d/2, d]`` with ``d = min(backoff_max, backoff_base * 2**n)``, or the registry's
    ``Retry-After`` (capped at ``retry_after_max``). Tests set ``backoff_base`` to a few
    milliseconds instead of sleeping for real.
    """

    attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    deadline: float = 300.0
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.deadline <= 0:
            raise ValueError("RetryPolicy times must be positive")


class Backoff:
    """Retry bookkeeping for one operation (see :func:`with_retries` for the common case)."""

    def __init__(self, policy: RetryPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self.retries = 0  # total retries of this operation (for stats)
        self._failures = 0
        self._deadline = clock() + policy.deadline

    def progress(self) -> None:
        """The operation moved forward: restart the attempt count and the deadline."""
        self._failures = 0
        self._deadline = self._clock() + self._policy.deadline

    async def wait(self, error: RegistryError) -> None:
        """Sleep before the next attempt, or raise if ``error`` must not (or can no longer) be retried."""
        if not error.temporary:
            raise error
        self._failures += 1
        policy = self._policy
        if self._failures >= policy.attempts:
            raise _unavailable(error, f"gave up after {self._failures} attempts")
        if error.retry_after is not None:
            delay = min(max(error.retry_after, 0.0), policy.retry_after_max)
        else:
            ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** (self._failures - 1))
            delay = random.uniform(ceiling / 2, ceiling)
        remaining = self._deadline - self._clock()
        if remaining <= 0 or delay > remaining:
            raise _unavailable(error, f"retry deadline of {policy.deadline:g}s exceeded")
        self.retries += 1
        await asyncio.sleep(delay)


async def with_retries(
    policy: RetryPolicy,
    operation: Callable[[], Awaitable[T]],
    *,
    on_retry: Callable[[RegistryError], None] | None = None,
) -> T:
    """Run ``operation`` until it succeeds, fails permanently, or the policy gives up."""
    backoff = Backoff(policy)
    while True:
        try:
            return await operation()
        except RegistryError as exc:
            await backoff.wait(exc)
            if on_retry is not None:
                on_retry(exc)


def _unavailable(error: RegistryError, why: str) -> RegistryUnavailableError:
    if isinstance(error, RegistryUnavailableError) and why in str(error):
        return error
    unavailable = RegistryUnavailableError(
        f"{error} ({why})",
        status=error.status,
        codes=error.codes,
        method=error.method,
        url=error.url,
        temporary=True,
    )
    unavailable.__cause__ = error
    return unavailable
