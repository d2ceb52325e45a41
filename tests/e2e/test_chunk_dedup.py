"""Cross-layer chunk dedup (``chunk-dedup=true``): a file copied unchanged into a later layer
costs no chunk bytes in that layer; it references the lower layer's blob (chunk-dict
semantics, [format §4.2]). The image still mounts through the kernel like ``umoci unpack`` of the same
layers, and ``check`` passes."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.tools.mount import mount_image, umount_image
from tests.conftest import require
from tests.e2e.test_unpack_mount import _oci_image_of
from tests.helpers import tarbuild as tb
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available
from tests.helpers.treesnap import diff_snapshots, snapshot_dir

BIG = random.Random(6).randbytes((3 << 20) + 777)  # incompressible: its bytes show in blob sizes


def layer_tars(tmp_path: Path) -> list[Path]:
    contents = [
        tb.tar_of(tb.dir("opt"), tb.file("opt/big.bin", BIG), tb.file("opt/readme", b"one\n")),
        tb.tar_of(tb.file("srv/copy.bin", BIG), tb.file("srv/new", b"two\n" * 100)),  # a copy
        tb.tar_of(tb.whiteout("opt/big.bin"), tb.file("etc/conf", b"three\n")),  # original gone
    ]
    paths = []
    for i, data in enumerate(contents):
        path = tmp_path / f"layer{i}.tar"
        path.write_bytes(data)
        paths.append(path)
    return paths


def export(tmp_path: Path, out: Path, *attrs: str) -> dict[str, Any]:
    source = "tar:" + ",".join(str(p) for p in layer_tars(tmp_path))
    meta_file = out.parent / f"{out.name}.json"
    output = ",".join(
        ["type=nydus", "push=false", f"oci-layout={out}", "oci-mediatypes=true", "name=x:1", *attrs]
    )
    argv = ["export", source, "--output", output, "--progress", "quiet", "--metadata-file", str(meta_file)]
    assert cli.main(argv) == 0
    return dict(json.loads(meta_file.read_text()))


def blob_layers(out: Path, manifest_digest: str) -> list[dict[str, Any]]:
    blobs = out / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest.removeprefix("sha256:")).read_bytes())
    return list(manifest["layers"][:-1])


def chunk_count(out: Path, digest: str) -> int:
    data = (out / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    return len(BlobReader(lambda off, n: data[off : off + n], len(data)).chunk_infos())


def test_a_copied_file_costs_no_chunks_in_the_upper_layer(tmp_path: Path) -> None:
    plain_out, dedup_out = tmp_path / "plain", tmp_path / "dedup"
    plain_meta = export(tmp_path, plain_out)
    dedup_meta = export(tmp_path, dedup_out, "chunk-dedup=true")
    plain = blob_layers(plain_out, plain_meta["containerimage.digest"])
    dedup = blob_layers(dedup_out, dedup_meta["containerimage.digest"])
    # 11 chunk references: big.bin (4) + readme, the copy (4) + new, conf.
    (plain_stats,) = json.loads(plain_meta["nydus.dedup"]).values()
    (dedup_stats,) = json.loads(dedup_meta["nydus.dedup"]).values()
    assert (plain_stats["chunks"], plain_stats["stored"], plain_stats["from_lower_layers"]) == (11, 11, 0)
    assert (dedup_stats["chunks"], dedup_stats["stored"], dedup_stats["from_lower_layers"]) == (11, 7, 4)
    assert dedup_stats["bytes_not_stored"] >= len(BIG)  # incompressible: stored raw
    assert len(plain) == len(dedup) == 3
    assert plain[0]["digest"] == dedup[0]["digest"]  # the lowest layer has nothing to refer to
    # Without dedup the copy is stored again; with it, layer 2 stores only srv/new.
    assert plain[1]["size"] > len(BIG) > 8 * dedup[1]["size"]
    assert chunk_count(dedup_out, dedup[1]["digest"]) == 1
    assert chunk_count(plain_out, plain[1]["digest"]) == chunk_count(dedup_out, dedup[1]["digest"]) + 4

    # Layer 2's own bootstrap names layer 1's blob for the copied chunks.
    data = (dedup_out / "blobs/sha256" / dedup[1]["digest"].removeprefix("sha256:")).read_bytes()
    boot = BlobReader(lambda off, n: data[off : off + n], len(data)).bootstrap()
    assert boot is not None
    assert [b.blob_id for b in read_bootstrap(boot).blobs] == [
        "x" * 64,
        dedup[0]["digest"].removeprefix("sha256:"),
    ]

    assert cli.main(["check", f"oci:{dedup_out}:1"]) == 0


def test_dedup_is_reproducible(tmp_path: Path) -> None:
    first = export(tmp_path, tmp_path / "a", "chunk-dedup=true")
    second = export(tmp_path, tmp_path / "b", "chunk-dedup=true")
    assert first["containerimage.digest"] == second["containerimage.digest"]


def test_deduplicated_image_mounts_like_umoci_unpack(tmp_path: Path) -> None:
    require(os.geteuid() == 0 and shutil.which("umoci") is not None, "needs root and umoci")
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    out = tmp_path / "dedup"
    export(tmp_path, out, "chunk-dedup=true")
    image = _oci_image_of(layer_tars(tmp_path), tmp_path / "oci")
    bundle = tmp_path / "bundle"
    proc = subprocess.run(["umoci", "unpack", "--image", image, str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = snapshot_dir(bundle / "rootfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "state"
    mount_image(f"oci:{out}:1", mnt, state_dir=state)
    try:
        actual = snapshot_dir(mnt)
    finally:
        umount_image(mnt, state_dir=state)
    # umoci stamps directories no layer lists with the unpack time; the image keeps 0 ([format §5.1]).
    implied = [p for p in (b"/", b"/srv", b"/etc") if p in expected]
    for path in implied:
        expected[path] = dataclasses.replace(
            expected[path], mtime=actual[path].mtime, mtime_nsec=actual[path].mtime_nsec
        )
    assert diff_snapshots(expected, actual) == []


@pytest.mark.parametrize("value", ["maybe"])
def test_bad_value_is_a_config_error(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    source = "tar:" + str(layer_tars(tmp_path)[0])
    output = f"type=nydus,push=false,oci-layout={tmp_path / 'o'},chunk-dedup={value}"
    assert cli.main(["export", source, "--output", output, "--progress", "quiet"]) == 1
    assert "chunk-dedup='maybe' is not a boolean" in capsys.readouterr().err


def test_chunk_dict_image_from_an_earlier_build(tmp_path: Path) -> None:
    """``chunk-dict=IMAGE`` (nydusify's ``--chunk-dict``): chunks an earlier Nydus image stored
    are referenced, and its blob becomes an extra blob layer of the new image ([format §4.2, §6.3])."""
    base = tmp_path / "base.tar"
    base.write_bytes(tb.tar_of(tb.file("opt/big.bin", BIG)))
    dict_out = tmp_path / "dict"
    assert (
        cli.main(
            [
                "export",
                f"tar:{base}",
                "--progress",
                "quiet",
                "--output",
                f"type=nydus,push=false,oci-layout={dict_out},oci-mediatypes=true,name=d:1",
            ]
        )
        == 0
    )
    app = tmp_path / "app.tar"
    app.write_bytes(tb.tar_of(tb.file("app/data.bin", BIG), tb.file("app/new", b"new\n")))
    out = tmp_path / "app"
    meta_file = tmp_path / "app.json"
    output = (
        f"type=nydus,push=false,oci-layout={out},oci-mediatypes=true,name=a:1,chunk-dict=oci:{dict_out}:1"
    )
    assert (
        cli.main(
            [
                "export",
                f"tar:{app}",
                "--output",
                output,
                "--progress",
                "quiet",
                "--metadata-file",
                str(meta_file),
            ]
        )
        == 0
    )
    meta = json.loads(meta_file.read_text())
    layers = blob_layers(out, meta["containerimage.digest"])
    dict_layers = blob_layers(
        dict_out, json.loads((dict_out / "index.json").read_text())["manifests"][0]["digest"]
    )
    assert [layer["digest"] for layer in layers[1:]] == [dict_layers[0]["digest"]]  # the extra blob layer
    assert layers[0]["size"] < len(BIG) // 8  # the app layer stored only app/new
    (stats,) = json.loads(meta["nydus.dedup"]).values()
    assert (stats["chunks"], stats["stored"], stats["from_chunk_dict"]) == (5, 1, 4)
    assert cli.main(["check", f"oci:{out}:1"]) == 0

    require(os.geteuid() == 0 and shutil.which("umoci") is not None, "needs root and umoci")
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    image = _oci_image_of([app], tmp_path / "oci")
    bundle = tmp_path / "bundle"
    proc = subprocess.run(["umoci", "unpack", "--image", image, str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = snapshot_dir(bundle / "rootfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount_image(f"oci:{out}:1", mnt, state_dir=tmp_path / "state")
    try:
        actual = snapshot_dir(mnt)
    finally:
        umount_image(mnt, state_dir=tmp_path / "state")
    for path in (b"/", b"/app"):  # implied directories: umoci stamps the unpack time
        expected[path] = dataclasses.replace(
            expected[path], mtime=actual[path].mtime, mtime_nsec=actual[path].mtime_nsec
        )
    assert diff_snapshots(expected, actual) == []
