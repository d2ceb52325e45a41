"""Opening a client-named host path without ever leaving the allowed roots.

A path a client names (a layer by reference, an ``oci-layout`` destination) is checked
against the allowed roots and then used. Checking a *name* and opening it later is a race: a
component swapped for a symlink in between (``blobs/`` inside a layout, the layer file itself)
would lead the daemon out of the roots. So the check *is* the open: the path is resolved
relative to a descriptor of the root it is under, never following a symlink out of it, and
what was opened is verified with ``fstat``. Callers keep and pass the descriptor; nothing
re-opens the path by name.

Resolution uses ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` where the kernel has it
(symlinks that stay inside the root work). Without it every component is opened relative to
its parent with ``O_NOFOLLOW``, so any symlink in the path is refused.

The roots themselves come from the daemon's configuration and are trusted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from nydus_exporter.errors import shorten
from nydus_exporter.service.errors import PathNotAllowedError, ProtocolError

Kind = Literal["file", "dir"]

_SYS_OPENAT2 = 437  # the same number on every architecture of the unified syscall table
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# A file is first opened with O_PATH: nothing is opened "for real" (no FIFO waits for a
# writer, no device acts on open) until fstat says it is a regular file.
_PATH = os.O_PATH | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY

# Tests switch this off to exercise the component-by-component fallback.
use_openat2 = True


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc symbols: use the fallback
    _libc = None


def _openat2(dir_fd: int, rel: str, flags: int) -> int | None:
    """``openat2`` beneath ``dir_fd``; None if the kernel (or a seccomp filter) lacks it."""
    if _libc is None or not use_openat2:
        return None
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = int(_libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how)))
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM):
        return None
    raise OSError(err, os.strerror(err), rel)


def _open_components(dir_fd: int, parts: Sequence[str], flags: int) -> int:
    """Open ``parts`` below ``dir_fd`` one at a time, never following a symlink."""
    fd = os.dup(dir_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            child = os.open(part, (flags if last else _DIR) | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _relative_parts(path: Path, root: Path) -> list[str] | None:
    if path != root and not path.is_relative_to(root):
        return None
    return list(path.relative_to(root).parts)


def _candidates(roots: Sequence[Path], path: Path) -> list[tuple[Path, list[str]]]:
    found = []
    for root in roots:
        for form in dict.fromkeys((Path(os.path.abspath(root)), Path(os.path.realpath(root)))):
            parts = _relative_parts(path, form)
            if parts is not None:
                found.append((form, parts))
                break
    return found


def _check_path(what: str, path: Path) -> None:
    text = str(path)
    if not path.is_absolute():
        raise ProtocolError(f"{what}: path {shorten(text)} is not absolute")
    if "\0" in text:
        raise ProtocolError(f"{what}: path {shorten(text)} contains a NUL byte")
    if ".." in path.parts:
        raise PathNotAllowedError(f"{what}: path {shorten(text)} contains '..'")


def open_beneath(
    roots: Sequence[Path], path: Path, kind: Kind, *, what: str = "path", create: bool = False
) -> int:
    """A descriptor of ``path`` (a regular file or a directory, as ``kind`` says), opened
    beneath the allowed root it is under without following a symlink out of it.

    ``create`` (directories only): make missing directories, each relative to its parent's
    descriptor. Raises :class:`PathNotAllowedError` when the path is outside every root or
    leads out through a symlink, :class:`ProtocolError` when it is not a ``kind``.
    """
    _check_path(what, path)
    text = shorten(str(path))
    candidates = _candidates(roots, path)
    if not candidates:
        raise PathNotAllowedError(f"{what}: {text} is not under an allowed root")
    root, parts = candidates[0]
    root_fd = os.open(root, _DIR)
    try:
        try:
            fd = _open_at(root_fd, parts, _DIR if kind == "dir" else _PATH, create=create and kind == "dir")
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise PathNotAllowedError(
                    f"{what}: {text} leads out of its allowed root through a symlink"
                ) from None
            if exc.errno == errno.ELOOP:
                raise PathNotAllowedError(
                    f"{what}: {text} goes through a symlink, which is not followed here"
                ) from None
            if exc.errno == errno.ENOTDIR:
                raise ProtocolError(
                    f"{what}: {text} is not a {'directory' if kind == 'dir' else 'file'}"
                ) from None
            if exc.errno == errno.ENOENT:
                raise ProtocolError(f"{what}: {text} does not exist") from None
            raise PathNotAllowedError(f"{what}: cannot open {text}: {exc.strerror}") from None
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):  # O_PATH | O_NOFOLLOW opens the link itself
        os.close(fd)
        raise PathNotAllowedError(f"{what}: {text} is a symlink, which is not followed here")
    if (kind == "dir" and not stat.S_ISDIR(st.st_mode)) or (kind == "file" and not stat.S_ISREG(st.st_mode)):
        os.close(fd)
        raise ProtocolError(f"{what}: {text} is not a {'directory' if kind == 'dir' else 'file'}")
    if kind == "dir":
        return fd
    try:
        # Re-open the very inode just checked (the magic link is resolved by the kernel, no
        # name lookup happens), now for reading.
        return os.open(proc_path(fd), _READ)
    finally:
        os.close(fd)


def _open_at(root_fd: int, parts: list[str], flags: int, *, create: bool) -> int:
    if not parts:
        return os.dup(root_fd)  # the root itself (fstat tells whether it is what was asked)
    try:
        return _open_one(root_fd, parts, flags)
    except FileNotFoundError:
        if not create:
            raise
    # Create what is missing, one directory at a time, each opened without following links.
    fd = os.dup(root_fd)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = _open_one(fd, [part], _DIR)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_one(dir_fd: int, parts: list[str], flags: int) -> int:
    fd = _openat2(dir_fd, "/".join(parts), flags)
    if fd is not None:
        return fd
    return _open_components(dir_fd, parts, flags)


def proc_path(fd: int) -> str:
    """The name of an open descriptor that re-opens the very same file or directory."""
    return f"/proc/self/fd/{fd}"
