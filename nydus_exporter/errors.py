"""The one error hierarchy of nydus-exporter.

::

    ExporterError                      base of every error this package raises on purpose
    ├── InvalidLayerError              the input layer is bad (the client's fault)
    │   ├── CorruptLayerError          truncated or undecodable tar / gzip / zstd stream
    │   ├── UnsafePathError            ``..`` escapes, absolute hardlink escapes, bare ``.wh.``
    │   ├── HardlinkError              hardlink to a missing target or to a directory
    │   └── UnsupportedEntryError      entry or attribute the format cannot carry
    │       └── EntryLimitError        entry beyond a bound (sparse-limit, PATH_MAX)
    ├── FormatError                    a bootstrap or blob does not parse (corrupt or foreign input)
    ├── ConfigError                    a bad option (chunk size, compressor name, ...)
    ├── UnsupportedError               a valid option this builder cannot do (fs-version=5,
    │                                  batch-size, a key the daemon refuses)
    ├── ChunkStoreError                the persistent chunk store cannot be used (unreadable state
    │                                  dir, lock timeout, disk full, bad record arguments); a
    │                                  corrupt database is moved aside and rebuilt, not raised
    └── RegistryError                  an OCI registry refused or failed a request (remote)
        ├── RegistryAuthError          401/403: unauthenticated, denied, bad credentials
        ├── RegistryNotFoundError      404: no such repository, blob, manifest or upload
        └── RegistryUnavailableError   connection failures / 5xx / 429 still failing when the
                                       retry deadline ran out

Every error carries a message naming the problem; callers map the classes to
exit codes (CLI) or gRPC status codes (service) in one place each. Failures of the machine
(disk full, a missing output directory) stay :class:`OSError`, with the path they concern
(:func:`naming`), so that the CLI can say so in one line.
"""

from __future__ import annotations

import os


class ExporterError(Exception):
    """Base class of every error nydus-exporter raises on purpose."""


class InvalidLayerError(ExporterError):
    """The layer given to us is malformed or unsafe."""


class CorruptLayerError(InvalidLayerError):
    """The layer stream is truncated or cannot be decoded (tar, gzip, zstd)."""


class UnsafePathError(InvalidLayerError):
    """A path in the layer escapes the root or uses a reserved name."""


class HardlinkError(InvalidLayerError):
    """A hardlink points at a missing entry or at something that cannot be linked."""


class UnsupportedEntryError(InvalidLayerError):
    """An entry or attribute the RAFS v6 format cannot represent."""


class EntryLimitError(UnsupportedEntryError):
    """An entry beyond a bound that keeps a small layer from costing unbounded time or memory:
    a sparse file larger than ``sparse-limit``, a path of ``PATH_MAX`` bytes or more."""


class FormatError(ExporterError):
    """A RAFS bootstrap or Nydus blob is corrupt or not what it claims to be."""


class ConfigError(ExporterError):
    """An option has a value we cannot use."""


class UnsupportedError(ExporterError):
    """A valid option value asking for something this builder (or the daemon) cannot do."""


class ChunkStoreError(ExporterError):
    """The persistent chunk store (``--state-dir``) cannot be opened, read or written.

    Callers may carry on without the store (no cross-build dedup); corruption of the database
    itself is repaired by the store (moved aside, rebuilt) and never raised as this error.
    """


class RegistryError(ExporterError):
    """An OCI distribution registry refused or failed a request.

    ``status`` is the HTTP status (``None`` for connection-level failures), ``codes`` the OCI
    error codes of the response body (``BLOB_UNKNOWN``, ``DENIED``, ...), ``method`` and
    ``url`` name the request; ``url`` is always redacted (no userinfo, no token or signature
    query values) and no field ever holds a credential. ``temporary`` tells whether the same
    request may succeed later (connection failures, 408, 429, 5xx, ``TOOMANYREQUESTS`` /
    ``UNAVAILABLE``); the registry client retries those itself, and nothing above it retries
    again. ``retry_after`` is the wait the registry asked for (``Retry-After``), if any.
    """

    _TEMPORARY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
    _TEMPORARY_CODES = frozenset({"TOOMANYREQUESTS", "UNAVAILABLE"})

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        codes: tuple[str, ...] = (),
        method: str = "",
        url: str = "",
        temporary: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.method = method
        self.url = url
        if temporary is None:
            temporary = status in self._TEMPORARY_STATUS or any(c in self._TEMPORARY_CODES for c in codes)
        self.temporary = temporary
        self.retry_after = retry_after  # seconds the registry asked us to wait (429/503 Retry-After)


class RegistryAuthError(RegistryError):
    """401/403: no or wrong credentials (``UNAUTHORIZED``) or access ``DENIED``."""


class RegistryNotFoundError(RegistryError):
    """404: the repository, blob, manifest or upload session does not exist."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached or kept failing until the retry deadline ran out."""


EXCERPT_CHARS = 200


def shorten(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A user-supplied value quoted for an error message (like ``{value!r}``), bounded.

    A message quoting a client's value whole could be megabytes long (a 1 MB ``name=``) and
    then no longer fit gRPC's metadata limit: every error quotes user values through this.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text) - limit} more characters)"


def naming(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` with ``path`` as its file name if it has none: a failed ``write()`` (ENOSPC,
    EDQUOT, EIO) names no file, and "No space left on device" alone does not say where."""
    if exc.filename is not None:
        return exc
    named = OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))
    named.__cause__ = exc
    return named
