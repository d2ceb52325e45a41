"""Pack one layer stream into a Nydus data blob (the per-layer step of a conversion).

Data flow: layer stream -> decompression -> tar entries -> chunks -> thread pool (digest, then
CRC-32C and compression of new chunks only: :mod:`.hash_first`) -> :class:`BlobWriter` in
submission order -> sink. Chunks are
committed strictly in the order they were read, so the output does not depend on the
number of threads; at most ``max_inflight`` chunks are in memory at any time.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from nydus_exporter.errors import (
    ConfigError,
    CorruptLayerError,
    EntryLimitError,
    UnsupportedEntryError,
    naming,
)
from nydus_exporter.layer.compression import open_layer_stream
from nydus_exporter.layer.entry import DEFAULT_SPARSE_LIMIT, EntryKind, HoleSkipping, LayerEntry
from nydus_exporter.layer.readahead import read_ahead
from nydus_exporter.layer.tarstream import iter_entries, show_name
from nydus_exporter.pipeline.hash_first import DigestedChunk, HashFirst
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.blob import BlobResult, BlobWriter, PreparedChunk, zero_chunk
from nydus_exporter.rafs.bootstrap import write_bootstrap
from nydus_exporter.rafs.chunkdict import ChunkDict
from nydus_exporter.rafs.model import BlobInfo, Inode, Node, walk
from nydus_exporter.rafs.tree import TreeBuilder

# Bytes of raw chunk data allowed in flight in the thread pool (plus their compressed copies).
MAX_INFLIGHT_BYTES = 16 << 20

_TYPE_BITS = {
    EntryKind.REGULAR: stat.S_IFREG,
    EntryKind.DIRECTORY: stat.S_IFDIR,
    EntryKind.SYMLINK: stat.S_IFLNK,
    EntryKind.CHAR_DEVICE: stat.S_IFCHR,
    EntryKind.BLOCK_DEVICE: stat.S_IFBLK,
    EntryKind.FIFO: stat.S_IFIFO,
}


@dataclass(frozen=True, slots=True)
class PackOptions:
    chunk_size: int = layout.DEFAULT_CHUNK_SIZE
    compressor: str = "zstd"
    digester: str = "blake3"
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    sparse_limit: int = DEFAULT_SPARSE_LIMIT

    def validated(self) -> PackOptions:
        codecs.check_chunk_size(self.chunk_size)
        if self.sparse_limit < 0:
            raise ConfigError(f"sparse-limit={self.sparse_limit} must not be negative")
        codecs.thread_compressor(self.compressor)
        codecs.digester(self.digester)
        return self

    def super_flags(self) -> int:
        """RafsSuperFlags of a per-layer bootstrap ([format §8.1] step 6); the writer adds HAS_XATTR."""
        return (
            codecs.thread_compressor(self.compressor).super_flag
            | codecs.digester(self.digester).super_flag
            | layout.RAFS_EXPLICIT_UID_GID
            | layout.RAFS_ENCRYPTION_NONE
        )


Warn = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


def pack_layer(
    stream: BinaryIO,
    sink: Callable[[bytes], object],
    options: PackOptions | None = None,
    *,
    on_warning: Warn = _ignore,
    chunk_dict: ChunkDict | None = None,
) -> BlobResult:
    """Convert one layer (tar, tar+gzip or tar+zstd, from any binary stream) into a blob.

    ``on_warning`` hears about what was dropped on purpose (xattrs Linux cannot store).
    """
    # Decompression (and any digest check in the caller's stream) runs ahead in a thread.
    with contextlib.closing(read_ahead(open_layer_stream(stream))) as uncompressed:
        return pack_entries(
            iter_entries(uncompressed), sink, options, on_warning=on_warning, chunk_dict=chunk_dict
        )


def pack_entries(
    entries: Iterable[LayerEntry],
    sink: Callable[[bytes], object],
    options: PackOptions | None = None,
    *,
    on_warning: Warn = _ignore,
    chunk_dict: ChunkDict | None = None,
) -> BlobResult:
    """Convert a layer given as entries in stream order (a tar, a directory walk) into a blob.

    With ``chunk_dict``, chunks it knows are referenced in their blobs instead of stored again
    ([format §4.2]); those blobs join the layer bootstrap's blob table after the layer's own blob.
    """
    options = (options or PackOptions()).validated()
    writer = BlobWriter(
        sink, chunk_size=options.chunk_size, compressor=options.compressor, digester=options.digester
    )
    tree = TreeBuilder()
    with ThreadPoolExecutor(max_workers=max(1, options.threads), thread_name_prefix="pack") as pool:
        chunker = _Chunker(pool, writer, options, chunk_dict)
        try:
            for entry in entries:
                if entry.kind is EntryKind.HARDLINK:
                    tree.add_hardlink(entry.path, entry.link_target)
                    continue
                inode = _inode_of(entry, on_warning)
                if entry.kind is EntryKind.REGULAR:
                    _check_sparse_limit(entry, options.sparse_limit)
                    chunker.add_file(entry, inode)
                tree.add(entry.path, inode)
            chunker.drain()
        finally:
            chunker.cancel()

    def make_bootstrap(info: BlobInfo | None) -> bytes:
        # Own blob first (index 0), then the dictionary blobs in order of first reference.
        blobs = ([info] if info is not None else []) + chunker.external_blobs
        if info is None and chunker.external_blobs:
            _shift_external_chunks(tree.root)
        flags = options.super_flags()
        if blobs and all(b.features & layout.BLOB_FEATURE_INLINED_CHUNK_DIGEST for b in blobs):
            flags |= layout.RAFS_INLINED_CHUNK_DIGEST
        return write_bootstrap(tree.root, blobs, chunk_size=options.chunk_size, flags=flags)

    return writer.finish(make_bootstrap)


def _check_sparse_limit(entry: LayerEntry, limit: int) -> None:
    if entry.data_runs is None or entry.size <= limit:
        return
    stored = sum(length for _, length in entry.data_runs)
    raise EntryLimitError(
        f"sparse file {show_name(entry.path)} declares {entry.size} bytes ({stored} stored, the rest "
        f"holes), more than sparse-limit={limit}"
    )


def _shift_external_chunks(root: Node) -> None:
    """The layer stored no chunk of its own: dictionary blobs move down one index."""
    seen: set[int] = set()
    for _path, node in walk(root):
        if node.inode.chunks and id(node.inode) not in seen:
            seen.add(id(node.inode))
            for chunk in node.inode.chunks:
                chunk.blob_index -= 1


def pack_layer_to_file(
    stream: BinaryIO, output: Path, options: PackOptions | None = None, *, on_warning: Warn = _ignore
) -> BlobResult:
    """:func:`pack_layer` into ``output``, atomically: a temp file renamed on success, removed on error."""
    output = Path(output)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as exc:  # it names its random temp file: name the directory instead
        raise OSError(exc.errno, exc.strerror, str(output.parent)) from None
    out = os.fdopen(fd, "wb", buffering=1 << 20)
    try:
        result = pack_layer(stream, _writer_naming(out, output), options, on_warning=on_warning)
        try:
            out.close()
        except OSError as exc:
            raise naming(exc, output) from exc
        os.replace(tmp_name, output)
    except BaseException:
        # After a failed write, closing (flushing) fails too: keep the first, named error.
        with contextlib.suppress(OSError):
            out.close()
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return result


def _writer_naming(out: BinaryIO, path: Path) -> Callable[[bytes], None]:
    """``out.write`` whose errors name ``path`` (a full disk says only "No space left")."""

    def write(data: bytes) -> None:
        try:
            out.write(data)
        except OSError as exc:
            raise naming(exc, path) from exc

    return write


def _storable_xattrs(entry: LayerEntry, on_warning: Warn) -> dict[bytes, bytes]:
    """The xattrs RAFS v6 (and Linux) can store; others are dropped with a warning, as
    containerd drops them when it applies a layer (e.g. macOS tars carry bare names)."""
    kept = {}
    for name, value in entry.xattrs.items():
        if name.startswith(_XATTR_PREFIXES):
            kept[name] = value
        else:
            on_warning(
                f"{entry.path.decode('utf-8', 'backslashreplace')}: dropped xattr "
                f"{name.decode('utf-8', 'backslashreplace')} (not a Linux xattr namespace)"
            )
    return kept


_XATTR_PREFIXES = tuple(prefix for prefix, _ in layout.XATTR_PREFIXES)


def _inode_of(entry: LayerEntry, on_warning: Warn) -> Inode:
    inode = Inode(
        mode=_TYPE_BITS[entry.kind] | (entry.mode & 0o7777),
        uid=entry.uid,
        gid=entry.gid,
        mtime=entry.mtime,
        mtime_nsec=entry.mtime_nsec,
        xattrs=_storable_xattrs(entry, on_warning) if entry.xattrs else {},
    )
    if entry.kind is EntryKind.REGULAR:
        inode.size = entry.size
    elif entry.kind is EntryKind.SYMLINK:
        inode.symlink_target = entry.link_target
        inode.size = len(entry.link_target)
    elif entry.kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE, EntryKind.FIFO):
        inode.rdev = layout.encode_rdev(entry.devmajor, entry.devminor)
    return inode


class _Chunker:
    """Cuts files into chunks, prepares them in a pool and commits them in reading order.

    Small chunks are handed to the pool in batches of about ``BATCH_BYTES``: a layer is
    mostly small files, and one pool task per tiny chunk costs more than hashing it.
    """

    BATCH_BYTES = 1 << 20
    BATCH_CHUNKS = 256

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        writer: BlobWriter,
        options: PackOptions,
        chunk_dict: ChunkDict | None = None,
    ) -> None:
        self._pool = pool
        self._writer = writer
        self._dict = chunk_dict
        self.external_blobs: list[BlobInfo] = []  # dictionary blobs referenced, in order
        self._external_index: dict[str, int] = {}
        self._chunk_size = options.chunk_size
        self._compressor = options.compressor
        self._digester = options.digester
        self._hash_first = HashFirst(
            compressor=options.compressor, digester=options.digester, chunk_dict=chunk_dict
        )
        task_bytes = max(options.chunk_size, self.BATCH_BYTES)
        self._max_inflight = max(options.threads + 1, MAX_INFLIGHT_BYTES // task_bytes)
        self._pending: deque[tuple[Future[list[PreparedChunk | DigestedChunk]], list[tuple[Inode, int]]]] = (
            deque()
        )
        self._batch: list[bytes | PreparedChunk] = []  # raw chunks, or already prepared ones
        self._batch_refs: list[tuple[Inode, int]] = []
        self._batch_bytes = 0

    def add_file(self, entry: LayerEntry, inode: Inode) -> None:
        assert entry.data is not None
        if -(-entry.size // self._chunk_size) > layout.MAX_CHUNKS_PER_BLOB:
            raise UnsupportedEntryError(
                f"{entry.path.decode('utf-8', 'backslashreplace')} needs more than 2^24 chunks"
            )
        holes = _Holes(entry.data_runs) if entry.data_runs is not None else None
        offset = 0
        while offset < entry.size:
            want = min(self._chunk_size, entry.size - offset)
            if holes is not None and holes.covers(offset, want):
                # A whole-hole chunk: the one zero chunk of this size, prepared once.
                cast(HoleSkipping, entry.data).skip_hole(want)
                self._batch.append(zero_chunk(want, compressor=self._compressor, digester=self._digester))
            else:
                self._batch.append(_read_exactly(entry.data, want, entry.path))
                self._batch_bytes += want
            self._batch_refs.append((inode, offset))
            offset += want
            if self._batch_bytes >= self.BATCH_BYTES or len(self._batch) >= self.BATCH_CHUNKS:
                self._submit_batch()

    def drain(self) -> None:
        self._submit_batch()
        while self._pending:
            self._commit_one()

    def cancel(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        future = self._pool.submit(self._hash_first.prepare_batch, self._batch)
        self._pending.append((future, self._batch_refs))
        self._batch, self._batch_refs, self._batch_bytes = [], [], 0
        while len(self._pending) >= self._max_inflight:
            self._commit_one()

    def _commit_one(self) -> None:
        future, refs = self._pending.popleft()
        for chunk, (inode, offset) in zip(future.result(), refs, strict=True):
            hit = self._dict.lookup(chunk.digest, chunk.uncompressed_size) if self._dict else None
            if hit is None:
                if isinstance(chunk, DigestedChunk):
                    ref = self._writer.reuse(chunk.digest, chunk.uncompressed_size, file_offset=offset)
                    if ref is not None:
                        inode.chunks.append(ref)
                        continue
                    # Its first occurrence: claimed by a batch that reached the pool earlier
                    # but commits later. Compress it now (same bytes).
                    chunk = self._hash_first.complete(chunk.raw, chunk.digest)
                inode.chunks.append(self._writer.add_chunk(chunk, file_offset=offset))
                continue
            position = self._external_index.get(hit.blob.blob_id)
            if position is None:
                position = self._external_index[hit.blob.blob_id] = len(self.external_blobs)
                self.external_blobs.append(hit.blob)
            ref = hit.chunk.at_file_offset(offset)
            ref.blob_index = 1 + position  # after the layer's own blob (see make_bootstrap)
            inode.chunks.append(ref)


class _Holes:
    """Answers "is this chunk all hole?" for a sparse file, walking its data runs once in order."""

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self._runs = runs
        self._next = 0  # the first run that ends after the last offset asked about

    def covers(self, offset: int, size: int) -> bool:
        """Whether ``[offset, offset + size)`` holds no stored byte; offsets must not decrease."""
        runs = self._runs
        while self._next < len(runs):
            start, length = runs[self._next]
            if start + length > offset:
                return start >= offset + size  # the next stored bytes start after the chunk
            self._next += 1
        return True  # no stored bytes after offset


def _read_exactly(data: BinaryIO, size: int, path: bytes) -> bytes:
    buf = data.read(size)
    if len(buf) == size:
        return buf
    parts = [buf]
    got = len(buf)
    while got < size:
        more = data.read(size - got)
        if not more:
            raise CorruptLayerError(
                f"layer ends inside {path.decode('utf-8', 'backslashreplace')}: {got} of {size} bytes"
            )
        parts.append(more)
        got += len(more)
    return b"".join(parts)
