"""The RAFS v6 bootstrap reader: bytes -> :class:`Bootstrap` with the tree rebuilt.

Validates what nydusd validates where it matters for safety ([format §2.17]) and everything the walk
relies on. Any corruption raises :class:`FormatError` naming the problem. Work is bounded by
the input size: every inode body (inode, xattrs, inline tail or chunk indexes) must occupy its
own 32-byte slots and every directory block may belong to one directory only, so no byte is
parsed as metadata twice and cycles cannot loop.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from nydus_exporter.errors import ExporterError, FormatError
from nydus_exporter.rafs import layout, xattr
from nydus_exporter.rafs.model import BlobInfo, ChunkRef, Inode, Node, file_type_of

_SLOT = layout.EROFS_INODE_SLOT
_COMPRESSION_FLAGS = layout.RAFS_COMPRESSION_MASK
_HASH_FLAGS = layout.RAFS_HASH_MASK
_KNOWN_MODE_TYPES = frozenset(
    {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK}
)
_MAX_NAME_LEN = 255


@dataclass(frozen=True, slots=True)
class DeviceSlot:
    """One ``erofs_deviceslot`` ([format §2.4])."""

    blob_id: str
    blocks: int
    mapped_blkaddr: int


@dataclass(frozen=True, slots=True)
class InodeRecord:
    """The raw on-disk facts of one inode."""

    nid: int
    compact: bool
    layout: int  # EROFS_INODE_FLAT_PLAIN / FLAT_INLINE / CHUNK_BASED
    mode: int
    size: int
    i_u: int
    i_ino: int
    nlink: int
    xattr_icount: int


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A parsed bootstrap. ``root`` is the rebuilt tree; ``records`` maps nid -> raw inode."""

    flags: int
    chunk_size: int
    block_size: int
    inos: int
    blocks: int  # s_blocks
    meta_blkaddr: int
    root_nid: int
    blob_table_offset: int
    chunk_table_offset: int
    prefetch_table_offset: int
    blobs: list[BlobInfo]
    devices: list[DeviceSlot]
    prefetch: list[int]
    chunk_table: list[ChunkRef]
    root: Node
    records: dict[int, InodeRecord]
    node_nids: dict[int, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def own_blob_index(self) -> int | None:
        """In a layer blob's embedded bootstrap: the index of the layer's own blob (named by the
        inline placeholder id, [format §3.9]); the other entries are chunk-dictionary blobs."""
        for i, blob in enumerate(self.blobs):
            if blob.blob_id == layout.INLINE_BLOB_ID_PLACEHOLDER:
                return i
        return None

    def own_chunks(self) -> list[ChunkRef]:
        """The chunk-table entries of the layer's own blob (none if it stored no chunk)."""
        own = self.own_blob_index
        return [c for c in self.chunk_table if c.blob_index == own] if own is not None else []

    def nid_of(self, node: Node) -> int:
        """The nid a node of :attr:`root` was read from."""
        return self.node_nids[id(node)]


def read_bootstrap(data: bytes) -> Bootstrap:
    """Parse a RAFS v6 bootstrap; FormatError (only) if it is corrupt or not RAFS v6."""
    try:
        return _Reader(bytes(data)).read()
    except ExporterError:
        raise
    except (struct.error, IndexError, ValueError, KeyError, OverflowError, UnicodeError) as exc:
        # Defence in depth: every check above should have caught this first.
        raise FormatError(f"corrupt bootstrap: {exc}") from exc


def _ascii_id(raw: bytes, what: str) -> str:
    text = raw.rstrip(b"\0")
    if b"\0" in text or not text.isascii():
        raise FormatError(f"{what} {raw!r} is not NUL-padded ASCII")
    return text.decode("ascii")


class _SuperBlock(NamedTuple):
    """The EROFS superblock (``layout.SUPER_BLOCK``), field by field."""

    magic: int
    checksum: int
    compat: int
    blkszbits: int
    extslots: int
    root_nid: int
    inos: int
    build_time: int
    nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume: bytes
    incompat: int
    s_u: int
    extra_devices: int
    devt_slotoff: int
    reserved: bytes


class _SuperBlockExt(NamedTuple):
    """The RAFS v6 extended superblock (``layout.SUPER_BLOCK_EXT``), field by field."""

    flags: int
    blob_table_offset: int
    blob_table_size: int
    chunk_size: int
    chunk_table_offset: int
    chunk_table_size: int
    prefetch_offset: int
    prefetch_size: int
    pad: int
    reserved: bytes


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    # -- superblocks and tables ---------------------------------------------------------------

    def read(self) -> Bootstrap:
        if self.size < layout.EROFS_BLOCK_SIZE:
            raise FormatError(f"bootstrap is {self.size} bytes, smaller than one 4 KiB block")
        sb = _SuperBlock._make(layout.SUPER_BLOCK.unpack_from(self.data, layout.EROFS_SUPER_OFFSET))
        self._check_super(sb)
        ext = _SuperBlockExt._make(layout.SUPER_BLOCK_EXT.unpack_from(self.data, layout.EXT_SUPER_OFFSET))
        self._check_flags(ext.flags)
        if (
            ext.chunk_size < layout.MIN_CHUNK_SIZE
            or ext.chunk_size > layout.MAX_CHUNK_SIZE
            or ext.chunk_size & (ext.chunk_size - 1)
        ):
            raise FormatError(f"chunk size {ext.chunk_size:#x} is not a power of two in [4K, 16M]")
        self.chunk_size = ext.chunk_size
        nblobs = self._check_tables(ext, sb.extra_devices)
        blobs = [self._blob(ext.blob_table_offset, i) for i in range(nblobs)]
        devices = [self._device(i) for i in range(nblobs)]
        if len({d.blob_id for d in devices}) != len(devices):
            raise FormatError("duplicate blob ids in the device table")
        prefetch = [
            int.from_bytes(self.data[ext.prefetch_offset + i : ext.prefetch_offset + i + 4], "little")
            for i in range(0, ext.prefetch_size, 4)
        ]
        chunk_table = [
            self._chunk_entry(ext.chunk_table_offset + i, nblobs)
            for i in range(0, ext.chunk_table_size, layout.CHUNK_TABLE_ENTRY_SIZE)
        ]
        self.chunks_by_key = {(c.blob_index, c.index): c for c in chunk_table}
        self.nblobs = nblobs

        self.meta_addr = sb.meta_blkaddr * self.bs
        if self.meta_addr >= self.size:
            raise FormatError(f"meta_blkaddr {sb.meta_blkaddr} is beyond the end of the bootstrap")
        self.records: dict[int, InodeRecord] = {}
        self.inodes: dict[int, Inode] = {}
        self.node_nids: dict[int, int] = {}
        self.claimed = bytearray(self.size // _SLOT + 1)  # inode-area slots already parsed
        self.data_blocks = bytearray(self.size // self.bs + 1)  # blocks owned by a dir/symlink
        root = self._walk(sb.root_nid)
        return Bootstrap(
            flags=ext.flags,
            chunk_size=ext.chunk_size,
            block_size=self.bs,
            inos=sb.inos,
            blocks=sb.blocks,
            meta_blkaddr=sb.meta_blkaddr,
            root_nid=sb.root_nid,
            blob_table_offset=ext.blob_table_offset,
            chunk_table_offset=ext.chunk_table_offset,
            prefetch_table_offset=ext.prefetch_offset,
            blobs=blobs,
            devices=devices,
            prefetch=prefetch,
            chunk_table=chunk_table,
            root=root,
            records=self.records,
            node_nids=self.node_nids,
        )

    def _check_super(self, sb: _SuperBlock) -> None:
        """The EROFS superblock fields RAFS v6 fixes ([format §2.2]); sets the block size."""
        rules = (
            (sb.magic != layout.EROFS_SUPER_MAGIC_V1, f"bad EROFS superblock magic {sb.magic:#x}"),
            (sb.checksum != 0, "superblock checksum is set (RAFS v6 never sets it)"),
            (
                not sb.compat & layout.EROFS_FEATURE_COMPAT_RAFS_V6,
                f"feature_compat {sb.compat:#x} lacks the RAFS v6 bit",
            ),
            (sb.blkszbits not in (9, 12), f"block size bits {sb.blkszbits} is not 9 or 12"),
            (sb.extslots != 0, f"s_extslots is {sb.extslots}, must be 0"),
            (sb.inos == 0, "s_inos is 0"),
            (sb.s_u != 0, f"s_u is {sb.s_u:#x}, must be 0"),
            (sb.xattr_blkaddr != 0, "shared xattr area (s_xattr_blkaddr) is not supported"),
            (sb.devt_slotoff != layout.DEVT_SLOTOFF, f"device table slot offset {sb.devt_slotoff} is not 11"),
            (
                sb.incompat != layout.RAFS_V6_INCOMPAT,
                f"feature_incompat {sb.incompat:#x} is not {layout.RAFS_V6_INCOMPAT:#x}",
            ),
        )
        for broken, message in rules:
            if broken:
                raise FormatError(message)
        bs = 1 << sb.blkszbits
        if self.size % bs:
            raise FormatError(f"bootstrap size {self.size} is not a multiple of {bs}")
        self.bs = bs
        self.blkszbits = sb.blkszbits
        self.build_time = sb.build_time

    def _check_tables(self, ext: _SuperBlockExt, extra_devices: int) -> int:
        """The blob, chunk and prefetch tables lie inside the bootstrap, apart; returns the
        number of blobs."""
        if ext.blob_table_size % layout.BLOB_ENTRY_SIZE:
            raise FormatError(f"blob table size {ext.blob_table_size} is not a multiple of 256")
        nblobs = ext.blob_table_size // layout.BLOB_ENTRY_SIZE
        if nblobs != extra_devices:
            raise FormatError(f"{extra_devices} device slots but {nblobs} blob table entries")
        if nblobs >= layout.MAX_BLOBS:
            raise FormatError(f"{nblobs} blobs, at most 254 are allowed")
        devt_end = layout.DEVICE_TABLE_OFFSET + layout.DEVICE_SLOT_SIZE * nblobs
        self._check_table("blob table", ext.blob_table_offset, ext.blob_table_size, layout.EROFS_BLOCK_SIZE)
        if nblobs and ext.blob_table_offset < devt_end:
            raise FormatError("blob table overlaps the device table")
        self._check_table(
            "chunk table",
            ext.chunk_table_offset,
            ext.chunk_table_size,
            layout.EROFS_BLOCK_SIZE,
            layout.CHUNK_TABLE_ENTRY_SIZE,
        )
        self._check_table(
            "prefetch table",
            ext.prefetch_offset,
            ext.prefetch_size,
            layout.PREFETCH_ENTRY_SIZE,
            layout.PREFETCH_ENTRY_SIZE,
        )
        if (
            ext.prefetch_size
            and nblobs
            and ext.prefetch_offset < ext.blob_table_offset + ext.blob_table_size
            and ext.blob_table_offset < ext.prefetch_offset + ext.prefetch_size
        ):
            raise FormatError("prefetch table overlaps the blob table")
        return nblobs

    @staticmethod
    def _check_flags(flags: int) -> None:
        if flags & ~layout.RAFS_KNOWN_FLAGS:
            raise FormatError(f"unknown RAFS superblock flags {flags & ~layout.RAFS_KNOWN_FLAGS:#x}")
        if (flags & _COMPRESSION_FLAGS).bit_count() != 1:
            raise FormatError(f"flags {flags:#x} must name exactly one compressor")
        if (flags & _HASH_FLAGS).bit_count() != 1:
            raise FormatError(f"flags {flags:#x} must name exactly one digester")

    def _check_table(self, what: str, offset: int, size: int, align: int, unit: int = 1) -> None:
        if size % unit:
            raise FormatError(f"{what} size {size} is not a multiple of {unit}")
        if size == 0:
            return
        if offset % align:
            raise FormatError(f"{what} offset {offset} is not {align}-byte aligned")
        if offset < layout.EROFS_SUPER_OFFSET + layout.SUPER_BLOCK.size + layout.SUPER_BLOCK_EXT.size:
            raise FormatError(f"{what} at {offset} overlaps the superblocks")
        if offset + size > self.size:
            raise FormatError(f"{what} [{offset}, {offset + size}) extends past the end")

    def _blob(self, table_offset: int, i: int) -> BlobInfo:
        (
            raw_id,
            index,
            chunk_size,
            chunk_count,
            compressor,
            digester,
            features,
            csize,
            usize,
            toc_size,
            ci_compressor,
            ci_offset,
            ci_csize,
            ci_usize,
            toc_digest,
            meta_digest,
            meta_size,
            cipher_iv,
            cipher_algo,
            _res,
        ) = layout.BLOB_ENTRY.unpack_from(self.data, table_offset + layout.BLOB_ENTRY_SIZE * i)
        blob_id = _ascii_id(raw_id, f"blob {i} id")
        if index != i:
            raise FormatError(f"blob table entry {i} claims index {index}")
        if chunk_size != self.chunk_size:
            raise FormatError(f"blob {i} chunk size {chunk_size:#x} != {self.chunk_size:#x}")
        if chunk_count > layout.MAX_CHUNKS_PER_BLOB:
            raise FormatError(f"blob {i} has {chunk_count} chunks (max 2^24)")
        if compressor > layout.COMPRESSOR_ID_ZSTD or ci_compressor > layout.COMPRESSOR_ID_ZSTD:
            raise FormatError(f"blob {i} has an unknown compression algorithm")
        if digester > layout.DIGESTER_ID_SHA256:
            raise FormatError(f"blob {i} has an unknown digest algorithm {digester}")
        return BlobInfo(
            blob_id=blob_id,
            chunk_size=chunk_size,
            chunk_count=chunk_count,
            compressor=compressor,
            digester=digester,
            features=features,
            compressed_size=csize,
            uncompressed_size=usize,
            blob_toc_size=toc_size,
            ci_compressor=ci_compressor,
            ci_offset=ci_offset,
            ci_compressed_size=ci_csize,
            ci_uncompressed_size=ci_usize,
            blob_toc_digest=toc_digest,
            blob_meta_digest=meta_digest,
            blob_meta_size=meta_size,
            cipher_iv=cipher_iv,
            cipher_algo=cipher_algo,
        )

    def _device(self, i: int) -> DeviceSlot:
        raw_id, blocks, mapped, _res = layout.DEVICE_SLOT.unpack_from(
            self.data, layout.DEVICE_TABLE_OFFSET + layout.DEVICE_SLOT_SIZE * i
        )
        return DeviceSlot(_ascii_id(raw_id, f"device slot {i} tag"), blocks, mapped)

    def _chunk_entry(self, offset: int, nblobs: int) -> ChunkRef:
        (digest, blob_index, flags, csize, usize, coff, uoff, file_offset, index, crc32) = (
            layout.CHUNK_TABLE_ENTRY.unpack_from(self.data, offset)
        )
        if blob_index >= nblobs:
            raise FormatError(f"chunk table entry at {offset} names blob {blob_index} of {nblobs}")
        return ChunkRef(digest, blob_index, index, coff, csize, uoff, usize, flags, crc32, file_offset)

    # -- inodes -------------------------------------------------------------------------------

    def _claim(self, start: int, end: int, nid: int, *, continuing: bool = False) -> None:
        """Mark the 32-byte slots of [start, end) as the body of inode ``nid``.

        Called before the bytes are parsed, so no byte is parsed for two inodes (bounds the
        work by the image size). ``continuing``: the slot holding ``start`` is already ours.
        """
        first = -(-start // _SLOT) if continuing else start // _SLOT
        last = -(-end // _SLOT)
        if first >= last:
            return
        if self.claimed.find(1, first, last) != -1:
            raise FormatError(f"inode {nid} overlaps another inode")
        self.claimed[first:last] = b"\x01" * (last - first)

    def _inode(self, nid: int) -> tuple[InodeRecord, Inode, int]:
        """Parse the inode at ``nid``: (record, inode, absolute end of inode + xattrs)."""
        at = self.meta_addr + _SLOT * nid
        if at + layout.EROFS_INODE_COMPACT_SIZE > self.size:
            raise FormatError(f"nid {nid} points outside the bootstrap")
        i_format = int.from_bytes(self.data[at : at + 2], "little")
        if i_format & ~0xF:
            raise FormatError(f"inode {nid} has unknown i_format bits {i_format:#x}")
        data_layout = i_format >> 1
        if data_layout not in (
            layout.EROFS_INODE_FLAT_PLAIN,
            layout.EROFS_INODE_FLAT_INLINE,
            layout.EROFS_INODE_CHUNK_BASED,
        ):
            raise FormatError(f"inode {nid} has unsupported data layout {data_layout}")
        compact = not i_format & layout.EROFS_INODE_LAYOUT_EXTENDED
        mtime = nsec = 0
        if compact:
            (_f, icount, mode, nlink, size, mtime_rel, i_u, ino, uid, gid, _r2) = (
                layout.INODE_COMPACT.unpack_from(self.data, at)
            )
            mtime = self.build_time + mtime_rel
            isz = layout.EROFS_INODE_COMPACT_SIZE
        else:
            if at + layout.EROFS_INODE_EXTENDED_SIZE > self.size:
                raise FormatError(f"nid {nid} points outside the bootstrap")
            (_f, icount, mode, _r, size, i_u, ino, uid, gid, mtime, nsec, nlink, _r2) = (
                layout.INODE_EXTENDED.unpack_from(self.data, at)
            )
            if mtime >= 1 << 63:  # a signed 64-bit time, as the kernel reads it
                mtime -= 1 << 64
            isz = layout.EROFS_INODE_EXTENDED_SIZE
        if stat.S_IFMT(mode) not in _KNOWN_MODE_TYPES:
            raise FormatError(f"inode {nid} has unknown file type in mode {mode:#o}")
        end = at + isz + xattr.size_of_icount(icount)
        if end > self.size:
            raise FormatError(f"inode {nid} and its xattrs extend past the end of the bootstrap")
        self._claim(at, end, nid)
        xattrs = xattr.decode_xattrs(self.data, at + isz, icount)
        record = InodeRecord(nid, compact, data_layout, mode, size, i_u, ino, nlink, icount)
        inode = Inode(mode=mode, uid=uid, gid=gid, mtime=mtime, mtime_nsec=nsec, xattrs=xattrs)
        return record, inode, end

    def _flat_data(self, record: InodeRecord, end: int) -> tuple[bytes, int]:
        """Data of a FLAT_PLAIN / FLAT_INLINE inode (EROFS flat mapping); returns (data, end)."""
        bs, size = self.bs, record.size
        if record.layout == layout.EROFS_INODE_CHUNK_BASED:
            raise FormatError(f"inode {record.nid} (mode {record.mode:#o}) cannot be chunk-based")
        if size > self.size:
            raise FormatError(f"inode {record.nid} claims {size} bytes, more than the image")
        inline = record.layout == layout.EROFS_INODE_FLAT_INLINE and size > 0
        nblocks = -(-size // bs)
        plain = (nblocks - 1 if inline else nblocks) * bs
        plain = min(plain, size)
        out = b""
        if plain:
            start = record.i_u * bs
            if start + plain > self.size:
                raise FormatError(f"data of inode {record.nid} lies outside the bootstrap")
            # Each data block belongs to one inode (true for every nydus layout); this bounds
            # the bytes parsed by the image size.
            first, last = record.i_u, -(-(start + plain) // bs)
            if self.data_blocks.find(1, first, last) != -1:
                raise FormatError(f"data blocks of inode {record.nid} are shared with another inode")
            self.data_blocks[first:last] = b"\x01" * (last - first)
            out = self.data[start : start + plain]
        if inline:
            tail = size - plain
            if end % bs + tail > bs:
                raise FormatError(f"inline data of inode {record.nid} crosses a block boundary")
            if end + tail > self.size:
                raise FormatError(f"inline data of inode {record.nid} lies outside the bootstrap")
            self._claim(end, end + tail, record.nid, continuing=True)
            out += self.data[end : end + tail]
            end += tail
        return out, end

    def _chunks(self, record: InodeRecord, end: int) -> tuple[list[ChunkRef], int]:
        nid = record.nid
        if record.layout != layout.EROFS_INODE_CHUNK_BASED:
            raise FormatError(f"regular file {nid} is not chunk-based (layout {record.layout})")
        fmt = record.i_u
        if fmt & ~0x3F or not fmt & layout.EROFS_CHUNK_FORMAT_INDEXES:
            raise FormatError(f"regular file {nid} has unsupported chunk format {fmt:#x}")
        if (fmt & 0x1F) + self.blkszbits < self.chunk_size.bit_length() - 1:
            raise FormatError(f"regular file {nid} chunk format {fmt:#x} is below the chunk size")
        count = -(-record.size // self.chunk_size)
        at = layout.round_up(end, layout.CHUNK_INDEX_SIZE)
        stop = at + layout.CHUNK_INDEX_SIZE * count
        if stop > self.size:
            raise FormatError(f"chunk indexes of file {nid} ({count}) extend past the end")
        self._claim(end, stop, nid, continuing=True)
        chunks: list[ChunkRef] = []
        for i, (lo, hi, blk) in enumerate(
            layout.CHUNK_INDEX.iter_unpack(self.data[at:stop]) if count else ()
        ):
            device = hi & 0xFF
            index = lo | (hi >> 8) << 16
            if not 1 <= device <= self.nblobs:
                raise FormatError(f"chunk {i} of file {nid} names device {device}")
            chunk = self.chunks_by_key.get((device - 1, index))
            if chunk is None:
                raise FormatError(
                    f"chunk {i} of file {nid} (blob {device - 1}, ci {index}) is missing from the chunk table"
                )
            if chunk.uncompressed_offset != blk * self.bs:
                raise FormatError(
                    f"chunk {i} of file {nid} block {blk} disagrees with the chunk table "
                    f"offset {chunk.uncompressed_offset}"
                )
            chunks.append(chunk.at_file_offset(i * self.chunk_size))
        return chunks, stop

    def _load(self, nid: int) -> tuple[InodeRecord, Inode, bytes]:
        """Parse inode ``nid`` with its own data; returns dirent bytes for directories."""
        record, inode, end = self._inode(nid)
        mode = record.mode
        payload = b""
        if stat.S_ISREG(mode):
            inode.size = record.size
            inode.chunks, end = self._chunks(record, end)
        elif stat.S_ISDIR(mode):
            if record.size < 2 * layout.DIRENT_SIZE:
                raise FormatError(f"directory {nid} is {record.size} bytes, too small for . and ..")
            payload, end = self._flat_data(record, end)
        elif stat.S_ISLNK(mode):
            payload, end = self._flat_data(record, end)
            inode.symlink_target = payload
            inode.size = len(payload)
        else:
            if record.layout == layout.EROFS_INODE_CHUNK_BASED:
                raise FormatError(f"special file {nid} cannot be chunk-based")
            inode.rdev = record.i_u
        self.records[nid] = record
        return record, inode, payload

    # -- directories --------------------------------------------------------------------------

    def _dirents(self, nid: int, payload: bytes) -> list[tuple[bytes, int, int]]:
        """(name, nid, file_type) of every dirent in order; validates order and names."""
        bs = self.bs
        out: list[tuple[bytes, int, int]] = []
        for block_start in range(0, len(payload), bs):
            block = payload[block_start : block_start + bs]
            if len(block) < layout.DIRENT_SIZE:
                raise FormatError(f"directory {nid} has a truncated dirent block")
            first_nameoff = int.from_bytes(block[8:10], "little")
            if (
                first_nameoff < layout.DIRENT_SIZE
                or first_nameoff % layout.DIRENT_SIZE
                or first_nameoff > len(block)
            ):
                raise FormatError(f"directory {nid} has bad first name offset {first_nameoff}")
            count = first_nameoff // layout.DIRENT_SIZE
            heads = list(layout.DIRENT.iter_unpack(block[:first_nameoff]))
            for j, (child_nid, nameoff, ftype, _res) in enumerate(heads):
                if j + 1 < count:
                    name_end = heads[j + 1][1]
                    if name_end > len(block):
                        raise FormatError(f"directory {nid} name offset {name_end} overruns")
                    name = block[nameoff:name_end]
                else:
                    name = block[nameoff:].split(b"\0", 1)[0]  # strnlen: trailing NULs pad
                if nameoff < first_nameoff or not name or len(name) > _MAX_NAME_LEN:
                    raise FormatError(f"directory {nid} has a bad name at offset {nameoff}")
                if b"/" in name or b"\0" in name:
                    raise FormatError(f"directory {nid} has an invalid name {name!r}")
                if out and out[-1][0] >= name:
                    raise FormatError(
                        f"directory {nid} names are not in strictly ascending byte order "
                        f"({out[-1][0]!r} before {name!r})"
                    )
                out.append((name, child_nid, ftype))
        return out

    def _walk(self, root_nid: int) -> Node:
        record, inode, payload = self._load(root_nid)
        if not stat.S_ISDIR(record.mode):
            raise FormatError(f"root nid {root_nid} is not a directory")
        root = Node(b"/", inode, {})
        self.node_nids[id(root)] = root_nid
        seen_dirs = {root_nid}
        # (directory node, its nid, its parent's nid, its dirent bytes); bounded because every
        # directory nid is pushed once and its blocks are exclusively owned.
        stack = [(root, root_nid, root_nid, payload)]
        while stack:
            node, nid, parent_nid, payload = stack.pop()
            children = node.children
            assert children is not None
            dots = 0
            for name, child_nid, ftype in self._dirents(nid, payload):
                if name == b"." or name == b"..":
                    want = nid if name == b"." else parent_nid
                    if child_nid != want or ftype != layout.EROFS_FT_DIR:
                        raise FormatError(f"directory {nid} entry {name!r} points to {child_nid}")
                    dots += 1
                    continue
                if ftype == layout.EROFS_FT_DIR:
                    child, child_payload = self._subdirectory(nid, name, child_nid, seen_dirs)
                    stack.append((child, child_nid, nid, child_payload))
                else:
                    child = self._leaf(nid, name, child_nid, ftype)
                children[name] = child
                self.node_nids[id(child)] = child_nid
            if dots != 2:
                raise FormatError(f"directory {nid} lacks '.' or '..'")
        return root

    def _subdirectory(self, nid: int, name: bytes, child_nid: int, seen_dirs: set[int]) -> tuple[Node, bytes]:
        """Directory ``child_nid`` named ``name`` in directory ``nid``: its node and dirents."""
        if child_nid in seen_dirs:
            raise FormatError(
                f"directory {nid} entry {name!r} links directory {child_nid} again "
                "(cycle or hardlinked directory)"
            )
        seen_dirs.add(child_nid)
        if child_nid in self.records:
            raise FormatError(f"entry {name!r} calls non-directory {child_nid} a dir")
        rec, child_inode, child_payload = self._load(child_nid)
        if not stat.S_ISDIR(rec.mode):
            raise FormatError(f"entry {name!r} of {nid}: inode {child_nid} is no dir")
        return Node(name, child_inode, {}), child_payload

    def _leaf(self, nid: int, name: bytes, child_nid: int, ftype: int) -> Node:
        """A non-directory entry; hardlinks share the one :class:`Inode` of their nid."""
        child_inode = self.inodes.get(child_nid)
        if child_inode is None:
            if child_nid in self.records:  # parsed as a directory
                raise FormatError(f"entry {name!r} of {nid} links directory {child_nid}")
            _rec, child_inode, _ = self._load(child_nid)
            self.inodes[child_nid] = child_inode
        if file_type_of(child_inode.mode) != ftype:
            raise FormatError(
                f"entry {name!r} of directory {nid} has file type {ftype} but inode "
                f"{child_nid} has mode {child_inode.mode:#o}"
            )
        return Node(name, child_inode)
