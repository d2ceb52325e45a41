"""The comparison oracle: a filesystem tree reduced to what a user can observe.

``snapshot_dir`` reads a real tree (a kernel mount, an fsck.erofs extraction, an extracted
tar); ``snapshot_tar`` computes the tree a layer tar *should* produce, using only the stdlib
``tarfile`` module (never project code), with the layer semantics of the spec ([format §5.1]):

* paths are normalised to ``b"/a/b"``; the root is ``b"/"``;
* the root and missing parent directories default to mode 0o755, uid/gid 0, mtime 0,
  unless the tar has an entry for ``./`` or ``/`` (root) or for the directory itself;
* a later entry replaces an earlier one with the same path (a directory replaced by a
  directory keeps its children; replaced by anything else, its subtree goes);
* hardlinks share the target's content and metadata and form one link group;
* xattrs come from PAX ``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*`` records;
* mtime (with nanoseconds) from the PAX ``mtime`` record when present;
* whiteout files (``.wh.*``) are ordinary entries (they are interpreted only by merges).

``diff_snapshots`` lists human-readable differences; tests assert that the list is empty.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import stat
import tarfile
import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import IO

_READ_SIZE = 1 << 20
_NSEC = 1_000_000_000

# Field names of EntrySnap that diff_snapshots compares one by one (link_group is compared
# as a partition, see _link_partition).
_FIELDS = (
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "sha256",
    "target",
    "xattrs",
    "rdev",
    "mtime",
    "mtime_nsec",
    "nlink",
)


@dataclass(frozen=True)
class EntrySnap:
    """One path of a tree as a user sees it (``stat`` + content + xattrs)."""

    kind: str  # "reg", "dir", "symlink", "chr", "blk", "fifo", "sock"
    mode: int  # the 12 permission bits (incl. suid/sgid/sticky)
    uid: int = 0
    gid: int = 0
    size: int = 0  # regular files only
    sha256: str | None = None  # hex digest of the content, regular files only
    target: bytes | None = None  # symlink target
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for chr/blk devices
    mtime: int = 0  # seconds (may be negative)
    mtime_nsec: int = 0
    nlink: int = 1  # reg: number of hardlink members; dir: 2 + subdirs; others 1
    link_group: int | None = None  # shared by the members of a hardlink group (>= 2 members)


Snapshot = dict[bytes, EntrySnap]


# --------------------------------------------------------------------------------------------
# Real trees


def _kind_of(st_mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "reg"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "sock"),
    ):
        if test(st_mode):
            return kind
    raise ValueError(f"unknown file type in mode {st_mode:o}")


def _sha256_stream(stream: IO[bytes]) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    while chunk := stream.read(_READ_SIZE):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def _read_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # filesystem without xattr support
        return {}
    out: dict[bytes, bytes] = {}
    for name in names:
        raw_name = os.fsencode(name)
        out[raw_name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def snapshot_dir(root: Path) -> Snapshot:
    """Snapshot the tree under ``root`` (not following symlinks; ``root`` itself is ``b"/"``)."""
    root_b = os.fsencode(root)
    snap: Snapshot = {}
    inode_members: dict[tuple[int, int], list[bytes]] = {}
    # Explicit stack instead of os.walk: we need lstat of every entry, sorted, bytes paths.
    stack: list[bytes] = [b"/"]
    while stack:
        rel = stack.pop()
        full = root_b if rel == b"/" else root_b + rel
        st = os.lstat(full)
        kind = _kind_of(st.st_mode)
        size, digest, target = 0, None, None
        rdev = (0, 0)
        if kind == "reg":
            with open(full, "rb") as f:
                size, digest = _sha256_stream(f)
        if kind != "dir":
            inode_members.setdefault((st.st_dev, st.st_ino), []).append(rel)
        if kind == "symlink":
            target = os.readlink(full)
        elif kind in ("chr", "blk"):
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        snap[rel] = EntrySnap(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=size,
            sha256=digest,
            target=target,
            xattrs=_read_xattrs(full),
            rdev=rdev,
            mtime=st.st_mtime_ns // _NSEC,
            mtime_nsec=st.st_mtime_ns % _NSEC,
            nlink=st.st_nlink,
        )
        if kind == "dir":
            prefix = b"" if rel == b"/" else rel
            stack.extend(prefix + b"/" + name for name in sorted(os.listdir(full), reverse=True))
    group_id = 0
    for members in inode_members.values():
        if len(members) > 1:
            group_id += 1
            for member in members:
                snap[member] = replace(snap[member], link_group=group_id)
    return snap


# --------------------------------------------------------------------------------------------
# The reference: a layer tar read with the stdlib only


def _raw(text: str) -> bytes:
    """Undo tarfile's decoding (utf-8 with surrogateescape for undecodable bytes)."""
    return text.encode("utf-8", "surrogateescape")


def normalize_tar_path(name: str | bytes) -> bytes:
    """``./a//b/`` -> ``b"/a/b"``; root -> ``b"/"``. ``..`` components are rejected."""
    raw = name if isinstance(name, bytes) else _raw(name)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise ValueError(f"path with '..' in a layer tar: {raw!r}")
    return b"/" + b"/".join(parts)


def _parent(path: bytes) -> bytes:
    head = path.rsplit(b"/", 1)[0]
    return head or b"/"


def _pax_mtime(value: str) -> tuple[int, int]:
    """PAX ``mtime`` is a decimal (possibly negative, fractional) number of seconds."""
    total = Fraction(value.strip())
    sec = total.numerator // total.denominator  # floor, also for negative times
    nsec = int((total - sec) * _NSEC)  # truncate digits past nanoseconds
    return sec, nsec


def _tar_xattrs(pax: Mapping[str, str]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in pax.items():
        if key.startswith("SCHILY.xattr."):
            out[_raw(key[len("SCHILY.xattr.") :])] = _raw(value)
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(_raw(key[len("LIBARCHIVE.xattr.") :]))
            encoded = _raw(value).strip()
            encoded += b"=" * (-len(encoded) % 4)  # libarchive omits the base64 padding
            try:
                out[name] = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"bad base64 in {key}: {exc}") from exc
    # Linux stores only namespaced xattrs; an extraction drops the others (macOS tars carry
    # bare names such as "com.apple.provenance" or "hardlink3").
    return {k: v for k, v in out.items() if k.startswith(_LINUX_XATTR_NAMESPACES)}


_LINUX_XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.", b"system.")


@dataclass
class _Node:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    xattrs: dict[bytes, bytes]
    size: int = 0
    sha256: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] = (0, 0)


def _default_dir() -> _Node:
    # [format §5.1]: the pre-created root and auto-created parents: dir 0755, uid/gid 0, mtime 0.
    return _Node(kind="dir", mode=0o755, uid=0, gid=0, mtime=0, mtime_nsec=0, xattrs={})


_TAR_KINDS = {
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "chr",
    tarfile.BLKTYPE: "blk",
    tarfile.FIFOTYPE: "fifo",
}


def _open_tar(tar: Path | bytes) -> tarfile.TarFile:
    # "r:*" transparently handles gzip/bzip2/xz; zstd is not in the 3.11 stdlib.
    if isinstance(tar, bytes):
        return tarfile.open(fileobj=io.BytesIO(tar), mode="r:*", encoding="utf-8", errors="surrogateescape")
    return tarfile.open(tar, mode="r:*", encoding="utf-8", errors="surrogateescape")


def _node_from_member(member: tarfile.TarInfo) -> _Node:
    if member.isreg():
        kind = "reg"
    else:
        found = _TAR_KINDS.get(member.type)
        if found is None:
            raise ValueError(f"{member.name!r}: unsupported tar member type {member.type!r}")
        kind = found
    pax = member.pax_headers
    if "mtime" in pax:
        mtime, mtime_nsec = _pax_mtime(pax["mtime"])
    else:
        mtime, mtime_nsec = int(member.mtime), 0
    node = _Node(
        kind=kind,
        # A symlink keeps the tar's permission bits, as in RAFS (Linux ignores them; a tar
        # extraction onto a disk filesystem shows 0777 instead).
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime=mtime,
        mtime_nsec=mtime_nsec,
        xattrs=_tar_xattrs(pax),
    )
    if kind == "symlink":
        node.target = _raw(member.linkname)
    elif kind in ("chr", "blk"):
        node.rdev = (member.devmajor, member.devminor)
    return node


def snapshot_tar(tar: Path | bytes) -> Snapshot:
    """The tree that extracting the layer ``tar`` (path or bytes) must produce."""
    # Each path maps to a node; hardlink members map to the SAME _Node object.
    tree: dict[bytes, _Node] = {b"/": _default_dir()}
    children: dict[bytes, set[bytes]] = {b"/": set()}

    def remove_subtree(path: bytes) -> None:
        for child in children.pop(path, set()):
            remove_subtree(child)
            tree.pop(child, None)

    def ensure_parents(path: bytes) -> None:
        parent = _parent(path)
        if path == b"/":
            return
        if parent not in tree:
            ensure_parents(parent)
            tree[parent] = _default_dir()
            children[parent] = set()
            children[_parent(parent)].add(parent)
        elif tree[parent].kind != "dir":
            raise ValueError(f"{path!r}: parent {parent!r} is not a directory in the tar")
        children[parent].add(path)

    def put(path: bytes, node: _Node) -> None:
        old = tree.get(path)
        if old is not None and old.kind == "dir" and node.kind != "dir":
            remove_subtree(path)
        ensure_parents(path)
        tree[path] = node
        if node.kind == "dir":
            children.setdefault(path, set())

    with _open_tar(tar) as tf:
        for member in tf:
            path = normalize_tar_path(member.name)
            if member.islnk():
                link = normalize_tar_path(member.linkname)
                target = tree.get(link)
                # GNU tar links any non-directory (a hardlink to a symlink links the symlink itself).
                if target is None or target.kind == "dir":
                    raise ValueError(f"hardlink {path!r} -> {link!r}: target missing or a directory")
                if link != path:
                    put(path, target)  # the same node object: one inode, several names
                continue
            node = _node_from_member(member)
            if node.kind == "reg":  # includes contiguous and GNU/PAX sparse members
                data = tf.extractfile(member)
                assert data is not None
                node.size, node.sha256 = _sha256_stream(data)
            put(path, node)

    return _freeze(tree, children)


def _freeze(tree: dict[bytes, _Node], children: dict[bytes, set[bytes]]) -> Snapshot:
    members: dict[int, list[bytes]] = {}
    for path, node in tree.items():
        if node.kind != "dir":
            members.setdefault(id(node), []).append(path)
    group_of: dict[int, int] = {}
    for group_id, key in enumerate(sorted(k for k, v in members.items() if len(v) > 1), start=1):
        group_of[key] = group_id
    snap: Snapshot = {}
    for path in sorted(tree):
        node = tree[path]
        if node.kind == "dir":
            nlink = 2 + sum(1 for child in children.get(path, ()) if tree[child].kind == "dir")
        else:
            nlink = len(members[id(node)])
        snap[path] = EntrySnap(
            kind=node.kind,
            mode=node.mode,
            uid=node.uid,
            gid=node.gid,
            size=node.size,
            sha256=node.sha256,
            target=node.target,
            xattrs=dict(node.xattrs),
            rdev=node.rdev,
            mtime=node.mtime,
            mtime_nsec=node.mtime_nsec,
            nlink=nlink,
            link_group=group_of.get(id(node)),
        )
    return snap


# --------------------------------------------------------------------------------------------
# Comparison


def _link_partition(snap: Snapshot) -> set[frozenset[bytes]]:
    groups: dict[int, set[bytes]] = {}
    for path, entry in snap.items():
        if entry.link_group is not None:
            groups.setdefault(entry.link_group, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def _fmt_paths(paths: Iterable[bytes]) -> str:
    return "{" + ", ".join(repr(p) for p in sorted(paths)) + "}"


def diff_snapshots(expected: Snapshot, actual: Snapshot, *, ignore: Collection[str] = ()) -> list[str]:
    """Readable differences between two snapshots (empty list = equal).

    ``ignore`` names EntrySnap fields to leave out (e.g. ``{"mtime_nsec"}``); include
    ``"link_group"`` to skip the hardlink-partition comparison.
    """
    unknown = set(ignore) - {f.name for f in fields(EntrySnap)}
    if unknown:
        raise ValueError(f"unknown EntrySnap fields in ignore: {sorted(unknown)}")
    out: list[str] = []
    for path in sorted(expected.keys() - actual.keys()):
        out.append(f"missing {path!r} ({expected[path].kind})")
    for path in sorted(actual.keys() - expected.keys()):
        out.append(f"extra {path!r} ({actual[path].kind})")
    for path in sorted(expected.keys() & actual.keys()):
        exp, act = expected[path], actual[path]
        for name in _FIELDS:
            if name in ignore:
                continue
            a, b = getattr(exp, name), getattr(act, name)
            if a != b:
                if name == "mode":
                    a, b = oct(a), oct(b)
                out.append(f"{path!r}: {name} expected {a!r}, got {b!r}")
    if "link_group" not in ignore:
        exp_groups, act_groups = _link_partition(expected), _link_partition(actual)
        for group in sorted(exp_groups - act_groups, key=sorted):
            out.append(f"hardlink group {_fmt_paths(group)} expected but not found")
        for group in sorted(act_groups - exp_groups, key=sorted):
            out.append(f"unexpected hardlink group {_fmt_paths(group)}")
    return out
