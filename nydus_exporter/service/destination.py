"""Publishing a staged image into a client's ``oci-layout=`` directory, beneath the allowed roots.

The destination was checked at Resolve, but a directory under an allowed root can change
before the export publishes (``blobs/`` swapped for a symlink to ``/etc``, say). So the
destination is opened here with :func:`~nydus_exporter.service.beneath.open_beneath` (missing
directories created one at a time, no symlink followed out of the root), and everything
below it -- ``blobs/sha256``, the blobs, ``oci-layout``, ``index.json`` -- is created,
renamed and read relative to those directory descriptors, never by path. A final component
that is a symlink is replaced (rename), never written through.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nydus_exporter.errors import FormatError, shorten
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import canonical_json, parse_json_object
from nydus_exporter.oci.layout import (
    BLOBS_DIR,
    IMAGE_LAYOUT_VERSION,
    INDEX_FILE,
    OCI_LAYOUT_FILE,
    OciLayout,
    same_slot,
)
from nydus_exporter.service.beneath import open_beneath
from nydus_exporter.service.errors import PathNotAllowedError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY = 1 << 20
_MAX_INDEX = 64 << 20


def publish_layout(staging: Path, destination: Path, roots: Sequence[Path]) -> None:
    """Move the staged image into ``destination``: blobs first, the index entries (tags) last."""
    source = OciLayout.open(staging)
    entries = source.index().manifests
    dest = open_beneath(roots, destination, "dir", what="oci-layout", create=True)
    try:
        with _locked(dest):
            blobs = _subdirectory(dest, BLOBS_DIR, destination)
            try:
                sha256 = _subdirectory(blobs, "sha256", destination)
            finally:
                os.close(blobs)
            try:
                for blob in sorted((staging / BLOBS_DIR / "sha256").iterdir()):
                    if not blob.name.startswith("."):
                        _move_in(blob, sha256, blob.name)
                os.fsync(sha256)
            finally:
                os.close(sha256)
            if not _exists(dest, OCI_LAYOUT_FILE):
                _write(dest, OCI_LAYOUT_FILE, canonical_json({"imageLayoutVersion": IMAGE_LAYOUT_VERSION}))
            index = _read_index(dest, destination)
            for desc in entries:
                tag = desc.annotation(mt.ANNOTATION_REF_NAME)
                entry = desc.to_json()
                index["manifests"] = [m for m in index["manifests"] if not same_slot(m, entry, tag)]
                index["manifests"].append(entry)
            _write(dest, INDEX_FILE, canonical_json(index))
    finally:
        os.close(dest)


@contextlib.contextmanager
def _locked(dir_fd: int) -> Iterator[None]:
    """The lock :class:`OciLayout` takes too (flock on the layout directory)."""
    fd = os.dup(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _subdirectory(parent: int, name: str, destination: Path) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    try:
        return os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathNotAllowedError(
                f"oci-layout: {shorten(str(destination))}/…/{name} is not a directory (a symlink?)"
            ) from None
        raise


def _exists(dir_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode)


def _move_in(src: Path, dir_fd: int, name: str) -> None:
    """Put the staged blob ``src`` in as ``name`` (rename, or copy across filesystems)."""
    if _exists(dir_fd, name):
        src.unlink()  # content-addressed: the same bytes are there already
        return
    try:
        os.rename(src, name, dst_dir_fd=dir_fd)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    with src.open("rb") as f:
        _write_from(dir_fd, name, iter(lambda: f.read(_COPY), b""))
    src.unlink()


def _write(dir_fd: int, name: str, data: bytes) -> None:
    _write_from(dir_fd, name, iter((data,)))


def _write_from(dir_fd: int, name: str, chunks: Iterator[bytes]) -> None:
    """Write ``name`` atomically in ``dir_fd``: a new temporary file, fsync, rename over."""
    tmp = f".{name}.tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, _NEW_FILE, 0o644, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _read_index(dir_fd: int, destination: Path) -> dict[str, Any]:
    try:
        fd = os.open(INDEX_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return {"schemaVersion": 2, "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX, "manifests": []}
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathNotAllowedError(
                f"oci-layout: {shorten(str(destination))}/{INDEX_FILE} is a symlink"
            ) from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FormatError(f"{shorten(str(destination))}/{INDEX_FILE} is not a file")
        raw = f.read(_MAX_INDEX + 1)
    if len(raw) > _MAX_INDEX:
        raise FormatError(f"{shorten(str(destination))}/{INDEX_FILE} is larger than {_MAX_INDEX} bytes")
    index = parse_json_object(raw, f"{shorten(str(destination))}/{INDEX_FILE}")
    manifests = index.get("manifests", [])
    if not isinstance(manifests, list):
        raise FormatError(f"{shorten(str(destination))}/{INDEX_FILE} has no 'manifests' list")
    kept: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": index.get("mediaType", mt.MEDIA_TYPE_IMAGE_INDEX),
        "manifests": manifests,
    }
    if "annotations" in index:
        kept["annotations"] = index["annotations"]
    return kept
