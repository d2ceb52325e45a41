"""The Linux kernel reads what we pack from a directory.

A tree with every entry kind (``tests/layer/test_directory.py::build_tree``) is packed with
``pack_entries(iter_directory(src))``; the embedded bootstrap is loop-mounted as EROFS with
the blob's uncompressed image as its device (the steps of ``tests/e2e/test_kernel_oracle.py``),
and the mounted tree must equal the source tree as ``snapshot_dir`` sees both: names, types,
modes, owners, sizes, content, symlink targets, xattrs, rdev, mtime with nanoseconds, nlink
and hardlink groups. The only documented difference: sockets are not packed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nydus_exporter.layer.directory import iter_directory
from nydus_exporter.pipeline.pack import PackOptions, pack_entries
from tests.conftest import require
from tests.e2e.test_kernel_oracle import mountable
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available, mount_rafs
from tests.helpers.treesnap import diff_snapshots, snapshot_dir
from tests.layer.test_directory import build_tree

pytestmark = pytest.mark.kernel


def pack_directory(src: Path, tmp: Path, options: PackOptions) -> tuple[Path, list[Path]]:
    """Pack ``src`` into a blob file; return the bootstrap and the device images to mount."""
    blob = tmp / "layer.blob"
    with blob.open("wb") as out:
        result = pack_entries(iter_directory(src), out.write, options)
    assert result.size == blob.stat().st_size
    packed = mountable(blob, tmp)
    return packed.bootstrap, packed.devices


@pytest.mark.parametrize(
    "options",
    [
        PackOptions(),
        PackOptions(chunk_size=4096, compressor="lz4_block", digester="sha256", threads=3),
    ],
    ids=["default", "4KiB-lz4-sha256"],
)
def test_kernel_mount_equals_the_source_directory(options: PackOptions, tmp_path: Path) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    src = tmp_path / "src"
    built = build_tree(src, privileged=True)
    expected = snapshot_dir(src)
    for sock in built.sockets:  # a layer cannot carry sockets: skipped on purpose
        assert expected.pop(sock).kind == "sock"
    # Guard: the tree really has what the comparison is about.
    kinds = {e.kind for e in expected.values()}
    assert kinds == {"dir", "reg", "symlink", "chr", "blk", "fifo"}
    assert any(e.link_group is not None and e.kind == "symlink" for e in expected.values())
    assert any(e.xattrs for e in expected.values() if e.kind == "symlink")
    assert any(e.mtime_nsec and e.mtime < 0 for e in expected.values())

    bootstrap, devices = pack_directory(src, tmp_path, options)
    with mount_rafs(bootstrap, devices) as mnt:
        actual = snapshot_dir(mnt)
    assert diff_snapshots(expected, actual) == []


def test_a_changed_source_shows_up(tmp_path: Path) -> None:
    """Guard for the oracle: a tree changed after packing no longer compares equal."""
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    src = tmp_path / "src"
    build_tree(src, privileged=True)
    bootstrap, devices = pack_directory(src, tmp_path, PackOptions())
    os.utime(src / "etc" / "hostname", ns=(1, 1))
    expected = snapshot_dir(src)
    with mount_rafs(bootstrap, devices) as mnt:
        differences = diff_snapshots(expected, snapshot_dir(mnt))
    assert any("/etc/hostname" in d and "mtime" in d for d in differences)
