"""Whiteout rules: which entries of an upper layer delete or hide entries of the layers below.

Two conventions (``--whiteout-spec`` of nydus-image, [format §5.2]; [pitfalls §4]):

``oci`` (OCI image-spec "Whiteouts", what layer tars carry)
    ``.wh.<name>`` deletes ``<name>`` from the lower layers; ``.wh..wh..opq`` makes its
    directory opaque (every lower child hidden). Other ``.wh..wh.*`` names are AUFS
    bookkeeping (``.wh..wh.plnk`` ...): containerd skips them, and so do we. The whiteout
    entries themselves never reach the merged tree.
``none``
    Nothing is interpreted; every entry is an ordinary file.

Pure data rules: no tree walking here (see :mod:`nydus_exporter.rafs.merge`). Overlayfs
whiteouts (character devices 0:0, ``<ns>.overlay.opaque`` xattrs: what BuildKit snapshot
upper directories hold) are interpreted in one place, where such a directory is read
(:mod:`nydus_exporter.layer.directory`), and reach the merge as OCI whiteouts.
"""

from __future__ import annotations

import enum
from typing import Final

from nydus_exporter.errors import ConfigError, UnsafePathError

WHITEOUT_SPECS: Final = ("oci", "none")

OCI_WHITEOUT_PREFIX: Final = b".wh."
OCI_OPAQUE_MARKER: Final = b".wh..wh..opq"
OCI_META_PREFIX: Final = b".wh..wh."  # AUFS metadata names; .wh..wh..opq is the only one with meaning


class Role(enum.Enum):
    """What an upper-layer directory entry means for the layers below it."""

    ENTRY = "entry"  # an ordinary entry: added, or replacing/merging with the lower one
    WHITEOUT = "whiteout"  # deletes the lower entry named by the target
    OPAQUE = "opaque"  # hides every lower child of the directory holding it
    IGNORED = "ignored"  # bookkeeping without effect; dropped from the result


class WhiteoutRules:
    """The rules of one whiteout spec, applied to each entry of a layer."""

    def __init__(self, spec: str) -> None:
        if spec not in WHITEOUT_SPECS:
            raise ConfigError(f"unknown whiteout spec {spec!r} (expected one of {', '.join(WHITEOUT_SPECS)})")
        self.spec = spec

    def classify(self, name: bytes) -> tuple[Role, bytes]:
        """``(role, target name)`` of the entry ``name``; the target is set for WHITEOUT only."""
        if self.spec == "oci":
            if not name.startswith(OCI_WHITEOUT_PREFIX):
                return Role.ENTRY, b""
            if name == OCI_OPAQUE_MARKER:
                return Role.OPAQUE, b""
            if name.startswith(OCI_META_PREFIX):
                return Role.IGNORED, b""
            target = name[len(OCI_WHITEOUT_PREFIX) :]
            if not target:
                # image-spec PR 1314: a bare ".wh." is invalid and MUST be rejected.
                raise UnsafePathError("bare whiteout name '.wh.' in a layer")
            return Role.WHITEOUT, target
        return Role.ENTRY, b""
