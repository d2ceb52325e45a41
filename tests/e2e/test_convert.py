"""Convert a registry image (``export docker://SRC --output name=DST``, what ``nydusify convert``
does): a multi-layer, multi-platform index pushed with skopeo converts, and every platform of
the result mounts through the kernel exactly like ``umoci unpack`` of the source."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from nydus_exporter.errors import FormatError
from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from nydus_exporter.tools.mount import mount_image, umount_image
from tests.conftest import require
from tests.e2e.test_unpack_mount import _oci_image_of
from tests.helpers import ocibuild
from tests.helpers import tarbuild as tb
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available
from tests.helpers.treesnap import diff_snapshots, snapshot_dir
from tests.registry_fixtures import RegistryServer

PLATFORMS = {
    "linux/amd64": [
        tb.tar_of(
            tb.dir("etc"),
            tb.file("etc/hostname", b"amd64\n", mtime=1_700_000_000, mtime_nsec=5),
            tb.dir("var/lib/old"),
            tb.file("var/lib/old/data", bytes(range(256)) * 9000),
            tb.file("lib/libc.so", b"\x7fELF" + bytes(3000)),
            tb.hardlink("lib/libc.so.6", "lib/libc.so"),
        ),
        tb.tar_of(tb.whiteout("var/lib/old"), tb.file("etc/motd", b"hi\n"), tb.symlink("bin", "usr/bin")),
        tb.tar_of(tb.opaque("etc"), tb.file("etc/only", b"only\n", xattrs={"user.k": b"v\x00"})),
    ],
    "linux/arm64/v8": [
        tb.tar_of(tb.dir("etc"), tb.file("etc/hostname", b"arm64\n"), tb.chardev("dev/null", 1, 3)),
        tb.tar_of(tb.file("etc/hostname", b"arm64 again\n")),
    ],
}


def skopeo(*args: str) -> None:
    require(shutil.which("skopeo") is not None, "needs skopeo")
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def pushed_source(registry: RegistryServer, repo_name: str, tmp_path: Path) -> str:
    src = tmp_path / "src"
    ocibuild.write_image(src, PLATFORMS, tag="t")
    name = f"{registry.host}/{repo_name}-src:t"
    skopeo("copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{src}:t", f"docker://{name}")
    return name


def _implied_dirs(layer_tars: list[bytes]) -> set[bytes]:
    """Directories that are parents of entries but never entries themselves (and the root)."""
    listed: set[bytes] = set()
    parents: set[bytes] = {b"/"}
    for data in layer_tars:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                path = b"/" + member.name.strip("/").encode()
                listed.add(path)
                while path != b"/":
                    path = path.rsplit(b"/", 1)[0] or b"/"
                    parents.add(path)
    return parents - listed


def convert(source: str, target: str) -> dict[str, str]:
    options = parse_output({"name": target, "oci-mediatypes": "true"}).options
    return export(f"docker://{source}", options).metadata()


def test_convert_and_mount_every_platform(
    registry: RegistryServer, repo_name: str, pushed_source: str, tmp_path: Path
) -> None:
    require(os.geteuid() == 0 and shutil.which("umoci") is not None, "needs root and umoci")
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    target = f"{registry.host}/{repo_name}:nydus"
    started = int(time.time())
    meta = convert(pushed_source, target)
    assert set(json.loads(meta["nydus.manifest.digests"])) == set(PLATFORMS)

    for platform, layer_tars in PLATFORMS.items():
        slug = platform.replace("/", "-")
        # Reference: umoci applies the same layer tars with OCI semantics.
        paths = []
        for i, data in enumerate(layer_tars):
            path = tmp_path / f"{slug}-{i}.tar"
            path.write_bytes(data)
            paths.append(path)
        image = _oci_image_of(paths, tmp_path / f"{slug}-oci")
        bundle = tmp_path / f"{slug}-bundle"
        proc = subprocess.run(
            ["umoci", "unpack", "--image", image, str(bundle)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        expected = snapshot_dir(bundle / "rootfs")

        mnt = tmp_path / f"{slug}-mnt"
        mnt.mkdir()
        state = tmp_path / "state"
        mount_image(f"docker://{target}", mnt, platform=platform, state_dir=state)
        try:
            actual = snapshot_dir(mnt)
            # Directories no layer lists: umoci stamps them with the time of the unpack, the
            # Nydus image keeps mtime 0 ([format §5.1]). Compare them on everything else.
            for implied in _implied_dirs(layer_tars):
                assert expected[implied].mtime >= started - 1
                expected[implied] = dataclasses.replace(
                    expected[implied], mtime=actual[implied].mtime, mtime_nsec=actual[implied].mtime_nsec
                )
            assert diff_snapshots(expected, actual) == []
        finally:
            umount_image(mnt, state_dir=state)


def test_convert_selects_platforms(registry: RegistryServer, repo_name: str, pushed_source: str) -> None:
    options = parse_output(
        {"name": f"{registry.host}/{repo_name}:arm", "oci-mediatypes": "true", "platform": "linux/arm64"}
    ).options
    meta = export(f"docker://{pushed_source}", options).metadata()
    assert list(json.loads(meta["nydus.manifest.digests"])) == ["linux/arm64/v8"]
    assert "containerimage.config.digest" in meta  # a single manifest at the root


def test_a_corrupt_source_blob_fails_the_conversion(
    registry: RegistryServer, repo_name: str, pushed_source: str
) -> None:
    # Damage one stored layer of the source in the registry's own storage (the layers are the
    # gzip of the tars with mtime 0, exactly as tests/helpers/ocibuild.py writes them).
    layer = gzip.compress(PLATFORMS["linux/amd64"][0], mtime=0)
    victim = registry.stored_blob("sha256:" + hashlib.sha256(layer).hexdigest())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    try:
        with pytest.raises(FormatError):
            convert(pushed_source, f"{registry.host}/{repo_name}:broken")
    finally:
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
