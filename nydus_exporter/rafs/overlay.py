"""Whiteout rules: which entries of an upper layer delete or hide entries of the layers below.

Three conventions (``--whiteout-spec`` of nydus-image, [format §5.2]; [pitfalls §4]):

``oci`` (OCI image-spec "Whiteouts", what layer tars carry)
    ``.wh.<name>`` deletes ``<name>`` from the lower layers; ``.wh..wh..opq`` makes its
    directory opaque (every lower child hidden). Other ``.wh..wh.*`` names are AUFS
    bookkeeping (``.wh..wh.plnk`` ...): containerd skips them, and so do we. The whiteout
    entries themselves never reach the merged tree.
``overlayfs`` (what BuildKit/containerd snapshot upper directories contain)
    A character device 0:0 deletes the lower entry of its name; a directory with the xattr
    ``trusted.overlay.opaque=y`` or ``user.overlay.opaque=y`` (rootless "userxattr" overlay)
    is opaque, and that xattr is removed from the result.
``none``
    Nothing is interpreted; every entry is an ordinary file.

Pure data rules: no tree walking here (see :mod:`nydus_exporter.rafs.merge`).
"""

from __future__ import annotations

import enum
import stat
from typing import Final

from nydus_exporter.errors import ConfigError, UnsafePathError
from nydus_exporter.rafs.model import Inode

WHITEOUT_SPECS: Final = ("oci", "overlayfs", "none")

OCI_WHITEOUT_PREFIX: Final = b".wh."
OCI_OPAQUE_MARKER: Final = b".wh..wh..opq"
OCI_META_PREFIX: Final = b".wh..wh."  # AUFS metadata names; .wh..wh..opq is the only one with meaning
OVERLAY_OPAQUE_XATTRS: Final = (b"trusted.overlay.opaque", b"user.overlay.opaque")
OVERLAY_OPAQUE_VALUE: Final = b"y"


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

    def classify(self, name: bytes, inode: Inode) -> tuple[Role, bytes]:
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
        if self.spec == "overlayfs" and stat.S_ISCHR(inode.mode) and inode.rdev == 0:
            return Role.WHITEOUT, name  # overlayfs whiteout: char device 0:0 of the same name
        return Role.ENTRY, b""

    def take_opaque(self, inode: Inode) -> bool:
        """Whether the directory is marked opaque by an xattr (overlayfs spec only); if so the
        xattr is removed: it is whiteout bookkeeping, not file metadata (nydus removes it
        too, [format §5.2]). With the other specs the xattr is ordinary metadata and stays."""
        if self.spec != "overlayfs" or not inode.is_dir:
            return False
        opaque = False
        for name in OVERLAY_OPAQUE_XATTRS:
            if inode.xattrs.get(name) == OVERLAY_OPAQUE_VALUE:
                del inode.xattrs[name]
                opaque = True
        return opaque
