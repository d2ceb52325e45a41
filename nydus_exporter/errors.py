"""The one error hierarchy of nydus-exporter.

::

    ExporterError                      base of every error this package raises on purpose
    ├── InvalidLayerError              the input layer is bad (the client's fault)
    │   ├── CorruptLayerError          truncated or undecodable tar / gzip / zstd stream
    │   ├── UnsafePathError            ``..`` escapes, absolute hardlink escapes, bare ``.wh.``
    │   ├── HardlinkError              hardlink to a missing target or to a directory
    │   └── UnsupportedEntryError      entry or attribute the format cannot carry
    ├── FormatError                    a bootstrap or blob does not parse (corrupt or foreign input)
    └── ConfigError                    a bad option (chunk size, compressor name, ...)

Every error carries a message naming the problem; callers map the classes to
exit codes (CLI) or gRPC status codes (service) in one place each.
"""

from __future__ import annotations


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


class FormatError(ExporterError):
    """A RAFS bootstrap or Nydus blob is corrupt or not what it claims to be."""


class ConfigError(ExporterError):
    """An option has a value we cannot use."""
