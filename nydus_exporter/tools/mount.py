"""``nydus-exporter mount`` / ``umount``: kernel EROFS mount of a Nydus image, no nydusd ([format §7.3]).

The merged bootstrap is the primary device; each blob-table entry gets one extra device, in
device-table order, holding the blob's *uncompressed* image: every chunk's bytes at its
uncompressed offset, holes elsewhere, the file truncated to the blob's ``uncompressed_size``
(the ``<blob_id>.blob.data`` layout of [format §3.10]). All devices are read-only loop devices::

    losetup --find --show --read-only FILE
    mount -t erofs -o ro,device=/dev/loopB1,device=/dev/loopB2 /dev/loopA MOUNTPOINT

State directory (``--state-dir``; default ``$XDG_STATE_HOME/nydus-exporter`` or
``~/.local/state/nydus-exporter``)::

    blobs/<blob hex>.img          uncompressed blob images, a cache keyed by blob digest
    bootstraps/<sha256>.boot      merged bootstraps (content addressed)
    mounts.json                   {mountpoint: {"image", "loops": [[device, backing file]...]}}
    .lock                         flock serialising builds and mounts.json updates

A blob image is built in a temporary file and renamed, so a file under its final name is
always complete and is reused by later mounts. ``umount`` unmounts and detaches exactly the
loop devices recorded for the mountpoint (after checking each is still backed by our file).
Mounting needs root; without it a :class:`~nydus_exporter.errors.ConfigError` says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nydus_exporter.chunkstore.store import default_state_dir
from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.image.reader import NydusImage, open_image
from nydus_exporter.oci.platform import Platform
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.model import BlobInfo

MOUNTS_FILE = "mounts.json"
BLOBS_DIR = "blobs"
BOOTSTRAPS_DIR = "bootstraps"
_LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"


@dataclass
class MountResult:
    mountpoint: Path
    bootstrap: Path
    loops: list[str]  # primary device first, then one per blob in device-table order
    blob_images: list[Path] = field(default_factory=list)
    built: list[str] = field(default_factory=list)  # blob hexes materialised by this mount
    reused: list[str] = field(default_factory=list)  # blob hexes taken from the cache


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, errors="replace", timeout=120, check=False
        )
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{' '.join(argv)} did not finish in 120 s") from None


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ConfigError(f"{what} needs root (loop devices and mount(2)); run it with sudo")


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_mounts(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / MOUNTS_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, OSError) as exc:
        raise FormatError(f"{state_dir / MOUNTS_FILE} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise FormatError(f"{state_dir / MOUNTS_FILE} is not a JSON object")
    return data


def _save_mounts(state_dir: Path, mounts: dict[str, Any]) -> None:
    _atomic_write(state_dir / MOUNTS_FILE, (json.dumps(mounts, indent=2, sort_keys=True) + "\n").encode())


# -- blob images ---------------------------------------------------------------------------------


def blob_image(image: NydusImage, info: BlobInfo, cache_dir: Path) -> tuple[Path, bool]:
    """The uncompressed image of blob ``info`` in ``cache_dir``: ``(path, reused)``.

    Built chunk by chunk (``os.pwrite`` at each uncompressed offset, holes between them) into a
    temporary file that is renamed once complete; a complete image is reused.
    """
    layer = image.blob_layer(info.blob_id)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{layer.hex}.img"
    with contextlib.suppress(FileNotFoundError):
        if final.stat().st_size == info.uncompressed_size:
            return final, True
    reader = image.blob_reader(layer)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=cache_dir)
    try:
        for info_ci in reader.chunk_infos():
            if info_ci.uncompressed_end > info.uncompressed_size:
                raise FormatError(
                    f"blob {layer.digest}: chunk {info_ci.index} ends at {info_ci.uncompressed_end}, beyond "
                    f"the blob's uncompressed size {info.uncompressed_size}"
                )
            data = reader.read_chunk(info_ci)
            view = memoryview(data)
            offset = info_ci.uncompressed_offset
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        os.ftruncate(fd, info.uncompressed_size)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return final, False


# -- loop devices --------------------------------------------------------------------------------


def _attach(path: Path) -> str:
    res = _run(["losetup", "--find", "--show", "--read-only", str(path)])
    device = res.stdout.strip()
    if res.returncode != 0 or not device:
        raise ConfigError(f"losetup could not attach {path}: {res.stderr.strip() or 'no free loop device'}")
    return device


def _backing_file(device: str) -> str | None:
    name = Path(device).name
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def _detach(device: str, backing: str | None = None) -> None:
    """Detach ``device`` if it is (still) backed by ``backing`` (when given)."""
    if backing is not None:
        current = _backing_file(device)
        if current is None or os.path.realpath(current) != os.path.realpath(backing):
            return  # gone already, or reused for something else: not ours to detach
    # On a device still in use, `losetup -d` sets autoclear: it goes when its user does.
    _run(["losetup", "-d", device])


# -- mount / umount ------------------------------------------------------------------------------


def mount_image(
    spec: str,
    mountpoint: Path | str,
    *,
    platform: Platform | str | None = None,
    state_dir: Path | None = None,
) -> MountResult:
    """Mount the Nydus image ``spec`` read-only at ``mountpoint`` with the kernel EROFS driver."""
    _require_root("mount")
    state = Path(state_dir) if state_dir is not None else default_state_dir()
    target = Path(os.path.realpath(mountpoint))
    if not target.is_dir():
        raise ConfigError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(target):
        raise ConfigError(f"{target} is already a mountpoint")
    with open_image(spec, platform) as image, _locked(state):
        # A registry image: download each blob once instead of one range request per chunk.
        spool = state / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        image.spool_if_remote(spool)
        bootstrap = image.bootstrap()
        boot = read_bootstrap(bootstrap)
        for i, (blob, slot) in enumerate(zip(boot.blobs, boot.devices, strict=True)):
            if blob.blob_id != slot.blob_id:
                raise FormatError(
                    f"device slot {i} names {slot.blob_id!r}, blob table entry {i} {blob.blob_id!r}"
                )
        boot_dir = state / BOOTSTRAPS_DIR
        boot_dir.mkdir(parents=True, exist_ok=True)
        boot_path = boot_dir / f"{hashlib.sha256(bootstrap).hexdigest()}.boot"
        if not boot_path.is_file() or boot_path.stat().st_size != len(bootstrap):
            _atomic_write(boot_path, bootstrap)
        result = MountResult(target, boot_path, [])
        for blob in boot.blobs:
            path, reused = blob_image(image, blob, state / BLOBS_DIR)
            result.blob_images.append(path)
            (result.reused if reused else result.built).append(blob.blob_id)

        attached: list[tuple[str, str]] = []
        try:
            for path in [boot_path, *result.blob_images]:
                attached.append((_attach(path), str(path)))
            loops = [device for device, _ in attached]
            options = ",".join(["ro", *(f"device={d}" for d in loops[1:])])
            res = _run(["mount", "-t", "erofs", "-o", options, loops[0], str(target)])
            if res.returncode != 0:
                raise FormatError(
                    f"mount -t erofs -o {options} {loops[0]} {target} failed: {res.stderr.strip()} "
                    "(see dmesg for the kernel's reason)"
                )
            result.loops = loops
            mounts = _load_mounts(state)
            mounts[str(target)] = {"image": spec, "loops": [list(pair) for pair in attached]}
            _save_mounts(state, mounts)
        except BaseException:
            if os.path.ismount(target) and attached:
                _run(["umount", str(target)])
            for device, backing in reversed(attached):
                _detach(device, backing)
            raise
        return result


def umount_image(mountpoint: Path | str, *, state_dir: Path | None = None) -> list[str]:
    """Unmount a mount made by :func:`mount_image` and detach its loop devices; returns them."""
    _require_root("umount")
    state = Path(state_dir) if state_dir is not None else default_state_dir()
    target = str(Path(os.path.realpath(mountpoint)))
    with _locked(state):
        mounts = _load_mounts(state)
        record = mounts.get(target)
        if not isinstance(record, dict):
            raise ConfigError(f"no nydus-exporter mount is recorded at {target} (state dir {state})")
        if os.path.ismount(target):
            res = _run(["umount", target])
            if res.returncode != 0 and os.path.ismount(target):
                raise ConfigError(f"umount {target} failed: {res.stderr.strip()}")
        loops = record.get("loops", [])
        detached: list[str] = []
        for pair in reversed(loops):
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
                _detach(pair[0], pair[1])
                detached.append(pair[0])
        del mounts[target]
        _save_mounts(state, mounts)
    return list(reversed(detached))
