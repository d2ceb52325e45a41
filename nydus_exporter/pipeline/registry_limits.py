"""The registry client's limits for one export: ``registry.timeout``, ``registry.retry-deadline``
and ``registry.tls-probe-timeout``.

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
    probe_timeout: float | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """``RegistryClient`` keyword arguments (``timeouts``, ``retry``): only those set."""
        return _client_kwargs(self)


def client_limits(options: ExportOptions, defaults: RegistryLimits | None = None) -> dict[str, Any]:
    """``RegistryClient`` keyword arguments (``timeouts``, ``retry``) for ``options``."""
    defaults = defaults or RegistryLimits()
    return RegistryLimits(
        options.registry_timeout or defaults.timeout,
        options.registry_retry_deadline or defaults.retry_deadline,
        options.registry_probe_timeout or defaults.probe_timeout,
    ).client_kwargs()


def _client_kwargs(limits: RegistryLimits) -> dict[str, Any]:
    from nydus_exporter.registry.client import DEFAULT_RETRY, DEFAULT_TIMEOUTS

    timeout, deadline, probe = limits.timeout, limits.retry_deadline, limits.probe_timeout
    kwargs: dict[str, Any] = {}
    timeouts = DEFAULT_TIMEOUTS
    if timeout is not None:
        timeouts = dataclasses.replace(timeouts, connect=timeout, read=timeout)
    if probe is not None:
        timeouts = dataclasses.replace(timeouts, probe=probe)
    if timeouts != DEFAULT_TIMEOUTS:
        kwargs["timeouts"] = timeouts
    if deadline is not None:
        kwargs["retry"] = dataclasses.replace(DEFAULT_RETRY, deadline=deadline)
    return kwargs
