"""The registry client's limits for one export: ``registry.timeout``, ``registry.retry-deadline``.

An output key wins; else the daemon's configured default (``defaults``); else the client's
own defaults (:class:`~nydus_exporter.registry.transport.Timeouts`,
:class:`~nydus_exporter.registry.retry.RetryPolicy`). Every place that makes a registry
client for an export (the in-process pipeline, the daemon's publish step, a ``chunk-dict``
image) takes its keyword arguments from :func:`client_limits`, so a never-answering registry
fails within the configured bound everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nydus_exporter.pipeline.options import ExportOptions


@dataclass(frozen=True)
class RegistryLimits:
    """Seconds; ``None``: not set here."""

    timeout: float | None = None
    retry_deadline: float | None = None


def client_limits(options: ExportOptions, defaults: RegistryLimits | None = None) -> dict[str, Any]:
    """``RegistryClient`` keyword arguments (``timeouts``, ``retry``) for ``options``."""
    from nydus_exporter.registry.client import DEFAULT_RETRY, DEFAULT_TIMEOUTS

    defaults = defaults or RegistryLimits()
    timeout = options.registry_timeout or defaults.timeout
    deadline = options.registry_retry_deadline or defaults.retry_deadline
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs["timeouts"] = dataclasses.replace(DEFAULT_TIMEOUTS, connect=timeout, read=timeout)
    if deadline is not None:
        kwargs["retry"] = dataclasses.replace(DEFAULT_RETRY, deadline=deadline)
    return kwargs
