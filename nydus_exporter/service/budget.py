"""Caps on what clients can make the daemon hold in memory (metadata, attrs, open streams).

Layer bytes are spooled to disk, but some client input is kept in memory by design: the
``metadata_chunk`` values of a stream until its commit, and the attrs of every instance
``Resolve`` allocated until it is released or its TTL runs out. Each is capped per job (or
instance) and in total across the daemon; a request past a cap is refused with
:class:`LimitExceededError` (``RESOURCE_EXHAUSTED``) naming the configuration key, and what a
job held is given back when it ends, however it ends (commit, failure, cancel).
"""

from __future__ import annotations

from nydus_exporter.service.errors import LimitExceededError


class Budget:
    """A daemon-wide byte (or count) budget; used from the event loop only."""

    def __init__(self, limit: int, setting: str, what: str) -> None:
        self.limit = limit
        self.used = 0
        self._setting = setting
        self._what = what

    def reserve(self, amount: int) -> None:
        if self.used + amount > self.limit:
            raise LimitExceededError(
                f"{self._what}: the daemon holds {self.used} of {self.limit} allowed by "
                f"{self._setting}, {amount} more do not fit (try again later)"
            )
        self.used += amount

    def release(self, amount: int) -> None:
        self.used = max(0, self.used - amount)


class JobBudget:
    """One job's share of a :class:`Budget`, capped at ``limit``; :meth:`close` gives it back."""

    def __init__(self, total: Budget, limit: int, setting: str, what: str) -> None:
        self._total = total
        self._limit = limit
        self._setting = setting
        self._what = what
        self.used = 0

    def reserve(self, amount: int) -> None:
        if self.used + amount > self._limit:
            raise LimitExceededError(
                f"{self._what} is larger than the {self._limit} bytes {self._setting} allows"
            )
        self._total.reserve(amount)
        self.used += amount

    def close(self) -> None:
        self._total.release(self.used)
        self.used = 0
