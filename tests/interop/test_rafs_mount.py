"""A minimal nydusd (``bin/rafs-mount``: nydus-rafs' filesystem over FUSE through
fuse-backend-rs, on nydus-storage's registry backend) mounts images we pushed to a real
registry (docker-registry on 127.0.0.1), serves the tree the kernel serves from the same image,
and reads lazily: reading one small file of a large image fetches only that file's chunks
(and the chunk-info tables), counted by nydus' own backend metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from tests.conftest import require
from tests.helpers import tarbuild as tb
from tests.helpers.treesnap import diff_snapshots, snapshot_dir
from tests.interop import summary
from tests.interop.images import Image, kernel_tree, open_layout, write_tars
from tests.interop.test_rafs_check import rich_layer
from tests.interop.tools import tool
from tests.registry_fixtures import RegistryServer

pytestmark = pytest.mark.kernel

FUSE_REASON = "needs root and /dev/fuse"
MOUNT_TIMEOUT = 60.0
MiB = 1 << 20


def push_image(layers: list[list[tb.Member]], registry: RegistryServer, repo: str, work: Path) -> Image:
    """Export the layers with push=true (and a local OCI layout copy for the bootstrap)."""
    tars = write_tars(work / "tars", layers)
    layout = work / "layout"
    options = parse_output(
        {"name": f"{registry.host}/{repo}:1", "oci-mediatypes": "true", "oci-layout": str(layout)}
    ).options
    export("tar:" + ",".join(str(t) for t in tars), options, state_dir=work / "state")
    return open_layout(layout)


@contextlib.contextmanager
def rafs_mount(bootstrap: Path, source: list[str], work: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Run ``rafs-mount`` until the block ends, then unmount; the dict gets its stats."""
    require(os.geteuid() == 0 and Path("/dev/fuse").exists(), FUSE_REASON)
    mnt = work / "fuse-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    argv = [str(tool("rafs-mount")), str(bootstrap), str(mnt), *source, "--work-dir", str(work / "cache")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stats: dict[str, Any] = {}
    try:
        assert proc.stderr is not None
        # The tool says "mounted" once the FUSE session is live (or exits with an error).
        line = proc.stderr.readline()
        if line.strip() != "mounted":
            proc.wait(MOUNT_TIMEOUT)
            raise AssertionError(f"rafs-mount failed: {line}{proc.stderr.read()}")
        yield mnt, stats
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        try:
            out, err = proc.communicate(timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
            out, err = proc.communicate()
        if proc.returncode == 0 and out.strip():
            stats.update(json.loads(out))
        else:
            stats["error"] = err


def _wait_for_mount(mnt: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mnt):
        assert time.monotonic() < deadline, f"{mnt} never became a mountpoint"
        time.sleep(0.05)


def test_tree_equals_kernel(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    """Every path, attribute and byte nydusd serves from the registry equals the kernel mount."""
    summary.record(summary.MOUNTED, "rich-layer", False)
    image = push_image([rich_layer()], registry, repo_name, tmp_path)
    expected = kernel_tree(image.ref, tmp_path)
    started = time.time()
    with rafs_mount(image.bootstrap, ["--registry", f"http://{registry.host}/{repo_name}"], tmp_path) as (
        mnt,
        stats,
    ):
        _wait_for_mount(mnt)
        served = snapshot_dir(mnt)
    assert "error" not in stats, stats
    # An inode storing mtime 0 is served with the mount time (nydus-rafs
    # `Rafs::get_inode_entry`, see test_rafs_check.py): check that, then compare without it.
    zero_mtime = {p for p, e in expected.items() if (e.mtime, e.mtime_nsec) == (0, 0)}
    for path in zero_mtime:
        assert served[path].mtime >= int(started) - 1, path
    adjusted = {
        p: dataclasses.replace(e, mtime=0, mtime_nsec=0) if p in zero_mtime else e for p, e in served.items()
    }
    assert diff_snapshots(expected, adjusted) == []
    summary.record(summary.MOUNTED, "rich-layer", True)


@pytest.mark.slow
def test_reading_one_file_fetches_only_its_chunks(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    """A 200 MiB image: reading a 10 KiB file fetches under 3 MiB from the registry."""
    small = random.Random(1).randbytes(10_000)
    big = tb.file("data/big.bin", random.Random(2).randbytes(200 * MiB), mtime=1_700_000_000)
    layers: list[list[tb.Member]] = [
        [tb.dir("data", mtime=1_700_000_000), big, tb.file("data/small", small, mtime=1_700_000_001)]
    ]
    summary.record(summary.MOUNTED, "200MiB-lazy", False)
    image = push_image(layers, registry, repo_name, tmp_path)
    (layer,) = image.blob_layers
    assert layer["size"] >= 200 * MiB
    with rafs_mount(image.bootstrap, ["--registry", f"http://{registry.host}/{repo_name}"], tmp_path) as (
        mnt,
        stats,
    ):
        _wait_for_mount(mnt)
        assert (mnt / "data" / "small").read_bytes() == small
    assert "error" not in stats, stats
    (fetched,) = stats["blobs"].values()
    print(f"rafs-mount fetched {fetched} of a {layer['size']}-byte blob")
    assert 0 < fetched["read_amount_total"] < 3 * MiB, fetched
    summary.record(summary.MOUNTED, "200MiB-lazy", True)
