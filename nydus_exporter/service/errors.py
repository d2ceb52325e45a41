"""Errors the exporter daemon raises itself (on top of :mod:`nydus_exporter.errors`).

::

    ExporterError                       (nydus_exporter.errors)
    └── ServiceError                    a request the daemon cannot serve as asked
        ├── ProtocolError               malformed stream: message out of order, unknown
        │                               platform id, oversized chunk, digest mismatch
        ├── PreconditionError           a feature that exists in the contract but is not
        │                               available here (push without the registry client,
        │                               batch-size, chunk-dict, ...)
        ├── NotFoundError               unknown instance, job or finalize token
        ├── IdempotencyConflictError    an idempotency key reused with different attrs
        ├── PathNotAllowedError         a host path outside the configured allowed roots
        ├── JobDeadlineError            the per-job deadline ran out
        ├── JobCancelledError           cancelled by Cancel/Release or by shutdown
        ├── StateDirLockedError         another daemon holds the state directory
        └── LimitExceededError          a per-job or daemon-wide limit on what a client
                                        may make the daemon hold (metadata, attrs, streams)

``servicer.status_for`` is the one place that maps these (and every other error) to gRPC
status codes ([contract §5.3]).
"""

from __future__ import annotations

from nydus_exporter.errors import ExporterError


class ServiceError(ExporterError):
    """Base of the daemon's own errors."""


class ProtocolError(ServiceError):
    """The client broke the Export/Finalize stream protocol; the message names how."""


class PreconditionError(ServiceError):
    """Valid request, but something it needs is not available in this daemon."""


class NotFoundError(ServiceError):
    """An instance, job or finalize token the daemon does not hold (any more)."""


class IdempotencyConflictError(ServiceError):
    """The same idempotency key was used with different attrs."""


class PathNotAllowedError(ServiceError):
    """A host path (oci-layout, layer reference) is not under an allowed root."""


class JobDeadlineError(ServiceError):
    """The job ran longer than the configured per-job deadline."""


class JobCancelledError(ServiceError):
    """The job was cancelled (Cancel RPC, Release, or shutdown past the grace period)."""


class StateDirLockedError(ServiceError):
    """Another daemon holds the state directory's lock (the message names it and its pid)."""


class LimitExceededError(ServiceError):
    """A request would make the daemon hold more than a configured limit (the message names it)."""
