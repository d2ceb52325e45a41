"""Directory layer source: a directory tree read as :class:`LayerEntry` objects.

The tree is a root filesystem or a snapshot's upper directory (what BuildKit hands an
exporter); the entries go to :func:`nydus_exporter.pipeline.pack.pack_entries` exactly like the entries
of a tar layer ([format §5.1], "Directory sources").

Walk order and paths
    Depth first, a directory before its contents, siblings in byte order of their (emitted)
    names; the root itself comes first as ``b"/"``. Symlinks are never followed. Every
    directory is opened relative to its parent's descriptor with ``O_NOFOLLOW`` and checked
    to be the inode the parent listed, so a tree changed under our feet can never make the
    walk leave ``root`` or loop (``root`` itself may be a symlink to a directory). One
    descriptor per directory level is open, plus at most one file; a tree deeper than the
    open-file limit fails with :class:`CorruptLayerError` ("too many open files").

Metadata (from ``lstat``; for regular files from ``fstat`` of the opened file)
    permission bits (12), uid, gid, mtime with nanoseconds, symlink targets (raw
    ``readlink`` bytes), device numbers, and every xattr as raw bytes (``llistxattr``).
    The root keeps its own metadata, mtime included; nydus-image zeroes the root mtime of
    directory builds ([format §5.1]) -- a caller that wants that can overwrite the first entry.

Hardlinks
    Non-directories with ``st_nlink > 1`` are grouped by ``(st_dev, st_ino)``. The first path
    of a group met in walk order is an ordinary entry; later paths are
    :attr:`EntryKind.HARDLINK` entries whose ``link_target`` is that first path, so a link
    never precedes its target (their mode, owner and mtime repeat the inode's, as a tar
    hardlink header does; their xattrs are left empty: the target's are the inode's). Links
    to inodes outside the tree are ordinary entries.

Regular file data
    ``LayerEntry.data`` is opened when the entry is yielded and closed when the next entry is
    requested; nothing is read into memory. ``size`` comes from ``fstat`` of the open file.
    A file that shrinks while it is read fails at once; one whose size or mtime changed, or
    that still has data after ``size`` bytes, fails when the next entry is requested -- in
    both cases with :class:`CorruptLayerError` naming it, so no inconsistent blob is
    finished (``pack_entries`` only completes after the last entry).

Sockets
    LayerEntry (and the OCI layer format) cannot carry a socket: sockets are skipped, and
    ``on_warning`` hears about each one (docker/containerd archivers skip them too).

Whiteouts (``whiteouts=``)
    ``"oci"``: names ``.wh.*`` are ordinary entries (they already are OCI whiteouts and are
    applied when layers are merged, [format §5.2]); everything else, overlayfs xattrs included, is
    passed through unchanged.

    ``"overlayfs"``: the tree is an overlayfs upper directory (BuildKit's snapshot layout)
    and its whiteouts are rewritten into OCI form, so the OCI merge rules apply downstream:

    * a character device 0/0 named ``X`` becomes an empty regular file ``.wh.X`` (mode 0,
      uid/gid 0, mtime 0). Overlayfs hardlinks whiteouts to one shared inode; they are never
      grouped as hardlinks. The same holds for an "xwhiteout" (Linux 6.7): an empty regular
      file carrying ``<ns>.overlay.whiteout`` in a directory whose ``<ns>.overlay.opaque`` is
      ``x``;
    * a directory whose ``trusted.overlay.opaque`` or ``user.overlay.opaque`` is ``y`` is
      yielded without that xattr and followed by an empty regular file
      ``<dir>/.wh..wh..opq`` (mode 0, uid/gid 0, mtime 0);
    * the overlayfs-private xattrs ``trusted.overlay.*`` and ``user.overlay.*`` (opaque,
      origin, impure, nlink, upper, uuid, protattr, whiteout, ...) are dropped: they describe
      the overlay mount, not the files, and a reader would misinterpret them (an ``opaque``
      left on a lower directory would hide the directories of later layers). Escaped names
      of nested overlays, ``<ns>.overlay.overlay.<rest>``, are unescaped to
      ``<ns>.overlay.<rest>`` (they are the real xattrs of the merged file);
    * ``<ns>.overlay.redirect`` (a renamed directory) and ``<ns>.overlay.metacopy`` (a file
      whose data lives in a lower layer) cannot be expressed in a layer:
      :class:`UnsupportedEntryError`. Mount snapshots with ``redirect_dir=off,metacopy=off``.

    A converted name that collides with a real sibling (``X`` whited out while ``.wh.X``
    exists) raises :class:`UnsafePathError`.

Errors
    Unreadable entries (permission denied), entries that vanish or change while the tree
    is read, and I/O errors raise :class:`CorruptLayerError` with the on-disk path and the
    reason; a bare ``.wh.`` name raises :class:`UnsafePathError` (image-spec PR 1314).
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, cast

from nydus_exporter.errors import ConfigError, CorruptLayerError, UnsafePathError, UnsupportedEntryError
from nydus_exporter.layer.entry import EntryKind, LayerEntry

Whiteouts = Literal["oci", "overlayfs"]
Warn = Callable[[str], None]

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"

# Overlayfs keeps its private xattrs under one of two prefixes: "trusted." normally, "user."
# on "userxattr" (rootless) mounts ([pitfalls §4]).
_OVERLAY_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
_OVERLAY_FATAL = (b"redirect", b"metacopy")

_NSEC = 1_000_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a FIFO replaced the file after the listing, open() must not wait for a writer
# (the identity check then rejects it); it has no effect on regular files.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_NOATIME = getattr(os, "O_NOATIME", 0)
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)
_PROC_FD = b"/proc/self/fd"


def _ignore(message: str) -> None:
    pass


def iter_directory(
    root: Path | str, *, whiteouts: Whiteouts = "oci", on_warning: Warn = _ignore
) -> Iterator[LayerEntry]:
    """Yield the tree under ``root`` as layer entries (see the module docstring for the rules).

    ``whiteouts`` is ``"oci"`` (a plain tree; ``.wh.*`` files are whiteouts already) or
    ``"overlayfs"`` (an overlayfs upper directory, converted to OCI whiteouts).
    ``on_warning`` hears about what is skipped (sockets).
    """
    if whiteouts not in ("oci", "overlayfs"):
        raise ConfigError(f"whiteouts must be 'oci' or 'overlayfs', not {whiteouts!r}")
    return _Walker(os.fsencode(root), overlay=whiteouts == "overlayfs", on_warning=on_warning).walk()


@dataclass(slots=True)
class _Child:
    name: bytes  # on disk
    out_name: bytes  # in the layer (differs for converted whiteouts)
    st: os.stat_result
    whiteout: bool = False


@dataclass(slots=True)
class _Frame:
    """One open directory of the walk: its descriptor and the children still to visit."""

    fd: int
    prefix: bytes  # its path, b"" for the root (children are prefix + b"/" + name)
    children: list[_Child] = field(default_factory=list)
    next: int = 0


@dataclass(slots=True)
class _Overlay:
    """What overlayfs says about a directory, read from its private xattrs."""

    opaque: bool = False  # "y": hide the lower directory's contents
    xwhiteouts: bool = False  # "x": may contain xattr-marked whiteouts


class _Walker:
    def __init__(self, root: bytes, *, overlay: bool, on_warning: Warn) -> None:
        self._root = root.rstrip(b"/") if root.rstrip(b"/") else root
        self._overlay = overlay
        self._warn = on_warning
        self._links: dict[tuple[int, int], bytes] = {}
        self._noatime = _NOATIME
        # xattr calls take no dir_fd; /proc/self/fd/<dirfd>/<name> resolves the name relative
        # to the already-verified directory descriptor (no path component can be swapped).
        self._proc_fd = os.path.isdir(_PROC_FD)

    # -- paths and errors ------------------------------------------------------------------

    def _disk(self, path: bytes) -> str:
        full = self._root if path == b"/" else self._root.rstrip(b"/") + path
        return full.decode("utf-8", "backslashreplace")

    def _fail(self, exc: OSError, path: bytes, doing: str) -> CorruptLayerError:
        where = self._disk(path)
        if exc.errno == errno.ENOENT:
            return CorruptLayerError(f"{where} vanished while the directory was read ({doing})")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return CorruptLayerError(f"permission denied: cannot {doing} {where}")
        if exc.errno == errno.EMFILE:
            return CorruptLayerError(f"cannot {doing} {where}: too many open files (tree too deep?)")
        return CorruptLayerError(f"cannot {doing} {where}: {exc.strerror or exc}")

    def _changed(self, path: bytes, what: str) -> CorruptLayerError:
        return CorruptLayerError(f"{self._disk(path)} changed while the directory was read ({what})")

    # -- the walk --------------------------------------------------------------------------

    def walk(self) -> Iterator[LayerEntry]:
        # An explicit stack, not recursion: a tree thousands of levels deep must not hit
        # Python's recursion limit (nested generators count against it).
        frames: list[_Frame] = []
        try:
            try:
                fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise self._fail(exc, b"/", "open directory") from exc
            frames.append(_Frame(fd, b""))
            yield from self._enter(frames[-1], b"/", self._fstat(fd, b"/"))
            while frames:
                frame = frames[-1]
                if frame.next == len(frame.children):
                    os.close(frames.pop().fd)
                    continue
                child = frame.children[frame.next]
                frame.next += 1
                path = frame.prefix + b"/" + child.out_name
                if stat.S_ISDIR(child.st.st_mode):
                    fd = self._open_subdirectory(frame.fd, child, path)
                    frames.append(_Frame(fd, path))
                    st = self._fstat(fd, path)
                    if (st.st_dev, st.st_ino) != (child.st.st_dev, child.st.st_ino):
                        raise self._changed(path, "replaced by another directory")
                    yield from self._enter(frames[-1], path, st)
                else:
                    yield from self._leaf(frame.fd, child, path)
        finally:
            for frame in frames:
                os.close(frame.fd)

    def _enter(self, frame: _Frame, path: bytes, st: os.stat_result) -> Iterator[LayerEntry]:
        """Yield the directory open in ``frame`` (and its opaque marker); list its children."""
        xattrs = self._read_xattrs(path, fd=frame.fd)
        info = _Overlay()
        if self._overlay:
            xattrs, info = self._overlay_xattrs(path, xattrs)
        yield _entry(path, EntryKind.DIRECTORY, st, xattrs)
        if info.opaque:
            yield _marker(frame.prefix + b"/" + OPAQUE_MARKER)
        frame.children = self._list(frame.fd, path, opaque_marker=info.opaque, xwhiteouts=info.xwhiteouts)

    def _open_subdirectory(self, parent_fd: int, child: _Child, path: bytes) -> int:
        try:
            return os.open(child.name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._changed(path, "no longer a directory") from exc
            raise self._fail(exc, path, "open directory") from exc

    def _fstat(self, fd: int, path: bytes) -> os.stat_result:
        try:
            return os.fstat(fd)
        except OSError as exc:
            raise self._fail(exc, path, "stat") from exc

    def _list(self, fd: int, path: bytes, *, opaque_marker: bool, xwhiteouts: bool) -> list[_Child]:
        """The children of the directory open at ``fd``, lstat'ed, sorted by emitted name."""
        children: list[_Child] = []
        prefix = b"" if path == b"/" else path
        try:
            with os.scandir(fd) as it:
                for dirent in it:
                    name = os.fsencode(dirent.name)
                    try:
                        # One fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW) per entry, cached.
                        st = dirent.stat(follow_symlinks=False)
                    except OSError as exc:
                        raise self._fail(exc, prefix + b"/" + name, "stat") from exc
                    children.append(_Child(name, name, st))
        except OSError as exc:
            raise self._fail(exc, path, "list directory") from exc
        for child in children:
            if child.name == WHITEOUT_PREFIX:
                raise UnsafePathError(
                    f"{self._disk(prefix + b'/' + child.name)}: a bare '.wh.' name is not a valid "
                    "OCI whiteout (image-spec PR 1314)"
                )
            if self._overlay and self._is_whiteout(fd, prefix + b"/" + child.name, child, xwhiteouts):
                child.whiteout = True
                child.out_name = WHITEOUT_PREFIX + child.name
        children.sort(key=lambda c: c.out_name)
        if self._overlay:
            self._check_collisions(prefix, children, opaque_marker)
        return children

    def _check_collisions(self, prefix: bytes, children: list[_Child], opaque_marker: bool) -> None:
        names = [OPAQUE_MARKER] if opaque_marker else []
        names += [c.out_name for c in children]
        if len(set(names)) == len(names):
            return
        seen: set[bytes] = set()
        for name in names:
            if name in seen:
                raise UnsafePathError(
                    f"{self._disk(prefix + b'/' + name)}: an overlayfs whiteout converts to the name "
                    "of an existing file"
                )
            seen.add(name)

    def _is_whiteout(self, dir_fd: int, path: bytes, child: _Child, xwhiteouts: bool) -> bool:
        st = child.st
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        if xwhiteouts and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            names = self._read_xattrs(path, dir_fd=dir_fd, name=child.name, names_only=True)
            return any(prefix + b"whiteout" in names for prefix in _OVERLAY_PREFIXES)
        return False

    def _leaf(self, dir_fd: int, child: _Child, path: bytes) -> Iterator[LayerEntry]:
        st = child.st
        if child.whiteout:
            yield _marker(path)
            return
        if stat.S_ISSOCK(st.st_mode):
            self._warn(f"{self._disk(path)}: skipped a socket (a layer cannot carry sockets)")
            return
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            first = self._links.get(key)
            if first is not None:
                # stat fields as a tar hardlink header carries them; the inode is the target's
                link = _entry(path, EntryKind.HARDLINK, st, {})
                link.link_target = first
                yield link
                return
        if stat.S_ISREG(st.st_mode):
            yield from self._regular(dir_fd, child, path)
        else:
            yield self._special(dir_fd, child, path)
        if st.st_nlink > 1:
            self._links[key] = path

    def _special(self, dir_fd: int, child: _Child, path: bytes) -> LayerEntry:
        st = child.st
        xattrs = self._read_xattrs(path, dir_fd=dir_fd, name=child.name)
        if self._overlay:
            xattrs, _ = self._overlay_xattrs(path, xattrs)
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(child.name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise self._changed(path, "no longer a symlink") from exc
                raise self._fail(exc, path, "read symlink") from exc
            entry = _entry(path, EntryKind.SYMLINK, st, xattrs)
            entry.link_target = os.fsencode(target)
            entry.size = len(entry.link_target)
            return entry
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = EntryKind.CHAR_DEVICE if stat.S_ISCHR(mode) else EntryKind.BLOCK_DEVICE
            entry = _entry(path, kind, st, xattrs)
            entry.devmajor, entry.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            return entry
        if stat.S_ISFIFO(mode):
            return _entry(path, EntryKind.FIFO, st, xattrs)
        raise UnsupportedEntryError(f"{self._disk(path)}: unknown file type {stat.S_IFMT(mode):o}")

    def _regular(self, dir_fd: int, child: _Child, path: bytes) -> Iterator[LayerEntry]:
        fd = self._open_file(dir_fd, child.name, path)
        data: _FileData | None = None
        try:
            st = self._fstat(fd, path)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (child.st.st_dev, child.st.st_ino):
                raise self._changed(path, "replaced by another file")
            xattrs = self._read_xattrs(path, fd=fd)
            if self._overlay:
                xattrs, _ = self._overlay_xattrs(path, xattrs)
            data = _FileData(fd, st, self._disk(path))
            entry = _entry(path, EntryKind.REGULAR, st, xattrs)
            entry.size = st.st_size
            entry.data = cast(BinaryIO, data)
            yield entry
            # The consumer asks for the next entry: the file must still be what we described.
            data.finish()
        finally:
            if data is not None:
                data.close()
            os.close(fd)

    def _open_file(self, dir_fd: int, name: bytes, path: bytes) -> int:
        while True:
            try:
                return os.open(name, _FILE_FLAGS | self._noatime, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.EPERM and self._noatime:
                    self._noatime = 0  # O_NOATIME needs file ownership or CAP_FOWNER
                    continue
                if exc.errno == errno.ELOOP:
                    raise self._changed(path, "replaced by a symlink") from exc
                raise self._fail(exc, path, "open") from exc

    # -- xattrs ----------------------------------------------------------------------------

    def _read_xattrs(
        self,
        path: bytes,
        *,
        fd: int | None = None,
        dir_fd: int | None = None,
        name: bytes = b"",
        names_only: bool = False,
    ) -> dict[bytes, bytes]:
        """Every xattr of an open file (``fd``) or of ``name`` in ``dir_fd`` (not followed)."""
        target: int | bytes
        if fd is not None:
            target = fd
        elif self._proc_fd and dir_fd is not None:
            target = b"%s/%d/%s" % (_PROC_FD, dir_fd, name)
        else:
            target = self._root.rstrip(b"/") + path
        follow = isinstance(target, int)  # a descriptor: the flag must stay at its default
        try:
            names = os.listxattr(target, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                return {}
            raise self._fail(exc, path, "list xattrs of") from exc
        out: dict[bytes, bytes] = {}
        for xname in sorted(names):
            raw = os.fsencode(xname)
            if names_only:
                out[raw] = b""
                continue
            try:
                out[raw] = os.getxattr(target, xname, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    continue  # removed since the listing: the state without it is consistent
                raise self._fail(exc, path, f"read xattr {xname} of") from exc
        return out

    def _overlay_xattrs(self, path: bytes, xattrs: dict[bytes, bytes]) -> tuple[dict[bytes, bytes], _Overlay]:
        """Drop overlayfs-private xattrs (unescaping nested ones) and note what they said."""
        info = _Overlay()
        kept: dict[bytes, bytes] = {}
        for name, value in xattrs.items():
            prefix = next((p for p in _OVERLAY_PREFIXES if name.startswith(p)), None)
            if prefix is None:
                kept[name] = value
                continue
            rest = name[len(prefix) :]
            if rest.startswith(b"overlay."):
                kept[prefix + rest[len(b"overlay.") :]] = value  # escaped xattr of a nested overlay
            elif rest == b"opaque":
                info.opaque = info.opaque or value == b"y"
                info.xwhiteouts = info.xwhiteouts or value == b"x"
            elif rest in _OVERLAY_FATAL:
                raise UnsupportedEntryError(
                    f"{self._disk(path)} carries {name.decode('ascii', 'replace')}: overlayfs "
                    f"{rest.decode()} cannot be expressed in a layer "
                    "(mount the overlay with redirect_dir=off,metacopy=off)"
                )
        return kept, info


def _entry(path: bytes, kind: EntryKind, st: os.stat_result, xattrs: dict[bytes, bytes]) -> LayerEntry:
    mtime, mtime_nsec = divmod(st.st_mtime_ns, _NSEC)  # floor: pre-1970 nsec stay positive
    return LayerEntry(
        path=path,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=mtime,
        mtime_nsec=mtime_nsec,
        xattrs=xattrs,
    )


def _marker(path: bytes) -> LayerEntry:
    """An empty OCI whiteout / opaque marker file (how containerd's archiver writes them)."""
    return LayerEntry(path=path, kind=EntryKind.REGULAR, mode=0, data=io.BytesIO(b""))


class _FileData(io.RawIOBase):
    """The first ``st_size`` bytes of an open file, checked against changes.

    Not buffered: ``read(n)`` hands out one ``os.read`` result (at most ``n`` bytes).
    """

    def __init__(self, fd: int, st: os.stat_result, where: str) -> None:
        super().__init__()
        self._fd = fd
        self._st = st
        self._where = where
        self._remaining = st.st_size

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:  # the descriptor may already be reused by another file
            raise ValueError(f"data of {self._where} read after the walk moved on")
        if size is None or size < 0:
            return self.readall()
        want = min(size, self._remaining)
        if want == 0:
            return b""
        try:
            buf = os.read(self._fd, want)
        except OSError as exc:
            raise CorruptLayerError(f"cannot read {self._where}: {exc.strerror or exc}") from exc
        if not buf:
            done = self._st.st_size - self._remaining
            raise CorruptLayerError(
                f"{self._where} shrank while it was read: it ended after {done} of {self._st.st_size} bytes"
            )
        self._remaining -= len(buf)
        return buf

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(1 << 20):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Raise if the file is no longer what its entry said (size, mtime, trailing data)."""
        try:
            now = os.fstat(self._fd)
            grew = self._remaining == 0 and os.pread(self._fd, 1, self._st.st_size) != b""
        except OSError as exc:
            raise CorruptLayerError(f"cannot read {self._where}: {exc.strerror or exc}") from exc
        if grew or now.st_size != self._st.st_size:
            raise CorruptLayerError(
                f"{self._where} changed size while it was read ({self._st.st_size} -> {now.st_size} bytes)"
            )
        if now.st_mtime_ns != self._st.st_mtime_ns:
            raise CorruptLayerError(f"{self._where} was modified while it was read")
