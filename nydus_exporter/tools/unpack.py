"""``nydus-exporter unpack``: the merged filesystem of a Nydus image as one tar.

The tar is what a user would get from the image's rootfs: written with the stdlib
:mod:`tarfile` in PAX format, paths in the merged tree's walk order (a directory before its
contents, siblings in byte order, the root as ``./``), and

* permission bits, uid/gid (no user/group names), PAX ``mtime`` records with nanoseconds
  when the inode has any ([format §2.7.2] extended inodes keep them);
* xattrs as ``SCHILY.xattr.<name>`` records (raw value bytes);
* hardlinks: the members sharing one :class:`~nydus_exporter.rafs.model.Inode` are one file
  and ``LNKTYPE`` entries naming it ([format §2.12]);
* symlinks, character/block devices (major/minor), FIFOs. Sockets cannot be in a tar and are
  skipped (reported as warnings, as docker/containerd archivers do).

File content is streamed chunk by chunk from the blobs (one chunk in memory at a time). The
output file is written atomically: a temporary file next to it, renamed on success, removed
on any failure; ``-`` writes to standard output.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from nydus_exporter.errors import ConfigError
from nydus_exporter.image.reader import FileContent, NydusImage, open_image
from nydus_exporter.oci.platform import Platform
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.model import Inode, walk

if TYPE_CHECKING:
    from nydus_exporter.image.registry import RegistryOptions

_NSEC = 1_000_000_000
_TAR_TYPES = {
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
    stat.S_IFREG: tarfile.REGTYPE,
}


@dataclass
class UnpackResult:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    hardlinks: int = 0
    warnings: list[str] = field(default_factory=list)


class _ChunkStream(io.RawIOBase):
    """A file's content as a readable stream over its chunks (for ``TarFile.addfile``)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not len(self._current):
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._current = memoryview(piece)
        n = min(len(b), len(self._current))
        memoryview(b)[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _pax_time(sec: int, nsec: int) -> str:
    """A PAX decimal time with exactly the nanoseconds (no float rounding)."""
    total = sec * _NSEC + nsec
    sign = "-" if total < 0 else ""
    whole, frac = divmod(abs(total), _NSEC)
    return f"{sign}{whole}.{frac:09d}".rstrip("0").rstrip(".")


def _tarinfo(name: str, inode: Inode, warn: Callable[[str], None]) -> tarfile.TarInfo | None:
    kind = _TAR_TYPES.get(stat.S_IFMT(inode.mode))
    if kind is None:
        warn(f"{name}: a socket cannot be stored in a tar; skipped")
        return None
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(inode.mode)
    info.uid, info.gid = inode.uid, inode.gid
    info.uname = info.gname = ""
    info.mtime = inode.mtime
    pax: dict[str, str] = {}
    if inode.mtime_nsec:
        pax["mtime"] = _pax_time(inode.mtime, inode.mtime_nsec)
    for key, value in sorted(inode.xattrs.items()):
        try:
            pax["SCHILY.xattr." + key.decode("utf-8")] = _text(value)
        except UnicodeDecodeError:
            warn(f"{name}: xattr name {key!r} is not UTF-8 and cannot be a PAX keyword; skipped")
    if kind == tarfile.REGTYPE:
        info.size = inode.size
    elif kind == tarfile.SYMTYPE:
        info.linkname = _text(inode.symlink_target)
    elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = layout.decode_rdev(inode.rdev)
    info.pax_headers = pax
    return info


def write_tar(image: NydusImage, out: BinaryIO, *, warn: Callable[[str], None] | None = None) -> UnpackResult:
    """Write the merged filesystem of ``image`` as a tar stream to ``out``."""
    result = UnpackResult()

    def note(message: str) -> None:
        result.warnings.append(message)
        if warn is not None:
            warn(message)

    boot = read_bootstrap(image.bootstrap())
    content = FileContent(image, boot)
    first_name: dict[int, str] = {}  # id(Inode) -> archive name of its first member
    with tarfile.open(
        fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for path, node in walk(boot.root):
            inode = node.inode
            name = "./" if path == b"/" else _text(path[1:])
            if not inode.is_dir:
                linked = first_name.get(id(inode))
                if linked is not None:
                    info = tarfile.TarInfo(name)
                    info.type = tarfile.LNKTYPE
                    info.linkname = linked
                    info.mode = stat.S_IMODE(inode.mode)
                    info.uid, info.gid = inode.uid, inode.gid
                    info.uname = info.gname = ""
                    info.mtime = inode.mtime
                    tar.addfile(info)
                    result.entries += 1
                    result.hardlinks += 1
                    continue
            info_opt = _tarinfo(name, inode, note)
            if info_opt is None:
                continue
            if not inode.is_dir:
                first_name[id(inode)] = name
            if inode.is_reg:
                tar.addfile(info_opt, _ChunkStream(content.iter_file(inode)))
                result.files += 1
                result.bytes += inode.size
            else:
                tar.addfile(info_opt)
            result.entries += 1
    return result


def unpack_image(
    spec: str,
    output: Path | str,
    *,
    platform: Platform | str | None = None,
    warn: Callable[[str], None] | None = None,
    registry: RegistryOptions | None = None,
) -> UnpackResult:
    """Unpack ``spec`` (``oci:DIR[:TAG]`` or ``docker://REF``) to the tar ``output`` (``"-"``:
    standard output), atomically. ``registry``: how to reach a ``docker://`` image, whose
    blobs are downloaded once each (streamed, to a temporary directory removed at the end)
    rather than read with one range request per chunk."""
    with open_image(spec, platform, registry=registry) as image:
        image.spool_if_remote()
        if str(output) == "-":
            return write_tar(image, sys.stdout.buffer, warn=warn)
        target = Path(output)
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise ConfigError(f"cannot write {target}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as f:
                result = write_tar(image, f, warn=warn)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return result
