"""Write generated trees, read them back, and check them with fsck.erofs and the Linux kernel.

The generator builds, besides the tree, the uncompressed blob images (each chunk's bytes at
its uncompressed offset, [format §7.3]), so the external oracles see real file contents: fsck.erofs
--extract and a kernel EROFS mount must return exactly the bytes we generated.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nydus_exporter.errors import UnsupportedEntryError
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.bootstrap import write_bootstrap
from nydus_exporter.rafs.bootstrap_reader import Bootstrap, read_bootstrap
from nydus_exporter.rafs.model import BlobInfo, ChunkRef, Inode, Node, walk
from tests.conftest import require

CHUNK = 4096  # the smallest chunk size keeps blob images small and files multi-chunk
BASE_FLAGS = (
    layout.RAFS_COMPRESSION_ZSTD
    | layout.RAFS_HASH_BLAKE3
    | layout.RAFS_EXPLICIT_UID_GID
    | layout.RAFS_ENCRYPTION_NONE
)
SPECIAL_NAMES = [
    b"-x",
    b"!x",
    b"+x",
    b".-x",
    b"..x",
    b"#",
    "é".encode() * 127 + b"x",  # 255 bytes of UTF-8
    b"z" * 255,
]


@dataclass(repr=False)
class Image:
    """A generated tree with the blob images its chunks live in."""

    root: Node
    blobs: list[BlobInfo] = field(default_factory=list)
    devices: list[bytearray] = field(default_factory=list)
    contents: dict[int, bytes] = field(default_factory=dict)  # id(Inode) -> file bytes

    @property
    def flags(self) -> int:
        return BASE_FLAGS | (layout.RAFS_INLINED_CHUNK_DIGEST if self.blobs else 0)

    def write(self) -> bytes:
        return write_bootstrap(self.root, self.blobs, chunk_size=CHUNK, flags=self.flags)

    def __repr__(self) -> str:  # hypothesis prints failing examples; keep it readable
        lines = [f"Image({len(self.blobs)} blobs)"]
        for path, node in walk(self.root):
            inode = node.inode
            lines.append(
                f"  {path!r} mode={inode.mode:o} size={inode.size} chunks="
                f"{[(c.blob_index, c.index, c.uncompressed_offset) for c in inode.chunks]} "
                f"target={inode.symlink_target[:20]!r} xattrs={sorted(inode.xattrs)} id={id(inode)}"
            )
        return "\n".join(lines)


class ChunkFactory:
    """Allocates chunks in blobs like the builder ([format §3.2]): dedup by digest, 4 KiB aligned."""

    def __init__(self, image: Image, nblobs: int) -> None:
        self.image = image
        self.cursors = [0] * nblobs
        self.counts = [0] * nblobs
        self.known: dict[tuple[int, bytes], ChunkRef] = {}
        self.by_size: dict[int, list[tuple[ChunkRef, bytes]]] = {}
        image.devices.extend(bytearray() for _ in range(nblobs))

    def new(self, blob: int, piece: bytes, gap_blocks: int) -> ChunkRef:
        digest = blake3.blake3(piece).digest()
        known = self.known.get((blob, digest))
        if known is not None:
            return known
        self.cursors[blob] += 4096 * gap_blocks  # a hole breaks the continuity optimisation
        offset = self.cursors[blob]
        device = self.image.devices[blob]
        device.extend(bytes(offset + len(piece) - len(device)))
        device[offset : offset + len(piece)] = piece
        self.cursors[blob] = layout.round_up(offset + len(piece), 4096)
        chunk = ChunkRef(
            digest=digest,
            blob_index=blob,
            index=self.counts[blob],
            compressed_offset=offset // 2,
            compressed_size=len(piece),
            uncompressed_offset=offset,
            uncompressed_size=len(piece),
            flags=layout.CHUNK_FLAG_HAS_CRC32,
            crc32=google_crc32c.value(piece),
        )
        self.counts[blob] += 1
        self.known[(blob, digest)] = chunk
        self.by_size.setdefault(len(piece), []).append((chunk, piece))
        return chunk

    def finish(self) -> None:
        for i, cursor in enumerate(self.cursors):
            size = max(cursor, 4096)
            self.image.devices[i].extend(bytes(size - len(self.image.devices[i])))
            self.image.blobs.append(
                BlobInfo(
                    blob_id=f"{i:02x}" * 32,
                    chunk_size=CHUNK,
                    chunk_count=self.counts[i],
                    features=0x7000_0021,
                    compressed_size=cursor // 2 + 1000,
                    uncompressed_size=size,
                    ci_offset=cursor // 2,
                    ci_compressed_size=16 * self.counts[i],
                    ci_uncompressed_size=16 * self.counts[i],
                )
            )


def valid_name(name: bytes) -> bool:
    return name not in (b".", b"..") and b"/" not in name and b"\0" not in name and len(name) <= 255


NAME_BYTES = [b for b in range(1, 256) if b != ord("/")]
names = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.lists(st.sampled_from(NAME_BYTES), min_size=1, max_size=12).map(bytes).filter(valid_name),
    st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=10)
    .map(str.encode)
    .filter(valid_name),
)
xattr_names = st.one_of(
    st.binary(min_size=1, max_size=20).map(lambda s: b"user." + s),
    st.binary(min_size=1, max_size=20).map(lambda s: b"trusted." + s),
    st.binary(min_size=1, max_size=20).map(lambda s: b"security." + s),
)


@st.composite
def inode_attrs(draw: st.DrawFn, kind: int) -> Inode:
    return Inode(
        mode=kind | draw(st.integers(0, 0o7777)),
        uid=draw(st.integers(0, 2**32 - 1)),
        gid=draw(st.integers(0, 2**32 - 1)),
        mtime=draw(st.integers(0, 2**40)),
        mtime_nsec=draw(st.integers(0, 999_999_999)),
        xattrs=draw(st.dictionaries(xattr_names, st.binary(max_size=40), max_size=3)),
    )


@st.composite
def images(draw: st.DrawFn, max_entries: int = 40) -> Image:
    nblobs = draw(st.integers(0, 3))
    root = Node.directory(b"/", draw(inode_attrs(stat.S_IFDIR)))
    image = Image(root)
    chunks = ChunkFactory(image, nblobs)
    dirs = [root]
    linkable: list[Inode] = []
    for _ in range(draw(st.integers(0, max_entries))):
        parent = draw(st.sampled_from(dirs))
        assert parent.children is not None
        name = draw(names)
        if name in parent.children:
            continue
        kind = draw(st.sampled_from(["dir", "file", "file", "symlink", "chr", "blk", "fifo", "sock", "link"]))
        if kind == "link" and linkable:
            parent.children[name] = Node(name, draw(st.sampled_from(linkable)))
            continue
        if kind == "dir":
            node = Node.directory(name, draw(inode_attrs(stat.S_IFDIR)))
            dirs.append(node)
        elif kind in ("file", "link"):
            inode = draw(inode_attrs(stat.S_IFREG))
            if nblobs:
                add_content(draw, chunks, inode, nblobs)
            image.contents[id(inode)] = b"".join(chunks_content(image, c) for c in inode.chunks)
            node = Node(name, inode)
        elif kind == "symlink":
            target = draw(
                st.one_of(
                    st.lists(st.integers(1, 255), min_size=1, max_size=64).map(bytes),
                    st.integers(4000, 6000).map(lambda n: b"L" * n),  # > 4096: full block + tail
                )
            )
            inode = draw(inode_attrs(stat.S_IFLNK))
            inode.symlink_target, inode.size = target, len(target)
            node = Node(name, inode)
        else:
            ftype = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}.get(kind, stat.S_IFSOCK)
            inode = draw(inode_attrs(ftype))
            if kind in ("chr", "blk"):
                inode.rdev = layout.encode_rdev(draw(st.integers(0, 4095)), draw(st.integers(0, 2**20 - 1)))
            node = Node(name, inode)
        parent.children[name] = node
        if not node.inode.is_dir:
            linkable.append(node.inode)
    chunks.finish()
    return image


def add_content(draw: st.DrawFn, chunks: ChunkFactory, inode: Inode, nblobs: int) -> None:
    size = draw(st.integers(0, 4 * CHUNK + 100))
    rng = random.Random(draw(st.integers(0, 2**32)))
    blob = draw(st.integers(0, nblobs - 1))
    inode.size = size
    for i in range(-(-size // CHUNK)):
        length = min(CHUNK, size - i * CHUNK)
        how = draw(st.sampled_from(["new", "new", "new", "gap", "other-blob", "dedup"]))
        same_size = chunks.by_size.get(length)
        if how == "dedup" and same_size:
            chunk = draw(st.sampled_from(same_size))[0]
        else:
            target = draw(st.integers(0, nblobs - 1)) if how == "other-blob" else blob
            chunk = chunks.new(target, rng.randbytes(length), 1 if how == "gap" else 0)
        inode.chunks.append(chunk.at_file_offset(i * CHUNK))


def chunks_content(image: Image, chunk: ChunkRef) -> bytes:
    device = image.devices[chunk.blob_index]
    return bytes(device[chunk.uncompressed_offset : chunk.uncompressed_offset + chunk.uncompressed_size])


# -------------------------------------------------------------------------------------------
# Comparison helpers


def sequential_indexes(root: Node) -> dict[int, int]:
    """[format §2.15] index assignment: root 1; per directory its children in byte order, then the
    subdirectories depth-first. Returns id(node) -> index."""
    out = {id(root): 1}

    def visit(directory: Node) -> None:
        subdirs = []
        for child in directory.sorted_children():
            out[id(child)] = len(out) + 1
            if child.inode.is_dir:
                subdirs.append(child)
        for sub in subdirs:
            visit(sub)

    visit(root)
    return out


def chunk_tuple(c: ChunkRef) -> tuple[object, ...]:
    return (
        c.digest,
        c.blob_index,
        c.index,
        c.compressed_offset,
        c.compressed_size,
        c.uncompressed_offset,
        c.uncompressed_size,
        c.flags,
        c.crc32,
        c.file_offset,
    )


def assert_same_tree(want: Node, got: Node) -> None:
    inode_map: dict[int, int] = {}
    members: dict[int, int] = {}
    for _, node in walk(want):
        members[id(node.inode)] = members.get(id(node.inode), 0) + 1
    pairs = [(b"/", want, got)]
    while pairs:
        path, a, b = pairs.pop()
        x, y = a.inode, b.inode
        assert (x.mode, x.uid, x.gid, x.mtime, x.mtime_nsec) == (
            y.mode,
            y.uid,
            y.gid,
            y.mtime,
            y.mtime_nsec,
        ), path
        assert x.xattrs == y.xattrs, path
        if not x.is_dir:
            assert x.size == y.size, path
            assert x.symlink_target == y.symlink_target, path
            assert [chunk_tuple(c) for c in x.chunks] == [chunk_tuple(c) for c in y.chunks], path
            if stat.S_ISCHR(x.mode) or stat.S_ISBLK(x.mode):
                assert x.rdev == y.rdev, path
            # Hardlink members share an Inode on both sides, one-to-one.
            assert inode_map.setdefault(id(x), id(y)) == id(y), path
        assert sorted(a.children or {}) == sorted(b.children or {}), path
        for name, child in (a.children or {}).items():
            assert (b.children or {})[name].name == name
            pairs.append((path + b"/" + name, child, (b.children or {})[name]))
    assert len(set(inode_map.values())) == len(inode_map)


def check_bootstrap(image: Image, data: bytes) -> Bootstrap:
    """Read ``data`` back and compare everything with the generated image."""
    assert len(data) % 4096 == 0
    boot = read_bootstrap(data)
    nodes = list(walk(image.root))
    has_xattr = any(node.inode.xattrs for _, node in nodes)
    assert boot.flags == image.flags | (layout.RAFS_HAS_XATTR if has_xattr else 0)
    assert (boot.chunk_size, boot.block_size, boot.root_nid) == (CHUNK, 4096, 128)
    assert boot.inos == len(nodes)
    assert boot.blobs == image.blobs
    assert boot.blocks == sum(b.uncompressed_size // 4096 for b in image.blobs)
    # [format §2.4]: mapped_blkaddr continues after the bootstrap, 512 KiB aligned.
    pos = len(data)
    for slot, blob in zip(boot.devices, image.blobs, strict=True):
        mapped = layout.round_up(pos, 0x80000) // 4096
        assert (slot.blob_id, slot.blocks, slot.mapped_blkaddr) == (
            blob.blob_id,
            blob.uncompressed_size // 4096,
            mapped,
        )
        pos = (mapped + slot.blocks) * 4096
    # [format §2.1]: meta_addr 0 without blobs, else after the blob and prefetch tables.
    if image.blobs:
        assert boot.prefetch == [128]
        assert boot.meta_blkaddr * 4096 == layout.round_up(4096 + 256 * len(image.blobs) + 4, 4096)
    else:
        assert (boot.prefetch, boot.meta_blkaddr, boot.blob_table_offset) == ([], 0, 4096)
    # [format §2.14]: one entry per (digest, blob), sorted, covering every referenced chunk.
    keys = [(c.digest, c.blob_index) for c in boot.chunk_table]
    assert keys == sorted(set(keys))
    referenced = {(c.blob_index, c.index) for _, n in nodes for c in n.inode.chunks}
    assert referenced <= {(c.blob_index, c.index) for c in boot.chunk_table}

    assert_same_tree(image.root, boot.root)

    indexes = sequential_indexes(boot.root)
    first_index: dict[int, int] = {}
    members: dict[int, int] = {}
    for _, node in walk(boot.root):
        members[id(node.inode)] = members.get(id(node.inode), 0) + 1
        first_index[id(node.inode)] = min(first_index.get(id(node.inode), 1 << 40), indexes[id(node)])
    for path, node in walk(boot.root):
        record = boot.records[boot.nid_of(node)]
        if node.inode.is_dir:
            subdirs = sum(1 for c in (node.children or {}).values() if c.inode.is_dir)
            assert record.nlink == 2 + subdirs, path
            assert record.i_ino == indexes[id(node)], path
        else:
            assert record.nlink == members[id(node.inode)], path
            assert record.i_ino == first_index[id(node.inode)], path
        assert not record.compact
    return boot


def run_fsck(image: Image, data: bytes, tmp: Path, *, extract: bool) -> None:
    """fsck.erofs with the blob images as extra devices; with ``extract`` compare contents."""
    require(shutil.which("fsck.erofs") is not None, "fsck.erofs (erofs-utils) is not installed")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = ["fsck.erofs"]
    for i, device in enumerate(image.devices):
        (tmp / f"blob{i}").write_bytes(device)
        args.append(f"--device={tmp / f'blob{i}'}")
    (tmp / "image.boot").write_bytes(data)
    out = tmp / "out"
    if extract:
        args.append(f"--extract={out}")
    result = subprocess.run([*args, str(tmp / "image.boot")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if not extract:
        return
    base = os.fsencode(out)
    for path, node in walk(image.root):
        target = base + (path if path != b"/" else b"")
        st_ = os.lstat(target)
        assert stat.S_IFMT(st_.st_mode) == stat.S_IFMT(node.inode.mode), path
        if node.inode.is_reg:
            with open(target, "rb") as f:
                assert f.read() == image.contents[id(node.inode)], path
        elif node.inode.is_symlink:
            assert os.readlink(target) == node.inode.symlink_target, path


def extractable(image: Image) -> bool:
    # symlink(2) refuses targets of PATH_MAX or more, so fsck --extract cannot recreate them.
    return all(len(n.inode.symlink_target) < 4096 for _, n in walk(image.root))


# -------------------------------------------------------------------------------------------
# Tests


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_generated_trees_round_trip_and_pass_fsck_erofs(image: Image) -> None:
    data = image.write()
    check_bootstrap(image, data)
    assert image.write() == data  # reproducible
    with tempfile.TemporaryDirectory() as tmp:
        run_fsck(image, data, Path(tmp) / "x", extract=extractable(image))


def big_directory_image(entries: int) -> Image:
    root = Node.directory(b"/", Inode(stat.S_IFDIR | 0o755))
    big = Node.directory(b"big", Inode(stat.S_IFDIR | 0o700, uid=7))
    assert root.children is not None and big.children is not None
    root.children[b"big"] = big
    image = Image(root)
    for i in range(entries):
        name = b"%c%05d" % (b"-!+a"[i % 4], i)
        inode = Inode(stat.S_IFREG | 0o644, mtime=i)
        big.children[name] = Node(name, inode)
        image.contents[id(inode)] = b""
    long_name = "é".encode() * 127 + b"x"
    inode = Inode(stat.S_IFREG | 0o600)
    big.children[long_name] = Node(long_name, inode)
    image.contents[id(inode)] = b""
    return image


@pytest.mark.slow
def test_directory_with_more_than_10000_entries(tmp_path: Path) -> None:
    image = big_directory_image(10_001)
    data = image.write()
    boot = check_bootstrap(image, data)
    big = (boot.root.children or {})[b"big"]
    record = boot.records[boot.nid_of(big)]
    assert record.size > 10 * 4096  # many dirent blocks
    run_fsck(image, data, tmp_path / "fsck", extract=True)


def test_zero_blob_bootstrap_layout() -> None:
    image = Image(Node.directory(b"/", Inode(stat.S_IFDIR | 0o755)))
    data = image.write()
    boot = check_bootstrap(image, data)
    assert (boot.blobs, boot.devices, boot.chunk_table) == ([], [], [])
    # [format §2.1]: meta_addr 0; root at 4096; s_blocks 0; no prefetch table.
    assert (boot.meta_blkaddr, boot.blocks, boot.prefetch_table_offset) == (0, 0, 0)
    assert len(data) == 8192
    with tempfile.TemporaryDirectory() as tmp:
        run_fsck(image, data, Path(tmp) / "x", extract=True)


# -------------------------------------------------------------------------------------------
# Kernel mount


def rich_image(big_entries: int = 10_001) -> Image:
    """One tree with every feature the kernel should see; file contents in two blobs."""
    root = Node.directory(b"/", Inode(stat.S_IFDIR | 0o755, mtime=1_700_000_000))
    image = Image(root)
    chunks = ChunkFactory(image, 2)
    rng = random.Random(1234)

    def add(parent: Node, node: Node) -> Node:
        assert parent.children is not None
        parent.children[node.name] = node
        return node

    def regular(
        parent: Node, name: bytes, size: int, pattern: str, *, uid: int = 0, gid: int = 0, mtime: int = 0
    ) -> Inode:
        inode = Inode(stat.S_IFREG | 0o644, size=size, uid=uid, gid=gid, mtime=mtime, mtime_nsec=mtime % 7)
        for i in range(-(-size // CHUNK)):
            length = min(CHUNK, size - i * CHUNK)
            if pattern == "dedup" and length in chunks.by_size:
                chunk = chunks.by_size[length][0][0]
            else:
                blob = i % 2 if pattern == "alternate" else 0
                chunk = chunks.new(blob, rng.randbytes(length), 1 if pattern == "gaps" else 0)
            inode.chunks.append(chunk.at_file_offset(i * CHUNK))
        image.contents[id(inode)] = b"".join(chunks_content(image, c) for c in inode.chunks)
        add(parent, Node(name, inode))
        return inode

    sub = add(root, Node.directory(b"sub", Inode(stat.S_IFDIR | 0o750, uid=1000, gid=100)))
    deep = add(sub, Node.directory(b"deep", Inode(stat.S_IFDIR | 0o700, mtime=5, mtime_nsec=7)))
    regular(root, b"contiguous", 5 * CHUNK + 17, "contiguous", uid=1, gid=2, mtime=3)
    regular(root, b"alternate", 3 * CHUNK + 1, "alternate")
    regular(root, b"gaps", 2 * CHUNK + 5, "gaps")
    regular(sub, b"dedup", 2 * CHUNK, "dedup")
    regular(root, b"empty", 0, "contiguous")
    shared = regular(root, b"hard1", 3000, "contiguous", uid=42)
    add(sub, Node(b"hard2", shared))
    add(deep, Node(b"hard3", shared))
    for name in SPECIAL_NAMES:
        regular(sub, name, 10, "contiguous")
    xattrs = {b"user.comment": b"hello", b"trusted.x": b"\x00\x01", b"security.y": b""}
    regular(root, b"with-xattrs", 100, "contiguous", uid=0).xattrs.update(xattrs)
    deep.inode.xattrs[b"user.dir"] = b"d" * 300
    add(root, Node(b"short-link", Inode(stat.S_IFLNK | 0o777, size=8, symlink_target=b"sub/deep")))
    add(root, Node(b"long-link", Inode(stat.S_IFLNK | 0o777, size=4000, symlink_target=b"p" * 4000)))
    add(root, Node(b"tty", Inode(stat.S_IFCHR | 0o620, rdev=layout.encode_rdev(4, 300), gid=5)))
    add(root, Node(b"disk", Inode(stat.S_IFBLK | 0o660, rdev=layout.encode_rdev(259, 65536))))
    add(root, Node(b"fifo", Inode(stat.S_IFIFO | 0o644)))
    add(root, Node(b"sock", Inode(stat.S_IFSOCK | 0o755)))
    big = add(root, Node.directory(b"big", Inode(stat.S_IFDIR | 0o755)))
    for i in range(big_entries):
        name = b"%c%05d" % (b"-!+a"[i % 4], i)
        inode = Inode(stat.S_IFREG | 0o600, mtime=i)
        image.contents[id(inode)] = b""
        add(big, Node(name, inode))
    chunks.finish()
    return image


@contextlib.contextmanager
def loop_device(path: Path) -> Iterator[str]:
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


def erofs_available() -> bool:
    try:
        return "erofs" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_kernel_mount_shows_the_written_tree(tmp_path: Path) -> None:
    require(os.geteuid() == 0 and erofs_available(), "needs root and kernel EROFS support")
    require(shutil.which("losetup") is not None, "losetup is not installed")
    image = rich_image()
    data = image.write()
    check_bootstrap(image, data)
    run_fsck(image, data, tmp_path / "fsck", extract=True)
    (tmp_path / "image.boot").write_bytes(data)
    for i, device in enumerate(image.devices):
        (tmp_path / f"blob{i}").write_bytes(device)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with contextlib.ExitStack() as stack:
        boot_dev = stack.enter_context(loop_device(tmp_path / "image.boot"))
        blob_devs = [stack.enter_context(loop_device(tmp_path / f"blob{i}")) for i in range(2)]
        options = "ro," + ",".join(f"device={d}" for d in blob_devs)
        subprocess.run(["mount", "-t", "erofs", "-o", options, boot_dev, str(mnt)], check=True)
        try:
            compare_mounted(image, os.fsencode(mnt))
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


def compare_mounted(image: Image, base: bytes) -> None:
    inos: dict[int, int] = {}
    for path, node in walk(image.root):
        target = base + (path if path != b"/" else b"")
        inode = node.inode
        st_ = os.lstat(target)
        assert st_.st_mode == inode.mode, path
        assert (st_.st_uid, st_.st_gid) == (inode.uid, inode.gid), path
        assert st_.st_mtime_ns == inode.mtime * 10**9 + inode.mtime_nsec, path
        # Hardlink members are one kernel inode (same st_ino = nid); different Inodes are not.
        assert inos.setdefault(id(inode), st_.st_ino) == st_.st_ino, path
        xattrs = {
            os.fsencode(k): os.getxattr(target, k, follow_symlinks=False)
            for k in os.listxattr(target, follow_symlinks=False)
        }
        assert xattrs == inode.xattrs, path
        if inode.is_dir:
            assert sorted(os.listdir(target)) == sorted(node.children or {}), path
            subdirs = sum(1 for c in (node.children or {}).values() if c.inode.is_dir)
            assert st_.st_nlink == 2 + subdirs, path
        elif inode.is_reg:
            assert st_.st_size == inode.size, path
            with open(target, "rb") as f:
                assert f.read() == image.contents[id(inode)], path
        elif inode.is_symlink:
            assert os.readlink(target) == inode.symlink_target, path
            assert st_.st_size == len(inode.symlink_target)
        elif stat.S_ISCHR(inode.mode) or stat.S_ISBLK(inode.mode):
            assert (os.major(st_.st_rdev), os.minor(st_.st_rdev)) == layout.decode_rdev(inode.rdev)
    assert len(set(inos.values())) == len(inos)
    # Lookups are binary searches over the dirent blocks: every name must be found directly.
    big = base + b"/big"
    for name in (b"-00000", b"!00001", b"+00002", b"a00003", b"a09999", b"-10000"):
        assert os.path.lexists(big + b"/" + name)
    assert not os.path.lexists(big + b"/a10000")


# -------------------------------------------------------------------------------------------
# Writer details


def test_chunk_table_keeps_the_last_reference_in_dump_order() -> None:
    """[format §2.14]: one entry per (digest, blob); file_offset of the last inode dumped."""
    image = Image(Node.directory(b"/", Inode(stat.S_IFDIR | 0o755)))
    chunks = ChunkFactory(image, 1)
    x = chunks.new(0, b"x" * CHUNK, 0)
    y = chunks.new(0, b"y" * CHUNK, 0)
    chunks.finish()
    a = Inode(stat.S_IFREG | 0o644, size=CHUNK, chunks=[x.at_file_offset(0)])
    b = Inode(stat.S_IFREG | 0o644, size=2 * CHUNK, chunks=[y.at_file_offset(0), x.at_file_offset(CHUNK)])
    root = image.root
    assert root.children is not None
    root.children[b"a"] = Node(b"a", a)
    root.children[b"b"] = Node(b"b", b)
    data = image.write()

    def table_file_offsets(data: bytes) -> dict[bytes, int]:
        offset, size = struct.unpack_from("<QQ", data, 0x480 + 24)
        entries = [data[i : i + 80] for i in range(offset, offset + size, 80)]
        return {e[:32]: struct.unpack_from("<Q", e, 64)[0] for e in entries}

    # Dump order a, b: x was last referenced by b at CHUNK.
    assert table_file_offsets(data) == {x.digest: CHUNK, y.digest: 0}
    # A hardlink to a named "c" is dumped after b and references x again at offset 0.
    root.children[b"c"] = Node(b"c", a)
    data = image.write()
    assert table_file_offsets(data) == {x.digest: 0, y.digest: 0}
    image.contents[id(a)] = b"x" * CHUNK
    image.contents[id(b)] = b"y" * CHUNK + b"x" * CHUNK
    with tempfile.TemporaryDirectory() as tmp:
        run_fsck(image, data, Path(tmp) / "x", extract=True)


def test_block_size_512_round_trip() -> None:
    """The tar-tarfs geometry ([format §2.18]): 512-byte blocks, superblock/meta alignment stays 4 KiB."""
    image = rich_image(big_entries=100)
    data = write_bootstrap(image.root, image.blobs, chunk_size=CHUNK, flags=image.flags, block_size=512)
    boot = read_bootstrap(data)
    assert boot.block_size == 512
    assert data[1024 + 12] == 9  # s_blkszbits
    assert boot.meta_blkaddr * 512 % 4096 == 0
    assert [d.blocks for d in boot.devices] == [b.uncompressed_size // 512 for b in image.blobs]
    assert_same_tree(image.root, boot.root)


def test_writer_rejects_inconsistent_input() -> None:
    image = rich_image(big_entries=0)
    root = image.root
    assert root.children is not None
    with pytest.raises(ValueError, match="compressor"):
        write_bootstrap(root, image.blobs, chunk_size=CHUNK, flags=layout.RAFS_HASH_BLAKE3)
    bad = Inode(stat.S_IFREG | 0o644, size=CHUNK + 1)  # needs 2 chunks, has none
    root.children[b"bad"] = Node(b"bad", bad)
    with pytest.raises(ValueError, match="expected 2"):
        image.write()
    root.children[b"bad"] = Node(b"bad", Inode(0o644))  # no file type bits
    with pytest.raises(UnsupportedEntryError, match="unknown file type"):
        image.write()
    del root.children[b"bad"]
    with pytest.raises(ValueError, match="references blob 1"):
        write_bootstrap(root, image.blobs[:1], chunk_size=CHUNK, flags=image.flags)


@pytest.mark.slow
def test_100k_inodes_are_written_and_read() -> None:
    # How long this takes is measured by bench/metadata.py, not asserted here.
    root = Node.directory(b"/", Inode(stat.S_IFDIR | 0o755))
    assert root.children is not None
    ci = 0
    for d in range(100):
        sub = Node.directory(b"d%03d" % d, Inode(stat.S_IFDIR | 0o755))
        assert sub.children is not None
        root.children[sub.name] = sub
        for f in range(1000):
            chunk = ChunkRef(ci.to_bytes(32, "big"), 0, ci, ci * 100, 100, ci * 4096, 100)
            ci += 1
            sub.children[b"f%d" % f] = Node(b"f%d" % f, Inode(stat.S_IFREG | 0o644, size=100, chunks=[chunk]))
    blob = BlobInfo("ab" * 32, CHUNK, chunk_count=ci, uncompressed_size=ci * 4096)
    data = write_bootstrap(root, [blob], chunk_size=CHUNK, flags=BASE_FLAGS)
    boot = read_bootstrap(data)
    assert boot.inos == 100_101
