"""The in-memory filesystem tree a bootstrap is written from and read back into.

A :class:`Node` is a directory entry (a name in a directory); an :class:`Inode` is the file
it names. Hardlink members are several nodes sharing one ``Inode`` object, which is how the
writer knows to give them one nid ([format §2.12]). Only pure data lives here.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from nydus_exporter.rafs import layout


@dataclass(slots=True)
class ChunkRef:
    """One chunk of a regular file, as recorded in the chunk table ([format §2.14]).

    ``file_offset`` is where the chunk sits inside the file referencing it; all other fields
    describe the chunk inside its blob and are shared by every reference to a deduplicated chunk.
    """

    digest: bytes  # 32-byte blake3/sha256 of the uncompressed chunk
    blob_index: int  # index in the bootstrap's blob table
    index: int  # ci index inside that blob
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int  # 4 KiB aligned
    uncompressed_size: int
    flags: int = 0  # CHUNK_FLAG_*
    crc32: int = 0  # CRC-32C of the uncompressed bytes (with CHUNK_FLAG_HAS_CRC32)
    file_offset: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.flags & layout.CHUNK_FLAG_COMPRESSED)

    def at_file_offset(self, file_offset: int) -> ChunkRef:
        """The same chunk referenced from another place of a file."""
        return ChunkRef(
            self.digest,
            self.blob_index,
            self.index,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_offset,
            self.uncompressed_size,
            self.flags,
            self.crc32,
            file_offset,
        )


@dataclass(slots=True, eq=False)
class Inode:
    """File metadata and content references; shared by all hardlink members."""

    mode: int  # full st_mode: type bits and the 12 permission bits
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    size: int = 0  # regular files: byte size; symlinks: len(symlink_target); else 0
    rdev: int = 0  # encoded device number (layout.encode_rdev) for chr/blk/fifo/sock
    symlink_target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)  # full names, e.g. b"user.a"
    chunks: list[ChunkRef] = field(default_factory=list)  # regular files, in file order

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def file_type(self) -> int:
        """The EROFS dirent file type of this inode."""
        return file_type_of(self.mode)


@dataclass(slots=True, eq=False)
class Node:
    """A directory entry. ``children`` is set for directories only (keys are names)."""

    name: bytes  # b"/" for the root
    inode: Inode
    children: dict[bytes, Node] | None = None

    @classmethod
    def directory(cls, name: bytes, inode: Inode) -> Node:
        return cls(name, inode, {})

    def sorted_children(self) -> list[Node]:
        """Children in raw byte order: the order of dirents, inode indexes and layout."""
        if not self.children:
            return []
        return [self.children[name] for name in sorted(self.children)]


def walk(root: Node) -> Iterator[tuple[bytes, Node]]:
    """``(absolute path, node)`` of every node, depth first, parents before children, siblings
    in byte order."""
    stack: list[tuple[bytes, Node]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        yield path or b"/", node
        for child in reversed(node.sorted_children()):
            stack.append((path + b"/" + child.name, child))


@dataclass(slots=True)
class BlobInfo:
    """One entry of the blob table (``RafsV6Blob``, [format §2.5]) and its device slot ([format §2.4])."""

    blob_id: str
    chunk_size: int
    chunk_count: int = 0
    compressor: int = layout.COMPRESSOR_ID_ZSTD
    digester: int = layout.DIGESTER_ID_BLAKE3
    features: int = 0
    compressed_size: int = 0
    uncompressed_size: int = 0
    blob_toc_size: int = 0
    ci_compressor: int = layout.COMPRESSOR_ID_NONE
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    blob_toc_digest: bytes = bytes(32)
    blob_meta_digest: bytes = bytes(32)
    blob_meta_size: int = 0
    cipher_iv: int = 0
    cipher_algo: int = 0


_FILE_TYPES = {
    stat.S_IFREG: layout.EROFS_FT_REG_FILE,
    stat.S_IFDIR: layout.EROFS_FT_DIR,
    stat.S_IFCHR: layout.EROFS_FT_CHRDEV,
    stat.S_IFBLK: layout.EROFS_FT_BLKDEV,
    stat.S_IFIFO: layout.EROFS_FT_FIFO,
    stat.S_IFSOCK: layout.EROFS_FT_SOCK,
    stat.S_IFLNK: layout.EROFS_FT_SYMLINK,
}


def file_type_of(mode: int) -> int:
    """EROFS dirent file type for an ``st_mode``."""
    return _FILE_TYPES.get(stat.S_IFMT(mode), layout.EROFS_FT_UNKNOWN)
