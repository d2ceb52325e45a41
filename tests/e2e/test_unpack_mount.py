"""``nydus-exporter unpack`` and ``mount``/``umount`` against an independent reference.

The reference is ``umoci unpack`` of a plain OCI image made (with the stdlib) from the very
layer tars the Nydus image was exported from: what a container runtime would see. The
unpacked tar is read back with tests/helpers/treesnap.py ``snapshot_tar`` (stdlib tarfile),
the kernel mount with ``snapshot_dir``; both must equal ``snapshot_dir`` of umoci's rootfs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nydus_exporter.cli.main import main as tools_main
from nydus_exporter.errors import ConfigError
from nydus_exporter.tools import mount as mount_module
from nydus_exporter.tools.mount import MOUNTS_FILE, mount_image
from tests.conftest import PROJECT_ROOT, require
from tests.e2e.test_check import TAG, blob_path, export, load_image, tar_source, write_layers
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available
from tests.helpers.treesnap import Snapshot, diff_snapshots, snapshot_dir, snapshot_tar

UMOCI_REASON = "needs root and umoci (the reference unpacker)"


def _oci_image_of(layers: list[Path], directory: Path) -> str:
    """A plain OCI image layout with ``layers`` as uncompressed tar layers (stdlib only)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        hex_id = hashlib.sha256(data).hexdigest()
        (blobs / hex_id).write_bytes(data)
        return {"digest": f"sha256:{hex_id}", "size": len(data)}

    layer_descs = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", **put(p.read_bytes())} for p in layers
    ]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **put(json.dumps(config).encode()),
        },
        "layers": layer_descs,
    }
    entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "ref"},
    }
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return f"{directory}:ref"


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_layers(tmp_path_factory.mktemp("layers"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, layers: list[Path]) -> Snapshot:
    require(os.geteuid() == 0 and shutil.which("umoci") is not None, UMOCI_REASON)
    work = tmp_path_factory.mktemp("umoci")
    image = _oci_image_of(layers, work / "oci")
    res = subprocess.run(
        ["umoci", "unpack", "--image", image, str(work / "bundle")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    snap = snapshot_dir(work / "bundle" / "rootfs")
    assert b"/gone.txt" not in snap and b"/opq/new" in snap and b"/opq/old" not in snap  # layers applied
    return snap


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, layers: list[Path]) -> str:
    return export(tar_source(layers), tmp_path_factory.mktemp("nydus") / "layout", oci=True)


# ---------------------------------------------------------------------------------------------
# unpack


def test_unpack_equals_umoci(image: str, reference: Snapshot, tmp_path: Path) -> None:
    out = tmp_path / "rootfs.tar"
    assert tools_main(["unpack", image, "-o", str(out)]) == 0
    assert diff_snapshots(reference, snapshot_tar(out)) == []
    assert [p.name for p in tmp_path.iterdir()] == ["rootfs.tar"]  # no temp file left


def test_unpack_tar_format(image: str, tmp_path: Path) -> None:
    """PAX records as promised: SCHILY xattrs, nanosecond mtimes, hardlink entries, devices."""
    out = tmp_path / "rootfs.tar"
    assert tools_main(["unpack", image, "-o", str(out)]) == 0
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar}
    assert members["usr/bin/tool"].pax_headers["SCHILY.xattr.user.k"] == "v"
    assert members["etc/passwd"].pax_headers["mtime"] == "1700000002.999999999"
    assert members["usr/bin/tool2"].islnk() and members["usr/bin/tool2"].linkname == "usr/bin/tool"
    null = members["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert members["dev/fifo"].isfifo()
    assert members["."].isdir()  # the root, written as "./" (tarfile strips the slash)


def test_unpack_to_stdout(image: str, reference: Snapshot) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "nydus_exporter.cli.main", "unpack", image, "-o", "-"],
        capture_output=True,
        cwd=PROJECT_ROOT,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert diff_snapshots(reference, snapshot_tar(res.stdout)) == []


def test_unpack_failure_leaves_nothing(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(image.removeprefix("oci:").rsplit(":", 1)[0], layout)
    _index, manifest, _config = load_image(layout)
    blob_path(layout, manifest["layers"][0]["digest"]).unlink()  # the blob holding etc/big
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert tools_main(["unpack", f"oci:{layout}:{TAG}", "-o", str(out_dir / "rootfs.tar")]) == 1
    assert "not found" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# mount / umount


def _our_loops(state: Path) -> list[str]:
    res = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return [line for line in res.stdout.splitlines() if str(state) in line]


def test_mount_umount_and_cache(image: str, reference: Snapshot, tmp_path: Path) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "state"
    assert tools_main(["mount", image, str(mnt), "--state-dir", str(state)]) == 0
    try:
        assert os.path.ismount(mnt)
        assert diff_snapshots(reference, snapshot_dir(mnt)) == []
        # one loop for the bootstrap + one per blob with chunks (2 of the 3 layers)
        assert len(_our_loops(state)) == 3
    finally:
        assert tools_main(["umount", str(mnt), "--state-dir", str(state)]) == 0
    assert not os.path.ismount(mnt)
    assert _our_loops(state) == []
    assert json.loads((state / MOUNTS_FILE).read_text()) == {}

    images = sorted((state / "blobs").iterdir())
    assert len(images) == 2
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images}
    result = mount_image(image, mnt, state_dir=state)
    try:
        assert result.built == [] and len(result.reused) == 2
        assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images} == before
        assert diff_snapshots(reference, snapshot_dir(mnt)) == []
    finally:
        assert tools_main(["umount", str(mnt), "--state-dir", str(state)]) == 0
    assert _our_loops(state) == []


def test_failed_mount_detaches_its_loops(image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    real_run = mount_module._run

    def failing_mount(argv: list[str]) -> subprocess.CompletedProcess[str]:
        if argv[0] == "mount":
            return subprocess.CompletedProcess(argv, 32, "", "mount: simulated failure")
        return real_run(argv)

    monkeypatch.setattr(mount_module, "_run", failing_mount)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "state"
    with pytest.raises(Exception, match="simulated failure"):
        mount_image(image, mnt, state_dir=state)
    assert _our_loops(state) == []
    assert not (state / MOUNTS_FILE).exists()


def test_mount_needs_root(image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match="needs root"):
        mount_image(image, tmp_path, state_dir=tmp_path / "state")


def test_umount_of_unknown_mountpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require(os.geteuid() == 0, "needs root")
    assert tools_main(["umount", str(tmp_path), "--state-dir", str(tmp_path / "state")]) == 1
    assert "no nydus-exporter mount is recorded" in capsys.readouterr().err
