"""The [format §2.15] allocation on small trees, with expected offsets worked out by hand from the spec."""

from __future__ import annotations

import stat
import struct

import pytest

from nydus_exporter.errors import UnsupportedEntryError
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.bootstrap import dirent_size, plan_layout, write_bootstrap
from nydus_exporter.rafs.model import Inode, Node

FLAT_PLAIN = layout.EROFS_INODE_FLAT_PLAIN
FLAT_INLINE = layout.EROFS_INODE_FLAT_INLINE
CHUNK_BASED = layout.EROFS_INODE_CHUNK_BASED


def directory(name: bytes, **children: Node) -> Node:
    node = Node.directory(name, Inode(stat.S_IFDIR | 0o755))
    assert node.children is not None
    for child in children.values():
        node.children[child.name] = child
    return node


def tree(*children: Node) -> Node:
    root = Node.directory(b"/", Inode(stat.S_IFDIR | 0o755))
    assert root.children is not None
    for child in children:
        root.children[child.name] = child
    return root


def regular(name: bytes, inode: Inode | None = None) -> Node:
    return Node(name, inode or Inode(stat.S_IFREG | 0o644))


def test_root_alone() -> None:
    # "." (13) + ".." (14) = 27 bytes of dirents, inline after the 64-byte root inode at 4096.
    plan = plan_layout(tree())
    root = plan.nodes[0]
    assert (root.index, root.offset, root.nid, root.layout) == (1, 4096, 128, FLAT_INLINE)
    assert root.data_size == 27
    # FLAT_INLINE without full blocks: i_u is the block of the byte right after the tail.
    assert root.data_offset == 4096 + 64 + 27
    assert plan.raw_blkaddr(root, 0) == 1
    assert plan.inos == 1


def test_first_file_follows_the_root_tail() -> None:
    # dirents 13 + 14 + 13 = 40; root ends at 4096 + 104 -> align 32 -> 4224 -> nid 132.
    plan = plan_layout(tree(regular(b"a")))
    a = plan.nodes[1]
    assert (a.index, a.offset, a.nid, a.layout) == (2, 4224, 132, CHUNK_BASED)


def test_partly_used_blocks_are_reused_but_not_by_special_files() -> None:
    # Root: "." ".." "c" (40 bytes) + 400 names "fNNN" (16 bytes each). Block 0 holds
    # 40 + 253*16 = 4088 bytes; the other 147 entries (2352 bytes) are the inline tail.
    files = [regular(b"f%03d" % i) for i in range(400)]
    char_dev = Node(b"c", Inode(stat.S_IFCHR | 0o600, rdev=layout.encode_rdev(1, 3)))
    plan = plan_layout(tree(char_dev, *files))
    root = plan.nodes[0]
    assert root.data_size == 4096 + 2352
    # Inode + tail at 4096..6512; the block's remaining 1680 bytes go to avail bucket 52; the
    # one full dirent block is at 8192 and the cursor moves to 12288.
    assert (root.offset, root.layout, root.data_offset) == (4096, FLAT_INLINE, 8192)
    by_name = {p.node.name: p for p in plan.nodes[1:]}
    # Special files never use avail: the device goes to the cursor.
    assert by_name[b"c"].offset == 12288
    # Regular files take 64-byte pieces of bucket 52: block + 4096 - 32*52 = 6528, then on.
    assert by_name[b"f000"].offset == 6528
    assert by_name[b"f001"].offset == 6592
    assert by_name[b"f025"].offset == 6528 + 25 * 64  # ends exactly at 8192
    assert by_name[b"f026"].offset == 12352  # back to the cursor after the device (12288+64)
    assert by_name[b"f027"].offset == 12416
    assert [p.index for p in plan.nodes] == list(range(1, 403))  # root + 401 children


def test_indexes_are_depth_first_with_files_before_subdirectories() -> None:
    d = directory(b"d", x=regular(b"x"))
    e = directory(b"e")
    plan = plan_layout(tree(d, e, regular(b"z")))
    order = [(p.node.name, p.index) for p in plan.nodes]
    assert order == [(b"/", 1), (b"d", 2), (b"e", 3), (b"z", 4), (b"x", 5)]
    offsets = {p.node.name: p.offset for p in plan.nodes}
    # Placement: root, z (non-dir children first), then d with x, then e.
    assert offsets[b"/"] < offsets[b"z"] < offsets[b"d"] < offsets[b"x"] < offsets[b"e"]


def test_hardlink_members_share_one_inode() -> None:
    shared = Inode(stat.S_IFREG | 0o644)
    link = Inode(stat.S_IFLNK | 0o777, size=3, symlink_target=b"abc")
    plan = plan_layout(
        tree(regular(b"a", shared), regular(b"b", shared), Node(b"l1", link), Node(b"l2", link))
    )
    p = {x.node.name: x for x in plan.nodes}
    assert p[b"a"].offset == p[b"b"].offset
    assert p[b"l1"].offset == p[b"l2"].offset
    assert (p[b"a"].index, p[b"b"].index, p[b"b"].ino) == (2, 3, 2)
    assert (p[b"l1"].index, p[b"l2"].index, p[b"l2"].ino) == (4, 5, 4)
    assert len({x.offset for x in plan.nodes}) == 3
    assert plan.inos == 5


def test_symlink_layouts() -> None:
    short = Node(b"s", Inode(stat.S_IFLNK | 0o777, size=10, symlink_target=b"t" * 10))
    exact = Node(b"t", Inode(stat.S_IFLNK | 0o777, size=4096, symlink_target=b"t" * 4096))
    long = Node(b"u", Inode(stat.S_IFLNK | 0o777, size=5000, symlink_target=b"t" * 5000))
    plan = plan_layout(tree(short, exact, long))
    p = {x.node.name: x for x in plan.nodes}
    assert p[b"s"].layout == FLAT_INLINE
    assert p[b"t"].layout == FLAT_PLAIN  # no tail (4096 % 4096 == 0) -> plain block
    assert p[b"t"].data_offset % 4096 == 0
    assert p[b"u"].layout == FLAT_INLINE  # 904-byte tail inline, one full block elsewhere
    assert p[b"u"].data_offset % 4096 == 0


def test_dirent_size_block_packing() -> None:
    # A 12+255 byte entry that does not fit the rest of a block starts the next block.
    names = [b".", b"..", *(b"%c" % c * 255 for c in b"abcdefghijklmnop")]
    # 27 bytes, then 15 entries of 267 fit (27 + 15*267 = 4032); the 16th goes to block 2.
    assert dirent_size(names, 4096) == 4096 + 267


def test_dirents_sorted_bytewise_with_dot_and_dotdot() -> None:
    names = [b"-x", b"!x", b"+x", b".-x", b"a", b"\xc3\xa9" * 127 + b"x"]
    root = tree(*(regular(n) for n in names))
    image = write_bootstrap(root, [], chunk_size=0x100000, flags=0x0100_0015)
    # No blobs: meta_addr 0, root inode at 4096, FLAT_INLINE, its dirents right after it.
    i_format, _, _, _, size = struct.unpack_from("<HHHHQ", image, 4096)
    assert i_format == 1 | FLAT_INLINE << 1
    block = image[4096 + 64 : 4096 + 64 + size]
    count = struct.unpack_from("<H", block, 8)[0] // 12
    heads = [struct.unpack_from("<QHBB", block, 12 * i) for i in range(count)]
    found = []
    for i, (_, nameoff, _, _) in enumerate(heads):
        end = heads[i + 1][1] if i + 1 < count else len(block)
        found.append(block[nameoff:end])
    assert found == [b"!x", b"+x", b"-x", b".", b".-x", b"..", b"a", b"\xc3\xa9" * 127 + b"x"]
    assert heads[3][0] == heads[5][0] == 128  # "." and ".." of the root are the root


@pytest.mark.parametrize("bad", [b".", b"..", b"a/b", b"a\0b", b"x" * 256])
def test_invalid_names_are_rejected(bad: bytes) -> None:
    with pytest.raises(UnsupportedEntryError):
        plan_layout(tree(regular(bad)))


def test_directory_inode_must_not_be_shared() -> None:
    d = directory(b"d")
    root = tree(d, Node(b"e", d.inode, {}))
    with pytest.raises(ValueError, match="shares its Inode"):
        plan_layout(root)
