"""``nydus-exporter cat``: one file of a Nydus image, reading only what that file needs.

This is how nydusd serves a read lazily ([format §7.1]), and what makes a Nydus image cheap to
start: after the manifest, the config and the bootstrap layer (the merged bootstrap), only
the chunks of the file are fetched. For each chunk of the file the merged bootstrap's chunk
table ([format §2.14]) gives the blob index, whose blob table entry ([format §2.5]) names the blob (its id is
the hex of the blob layer's digest, [format §5.3]) with its compressor and digester, and the chunk's
``compressed_offset`` / ``compressed_size``: exactly that byte range is read
(:meth:`~nydus_exporter.image.reader.ImageRepository.read_at`: an HTTP ``Range`` GET on a
registry, ``pread`` on an OCI layout), decompressed and checked against the chunk digest
before any of it is written. Chunks stored back to back in one blob are read with one
request (up to :data:`MAX_RANGE` bytes), never reading a byte the file does not need.

Paths are resolved inside the image like a chroot: symlinks are followed (absolute targets
from the image root, at most :data:`MAX_SYMLINKS`), ``..`` stops at the root. Asking for a
directory, a device, a FIFO or a socket, or for a path that does not exist, is a
:class:`~nydus_exporter.errors.ConfigError` naming the path.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.image.reader import NydusImage, open_image_in
from nydus_exporter.image.repository import CountingRepository, ReadStats, open_repository
from nydus_exporter.oci.platform import Platform
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.bootstrap_reader import Bootstrap, read_bootstrap
from nydus_exporter.rafs.model import BlobInfo, ChunkRef, Inode, Node

if TYPE_CHECKING:
    from nydus_exporter.image.registry import RegistryOptions
    from nydus_exporter.registry import RegistryStats

__all__ = ["MAX_RANGE", "MAX_SYMLINKS", "CatResult", "cat_file", "file_chunks", "lookup"]

MAX_SYMLINKS = 40  # Linux's limit on symlinks followed in one path walk (ELOOP)
MAX_RANGE = 8 << 20  # back-to-back chunks are merged into one read up to this many bytes
_UNSUPPORTED_CHUNK_FLAGS = layout.CHUNK_FLAG_ENCRYPTED | layout.CHUNK_FLAG_BATCH
_KINDS = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
}


@dataclass
class CatResult:
    """What :func:`cat_file` wrote and read."""

    path: str  # the file's own path in the image (symlinks resolved)
    size: int  # bytes written
    chunks: int  # chunk references of the file
    reads: ReadStats = field(default_factory=ReadStats)  # what was read from the repository
    registry: RegistryStats | None = None  # the registry client's counters (docker:// only)


def _show(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def lookup(root: Node, path: str | bytes, *, where: str = "the image") -> tuple[str, Node]:
    """The node ``path`` names in the tree under ``root`` and its symlink-free path.

    Every symlink met is followed, the last component's too; ``..`` at the root stays at the
    root, so nothing resolves outside the image.
    """
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    shown = _show(raw)
    pending = [part for part in raw.split(b"/") if part]
    pending.reverse()  # a stack: the next component last
    chain: list[Node] = [root]
    names: list[bytes] = []
    followed = 0
    while pending:
        name = pending.pop()
        if name == b".":
            continue
        if name == b"..":
            if len(chain) > 1:
                chain.pop()
                names.pop()
            continue
        current = chain[-1]
        if not current.inode.is_dir or current.children is None:
            prefix = "/" + _show(b"/".join(names))
            raise ConfigError(f"{shown}: {prefix} in {where} is not a directory")
        child = current.children.get(name)
        if child is None:
            raise ConfigError(f"{shown}: no such file or directory in {where}")
        if child.inode.is_symlink:
            followed += 1
            if followed > MAX_SYMLINKS:
                raise ConfigError(f"{shown}: too many levels of symbolic links in {where}")
            target = child.inode.symlink_target
            if not target:
                raise ConfigError(f"{shown}: /{_show(b'/'.join([*names, name]))} is an empty symlink")
            if target.startswith(b"/"):
                chain, names = [root], []
            pending.extend(reversed([part for part in target.split(b"/") if part]))
            continue
        chain.append(child)
        names.append(name)
    return "/" + _show(b"/".join(names)), chain[-1]


@dataclass
class _Range:
    """Chunks of one blob that lie in one contiguous byte range of it."""

    blob_index: int
    start: int
    end: int
    refs: list[ChunkRef] = field(default_factory=list)


def _ranges(refs: list[ChunkRef]) -> Iterator[_Range]:
    """Group the file's chunks, in file order, into reads of back-to-back bytes."""
    current: _Range | None = None
    for ref in refs:
        start, end = ref.compressed_offset, ref.compressed_offset + ref.compressed_size
        if current is not None and current.blob_index == ref.blob_index:
            if current.start <= start and end <= current.end:  # a chunk already in range
                current.refs.append(ref)
                continue
            if start == current.end and end - current.start <= MAX_RANGE:
                current.end = end
                current.refs.append(ref)
                continue
        if current is not None:
            yield current
        current = _Range(ref.blob_index, start, end, [ref])
    if current is not None:
        yield current


def file_chunks(image: NydusImage, boot: Bootstrap, inode: Inode, *, name: str = "file") -> Iterator[bytes]:
    """The content of regular file ``inode`` of ``boot``, chunk by chunk, each verified,
    reading exactly the chunks' compressed bytes from the blob layers."""
    left = inode.size
    for group in _ranges(inode.chunks):
        if left <= 0:
            break
        if group.blob_index >= len(boot.blobs):
            raise FormatError(f"{name}: a chunk names blob {group.blob_index} of {len(boot.blobs)}")
        blob = boot.blobs[group.blob_index]
        layer = image.blob_layer(blob.blob_id)
        data = image.repository.read_at(layer.digest, group.start, group.end - group.start)
        if len(data) != group.end - group.start:
            raise FormatError(
                f"{name}: blob layer {layer.digest} ends before {group.end} "
                f"(chunks at {group.start}+{group.end - group.start})"
            )
        for ref in group.refs:
            if left <= 0:
                break
            where = f"{name}: chunk {ref.index} of blob layer {layer.digest}"
            start = ref.compressed_offset - group.start
            plain = _chunk_plain(data[start : start + ref.compressed_size], ref, blob, boot.chunk_size, where)
            piece = plain[: min(len(plain), left)]
            left -= len(piece)
            yield piece
    if left > 0:
        raise FormatError(f"{name}: its chunks hold {inode.size - left} of its {inode.size} bytes")


def _chunk_plain(stored: bytes, ref: ChunkRef, blob: BlobInfo, chunk_size: int, where: str) -> bytes:
    """The uncompressed bytes of one chunk, checked against its size and digest."""
    if ref.flags & _UNSUPPORTED_CHUNK_FLAGS:
        raise FormatError(f"{where}: encrypted or batch chunks are not supported")
    if ref.uncompressed_size > chunk_size or ref.uncompressed_size == 0:
        raise FormatError(f"{where}: {ref.uncompressed_size} bytes for chunk size {chunk_size}")
    if ref.compressed:
        plain = codecs.compressor_by_id(blob.compressor).decompress(stored, ref.uncompressed_size)
    elif len(stored) == ref.uncompressed_size:
        plain = stored
    else:
        raise FormatError(
            f"{where}: stored {len(stored)} bytes uncompressed, expected {ref.uncompressed_size}"
        )
    if len(plain) != ref.uncompressed_size:
        raise FormatError(f"{where}: {len(plain)} bytes, expected {ref.uncompressed_size}")
    digester = codecs.digester_by_id(blob.digester)
    if digester.digest(plain) != ref.digest:
        raise FormatError(f"{where} does not match its {digester.name} digest in the bootstrap")
    return plain


def cat_file(
    spec: str,
    path: str,
    out: BinaryIO,
    *,
    platform: Platform | str | None = None,
    registry: RegistryOptions | None = None,
) -> CatResult:
    """Write the content of ``path`` in the Nydus image ``spec`` (``oci:DIR[:TAG]`` or
    ``docker://REF``) to ``out``; see the module docstring."""
    repo, tag = open_repository(spec, registry)
    counting = CountingRepository(repo)
    with open_image_in(counting, spec, tag, platform) as image:
        boot = read_bootstrap(image.bootstrap())
        resolved, node = lookup(boot.root, path, where=spec)
        inode = node.inode
        if inode.is_dir:
            raise ConfigError(f"{path}: is a directory in {spec}")
        if not inode.is_reg:
            kind = _KINDS.get(stat.S_IFMT(inode.mode), f"file of mode {inode.mode:o}")
            raise ConfigError(f"{path}: is a {kind}, not a regular file")
        written = 0
        for piece in file_chunks(image, boot, inode, name=resolved):
            out.write(piece)
            written += len(piece)
        out.flush()
        # A RegistryRepository's client counters (HTTP requests, blob body bytes).
        registry_stats: RegistryStats | None = getattr(repo, "registry_stats", None)
        return CatResult(resolved, written, len(inode.chunks), counting.stats, registry_stats)
