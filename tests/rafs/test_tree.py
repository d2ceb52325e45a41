"""Per-layer tree assembly rules ([format §5.1]): defaults, replacement, hardlinks."""

from __future__ import annotations

import stat
from typing import Any

import pytest

from nydus_exporter.errors import HardlinkError, UnsafePathError
from nydus_exporter.rafs.model import Inode
from nydus_exporter.rafs.tree import TreeBuilder


def reg(**kw: Any) -> Inode:
    return Inode(mode=stat.S_IFREG | 0o644, **kw)


def dir_(mode: int = 0o700, **kw: Any) -> Inode:
    return Inode(mode=stat.S_IFDIR | mode, **kw)


def test_missing_parents_get_default_directories() -> None:
    tree = TreeBuilder()
    tree.add(b"/a/b/c", reg(size=3))
    a = tree.lookup(b"/a")
    assert a is not None
    assert a.inode.mode == stat.S_IFDIR | 0o755
    assert (a.inode.uid, a.inode.gid, a.inode.mtime) == (0, 0, 0)
    assert tree.lookup(b"/a/b/c") is not None


def test_explicit_directory_after_its_contents_keeps_children() -> None:
    tree = TreeBuilder()
    tree.add(b"/a/f", reg())
    tree.add(b"/a", dir_(0o711, uid=5, mtime=99))
    a = tree.lookup(b"/a")
    assert a is not None and a.children is not None
    assert a.inode.mode == stat.S_IFDIR | 0o711 and a.inode.uid == 5
    assert list(a.children) == [b"f"]


def test_root_entry_replaces_root_metadata() -> None:
    tree = TreeBuilder()
    tree.add(b"/x", reg())
    tree.add(b"/", dir_(0o750, mtime=7))
    assert tree.root.inode.mode == stat.S_IFDIR | 0o750
    assert tree.root.children is not None and b"x" in tree.root.children


def test_file_replacing_directory_drops_children() -> None:
    tree = TreeBuilder()
    tree.add(b"/d/inner", reg())
    tree.add(b"/d", reg(size=1))
    d = tree.lookup(b"/d")
    assert d is not None and d.children is None and d.inode.is_reg
    assert tree.lookup(b"/d/inner") is None


def test_later_duplicate_replaces_earlier() -> None:
    tree = TreeBuilder()
    tree.add(b"/f", reg(size=1))
    tree.add(b"/f", reg(size=2))
    f = tree.lookup(b"/f")
    assert f is not None and f.inode.size == 2


def test_hardlink_shares_inode_across_directories() -> None:
    tree = TreeBuilder()
    target = tree.add(b"/a/file", reg(size=4))
    link = tree.add_hardlink(b"/b/link", b"/a/file")
    assert link.inode is target.inode


def test_hardlink_to_symlink_shares_inode() -> None:
    tree = TreeBuilder()
    target = tree.add(b"/s", Inode(mode=stat.S_IFLNK | 0o777, symlink_target=b"x", size=1))
    assert tree.add_hardlink(b"/t", b"/s").inode is target.inode


@pytest.mark.parametrize(
    ("setup", "link", "target", "message"),
    [
        ([], b"/l", b"/missing", r"not earlier in this layer"),
        ([b"/d/x"], b"/l", b"/d", r"points at directory"),
        ([b"/f"], b"/f", b"/f", r"points at itself"),
    ],
    ids=["missing-target", "directory-target", "self"],
)
def test_bad_hardlinks(setup: list[bytes], link: bytes, target: bytes, message: str) -> None:
    tree = TreeBuilder()
    for path in setup:
        tree.add(path, reg())
    with pytest.raises(HardlinkError, match=message):
        tree.add_hardlink(link, target)


def test_path_through_a_file_is_rejected() -> None:
    tree = TreeBuilder()
    tree.add(b"/f", reg())
    with pytest.raises(UnsafePathError, match="not a directory"):
        tree.add(b"/f/g", reg())


def test_root_must_be_a_directory() -> None:
    with pytest.raises(UnsafePathError):
        TreeBuilder().add(b"/", reg())
