"""What a layer source yields: one :class:`LayerEntry` per filesystem entry, in stream order."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import BinaryIO


class EntryKind(enum.Enum):
    REGULAR = "regular"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR_DEVICE = "char"
    BLOCK_DEVICE = "block"
    FIFO = "fifo"


@dataclass(slots=True)
class LayerEntry:
    """A normalised layer entry.

    ``path`` is absolute and normalised (``b"/"`` for the root, ``b"/a/b"`` otherwise, no
    trailing slash, no ``.``/``..`` components). For hardlinks ``link_target`` is the
    normalised absolute path of the target; for symlinks it is the raw target bytes.
    ``data`` is set for regular files only and is valid until the next entry is requested:
    it yields exactly ``size`` bytes (sparse files expanded).
    """

    path: bytes
    kind: EntryKind
    mode: int  # the 12 permission bits (incl. suid/sgid/sticky)
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds (may be negative)
    mtime_nsec: int = 0
    size: int = 0
    link_target: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    data: BinaryIO | None = None
