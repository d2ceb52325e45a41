"""`pack` and `export` on a full disk, into a missing directory, and under SIGTERM: one line
naming the path, a non-zero exit code, and nothing left behind."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require


def _layer(path: Path, size: int = 3 << 20) -> Path:
    """A layer tar with an incompressible file, so its blob needs about ``size`` bytes."""
    data = random.Random(13).randbytes(size)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("noise.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nydus_exporter.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def _one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("nydus-exporter: warning")]
    assert len(lines) == 1, result.stderr  # no traceback
    assert lines[0].startswith("nydus-exporter: error: ")
    for part in parts:
        assert part in lines[0]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: too small for the layers of these tests."""
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_pack_on_a_full_disk(tmp_path: Path, full_disk: Path) -> None:
    layer = _layer(tmp_path / "layer.tar")
    result = _cli("pack", str(layer), "-o", str(full_disk / "layer.blob"))
    _one_error_line(result, f"{full_disk / 'layer.blob'}: No space left on device")
    assert list(full_disk.iterdir()) == []


def test_export_on_a_full_disk(tmp_path: Path, full_disk: Path) -> None:
    layer = _layer(tmp_path / "layer.tar")
    out = full_disk / "images" / "out"
    result = _cli(
        "export",
        f"tar:{layer}",
        "--progress",
        "quiet",
        "--output",
        f"type=nydus,push=false,oci-layout={out},name=a:1",
    )
    _one_error_line(result, str(out), "No space left on device")
    assert list(full_disk.iterdir()) == []  # the layout it created is gone, with its parent


def test_pack_into_a_missing_directory(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "layer.tar", size=1000)
    result = _cli("pack", str(layer), "-o", str(tmp_path / "missing" / "layer.blob"))
    _one_error_line(result, f"{tmp_path / 'missing'}: No such file or directory")


def test_export_metadata_file_in_a_missing_directory_fails_before_the_export(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "layer.tar", size=1000)
    out = tmp_path / "out"
    result = _cli(
        "export",
        f"tar:{layer}",
        "--progress",
        "quiet",
        "--output",
        f"type=nydus,push=false,oci-layout={out},name=a:1",
        "--metadata-file",
        str(tmp_path / "missing" / "metadata.json"),
    )
    _one_error_line(result, "--metadata-file", f"directory {tmp_path / 'missing'} does not exist")
    assert not out.exists()


def _wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_pack_leaves_no_temp_file(tmp_path: Path, sig: signal.Signals) -> None:
    layer = _layer(tmp_path / "layer.tar").read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "nydus_exporter.cli.main", "pack", "-", "-o", str(out_dir / "layer.blob")],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(layer[: 1 << 20])  # pack waits for the rest of the layer
        process.stdin.flush()
        _wait_for(lambda: any(out_dir.iterdir()), "the temporary output file")
        process.send_signal(sig)
        process.stdin.close()
        assert process.wait(timeout=60) == 128 + sig
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert list(out_dir.iterdir()) == []
