"""Assemble a per-layer tree from entries in stream order ([format §5.1] "Tar entry handling").

Rules, as nydus-image applies them to a layer:

* the root exists from the start (directory 0755, uid/gid 0, mtime 0); an entry for ``/``
  replaces its metadata and keeps its children;
* missing parent directories are created with the same defaults; a later explicit entry for
  such a directory replaces its metadata and keeps its children;
* a later entry for an existing path replaces the earlier node; a directory replacing a
  directory keeps the children, anything else drops them;
* a hardlink shares the target's :class:`Inode` (one nid at dump time); the target must
  already be in this layer and must not be a directory.

Whiteouts are ordinary entries here; they are applied when layers are merged.
"""

from __future__ import annotations

import stat

from nydus_exporter.errors import HardlinkError, UnsafePathError
from nydus_exporter.rafs.model import Inode, Node

ROOT_PATH = b"/"


def default_dir_inode() -> Inode:
    """Metadata of the root and of implied parent directories."""
    return Inode(mode=stat.S_IFDIR | 0o755)


class TreeBuilder:
    """Builds the :class:`Node` tree of one layer from normalised absolute paths."""

    def __init__(self) -> None:
        self.root = Node.directory(ROOT_PATH, default_dir_inode())

    def add(self, path: bytes, inode: Inode) -> Node:
        """Insert or replace the entry at ``path`` (absolute, normalised)."""
        if path == ROOT_PATH:
            if not inode.is_dir:
                raise UnsafePathError("the layer root must be a directory")
            self.root.inode = inode
            return self.root
        parent, name = self._parent_of(path)
        assert parent.children is not None
        old = parent.children.get(name)
        if old is not None and old.inode.is_dir and inode.is_dir:
            old.inode = inode  # keep the children (an explicit entry after its contents)
            return old
        node = Node.directory(name, inode) if inode.is_dir else Node(name, inode)
        parent.children[name] = node
        return node

    def add_hardlink(self, path: bytes, target: bytes) -> Node:
        """Make ``path`` another name of the inode at ``target``."""
        target_node = self.lookup(target)
        if target_node is None:
            raise HardlinkError(
                f"hardlink {_show(path)} points at {_show(target)}, which is not earlier in this layer"
            )
        if target_node.inode.is_dir:
            raise HardlinkError(f"hardlink {_show(path)} points at directory {_show(target)}")
        if path == target:
            raise HardlinkError(f"hardlink {_show(path)} points at itself")
        parent, name = self._parent_of(path)
        assert parent.children is not None
        node = Node(name, target_node.inode)
        parent.children[name] = node
        return node

    def lookup(self, path: bytes) -> Node | None:
        node = self.root
        if path == ROOT_PATH:
            return node
        for name in path[1:].split(b"/"):
            if node.children is None:
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def _parent_of(self, path: bytes) -> tuple[Node, bytes]:
        """The parent directory node of ``path`` (created as needed) and the base name."""
        if not path.startswith(b"/") or path.endswith(b"/"):
            raise UnsafePathError(f"path {_show(path)} is not normalised")
        *dirs, name = path[1:].split(b"/")
        node = self.root
        for component in dirs:
            assert node.children is not None
            child = node.children.get(component)
            if child is None:
                child = Node.directory(component, default_dir_inode())
                node.children[component] = child
            elif child.children is None:
                # A non-directory in the middle of a path: extraction would fail with ENOTDIR.
                raise UnsafePathError(
                    f"path {_show(path)} runs through {_show(component)}, which is not a directory"
                )
            node = child
        return node, name


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
