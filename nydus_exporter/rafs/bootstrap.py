"""The RAFS v6 bootstrap writer: metadata allocation ([format §2.15]) and dump ([format §2.16]).

:func:`plan_layout` reproduces nydus-image's placement of every inode, inline tail, chunk-index
array and directory block exactly (it matches the 3517 inodes of a real image); it only needs
the tree. :func:`write_bootstrap` computes everything else (inode numbers, nlink, chunk formats,
dirent blocks, chunk table, device and blob tables) and assembles the image in one bytearray.

Offsets in a plan are "relative": the root inode sits at 4096 and everything is shifted by
``meta_addr`` when dumped, so ``nid = relative_offset / 32`` and a data block address is
``(meta_addr + relative_offset) / bs``.
"""

from __future__ import annotations

import bisect
import collections
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from nydus_exporter.errors import UnsupportedEntryError
from nydus_exporter.rafs import codecs, layout, xattr
from nydus_exporter.rafs.model import BlobInfo, ChunkRef, Inode, Node

_SLOT = layout.EROFS_INODE_SLOT
_INODE_SIZE = layout.EROFS_INODE_EXTENDED_SIZE
_DOT = b"."
_DOTDOT = b".."
MAX_NAME_LEN = 255  # EROFS_NAME_LEN
_CI_INDEX_LIMIT = 1 << 24  # 24 bits split over c_blob_addr_lo and the high byte of _hi ([format §2.11])
_SUPPORTED_BLOCK_SIZES = (512, layout.EROFS_BLOCK_SIZE)


@dataclass(slots=True, eq=False)
class NodePlan:
    """Where one tree node lands in the metadata ([format §2.15])."""

    node: Node
    index: int  # sequential inode index; root = 1 (i_ino of the first hardlink member)
    parent: NodePlan | None  # None for the root
    offset: int = 0  # relative inode offset; nid = offset // 32
    layout: int = layout.EROFS_INODE_FLAT_PLAIN
    data_offset: int = 0  # dirs/symlinks: nydus "dirents_offset" (relative); else 0
    data_size: int = 0  # dirs: dirent bytes; symlinks: target length; regular: file size
    xattr_size: int = 0
    ino: int = 0  # i_ino written: own index, or the first hardlink member's index
    first: NodePlan | None = None  # first member of this node's hardlink group (None: itself)
    children: list[NodePlan] = field(default_factory=list)  # dirs: in byte order of names
    dirent_names: list[bytes] = field(default_factory=list)  # dirs: names incl. "." and ".."

    @property
    def nid(self) -> int:
        return self.offset // _SLOT

    @property
    def inode_size(self) -> int:
        """Inode plus inline xattrs ("isz")."""
        return _INODE_SIZE + self.xattr_size


@dataclass(slots=True)
class LayoutPlan:
    """The [format §2.15] allocation of a whole tree."""

    block_size: int
    nodes: list[NodePlan]  # in index order: nodes[0] is the root (index 1)
    end: int  # the allocation cursor after the last placement (relative)
    _by_node: dict[int, NodePlan]

    @property
    def inos(self) -> int:
        """s_inos: every tree node, hardlink duplicates included."""
        return len(self.nodes)

    def of(self, node: Node) -> NodePlan:
        """The plan entry of ``node`` (by identity)."""
        return self._by_node[id(node)]

    def raw_blkaddr(self, plan: NodePlan, meta_addr: int) -> int:
        """``i_u`` of a directory or symlink once the metadata starts at ``meta_addr``."""
        return (meta_addr + plan.data_offset) // self.block_size


class _Allocator:
    """nydus's BootstrapContext: a cursor plus FIFO queues of partly used blocks ([format §2.15])."""

    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.off = layout.EROFS_BLOCK_SIZE  # root at relative 4096 -> nid 128 ([format §2.1])
        self.avail: list[collections.deque[int]] = [
            collections.deque() for _ in range(layout.EROFS_BLOCK_SIZE // _SLOT)
        ]
        self.nonempty = 0  # bit i set <=> avail[i] non-empty (finds the bucket in O(1))

    def align(self, alignment: int) -> None:
        self.off = layout.round_up(self.off, alignment)

    def append_avail(self, offset: int) -> None:
        rem = offset % self.bs
        if rem:
            bucket = (self.bs - rem) // _SLOT
            self.avail[bucket].append(offset - rem)
            self.nonempty |= 1 << bucket

    def alloc_avail(self, size: int) -> int:
        """Offset inside a partly used block with room for ``size`` bytes, else 0."""
        if size >= self.bs:
            return 0
        lo = -(-size // _SLOT)
        hi = -(-self.bs // _SLOT)  # buckets lo .. hi-1, smallest sufficient first
        candidates = (self.nonempty >> lo) & ((1 << (hi - lo)) - 1) if hi > lo else 0
        if not candidates:
            return 0
        bucket = lo + (candidates & -candidates).bit_length() - 1
        queue = self.avail[bucket]
        block = queue.popleft()
        if not queue:
            self.nonempty &= ~(1 << bucket)
        offset = block + self.bs - _SLOT * bucket
        self.append_avail(offset + _SLOT * lo)
        return offset

    def place_with_tail(self, plan: NodePlan, dsize: int) -> None:
        """Directories and symlinks: FLAT_INLINE if the tail fits next to the inode ([format §2.15])."""
        bs = self.bs
        isz = plan.inode_size
        tail = dsize % bs
        if tail and isz + tail <= bs:
            offset = self.alloc_avail(isz + tail)
            if offset == 0:
                if bs - self.off % bs < isz + tail:
                    self.append_avail(self.off)
                    self.align(bs)
                offset = self.off
                self.off += isz + tail
            if dsize != tail:
                self.append_avail(self.off)
                self.align(bs)
            plan.layout = layout.EROFS_INODE_FLAT_INLINE
            plan.offset = offset
            plan.data_offset = self.off
            self.off += dsize - tail
        else:
            offset = self.alloc_avail(isz)
            if offset == 0:
                offset = self.off
                self.off += isz
            self.append_avail(self.off)
            self.align(bs)
            plan.layout = layout.EROFS_INODE_FLAT_PLAIN
            plan.offset = offset
            plan.data_offset = self.off
            self.off += dsize
            self.align(bs)

    def place_regular(self, plan: NodePlan, chunk_count: int) -> None:
        total = layout.round_up(plan.inode_size, layout.CHUNK_INDEX_SIZE)
        total += layout.CHUNK_INDEX_SIZE * chunk_count
        offset = self.alloc_avail(total)
        if offset == 0:
            offset = self.off
            self.off += total
        plan.layout = layout.EROFS_INODE_CHUNK_BASED
        plan.offset = offset

    def place_special(self, plan: NodePlan) -> None:
        # Devices, fifos, sockets never reuse partly used blocks (nydus quirk, [format §2.15]).
        plan.layout = layout.EROFS_INODE_FLAT_PLAIN
        plan.offset = self.off
        self.off += plan.inode_size


def _check_name(name: bytes) -> None:
    if not name or name in (_DOT, _DOTDOT) or b"/" in name or b"\0" in name:
        raise UnsupportedEntryError(f"invalid file name {name!r}")
    if len(name) > MAX_NAME_LEN:
        raise UnsupportedEntryError(f"file name {name[:32]!r}... is {len(name)} bytes (max 255)")


def dirent_size(names: Sequence[bytes], block_size: int) -> int:
    """Directory ``i_size`` for ``names`` in dirent order, "." and ".." included ([format §2.8])."""
    size = 0
    for name in names:
        cost = layout.DIRENT_SIZE + len(name)
        if size % block_size + cost > block_size:
            size = layout.round_up(size, block_size)
        size += cost
    return size


def plan_layout(root: Node, *, block_size: int = layout.EROFS_BLOCK_SIZE) -> LayoutPlan:
    """Assign inode indexes and place every inode and data block exactly like nydus ([format §2.15]).

    Nodes sharing one Inode object (hardlink members) get one inode: the first member in index
    order is placed, later members reuse its offset and i_ino.
    """
    if block_size not in _SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"block size {block_size} is not 512 or 4096")
    if not root.inode.is_dir or root.children is None:
        raise ValueError("the root of a bootstrap tree must be a directory")
    return _Planner(block_size).plan(root)


class _Planner:
    """The state of one :func:`plan_layout`: the allocator and the inodes placed so far."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.alloc = _Allocator(block_size)
        self.nodes: list[NodePlan] = []
        self.by_node: dict[int, NodePlan] = {}
        self.first_of_inode: dict[int, NodePlan] = {}
        self.seen_dir_inodes: set[int] = set()

    def plan(self, root: Node) -> LayoutPlan:
        root_plan = NodePlan(root, 1, None, ino=1)
        self.nodes.append(root_plan)
        self.by_node[id(root)] = root_plan
        self.seen_dir_inodes.add(id(root.inode))
        stack = [root_plan]
        while stack:
            subdirs = self._directory(stack.pop())
            stack.extend(reversed(subdirs))  # depth-first, subdirectories in name order
        return LayoutPlan(self.block_size, self.nodes, self.alloc.off, self.by_node)

    def _directory(self, dplan: NodePlan) -> list[NodePlan]:
        """Place a directory, then its children (in name order); returns its subdirectories."""
        children = dplan.node.children or {}
        names = sorted(children)
        dirent_names = list(names)
        bisect.insort(dirent_names, _DOT)
        bisect.insort(dirent_names, _DOTDOT)
        dplan.dirent_names = dirent_names
        dplan.data_size = dirent_size(dirent_names, self.block_size)
        dplan.xattr_size = xattr.xattr_size(dplan.node.inode.xattrs)
        self.alloc.place_with_tail(dplan, dplan.data_size)
        self.alloc.align(_SLOT)
        subdirs: list[NodePlan] = []
        for name in names:
            _check_name(name)
            child = children[name]
            plan = NodePlan(child, len(self.nodes) + 1, dplan)
            plan.ino = plan.index
            self.nodes.append(plan)
            self.by_node[id(child)] = plan
            dplan.children.append(plan)
            if self._child(plan, name):
                subdirs.append(plan)
        return subdirs

    def _child(self, plan: NodePlan, name: bytes) -> bool:
        """Place one child; True for a directory (placed later, depth-first)."""
        child = plan.node
        inode = child.inode
        if inode.file_type == layout.EROFS_FT_UNKNOWN:
            raise UnsupportedEntryError(f"{name!r} has unknown file type in mode {inode.mode:#o}")
        if inode.is_dir:
            if child.children is None:
                raise ValueError(f"directory {name!r} has no children dict")
            if id(inode) in self.seen_dir_inodes:
                raise ValueError(f"directory {name!r} shares its Inode with another node")
            self.seen_dir_inodes.add(id(inode))
            return True
        first = self.first_of_inode.get(id(inode))
        if first is not None:  # a later hardlink member: same inode, no allocation
            plan.first = first
            plan.ino = first.index
            plan.offset = first.offset
            plan.layout = first.layout
            plan.data_offset = first.data_offset
            plan.data_size = first.data_size
            plan.xattr_size = first.xattr_size
            return False
        self.first_of_inode[id(inode)] = plan
        plan.xattr_size = xattr.xattr_size(inode.xattrs)
        if inode.is_reg:
            plan.data_size = inode.size
            self.alloc.place_regular(plan, len(inode.chunks))
        elif inode.is_symlink:
            plan.data_size = len(inode.symlink_target)
            self.alloc.place_with_tail(plan, plan.data_size)
        else:
            self.alloc.place_special(plan)
        self.alloc.align(_SLOT)
        return False


# ---------------------------------------------------------------------------------------------
# Dump


def _chunk_format(inode: Inode, chunk_size: int, blkszbits: int) -> int:
    """``i_u`` of a regular file: erofs_inode_chunk_info incl. the continuity trick ([format §2.11])."""
    erofs_chunk = chunk_size
    chunks = inode.chunks
    if inode.size > chunk_size and chunks:
        blob = chunks[0].blob_index
        expected = chunks[0].uncompressed_offset
        continuous = True
        for chunk in chunks:
            if chunk.blob_index != blob or chunk.uncompressed_offset != expected:
                continuous = False
                break
            expected += chunk_size
        if continuous:
            # Page-cache sharing: the kernel maps the whole file as one chunk.
            erofs_chunk = 1 << (inode.size - 1).bit_length()
    bits = erofs_chunk.bit_length() - 1 - blkszbits
    if bits > 0x1F:  # cannot be expressed; keep the plain chunk size
        bits = chunk_size.bit_length() - 1 - blkszbits
    return layout.EROFS_CHUNK_FORMAT_INDEXES | bits


def _check_chunks(inode: Inode, name: bytes, chunk_size: int, nblobs: int, bs: int) -> None:
    expected = -(-inode.size // chunk_size)
    if len(inode.chunks) != expected:
        raise ValueError(
            f"file {name!r} of {inode.size} bytes has {len(inode.chunks)} chunks, "
            f"expected {expected} with chunk size {chunk_size}"
        )
    for chunk in inode.chunks:
        if len(chunk.digest) != 32:
            raise ValueError(f"file {name!r} has a chunk digest of {len(chunk.digest)} bytes, not 32")
        if not 0 <= chunk.blob_index < nblobs:
            raise ValueError(f"file {name!r} references blob {chunk.blob_index} of {nblobs}")
        if not 0 <= chunk.index < _CI_INDEX_LIMIT:
            raise ValueError(f"file {name!r} has chunk ci index {chunk.index} out of range")
        if chunk.uncompressed_offset % bs:
            raise ValueError(
                f"file {name!r} has a chunk at unaligned uncompressed offset {chunk.uncompressed_offset}"
            )


def _check_flags(flags: int) -> None:
    # nydusd refuses unknown bits and wants exactly one compressor and one digester ([format §2.3]).
    compressors = layout.RAFS_COMPRESSION_MASK
    digesters = layout.RAFS_HASH_MASK
    if (
        flags & ~layout.RAFS_KNOWN_FLAGS
        or (flags & compressors).bit_count() != 1
        or (flags & digesters).bit_count() != 1
    ):
        raise ValueError(f"RAFS flags {flags:#x} need one compressor, one digester, no unknown bits")


def _check_blobs(blobs: Sequence[BlobInfo], chunk_size: int, bs: int) -> None:
    if len(blobs) >= layout.MAX_BLOBS:
        raise UnsupportedEntryError(f"{len(blobs)} blobs, RAFS v6 allows at most 254")
    seen: set[str] = set()
    for blob in blobs:
        raw = blob.blob_id.encode("ascii", "strict") if blob.blob_id.isascii() else b""
        if not raw or len(raw) > 64:
            raise ValueError(f"blob id {blob.blob_id!r} is not 1..64 ASCII characters")
        if blob.blob_id in seen:
            raise ValueError(f"blob id {blob.blob_id} appears twice")
        seen.add(blob.blob_id)
        if blob.chunk_size != chunk_size:
            raise ValueError(f"blob {blob.blob_id} has chunk size {blob.chunk_size} != {chunk_size}")
        if blob.uncompressed_size % bs:
            raise ValueError(f"blob {blob.blob_id} uncompressed size is not a multiple of {bs}")


class _Dumper:
    """Writes planned inodes into the image buffer ([format §2.16] step 2)."""

    def __init__(
        self,
        buf: bytearray,
        plan: LayoutPlan,
        meta_addr: int,
        chunk_size: int,
        blkszbits: int,
    ) -> None:
        self.buf = buf
        self.plan = plan
        self.meta_addr = meta_addr
        self.bs = plan.block_size
        self.chunk_size = chunk_size
        self.blkszbits = blkszbits
        self.high = 0  # highest byte written (absolute), the chunk table follows it
        self.chunk_map: dict[tuple[bytes, int], ChunkRef] = {}
        self.nlink: dict[int, int] = collections.Counter(
            id(p.node.inode) for p in plan.nodes if not p.node.inode.is_dir
        )

    def dump_all(self) -> None:
        for p in self.plan.nodes:  # index order == nydus walk_bfs dump order ([format §2.16])
            inode = p.node.inode
            if inode.is_reg:
                self.add_chunks(inode)  # every member inserts, even a repeated hardlink
            if p.first is not None:
                continue  # later hardlink members share the first member's bytes
            if inode.is_dir:
                self.directory(p)
            elif inode.is_reg:
                self.regular(p)
            elif inode.is_symlink:
                self.symlink(p)
            else:
                self.special(p)

    def write(self, at: int, data: bytes) -> None:
        end = at + len(data)
        self.buf[at:end] = data
        if end > self.high:
            self.high = end

    def inode(self, p: NodePlan, size: int, i_u: int, nlink: int) -> int:
        """Write the extended inode and its xattrs; returns the absolute end of both."""
        inode = p.node.inode
        at = self.meta_addr + p.offset
        uid, gid = inode.uid, inode.gid  # the source already zeroed them for --repeatable
        if not (0 <= uid <= 0xFFFFFFFF and 0 <= gid <= 0xFFFFFFFF):
            raise UnsupportedEntryError(f"uid/gid {uid}/{gid} of {p.node.name!r} exceed 32 bits")
        # i_mtime is read by the kernel as a signed 64-bit time: times before 1970 are stored
        # in two's complement (nydus itself never sees them: it takes the unsigned ustar field).
        if not -(1 << 63) <= inode.mtime < 1 << 63 or not 0 <= inode.mtime_nsec < 1_000_000_000:
            raise UnsupportedEntryError(f"mtime of {p.node.name!r} out of range")
        xattrs = xattr.encode_xattrs(inode.xattrs)
        record = layout.INODE_EXTENDED.pack(
            layout.EROFS_INODE_LAYOUT_EXTENDED | (p.layout << 1),
            xattr.icount_of_size(len(xattrs)),
            inode.mode & 0xFFFF,
            0,
            size,
            i_u & 0xFFFFFFFF,
            p.ino,
            uid,
            gid,
            inode.mtime & 0xFFFF_FFFF_FFFF_FFFF,
            inode.mtime_nsec,
            nlink,
            bytes(16),
        )
        self.write(at, record + xattrs)
        return at + len(record) + len(xattrs)

    def data(self, p: NodePlan, data_end: int, payload: bytes) -> None:
        """Dir/symlink data: full blocks at the data offset, the tail inline or after them."""
        base = self.meta_addr + p.data_offset
        if p.layout == layout.EROFS_INODE_FLAT_INLINE:
            full = len(payload) - len(payload) % self.bs
            if full:
                self.write(base, payload[:full])
            self.write(data_end, payload[full:])
        elif payload:
            self.write(base, payload)

    def directory(self, p: NodePlan) -> None:
        nid_of = {_DOT: p.nid, _DOTDOT: (p.parent or p).nid}  # root's ".." is itself
        children = iter(p.children)
        entries: list[tuple[bytes, int, int]] = []
        for name in p.dirent_names:
            if name in (_DOT, _DOTDOT):
                entries.append((name, nid_of[name], layout.EROFS_FT_DIR))
            else:
                child = next(children)
                entries.append((name, child.nid, child.node.inode.file_type))
        payload = _dirent_blocks(entries, self.bs)
        assert len(payload) == p.data_size
        subdirs = sum(1 for c in p.children if c.node.inode.is_dir)
        data_end = self.inode(p, p.data_size, self.plan.raw_blkaddr(p, self.meta_addr), 2 + subdirs)
        self.data(p, data_end, payload)

    def regular(self, p: NodePlan) -> None:
        inode = p.node.inode
        i_u = _chunk_format(inode, self.chunk_size, self.blkszbits)
        end = self.inode(p, inode.size, i_u, self.nlink[id(inode)])
        at = layout.round_up(end, layout.CHUNK_INDEX_SIZE)
        pack = layout.CHUNK_INDEX.pack
        bs = self.bs
        out = bytearray()
        for chunk in inode.chunks:
            index = chunk.index
            device = (chunk.blob_index + 1) & 0xFF
            out += pack(index & 0xFFFF, device | ((index >> 16) & 0xFF) << 8, chunk.uncompressed_offset // bs)
        if out:
            self.write(at, bytes(out))

    def symlink(self, p: NodePlan) -> None:
        inode = p.node.inode
        target = inode.symlink_target
        end = self.inode(p, len(target), self.plan.raw_blkaddr(p, self.meta_addr), self.nlink[id(inode)])
        self.data(p, end, target)

    def special(self, p: NodePlan) -> None:
        inode = p.node.inode
        self.inode(p, 0, inode.rdev, self.nlink[id(inode)])

    def add_chunks(self, inode: Inode) -> None:
        # One entry per (digest, blob); the last reference in dump order wins ([format §2.14]).
        for chunk in inode.chunks:
            self.chunk_map[(chunk.digest, chunk.blob_index + 1)] = chunk


def _dirent_blocks(entries: Sequence[tuple[bytes, int, int]], bs: int) -> bytes:
    """Pack sorted (name, nid, file_type) into dirent blocks; the last block is not padded."""
    out = bytearray()
    block: list[tuple[bytes, int, int]] = []
    used = 0

    def flush(last: bool) -> None:
        count = len(block)
        nameoff = layout.DIRENT_SIZE * count
        heads = bytearray()
        for name, nid, ftype in block:
            heads += layout.DIRENT.pack(nid, nameoff, ftype, 0)
            nameoff += len(name)
        data = heads + b"".join(name for name, _, _ in block)
        out.extend(data)
        if not last:
            out.extend(bytes(bs - len(data)))

    for entry in entries:
        cost = layout.DIRENT_SIZE + len(entry[0])
        if used + cost > bs:
            flush(False)
            block = []
            used = 0
        block.append(entry)
        used += cost
    if block:
        flush(True)
    return bytes(out)


def write_bootstrap(
    root: Node,
    blobs: Sequence[BlobInfo],
    *,
    chunk_size: int,
    flags: int,
    prefetch_root: bool = True,
    prefetch_nids: Sequence[int] | None = None,
    block_size: int = layout.EROFS_BLOCK_SIZE,
) -> bytes:
    """Serialise ``root`` into a RAFS v6 bootstrap ([format §2.1-§2.16]).

    ``flags`` are the RafsSuperFlags the caller decided (compressor, digester,
    EXPLICIT_UID_GID, INLINED_CHUNK_DIGEST, ENCRYPTION_NONE ...); HAS_XATTR is added when any
    inode has xattrs. uid/gid are written as given (a ``--repeatable`` source zeroes them).
    The prefetch table is ``[root nid]`` (what ``--prefetch-policy fs`` with pattern ``/``
    gives, [format §2.6]) unless ``prefetch_root`` is false or explicit ``prefetch_nids`` are given;
    there is none without blobs. ``block_size`` 512 is the tar-tarfs geometry ([format §2.18]).
    """
    codecs.check_chunk_size(chunk_size)
    _check_flags(flags)
    bs = block_size
    blkszbits = bs.bit_length() - 1
    _check_blobs(blobs, chunk_size, bs)
    plan = plan_layout(root, block_size=bs)

    for p in plan.nodes:
        if p.node.inode.is_reg and p.first is None:
            _check_chunks(p.node.inode, p.node.name, chunk_size, len(blobs), bs)
    if any(p.node.inode.xattrs for p in plan.nodes):
        flags |= layout.RAFS_HAS_XATTR

    nblobs = len(blobs)
    if prefetch_nids is None:
        prefetch_nids = [layout.ROOT_NID] if prefetch_root else []
    prefetch = list(prefetch_nids) if nblobs else []  # no blobs, no prefetch table ([format §2.6])
    fmap = _FileMap.of(nblobs, len(prefetch), bs)
    if not all(0 < nid <= 0xFFFFFFFF for nid in prefetch):
        raise ValueError(f"prefetch nids {prefetch} do not fit the u32 table")

    buf = bytearray(fmap.meta_addr + layout.round_up(plan.end, layout.EROFS_BLOCK_SIZE))
    dumper = _Dumper(buf, plan, fmap.meta_addr, chunk_size, blkszbits)
    dumper.dump_all()
    chunk_table_offset = layout.round_up(max(dumper.high, layout.EROFS_BLOCK_SIZE), layout.EROFS_BLOCK_SIZE)
    del buf[chunk_table_offset:]  # the preallocation covered the whole planned area
    table = _chunk_table(dumper)
    buf += table
    buf += bytes(layout.round_up(len(buf), layout.EROFS_BLOCK_SIZE) - len(buf))

    for i, nid in enumerate(prefetch):
        struct.pack_into("<I", buf, fmap.prefetch_offset + layout.PREFETCH_ENTRY_SIZE * i, nid)
    total_blocks = _write_blob_tables(buf, blobs, bs, fmap.blob_table_offset)

    layout.SUPER_BLOCK.pack_into(
        buf,
        layout.EROFS_SUPER_OFFSET,
        layout.EROFS_SUPER_MAGIC_V1,
        0,
        layout.EROFS_FEATURE_COMPAT_RAFS_V6,
        blkszbits,
        0,
        layout.ROOT_NID,
        plan.inos,
        0,
        0,
        total_blocks,
        fmap.meta_addr // bs,
        0,
        bytes(16),
        bytes(16),
        layout.RAFS_V6_INCOMPAT,
        0,
        nblobs,
        layout.DEVT_SLOTOFF,
        bytes(38),
    )
    layout.SUPER_BLOCK_EXT.pack_into(
        buf,
        layout.EXT_SUPER_OFFSET,
        flags,
        fmap.blob_table_offset,
        fmap.blob_table_size,
        chunk_size,
        chunk_table_offset,
        len(table),
        fmap.prefetch_offset,
        fmap.prefetch_size,
        0,
        bytes(200),
    )
    return bytes(buf)


@dataclass(frozen=True)
class _FileMap:
    """[format §2.1] file map: device table, blob table, prefetch table, then the metadata."""

    blob_table_offset: int
    blob_table_size: int
    prefetch_offset: int
    prefetch_size: int
    meta_addr: int

    @classmethod
    def of(cls, nblobs: int, nprefetch: int, block_size: int) -> _FileMap:
        blob_table_offset = layout.round_up(
            layout.DEVICE_TABLE_OFFSET + layout.DEVICE_SLOT_SIZE * nblobs, layout.EROFS_BLOCK_SIZE
        )
        blob_table_size = layout.BLOB_ENTRY_SIZE * nblobs
        prefetch_offset = blob_table_offset + blob_table_size if nprefetch else 0
        prefetch_size = layout.PREFETCH_ENTRY_SIZE * nprefetch
        if nblobs:
            meta_addr = layout.round_up(
                blob_table_offset + blob_table_size + prefetch_size, layout.EROFS_BLOCK_SIZE
            )
        else:
            meta_addr = 0  # the root sits at 4096, so "meta_addr = root offset - 4096" = 0
        if meta_addr % block_size:
            raise AssertionError("meta_addr must be block aligned")
        return cls(blob_table_offset, blob_table_size, prefetch_offset, prefetch_size, meta_addr)


def _chunk_table(dumper: _Dumper) -> bytes:
    entry = layout.CHUNK_TABLE_ENTRY.pack
    return b"".join(
        entry(
            c.digest,
            c.blob_index,
            c.flags,
            c.compressed_size,
            c.uncompressed_size,
            c.compressed_offset,
            c.uncompressed_offset,
            c.file_offset,
            c.index,
            c.crc32,
        )
        for _, c in sorted(dumper.chunk_map.items(), key=lambda kv: kv[0])
    )


def _write_blob_tables(buf: bytearray, blobs: Sequence[BlobInfo], bs: int, blob_table_offset: int) -> int:
    """The device slots and the blob table; returns the blocks of all blobs."""
    # [format §2.4] device slots: mapped_blkaddr continues after the bootstrap, 512 KiB aligned.
    pos = len(buf)
    total_blocks = 0
    for i, blob in enumerate(blobs):
        blocks = blob.uncompressed_size // bs
        mapped = layout.round_up(pos, layout.MAPPED_BLKADDR_ALIGN) // bs
        pos = (mapped + blocks) * bs
        total_blocks += blocks
        if mapped > 0xFFFFFFFF or total_blocks > 0xFFFFFFFF:
            raise UnsupportedEntryError("blobs too large for 32-bit block addresses")
        blob_id = blob.blob_id.encode("ascii")
        layout.DEVICE_SLOT.pack_into(
            buf,
            layout.DEVICE_TABLE_OFFSET + layout.DEVICE_SLOT_SIZE * i,
            blob_id,
            blocks,
            mapped,
            bytes(56),
        )
        layout.BLOB_ENTRY.pack_into(
            buf,
            blob_table_offset + layout.BLOB_ENTRY_SIZE * i,
            blob_id,
            i,
            blob.chunk_size,
            blob.chunk_count,
            blob.compressor,
            blob.digester,
            blob.features,
            blob.compressed_size,
            blob.uncompressed_size,
            blob.blob_toc_size,
            blob.ci_compressor,
            blob.ci_offset,
            blob.ci_compressed_size,
            blob.ci_uncompressed_size,
            blob.blob_toc_digest,
            blob.blob_meta_digest,
            blob.blob_meta_size,
            blob.cipher_iv,
            blob.cipher_algo,
            bytes(36),
        )
    return total_blocks
