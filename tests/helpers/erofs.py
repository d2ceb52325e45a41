"""Kernel and erofs-utils oracles for the format tests.

Every format test checks what the project writes against an independent reader: the Linux
EROFS driver (loop-mount the bootstrap with one loop device per blob) or ``fsck.erofs``
(erofs-utils 1.5). Tests guard themselves with ``tests.conftest.require``::

    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    with mount_rafs(bootstrap, [blob]) as mnt:
        ...

so they skip on a developer machine without root/loop devices and FAIL in CI.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.helpers.waiting import ConditionTimeout, wait_until

KERNEL_EROFS_REASON = (
    "needs root, loop devices (/dev/loop-control, losetup) and the kernel EROFS driver "
    "(mount -t erofs with device=)"
)
FSCK_EROFS_REASON = "needs fsck.erofs from erofs-utils >= 1.5 (apt-get install erofs-utils)"

# What an fsck.erofs 1.5 extraction does not reproduce, to pass as
# ``diff_snapshots(..., ignore=FSCK_EXTRACT_IGNORE)``: it writes no xattrs and extracts every
# hardlink member as a separate file. (It also chowns after chmod, which clears set-id bits:
# compare set-id files through the kernel mount instead.)
FSCK_EXTRACT_IGNORE = frozenset({"xattrs", "nlink", "link_group"})

# How long to keep retrying `umount` while the mount is busy (a test's open file, a
# lingering process started inside the mountpoint).
_UMOUNT_RETRY_SECONDS = 5.0


def _run(argv: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )


def _erofs_registered() -> bool:
    with contextlib.suppress(OSError):
        return any(
            line.split()[-1:] == ["erofs"] for line in Path("/proc/filesystems").read_text().splitlines()
        )
    return False


@functools.cache
def kernel_erofs_available() -> bool:
    """True when this process can loop-mount an EROFS image read-only."""
    if os.geteuid() != 0:
        return False
    if not Path("/dev/loop-control").exists():
        return False
    if shutil.which("losetup") is None or shutil.which("mount") is None or shutil.which("umount") is None:
        return False
    if _erofs_registered():
        return True
    # Built as a module and not loaded yet: mount(2) would autoload it, but only through
    # modprobe, so try that explicitly and look again.
    if shutil.which("modprobe") is not None:
        _run(["modprobe", "erofs"], timeout=30)
    return _erofs_registered()


@functools.cache
def fsck_erofs_available() -> bool:
    """True when ``fsck.erofs`` (with ``--extract`` and ``--device``) is installed."""
    exe = shutil.which("fsck.erofs")
    if exe is None:
        return False
    help_text = _run([exe, "--help"], timeout=30)
    text = help_text.stdout + help_text.stderr
    return "--extract" in text and "--device" in text


def _dmesg_tail(lines: int = 20) -> str:
    try:
        out = _run(["dmesg"], timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(dmesg unavailable: {exc})"
    return "\n".join(out.splitlines()[-lines:])


def _attach_loop(path: Path) -> str:
    res = _run(["losetup", "--find", "--show", "--read-only", str(path)])
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(f"losetup failed for {path}: {res.stderr.strip()}")
    return res.stdout.strip()


def _detach_loop(dev: str, backing: Path) -> None:
    """Detach ``dev`` and wait until it no longer holds ``backing``.

    `losetup -d` on a device that is still open (udev probing it, a lazily unmounted
    filesystem) sets autoclear and succeeds: the kernel detaches it when the last user
    closes it. Once it succeeded it is never repeated, as the freed device may already be
    attached again by another test.
    """
    detached = _run(["losetup", "-d", dev]).returncode == 0

    def released() -> bool:
        nonlocal detached
        if f"{dev}:" not in _run(["losetup", "-j", str(backing)]).stdout:
            return True
        if not detached:  # refused outright: still ours, so try again
            detached = _run(["losetup", "-d", dev]).returncode == 0
        return False

    with contextlib.suppress(ConditionTimeout):  # a lazily unmounted filesystem frees it later
        wait_until(released, 10, what=f"{dev} lets go of {backing}")


def _unmount(mountpoint: Path) -> None:
    def unmounted() -> bool:
        return _run(["umount", str(mountpoint)]).returncode == 0 or not os.path.ismount(mountpoint)

    try:
        wait_until(unmounted, _UMOUNT_RETRY_SECONDS, what=f"{mountpoint} unmounts")
    except ConditionTimeout:
        # Still busy: detach it lazily so the loops and the tempdir can go.
        _run(["umount", "-l", str(mountpoint)])


@contextlib.contextmanager
def mount_rafs(bootstrap: Path, devices: Sequence[Path] = ()) -> Iterator[Path]:
    """Loop-mount ``bootstrap`` read-only as EROFS with ``devices`` as its extra devices.

    ``devices`` must be in device-table order (device 1 = blob table entry 0, ...). Yields
    the mountpoint; on exit (also on error) unmounts and detaches every loop device.
    """
    loops: list[tuple[str, Path]] = []  # (device, backing file)
    mountpoint = Path(tempfile.mkdtemp(prefix="rafs-mnt-"))
    mounted = False
    try:
        boot_loop = _attach_loop(Path(bootstrap))
        loops.append((boot_loop, Path(bootstrap)))
        for dev in devices:
            loops.append((_attach_loop(Path(dev)), Path(dev)))
        options = ["ro", *(f"device={loop}" for loop, _ in loops[1:])]
        res = _run(["mount", "-t", "erofs", "-o", ",".join(options), boot_loop, str(mountpoint)])
        if res.returncode != 0:
            raise RuntimeError(
                f"mount -t erofs -o {','.join(options)} {bootstrap} failed "
                f"(exit {res.returncode}): {res.stderr.strip()}\n--- dmesg tail ---\n{_dmesg_tail()}"
            )
        mounted = True
        yield mountpoint
    finally:
        if mounted:
            _unmount(mountpoint)
        for loop, backing in reversed(loops):
            _detach_loop(loop, backing)
        if not os.path.ismount(mountpoint):
            with contextlib.suppress(OSError):
                mountpoint.rmdir()


def fsck_extract(bootstrap: Path, devices: Sequence[Path], dest: Path) -> None:
    """Check the image with ``fsck.erofs`` and extract it to ``dest`` (must not exist yet
    or be empty). Raises AssertionError with fsck's output when it reports a problem.

    See FSCK_EXTRACT_IGNORE for what the extracted tree cannot be compared on."""
    # erofs-utils 1.5 takes one `--device=PATH` per extra device, in device-table order.
    argv = ["fsck.erofs", *(f"--device={dev}" for dev in devices), f"--extract={dest}", str(bootstrap)]
    res = _run(argv, timeout=1800)
    if res.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}".rstrip()
        )


def fsck_check(bootstrap: Path, devices: Sequence[Path] = ()) -> None:
    """Run ``fsck.erofs --extract`` without a destination: decode every file, write nothing."""
    argv = ["fsck.erofs", *(f"--device={dev}" for dev in devices), "--extract", str(bootstrap)]
    res = _run(argv, timeout=1800)
    if res.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}".rstrip()
        )
