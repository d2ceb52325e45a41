"""The independent reference tree of ``check --source``: the tree a source's layers give when
applied with OCI overlay semantics, computed from the source tars with the stdlib
:mod:`tarfile` (never with the project's layer reader or merge), so that the two sides of the
comparison do not share code; and the comparison of two trees as a user observes them.

Overlay semantics of the reference (image-spec "Applying changesets", what ``umoci unpack``
and containerd do): per layer, whiteouts (``.wh.<name>``) and opaque markers
(``.wh..wh..opq``) act first on the layers below, whatever their position in the tar; other
``.wh..wh.*`` names are ignored; then entries are applied in tar order: a later entry replaces
an earlier one, a directory over a directory only changes its metadata, anything else over a
directory drops the subtree; missing parent directories are created with mode 0755, uid/gid
0, mtime 0 ([format §5.1]) and existing ones are left alone; a hardlink shares its target's inode.
The paths nydus never stores (``/stargz.index.json``, ``/.prefetch.landmark``,
``/.no.prefetch.landmark``) are left out.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
import tarfile
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from nydus_exporter.errors import ExporterError, FormatError
from nydus_exporter.layer.compression import open_layer_stream
from nydus_exporter.pipeline.sources import SourceLayer

if TYPE_CHECKING:
    pass

_HASH_STEP = 1 << 20
_NSEC = 1_000_000_000
_SKIPPED_PATHS = frozenset({b"/stargz.index.json", b"/.prefetch.landmark", b"/.no.prefetch.landmark"})
UNREADABLE = "unreadable: "  # a file hash that is the reason it could not be read
_WH = b".wh."
_WH_OPAQUE = b".wh..wh..opq"
_WH_META = b".wh..wh."
_TAR_KINDS = {
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "chr",
    tarfile.BLKTYPE: "blk",
    tarfile.FIFOTYPE: "fifo",
}


_OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")


def show_path(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


@dataclass(eq=False)
class TreeEntry:
    """One inode of a tree as a user observes it. Hardlink members share one object."""

    kind: str  # "reg", "dir", "symlink", "chr", "blk", "fifo", "sock"
    mode: int  # the 12 permission bits
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    size: int = 0
    sha256: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] = (0, 0)


Tree = dict[bytes, TreeEntry]


_COMPARED = (
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
)


def kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "reg"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "sock"),
    ):
        if test(mode):
            return kind
    raise FormatError(f"unknown file type in mode {mode:#o}")


def diff_trees(expected: Tree, actual: Tree) -> list[str]:
    """Differences as messages naming the path: ``expected`` is the source, ``actual`` the image."""
    out: list[str] = []
    for path in sorted(expected.keys() - actual.keys()):
        out.append(f"{show_path(path)}: in the source ({expected[path].kind}) but not in the image")
    for path in sorted(actual.keys() - expected.keys()):
        out.append(f"{show_path(path)}: in the image ({actual[path].kind}) but not in the source")
    for path in sorted(expected.keys() & actual.keys()):
        want, have = expected[path], actual[path]
        for name in _COMPARED:
            a, b = getattr(want, name), getattr(have, name)
            if name == "sha256" and isinstance(b, str) and b.startswith(UNREADABLE):
                out.append(
                    f"{show_path(path)}: content unreadable in the image: {b.removeprefix(UNREADABLE)}"
                )
                continue
            if a != b:
                if name == "mode":
                    a, b = oct(a), oct(b)
                out.append(f"{show_path(path)}: {name} is {b!r} in the image, {a!r} in the source")
    want_groups, have_groups = _link_groups(expected), _link_groups(actual)
    for group in sorted(want_groups - have_groups, key=sorted):
        out.append(
            f"hardlink group {sorted(show_path(p) for p in group)} of the source is not one in the image"
        )
    for group in sorted(have_groups - want_groups, key=sorted):
        out.append(
            f"hardlink group {sorted(show_path(p) for p in group)} of the image is not one in the source"
        )
    return out


def _link_groups(tree: Tree) -> set[frozenset[bytes]]:
    groups: dict[int, set[bytes]] = {}
    for path, entry in tree.items():
        if entry.kind != "dir":
            groups.setdefault(id(entry), set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def _default_dir() -> TreeEntry:
    return TreeEntry(kind="dir", mode=0o755, uid=0, gid=0, mtime=0, mtime_nsec=0)


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] or b"/"


def _basename(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[1]


def _normalize(raw: bytes) -> bytes | None:
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
    return b"/" + b"/".join(parts)


class _Overlay:
    """The tree being built, with the children of each directory for subtree removal."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.tree: Tree = {b"/": _default_dir()}
        self.children: dict[bytes, set[bytes]] = {b"/": set()}
        self.report = report

    def remove(self, path: bytes) -> None:
        if path == b"/" or path not in self.tree:
            return
        self._drop_children(path)
        del self.tree[path]
        self.children.get(_parent(path), set()).discard(path)

    def _drop_children(self, path: bytes) -> None:
        stack = [path]
        while stack:
            for child in self.children.pop(stack.pop(), set()):
                stack.append(child)
                del self.tree[child]

    def clear_dir(self, path: bytes) -> None:
        if self.tree.get(path) is not None and self.tree[path].kind == "dir":
            self._drop_children(path)
            self.children[path] = set()

    def _ensure_parents(self, path: bytes, where: str) -> bool:
        missing: list[bytes] = []
        parent = _parent(path)
        while parent not in self.tree:
            missing.append(parent)
            parent = _parent(parent)
        if self.tree[parent].kind != "dir":
            self.report(
                f"source {where}: {show_path(path)} lies under {show_path(parent)}, which is not a directory"
            )
            return False
        for directory in reversed(missing):
            self.tree[directory] = _default_dir()
            self.children[directory] = set()
            self.children[_parent(directory)].add(directory)
        return True

    def put(self, path: bytes, entry: TreeEntry, where: str) -> None:
        old = self.tree.get(path)
        if path == b"/":
            if entry.kind == "dir":
                self.tree[path] = entry
            else:
                self.report(f"source {where}: the root is not a directory")
            return
        if not self._ensure_parents(path, where):
            return
        if old is not None and old.kind == "dir" and entry.kind != "dir":
            self._drop_children(path)
        self.tree[path] = entry
        self.children[_parent(path)].add(path)
        if entry.kind == "dir":
            self.children.setdefault(path, set())


@dataclass
class _LayerOps:
    """One layer read: whiteouts/opaque dirs (applied first) and entries in order."""

    whiteouts: list[bytes] = field(default_factory=list)
    opaque: list[bytes] = field(default_factory=list)
    entries: list[tuple[bytes, TreeEntry | bytes]] = field(default_factory=list)  # bytes: link target


def apply_layers(layers: list[SourceLayer], report: Callable[[str], None]) -> Tree:
    """The tree ``layers`` (lowest first) give under OCI overlay semantics (module docstring)."""
    overlay = _Overlay(report)
    for index, layer in enumerate(layers):
        where = f"layer {index} ({layer.name})"
        if layer.directory is not None:
            ops = _read_directory(layer.directory, layer.whiteouts, where, report)
        else:
            assert layer.open is not None
            with layer.open() as stream:
                ops = _read_tar(stream, where, report)
        if index > 0:
            for directory in ops.opaque:
                overlay.clear_dir(directory)
            for path in ops.whiteouts:
                overlay.remove(path)
        for path, item in ops.entries:
            if isinstance(item, bytes):
                target = overlay.tree.get(item)
                if target is None or target.kind == "dir":
                    report(
                        f"source {where}: hardlink {show_path(path)} -> {show_path(item)}: "
                        "target missing or a directory"
                    )
                    continue
                if item != path:
                    overlay.put(path, target, where)
            else:
                overlay.put(path, item, where)
    return overlay.tree


def _classify(path: bytes, ops: _LayerOps) -> bool:
    """Record an OCI whiteout; True when ``path`` is one (or other AUFS bookkeeping)."""
    name = _basename(path) if path != b"/" else b""
    if not name.startswith(_WH):
        return False
    if name == _WH_OPAQUE:
        ops.opaque.append(_parent(path))
    elif not name.startswith(_WH_META):
        parent = _parent(path)
        ops.whiteouts.append((parent if parent != b"/" else b"") + b"/" + name[len(_WH) :])
    return True


def _pax_mtime(value: str) -> tuple[int, int]:
    total = Fraction(value.strip())
    sec = total.numerator // total.denominator
    return sec, int((total - sec) * _NSEC)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _tar_xattrs(pax: Mapping[str, str]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in pax.items():
        if key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(_raw(key[len("LIBARCHIVE.xattr.") :]))
            encoded = _raw(value).strip()
            with contextlib.suppress(binascii.Error, ValueError):
                out[name] = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
    for key, value in pax.items():  # SCHILY wins, as for nydus ([format §5.1])
        if key.startswith("SCHILY.xattr."):
            out[_raw(key[len("SCHILY.xattr.") :])] = _raw(value)
    return out


def _read_tar(stream: BinaryIO, where: str, report: Callable[[str], None]) -> _LayerOps:
    ops = _LayerOps()
    plain = open_layer_stream(stream)  # gzip / zstd / plain (zstd is not in the stdlib)
    try:
        with tarfile.open(fileobj=plain, mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
            for member in tar:
                _take_member(tar, member, ops, where, report)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FormatError(f"source {where}: not a readable tar: {exc}") from exc
    except ExporterError as exc:
        raise FormatError(f"source {where}: {exc}") from exc
    return ops


def _take_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, ops: _LayerOps, where: str, report: Callable[[str], None]
) -> None:
    path = _normalize(_raw(member.name))
    if path is None:
        report(f"source {where}: {member.name!r} climbs above the root")
        return
    if path in _SKIPPED_PATHS:
        return
    if member.islnk():
        target = _normalize(_raw(member.linkname))
        if target is None:
            report(f"source {where}: hardlink {member.name!r} climbs above the root")
        elif not _classify(path, ops):
            ops.entries.append((path, target))
        return
    if _classify(path, ops):
        return
    entry = _entry_of_member(member, where, report)
    if entry is None:
        return
    if entry.kind == "reg":
        data = tar.extractfile(member)
        assert data is not None
        entry.size, entry.sha256 = _hash_stream(data)
    ops.entries.append((path, entry))


def _hash_stream(stream: IO[bytes]) -> tuple[int, str]:
    """(size, sha256 hex) of what ``stream`` holds."""
    h = hashlib.sha256()
    size = 0
    while piece := stream.read(_HASH_STEP):
        h.update(piece)
        size += len(piece)
    return size, h.hexdigest()


def _entry_of_member(member: tarfile.TarInfo, where: str, report: Callable[[str], None]) -> TreeEntry | None:
    if member.isreg():
        kind = "reg"
    else:
        found = _TAR_KINDS.get(member.type)
        if found is None:
            report(f"source {where}: {member.name!r} has unsupported tar type {member.type!r}")
            return None
        kind = found
    pax = member.pax_headers
    mtime, nsec = _pax_mtime(pax["mtime"]) if "mtime" in pax else (int(member.mtime), 0)
    entry = TreeEntry(
        kind=kind,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime=mtime,
        mtime_nsec=nsec,
        xattrs=_tar_xattrs(pax),
    )
    if kind == "symlink":
        entry.target = _raw(member.linkname)
    elif kind in ("chr", "blk"):
        entry.rdev = (member.devmajor, member.devminor)
    return entry


def _read_directory(root: Path, whiteouts: str, where: str, report: Callable[[str], None]) -> _LayerOps:
    """A directory layer: the tree itself (``oci``) or an overlayfs upper dir (``overlayfs``:
    char 0/0 whiteouts, ``overlay.opaque=y`` directories, overlay xattrs dropped)."""
    ops = _LayerOps()
    overlayfs = whiteouts == "overlayfs"
    first_path: dict[tuple[int, int], bytes] = {}
    root_b = os.fsencode(root)
    stack = [b"/"]
    while stack:
        rel = stack.pop()
        full = root_b if rel == b"/" else root_b + rel
        st = os.lstat(full)
        kind = kind_of(st.st_mode)
        if kind == "sock":
            continue
        xattrs = _dir_xattrs(full)
        if overlayfs:
            if _overlay_whiteout(rel, kind, st, xattrs, ops):
                continue
            xattrs = {k: v for k, v in xattrs.items() if not k.startswith(_OVERLAY_XATTR_PREFIXES)}
        elif rel != b"/" and _classify(rel, ops):
            continue
        if kind != "dir" and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in first_path:
                ops.entries.append((rel, first_path[key]))
                continue
            first_path[key] = rel
        ops.entries.append((rel, _disk_entry(full, st, kind, xattrs)))
        if kind == "dir":
            prefix = b"" if rel == b"/" else rel
            stack.extend(prefix + b"/" + name for name in sorted(os.listdir(full), reverse=True))
    del where, report
    return ops


def _overlay_whiteout(
    rel: bytes, kind: str, st: os.stat_result, xattrs: Mapping[bytes, bytes], ops: _LayerOps
) -> bool:
    """Record what an overlayfs upper-dir entry deletes or hides; True for a whiteout (no entry)."""
    if kind == "chr" and st.st_rdev == 0:
        ops.whiteouts.append(rel)
        return True
    if kind == "dir" and any(xattrs.get(p + b"opaque") == b"y" for p in _OVERLAY_XATTR_PREFIXES):
        ops.opaque.append(rel)
    return False


def _disk_entry(full: bytes, st: os.stat_result, kind: str, xattrs: dict[bytes, bytes]) -> TreeEntry:
    entry = TreeEntry(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns // _NSEC,
        mtime_nsec=st.st_mtime_ns % _NSEC,
        xattrs=xattrs,
    )
    if kind == "reg":
        with open(full, "rb") as f:
            entry.size, entry.sha256 = _hash_stream(f)
    elif kind == "symlink":
        entry.target = os.readlink(full)
    elif kind in ("chr", "blk"):
        entry.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return entry


def _dir_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[bytes, bytes] = {}
    for name in names:
        with contextlib.suppress(OSError):
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
    return out
