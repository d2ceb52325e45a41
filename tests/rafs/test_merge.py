"""Merging per-layer bootstraps ([format §5.2, §5.3]): overlay rules, hardlinks, blob table, flags.

Layers are real per-layer bootstraps: tars from tests/helpers/tarbuild.py packed by
``pack_layer`` (or, for inputs our packer refuses to produce, trees from TreeBuilder written
by ``write_bootstrap``). Results are read back with ``read_bootstrap``. The overlay cases are
a table: every entry of a case carries a distinct mtime, so the expected view
``{path: "<kind><mtime>"}`` says which layer each surviving entry came from.
"""

from __future__ import annotations

import dataclasses
import io
import stat
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from nydus_exporter.errors import ConfigError, FormatError, UnsafePathError
from nydus_exporter.pipeline.pack import PackOptions, pack_layer
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.bootstrap import write_bootstrap
from nydus_exporter.rafs.bootstrap_reader import Bootstrap, read_bootstrap
from nydus_exporter.rafs.merge import MergeLayer, MergeResult, merge_layers
from nydus_exporter.rafs.model import BlobInfo, ChunkRef, Inode, Node, walk
from nydus_exporter.rafs.tree import TreeBuilder
from tests.helpers import tarbuild as tb

OPTIONS = PackOptions(threads=1)


def pack(members: Sequence[tb.Member], options: PackOptions = OPTIONS) -> BlobResult:
    sink = io.BytesIO()
    return pack_layer(io.BytesIO(tb.tar_of(*members)), sink.write, options)


def as_layer(result: BlobResult, spec: str = "oci") -> MergeLayer:
    return MergeLayer(result.bootstrap, result.digest.removeprefix("sha256:"), spec)


def merge(*layers: Sequence[tb.Member], spec: str = "oci") -> MergeResult:
    return merge_layers([as_layer(pack(members), spec) for members in layers])


_KIND = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
}


def view(result: MergeResult | bytes) -> dict[str, str]:
    """``{path: kind letter + mtime}`` of the merged tree."""
    boot = read_bootstrap(result if isinstance(result, bytes) else result.bootstrap)
    return {
        path.decode(): f"{_KIND[stat.S_IFMT(node.inode.mode)]}{node.inode.mtime}"
        for path, node in walk(boot.root)
    }


def nodes(result: MergeResult) -> tuple[Bootstrap, dict[str, Node]]:
    boot = read_bootstrap(result.bootstrap)
    return boot, {path.decode(): node for path, node in walk(boot.root)}


# ---------------------------------------------------------------------------------------------
# The overlay table


@dataclass
class Case:
    layers: list[list[tb.Member]]
    expected: dict[str, str]
    spec: str = "oci"


F, D, S = tb.file, tb.dir, tb.symlink

# fmt: off
CASES: dict[str, Case] = {
    "whiteout-file": Case(
        [[D("a", mtime=1), F("a/x", b"x", mtime=1), F("a/y", b"y", mtime=1)], [tb.whiteout("a/x")]],
        {"/": "d0", "/a": "d1", "/a/y": "f1"},
    ),
    "whiteout-dir-drops-subtree": Case(
        [[D("a", mtime=1), D("a/b", mtime=1), F("a/b/c", b"c", mtime=1), F("k", b"k", mtime=1)],
         [tb.whiteout("a")]],
        {"/": "d0", "/k": "f1"},
    ),
    "whiteout-before-own-entry": Case(
        [[F("x", b"old", mtime=1)], [tb.whiteout("x"), F("x", b"new", mtime=2)]],
        {"/": "d0", "/x": "f2"},
    ),
    "whiteout-after-own-entry": Case(
        [[F("x", b"old", mtime=1)], [F("x", b"new", mtime=2), tb.whiteout("x")]],
        {"/": "d0", "/x": "f2"},
    ),
    "whiteout-then-new-dir-is-not-merged": Case(
        [[D("a", mtime=1), F("a/old", b"o", mtime=1)],
         [tb.whiteout("a"), D("a", mtime=2), F("a/new", mtime=2)]],
        {"/": "d0", "/a": "d2", "/a/new": "f2"},
    ),
    "whiteout-of-missing-name": Case(
        [[F("x", mtime=1)], [tb.whiteout("nothing"), tb.whiteout("a/b/c")]],
        # The whiteout's implied parents stay (empty), as nydus-image keeps them and containerd
        # creates missing parents before it looks at a whiteout; umoci skips such a whiteout.
        {"/": "d0", "/x": "f1", "/a": "d0", "/a/b": "d0"},
    ),
    "whiteout-in-later-layer-only-hits-lower": Case(
        [[F("x", b"1", mtime=1)], [F("x", b"2", mtime=2)], [tb.whiteout("x")]],
        {"/": "d0"},
    ),
    "opaque-marker-first": Case(
        [[D("a", mtime=1), F("a/x", mtime=1), D("a/sub", mtime=1), F("a/sub/y", mtime=1)],
         [D("a", mtime=2), tb.opaque("a"), F("a/new", mtime=2)]],
        {"/": "d0", "/a": "d2", "/a/new": "f2"},
    ),
    "opaque-marker-after-siblings": Case(
        [[D("a", mtime=1), F("a/x", mtime=1), F("a/keep", mtime=1)],
         [D("a", mtime=2), F("a/new", mtime=2), F("a/keep", mtime=2), tb.opaque("a")]],
        {"/": "d0", "/a": "d2", "/a/keep": "f2", "/a/new": "f2"},
    ),
    "opaque-keeps-lower-dir-metadata-when-implied": Case(
        [[D("a", mode=0o750, mtime=1), F("a/x", mtime=1)], [tb.opaque("a")]],
        {"/": "d0", "/a": "d1"},
    ),
    "opaque-only-hides-its-own-dir": Case(
        [[D("a", mtime=1), F("a/x", mtime=1), D("b", mtime=1), F("b/y", mtime=1)], [tb.opaque("a")]],
        {"/": "d0", "/a": "d1", "/b": "d1", "/b/y": "f1"},
    ),
    "opaque-root": Case(
        [[F("x", mtime=1), D("d", mtime=1)], [tb.file(".wh..wh..opq", b""), F("y", mtime=2)]],
        {"/": "d0", "/y": "f2"},
    ),
    "file-replaces-dir": Case(
        [[D("a", mtime=1), F("a/x", mtime=1)], [F("a", b"file", mtime=2)]],
        {"/": "d0", "/a": "f2"},
    ),
    "symlink-replaces-dir": Case(
        [[D("a", mtime=1), D("a/b", mtime=1), F("a/b/x", mtime=1)], [S("a", "elsewhere", mtime=2)]],
        {"/": "d0", "/a": "l2"},
    ),
    "fifo-replaces-dir": Case(
        [[D("a", mtime=1), F("a/x", mtime=1)], [tb.fifo("a")]],
        {"/": "d0", "/a": "p0"},
    ),
    "dir-replaces-file": Case(
        [[F("a", b"file", mtime=1)], [D("a", mtime=2), F("a/x", mtime=2)]],
        {"/": "d0", "/a": "d2", "/a/x": "f2"},
    ),
    "dir-replaces-symlink": Case(
        [[D("t", mtime=1), F("t/x", mtime=1), S("a", "t", mtime=1)], [D("a", mtime=2), F("a/y", mtime=2)]],
        {"/": "d0", "/t": "d1", "/t/x": "f1", "/a": "d2", "/a/y": "f2"},
    ),
    "dir-over-dir-merges": Case(
        [[D("a", mtime=1), F("a/x", mtime=1), D("a/s", mtime=1), F("a/s/1", mtime=1)],
         [D("a", mtime=2), F("a/y", mtime=2), D("a/s", mtime=2), F("a/s/2", mtime=2)]],
        {"/": "d0", "/a": "d2", "/a/x": "f1", "/a/y": "f2", "/a/s": "d2", "/a/s/1": "f1", "/a/s/2": "f2"},
    ),
    "implied-dir-keeps-lower-metadata": Case(
        [[D("a", mode=0o750, uid=1, mtime=1), F("a/x", mtime=1)], [F("a/y", mtime=2)]],
        {"/": "d0", "/a": "d1", "/a/x": "f1", "/a/y": "f2"},
    ),
    "file-replaces-file": Case(
        [[F("x", b"1", mtime=1), S("l", "x", mtime=1)], [F("x", b"22", mtime=2), F("l", mtime=2)]],
        {"/": "d0", "/x": "f2", "/l": "f2"},
    ),
    "devices": Case(
        [[tb.chardev("dev/null", 1, 3), tb.blockdev("dev/sda", 8, 0), tb.fifo("dev/p")],
         [tb.whiteout("dev/sda"), tb.chardev("dev/p", 1, 5)]],
        {"/": "d0", "/dev": "d0", "/dev/null": "c0", "/dev/p": "c0"},
    ),
    "first-layer-whiteouts-dropped": Case(
        [[tb.whiteout("gone"), tb.opaque("a"), F("a/x", mtime=1), tb.whiteout("a/y"), F("k", mtime=1)]],
        {"/": "d0", "/a": "d0", "/a/x": "f1", "/k": "f1"},
    ),
    "whiteouts-in-new-dir-dropped": Case(
        [[F("k", mtime=1)], [D("n", mtime=2), tb.whiteout("n/x"), tb.opaque("n"), F("n/y", mtime=2)]],
        {"/": "d0", "/k": "f1", "/n": "d2", "/n/y": "f2"},
    ),
    "aufs-metadata-names-ignored": Case(
        [[F(".wh.plnk", mtime=1), F("k", mtime=1)],
         [tb.file(".wh..wh.plnk", b""), D(".wh..wh.orph", mtime=2)]],
        # .wh.plnk itself is a first-layer whiteout name: dropped there, nothing else is hit.
        {"/": "d0", "/k": "f1"},
    ),
    "empty-layer-in-between": Case(
        [[F("x", mtime=1)], [], [F("y", mtime=3)]],
        {"/": "d0", "/x": "f1", "/y": "f3"},
    ),
    "metadata-only-layer": Case(
        [[D("a", mtime=1), F("a/x", b"data", mtime=1)],
         [S("a/link", "x", mtime=2), D("a/e", mtime=2), F("a/empty", b"", mtime=2)]],
        {"/": "d0", "/a": "d1", "/a/x": "f1", "/a/link": "l2", "/a/e": "d2", "/a/empty": "f2"},
    ),
    "layer-whites-out-everything": Case(
        [[D("a", mtime=1), F("a/x", b"x", mtime=1), F("b", b"b", mtime=1)],
         [tb.whiteout("a"), tb.whiteout("b")]],
        {"/": "d0"},
    ),
    "root-from-top-most-explicit-root": Case(
        [[D(".", mode=0o700, mtime=5), F("x", mtime=1)], [F("y", mtime=2)]],
        {"/": "d5", "/x": "f1", "/y": "f2"},
    ),
    "root-replaced-by-upper-root-entry": Case(
        [[D(".", mode=0o700, mtime=5)], [D(".", mode=0o711, mtime=7)], [F("y", mtime=2)]],
        {"/": "d7", "/y": "f2"},
    ),
    "oci-char-0-0-is-a-device": Case(
        [[F("x", mtime=1)], [tb.chardev("x", 0, 0)]],
        {"/": "d0", "/x": "c0"},
    ),
    "none-interprets-nothing": Case(
        [[tb.whiteout("q"), F("x", mtime=1), D("a", mtime=1), F("a/y", mtime=1)],
         [tb.whiteout("x"), tb.opaque("a"), tb.chardev("c", 0, 0)]],
        {"/": "d0", "/.wh.q": "f0", "/.wh.x": "f0", "/x": "f1", "/a": "d1", "/a/y": "f1",
         "/a/.wh..wh..opq": "f0", "/c": "c0"},
        spec="none",
    ),
}
# fmt: on


@pytest.mark.parametrize("name", sorted(CASES))
def test_overlay(name: str) -> None:
    case = CASES[name]
    result = merge(*case.layers, spec=case.spec)
    assert view(result) == case.expected


def test_overlay_table_is_not_vacuous() -> None:
    """Guard: the view tells the layers apart (a wrong winner would show)."""
    assert view(merge([F("x", mtime=1)], [F("x", mtime=2)])) == {"/": "d0", "/x": "f2"}
    assert view(merge([F("x", mtime=1)], [F("y", mtime=2)])) != {"/": "d0", "/x": "f2"}


def test_implied_root_keeps_the_lower_root_metadata() -> None:
    result = merge([D(".", mode=0o750, uid=7, gid=8, mtime=5)], [F("y")], [F("z")])
    _, by_path = nodes(result)
    root = by_path["/"].inode
    assert (root.mode, root.uid, root.gid, root.mtime) == (stat.S_IFDIR | 0o750, 7, 8, 5)


def test_upper_dir_metadata_wins_when_explicit() -> None:
    result = merge(
        [D("a", mode=0o700, uid=1, gid=2, mtime=10, xattrs={"user.old": "1"}), F("a/x")],
        [D("a", mode=0o755, uid=3, gid=4, mtime=20, xattrs={"user.new": "2"})],
    )
    _, by_path = nodes(result)
    a = by_path["/a"].inode
    assert (a.mode, a.uid, a.gid, a.mtime) == (stat.S_IFDIR | 0o755, 3, 4, 20)
    assert a.xattrs == {b"user.new": b"2"}  # the whole inode is the upper one
    assert "/a/x" in by_path


def test_xattrs_survive_and_oci_spec_keeps_overlay_xattrs() -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    result = merge(
        [F("bin/ping", b"p", xattrs={"security.capability": cap}), D("o", xattrs={"user.k": "v"})],
        [D("d", xattrs={"trusted.overlay.opaque": "y", "user.x": "1"})],
    )
    _, by_path = nodes(result)
    assert by_path["/bin/ping"].inode.xattrs == {b"security.capability": cap}
    assert by_path["/o"].inode.xattrs == {b"user.k": b"v"}
    # With the OCI spec the overlay xattr is an ordinary xattr (not interpreted, not removed).
    assert by_path["/d"].inode.xattrs == {b"trusted.overlay.opaque": b"y", b"user.x": b"1"}


def test_mixed_whiteout_specs_per_layer() -> None:
    lower = pack([F("x", mtime=1), F("y", mtime=1)])
    oci = pack([tb.whiteout("x")])
    plain = pack([tb.whiteout("y")])
    result = merge_layers([as_layer(lower), as_layer(oci, "oci"), as_layer(plain, "none")])
    assert view(result) == {"/": "d0", "/y": "f1", "/.wh.y": "f0"}


def test_devices_keep_rdev_and_mode() -> None:
    result = merge([tb.chardev("dev/null", 1, 3, mode=0o666)], [tb.blockdev("dev/sda1", 8, 1, mode=0o660)])
    _, by_path = nodes(result)
    null, sda = by_path["/dev/null"].inode, by_path["/dev/sda1"].inode
    assert (null.mode, layout.decode_rdev(null.rdev)) == (stat.S_IFCHR | 0o666, (1, 3))
    assert (sda.mode, layout.decode_rdev(sda.rdev)) == (stat.S_IFBLK | 0o660, (8, 1))


# ---------------------------------------------------------------------------------------------
# Hardlinks


def _nlink_and_nid(boot: Bootstrap, node: Node) -> tuple[int, int]:
    nid = boot.nid_of(node)
    return boot.records[nid].nlink, nid


HARDLINK_BASE = [F("h1", b"shared", mtime=1), tb.hardlink("h2", "h1"), D("d"), tb.hardlink("d/h3", "h1")]

HARDLINK_CASES: dict[str, tuple[list[list[tb.Member]], list[set[str]]]] = {
    # upper layers -> expected hardlink groups (paths sharing one nid) with nlink = size
    "untouched": ([], [{"/h1", "/h2", "/d/h3"}]),
    "member-whited-out": ([[tb.whiteout("h2")]], [{"/h1", "/d/h3"}]),
    "first-member-replaced": ([[F("h1", b"new")]], [{"/h2", "/d/h3"}, {"/h1"}]),
    "dir-of-member-removed": ([[tb.whiteout("d")]], [{"/h1", "/h2"}]),
    "dir-of-member-opaque": ([[tb.opaque("d")]], [{"/h1", "/h2"}]),
    "two-members-removed": ([[tb.whiteout("h1")], [tb.whiteout("d")]], [{"/h2"}]),
    "upper-layer-own-group": (
        [[F("h2", b"upper", mtime=2), tb.hardlink("u", "h2")]],
        [{"/h1", "/d/h3"}, {"/h2", "/u"}],
    ),
}


@pytest.mark.parametrize("name", sorted(HARDLINK_CASES))
def test_hardlinks(name: str) -> None:
    uppers, groups = HARDLINK_CASES[name]
    result = merge(HARDLINK_BASE, *uppers)
    boot, by_path = nodes(result)
    for group in groups:
        facts = {path: _nlink_and_nid(boot, by_path[path]) for path in group}
        assert {nid for _, nid in facts.values()} == {next(iter(facts.values()))[1]}, facts
        assert all(nlink == len(group) for nlink, _ in facts.values()), facts
    # groups are distinct inodes
    nids = [_nlink_and_nid(boot, by_path[next(iter(g))])[1] for g in groups]
    assert len(set(nids)) == len(nids)


def test_identical_layers_twice_do_not_share_inodes() -> None:
    layer = as_layer(pack([F("a", b"x"), tb.hardlink("b", "a")]))
    other = as_layer(pack([F("c", b"x")]))
    result = merge_layers([layer, other, layer])  # the same layer again (an image may repeat one)
    boot, by_path = nodes(result)
    assert boot.nid_of(by_path["/a"]) == boot.nid_of(by_path["/b"])
    assert boot.records[boot.nid_of(by_path["/a"])].nlink == 2
    assert boot.nid_of(by_path["/c"]) != boot.nid_of(by_path["/a"])
    assert result.blob_ids == [layer.blob_id, other.blob_id]  # one entry for the repeated blob


# ---------------------------------------------------------------------------------------------
# Blob table, chunks, flags


def _blob_of(boot: Bootstrap, node: Node) -> str:
    indexes = {c.blob_index for c in node.inode.chunks}
    assert len(indexes) == 1
    return boot.blobs[indexes.pop()].blob_id


def test_blob_order_is_first_reference_in_index_order() -> None:
    # [format §2.15] index order: the root's children (files first seen here) come before anything
    # inside a subdirectory, so /zz (layer 1) is met before /aa/f (layer 0).
    l0 = pack([F("aa/f", b"layer0")])
    l1 = pack([F("zz", b"layer1")])
    l2 = pack([F("aa/b/deep", b"layer2"), F("aa/g", b"layer2-g")])
    result = merge_layers([as_layer(l0), as_layer(l1), as_layer(l2)])
    ids = [as_layer(r).blob_id for r in (l1, l0, l2)]
    assert result.blob_ids == ids
    boot, by_path = nodes(result)
    assert [b.blob_id for b in boot.blobs] == ids
    assert [d.blob_id for d in boot.devices] == ids
    assert _blob_of(boot, by_path["/zz"]) == ids[0]
    assert _blob_of(boot, by_path["/aa/f"]) == ids[1]
    assert _blob_of(boot, by_path["/aa/g"]) == ids[2]
    assert _blob_of(boot, by_path["/aa/b/deep"]) == ids[2]


@pytest.mark.parametrize(
    ("lower", "upper", "upper_first"),
    [
        (F("b/f", b"0"), F("a/f", b"1"), True),  # sibling directories in byte order
        (F("a/x/deep", b"0"), F("b/f", b"1"), False),  # depth first: /a/x before /b
        (F("B", b"0"), F("a", b"1"), False),  # raw byte order: "B" (0x42) < "a" (0x61)
    ],
    ids=["siblings", "depth-first", "byte-order"],
)
def test_blob_order_follows_the_directory_walk(lower: tb.Entry, upper: tb.Entry, upper_first: bool) -> None:
    l0, l1 = as_layer(pack([lower])), as_layer(pack([upper]))
    result = merge_layers([l0, l1])
    assert result.blob_ids == ([l1.blob_id, l0.blob_id] if upper_first else [l0.blob_id, l1.blob_id])


def test_unreferenced_blobs_disappear() -> None:
    l0 = pack([F("a", b"a-data"), F("b", b"b-data")])
    meta = pack([S("s", "a")])
    l2 = pack([tb.whiteout("a"), tb.whiteout("b"), F("c", b"c-data")])
    l3 = pack([F("c", b"replaced")])
    result = merge_layers([as_layer(x) for x in (l0, meta, l2, l3)])
    assert result.blob_ids == [as_layer(l3).blob_id]
    boot, by_path = nodes(result)
    assert len(boot.blobs) == 1 and len(boot.devices) == 1
    assert {c.blob_index for c in boot.chunk_table} == {0}
    assert "/s" in by_path  # the metadata-only layer's entry is there


def test_blob_entries_copy_the_layer_blob_with_digest_id() -> None:
    l0, l1 = pack([F("a", b"a" * 5000)]), pack([F("b", b"noise" * 3000)])
    result = merge_layers([as_layer(l0), as_layer(l1)])
    boot = read_bootstrap(result.bootstrap)
    # BlobResult.blob_info is "as a merged bootstrap must describe the blob" ([format §5.3]).
    assert boot.blobs == [l0.blob_info, l1.blob_info]
    assert result.blobs == boot.blobs
    for blob in boot.blobs:
        assert not blob.features & layout.BLOB_FEATURE_INLINED_FS_META
        assert blob.features & layout.BLOB_FEATURE_INLINED_CHUNK_DIGEST
    # The per-layer bootstrap itself names the placeholder blob with INLINED_FS_META.
    per_layer = read_bootstrap(l0.bootstrap).blobs[0]
    assert per_layer.blob_id == "x" * 64 and per_layer.features & layout.BLOB_FEATURE_INLINED_FS_META


def test_chunks_are_copied_with_remapped_blob_index() -> None:
    data0, data1 = bytes(range(256)) * 20, b"other" * 999
    l0, l1 = pack([F("z", data0)]), pack([F("a", data1)])
    result = merge_layers([as_layer(l0), as_layer(l1)])
    boot, by_path = nodes(result)
    for path, layer in (("/z", l0), ("/a", l1)):
        src = read_bootstrap(layer.bootstrap)
        name = path[1:].encode()
        assert src.root.children is not None
        want = src.root.children[name].inode.chunks
        got = by_path[path].inode.chunks
        assert [dataclasses.replace(c, blob_index=0) for c in got] == want
        assert {boot.blobs[c.blob_index].blob_id for c in got} == {as_layer(layer).blob_id}


def test_flags() -> None:
    l0 = pack([F("a", b"x" * 100)], PackOptions(compressor="zstd", threads=1))
    l1 = pack([F("b", b"y" * 100)], PackOptions(compressor="lz4_block", threads=1))
    result = merge_layers([as_layer(l0), as_layer(l1)])
    boot = read_bootstrap(result.bootstrap)
    want = (
        layout.RAFS_COMPRESSION_LZ4  # the last layer's compressor
        | layout.RAFS_HASH_BLAKE3
        | layout.RAFS_EXPLICIT_UID_GID
        | layout.RAFS_HAS_XATTR  # set although no inode has xattrs
        | layout.RAFS_INLINED_CHUNK_DIGEST
        | layout.RAFS_ENCRYPTION_NONE
    )
    assert boot.flags == result.flags == want
    assert {b.compressor for b in boot.blobs} == {layout.COMPRESSOR_ID_ZSTD, layout.COMPRESSOR_ID_LZ4_BLOCK}
    assert boot.prefetch == [boot.root_nid]
    assert boot.chunk_size == result.chunk_size == layout.DEFAULT_CHUNK_SIZE


def test_flags_without_blobs() -> None:
    result = merge([S("s", "t")], [D("d")])
    boot = read_bootstrap(result.bootstrap)
    assert boot.blobs == [] and boot.prefetch == [] and boot.chunk_table == []
    assert boot.flags & layout.RAFS_HAS_XATTR
    assert not boot.flags & layout.RAFS_INLINED_CHUNK_DIGEST
    assert boot.flags & layout.RAFS_ENCRYPTION_NONE


def test_sha256_layers_keep_sha256() -> None:
    options = PackOptions(digester="sha256", chunk_size=64 << 10, threads=1)
    result = merge_layers([as_layer(pack([F("a", b"1")], options)), as_layer(pack([F("b", b"2")], options))])
    boot = read_bootstrap(result.bootstrap)
    assert boot.flags & layout.RAFS_HASH_MASK == layout.RAFS_HASH_SHA256
    assert boot.chunk_size == 64 << 10


def test_inode_count() -> None:
    result = merge([F("a"), tb.hardlink("b", "a"), D("d")], [F("d/e")])
    assert result.inode_count == read_bootstrap(result.bootstrap).inos == 5  # / a b d d/e


# ---------------------------------------------------------------------------------------------
# Errors


def test_chunk_size_mismatch_names_the_layers() -> None:
    l0 = pack([F("a", b"1")], PackOptions(chunk_size=1 << 20, threads=1))
    l1 = pack([F("b", b"2")], PackOptions(chunk_size=64 << 10, threads=1))
    with pytest.raises(ConfigError, match=r"chunk size.*layer 0.*0x100000.*layer 1.*0x10000"):
        merge_layers([as_layer(l0), as_layer(l1)])


def test_chunk_size_of_metadata_only_layers_does_not_matter() -> None:
    l0 = pack([F("a", b"1")], PackOptions(chunk_size=1 << 20, threads=1))
    l1 = pack([S("s", "a")], PackOptions(chunk_size=64 << 10, threads=1))
    assert merge_layers([as_layer(l0), as_layer(l1)]).chunk_size == 1 << 20


def test_digester_mismatch_is_an_error() -> None:
    l0 = pack([F("a", b"1")], PackOptions(digester="blake3", threads=1))
    l1 = pack([F("b", b"2")], PackOptions(digester="sha256", threads=1))
    with pytest.raises(ConfigError, match=r"digester.*layer 0.*blake3.*layer 1.*sha256"):
        merge_layers([as_layer(l0), as_layer(l1)])


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:4096],
        lambda b: b[:1024] + b"\0\0\0\0" + b[1028:],  # EROFS magic
        lambda b: b"",
    ],
    ids=["truncated", "bad-magic", "empty"],
)
def test_corrupt_layer_bootstrap_is_a_format_error(corrupt: object) -> None:
    good = pack([F("a", b"1")])
    bad = dataclasses.replace(as_layer(good), bootstrap=corrupt(good.bootstrap))  # type: ignore[operator]
    with pytest.raises(FormatError, match="layer 1"):
        merge_layers([as_layer(pack([F("x")])), bad])


def test_bad_arguments() -> None:
    good = as_layer(pack([F("a", b"1")]))
    with pytest.raises(ConfigError, match="no layers"):
        merge_layers([])
    with pytest.raises(ConfigError, match="whiteout spec"):
        merge_layers([dataclasses.replace(good, whiteout_spec="aufs")])
    for bad_id in ("", "x" * 65, "caf\u00e9", "a b", "a\0b"):
        with pytest.raises(ConfigError, match="blob id"):
            merge_layers([dataclasses.replace(good, blob_id=bad_id)])


def _boot_from_tree(tree: TreeBuilder, blobs: Sequence[BlobInfo] = ()) -> bytes:
    flags = layout.RAFS_COMPRESSION_ZSTD | layout.RAFS_HASH_BLAKE3 | layout.RAFS_ENCRYPTION_NONE
    return write_bootstrap(tree.root, list(blobs), chunk_size=layout.DEFAULT_CHUNK_SIZE, flags=flags)


def test_bare_whiteout_name_is_rejected() -> None:
    # Our tar reader refuses ".wh." already; a bootstrap from elsewhere may still hold one.
    tree = TreeBuilder()
    tree.add(b"/.wh.", Inode(mode=stat.S_IFREG | 0o644))
    layer = MergeLayer(_boot_from_tree(tree), "a" * 64)
    with pytest.raises(UnsafePathError, match=r"\.wh\."):
        merge_layers([as_layer(pack([F("x")])), layer])


def _two_blob_layer(ids: tuple[str, str]) -> bytes:
    blobs = [
        BlobInfo(blob_id=blob_id, chunk_size=layout.DEFAULT_CHUNK_SIZE, chunk_count=1, uncompressed_size=4096)
        for blob_id in ids
    ]
    tree = TreeBuilder()
    for i in range(2):
        chunk = ChunkRef(bytes([i]) * 32, i, 0, 0, 10, 0, 10)
        tree.add(b"/f%d" % i, Inode(mode=stat.S_IFREG | 0o644, size=10, chunks=[chunk]))
    return _boot_from_tree(tree, blobs)


def test_chunk_dictionary_blobs_keep_their_ids() -> None:
    """A layer packed with a chunk dictionary lists the dictionary's blob after its own ([format §4.2])."""
    merged = merge_layers(
        [MergeLayer(_two_blob_layer((layout.INLINE_BLOB_ID_PLACEHOLDER, "a" * 64)), "c" * 64)]
    )
    assert merged.blob_ids == ["c" * 64, "a" * 64]
    boot = read_bootstrap(merged.bootstrap)
    files = boot.root.children
    assert files is not None
    assert [files[b"f0"].inode.chunks[0].blob_index, files[b"f1"].inode.chunks[0].blob_index] == [0, 1]


def test_same_blob_id_for_different_blobs_is_an_error() -> None:
    a, b = pack([F("a", b"1")]), pack([F("b", b"22")])
    with pytest.raises(ConfigError, match="different blob"):
        merge_layers([as_layer(a), dataclasses.replace(as_layer(b), blob_id=as_layer(a).blob_id)])


# ---------------------------------------------------------------------------------------------
# Scale


def _synthetic_layer(layer: int, files: int) -> MergeLayer:
    """A per-layer bootstrap with ``files`` one-chunk files (no pack: only metadata matters)."""
    tree = TreeBuilder()
    for i in range(files):
        chunk = ChunkRef(i.to_bytes(4, "big") + bytes(28), 0, i, i * 64, 64, i * 4096, 100)
        path = b"/d%02d/l%02d-f%05d" % (i % 40, layer, i) if i % 2 else b"/shared/d%02d/f%05d" % (i % 40, i)
        tree.add(path, Inode(mode=stat.S_IFREG | 0o644, size=100, mtime=layer, chunks=[chunk]))
    blob = BlobInfo(
        blob_id="x" * 64,
        chunk_size=layout.DEFAULT_CHUNK_SIZE,
        chunk_count=files,
        uncompressed_size=files * 4096,
        features=layout.BLOB_FEATURE_INLINED_FS_META | layout.BLOB_FEATURE_INLINED_CHUNK_DIGEST,
    )
    return MergeLayer(_boot_from_tree(tree, [blob]), f"{layer:064x}")


@pytest.mark.slow
def test_twenty_layers_of_ten_thousand_files_merge() -> None:
    # How long this takes is measured by bench/metadata.py, not asserted here.
    layers = [_synthetic_layer(i, 10_000) for i in range(20)]
    result = merge_layers(layers)
    # Half of each layer's files are replaced by every later layer ("shared"), half accumulate.
    boot = read_bootstrap(result.bootstrap)
    files = [node for _, node in walk(boot.root) if node.inode.is_reg]
    assert len(files) == 20 * 5_000 + 5_000
    assert len(boot.blobs) == 20
    assert {node.inode.mtime for node in files if node.name.startswith(b"f")} == {19}
