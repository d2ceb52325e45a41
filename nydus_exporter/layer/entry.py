"""What a layer source yields: one :class:`LayerEntry` per filesystem entry, in stream order."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

# The largest apparent size of a sparse entry (`sparse-limit`) unless configured otherwise.
# Holes cost no hashing or compression, but every chunk of a file still costs a chunk
# reference in memory and in the bootstrap (about 6 us and 170 bytes), and a few KiB of tar
# can declare terabytes of holes. Files stored whole are not limited: their cost follows the
# bytes actually read.
DEFAULT_SPARSE_LIMIT = 16 << 30


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

    ``data_runs`` is set for a sparse file (a tar sparse entry): the (offset, length) runs,
    in order, whose bytes are stored; everything else is a hole that reads as zeros, and its
    ``data`` is then also :class:`HoleSkipping`. ``None``: every byte is stored.
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
    data_runs: list[tuple[int, int]] | None = None


class HoleSkipping(Protocol):
    """The ``data`` of a sparse entry: holes can be passed over without producing their zeros."""

    def skip_hole(self, size: int) -> None:
        """Move ``size`` bytes ahead; all of them must be hole (else ``ValueError``)."""
