"""Whole-image export: the OCI shape of the result, sources, platforms, merged indexes, failures."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.errors import ConfigError, ExporterError
from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from tests.conftest import require
from tests.helpers import ocibuild
from tests.helpers import tarbuild as tb

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"
NYDUS_CONFIG = "application/vnd.nydus.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"
BIN = Path(sys.executable).parent


def layer_base() -> bytes:
    return tb.tar_of(
        tb.dir("etc"),
        tb.file("etc/hostname", b"base\n"),
        tb.file("etc/big", bytes(range(256)) * 9000),
        tb.dir("var/cache"),
        tb.file("var/cache/old", b"old"),
        tb.symlink("bin", "usr/bin"),
    )


def layer_top() -> bytes:
    return tb.tar_of(
        tb.file("etc/hostname", b"top\n"),
        tb.whiteout("etc/big"),
        tb.opaque("var/cache"),
        tb.file("var/cache/new", b"new"),
    )


def layer_meta_only() -> bytes:
    return tb.tar_of(tb.dir("srv/empty"), tb.symlink("srv/link", "empty"))


def blob(root: Path, digest: str) -> bytes:
    return (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def blob_json(root: Path, digest: str) -> Any:
    return json.loads(blob(root, digest))


def top_descriptor(root: Path, tag: str) -> dict[str, Any]:
    index = json.loads((root / "index.json").read_text())
    found = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(found) == 1, index
    descriptor: dict[str, Any] = found[0]
    return descriptor


def run_export(source: str, out: Path, *attrs: str, extra: list[str] | None = None) -> dict[str, Any]:
    metadata = out.parent / f"{out.name}-metadata.json"
    output = ",".join(["type=nydus", "push=false", f"oci-layout={out}", *attrs])
    argv = ["export", source, "--output", output, "--progress", "quiet", "--metadata-file", str(metadata)]
    assert cli.main(argv + (extra or [])) == 0
    result: dict[str, Any] = json.loads(metadata.read_text())
    return result


def check_nydus_manifest(
    root: Path, manifest_digest: str, source_layers: int, *, oci: bool
) -> dict[str, Any]:
    """The [format §6] shape, checked from the raw JSON and the blobs themselves."""
    raw = blob(root, manifest_digest)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == manifest_digest
    manifest: dict[str, Any] = json.loads(raw)
    assert manifest["schemaVersion"] == 2
    expected_type = (
        "application/vnd.oci.image.manifest.v1+json"
        if oci
        else "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert manifest["mediaType"] == expected_type
    layers = manifest["layers"]
    assert len(layers) == source_layers + 1
    for layer in layers[:-1]:
        assert layer["mediaType"] == NYDUS_BLOB
        assert layer["annotations"] == {"containerd.io/snapshot/nydus-blob": "true"}
        data = blob(root, layer["digest"])
        assert len(data) == layer["size"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
    boot = layers[-1]
    assert boot["mediaType"] == (
        "application/vnd.oci.image.layer.v1.tar+gzip"
        if oci
        else "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    assert boot["annotations"] == {
        "containerd.io/snapshot/nydus-bootstrap": "true",
        "containerd.io/snapshot/nydus-fs-version": "6",
    }
    boot_tar = gzip.decompress(blob(root, boot["digest"]))
    config = blob_json(root, manifest["config"]["digest"])
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in layers[:-1]] + [
        "sha256:" + hashlib.sha256(boot_tar).hexdigest()
    ]
    assert config["history"][-1] == {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
    return manifest


def write_two_platform_image(root: Path) -> Path:
    """A two-platform OCI layout (3 + 2 gzip layers, one layer shared) tagged ``t``."""
    ocibuild.write_image(
        root,
        {
            "linux/amd64": [layer_base(), layer_top(), layer_meta_only()],
            "linux/arm64/v8": [layer_base(), layer_top()],
        },
        tag="t",
    )
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_two_platform_image(tmp_path / "src")


def test_tar_source_with_oci_media_types_is_readable_by_skopeo(tmp_path: Path) -> None:
    require(shutil.which("skopeo") is not None, "needs skopeo")
    layers = []
    for i, data in enumerate([layer_base(), layer_top()]):
        path = tmp_path / f"l{i}.tar"
        path.write_bytes(data)
        layers.append(str(path))
    out = tmp_path / "out"
    meta = run_export("tar:" + ",".join(layers), out, "name=example.com/app:v1", "oci-mediatypes=true")
    desc = top_descriptor(out, "v1")
    assert meta["containerimage.digest"] == desc["digest"]
    assert json.loads(base64.b64decode(meta["containerimage.descriptor"]))["digest"] == desc["digest"]
    assert meta["image.name"] == "example.com/app:v1"
    manifest = check_nydus_manifest(out, desc["digest"], 2, oci=True)
    assert meta["containerimage.config.digest"] == manifest["config"]["digest"]

    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{out}:v1"], check=True, capture_output=True
    ).stdout
    assert raw == blob(out, desc["digest"])
    subprocess.run(["skopeo", "copy", "-q", f"oci:{out}:v1", f"oci:{tmp_path / 'copy'}:v1"], check=True)


def test_docker_media_types_by_default(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_export(f"oci:{source}:t", out, "name=app:d", "platform=linux/amd64")
    desc = top_descriptor(out, "d")
    manifest = check_nydus_manifest(out, desc["digest"], 3, oci=False)
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"


def test_every_platform_by_default_and_selection(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_export(f"oci:{source}:t", out, "name=app:all", "oci-mediatypes=true")
    index = blob_json(out, top_descriptor(out, "all")["digest"])
    platforms = {(m["platform"]["architecture"], m["platform"].get("variant")): m for m in index["manifests"]}
    assert set(platforms) == {("amd64", None), ("arm64", "v8")}
    check_nydus_manifest(out, platforms["amd64", None]["digest"], 3, oci=True)
    check_nydus_manifest(out, platforms["arm64", "v8"]["digest"], 2, oci=True)

    run_export(f"oci:{source}:t", out, "name=app:arm", "oci-mediatypes=true", "platform=linux/arm64")
    arm = top_descriptor(out, "arm")
    assert arm["digest"] == platforms["arm64", "v8"]["digest"]  # same input, same bytes


def test_identical_layers_give_identical_blobs_across_platforms(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_export(f"oci:{source}:t", out, "name=app:all", "oci-mediatypes=true")
    index = blob_json(out, top_descriptor(out, "all")["digest"])
    layers = [blob_json(out, m["digest"])["layers"] for m in index["manifests"]]
    assert layers[0][:2] == layers[1][:2]  # base and top layers are the same blobs


@pytest.mark.parametrize("mode", ["artifact", "legacy"])
def test_merge_manifest_keeps_the_oci_images(source: Path, tmp_path: Path, mode: str) -> None:
    original = blob_json(source, top_descriptor(source, "t")["digest"])
    out = tmp_path / "out"
    meta = run_export(
        f"oci:{source}:t", out, "name=app:merged", "oci-mediatypes=true", "merge-manifest=true",
        f"merge-manifest-mode={mode}",
    )  # fmt: skip
    index_desc = top_descriptor(out, "merged")
    assert index_desc["mediaType"] == "application/vnd.oci.image.index.v1+json"
    index = blob_json(out, index_desc["digest"])
    plain = [m for m in index["manifests"] if "artifactType" not in m and "os.features" not in m["platform"]]
    nydus = [m for m in index["manifests"] if m not in plain]
    assert plain == original["manifests"]  # the OCI entries are kept as they were
    assert json.loads(meta["nydus.oci.manifest.digests"]) == {
        "/".join(
            filter(None, (m["platform"]["os"], m["platform"]["architecture"], m["platform"].get("variant")))
        ): m["digest"]
        for m in plain
    }
    assert meta["nydus.compressor"] == "zstd"
    assert len(nydus) == 2
    for entry in nydus:
        if mode == "artifact":
            assert entry["artifactType"] == ARTIFACT
            assert "os.features" not in entry["platform"]
        else:
            assert entry["platform"]["os.features"] == ["nydus.remoteimage.v1"]
            assert "artifactType" not in entry
        manifest = json.loads(blob(out, entry["digest"]))
        expected_config = NYDUS_CONFIG if mode == "artifact" else "application/vnd.oci.image.config.v1+json"
        assert manifest["config"]["mediaType"] == expected_config
    # Every blob the index reaches is in the output layout, so the image is complete.
    for entry in index["manifests"]:
        manifest = blob_json(out, entry["digest"])
        for desc in [manifest["config"], *manifest["layers"]]:
            assert (out / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")).is_file()
    if shutil.which("skopeo"):
        subprocess.run(
            ["skopeo", "copy", "-q", "--all", f"oci:{out}:merged", f"oci:{tmp_path / 'copy'}:m"], check=True
        )


def test_oci_archive_streamed_from_stdin_matches_the_layout(source: Path, tmp_path: Path) -> None:
    require(shutil.which("skopeo") is not None, "needs skopeo")
    archive = tmp_path / "image.tar"
    subprocess.run(
        ["skopeo", "copy", "-q", "--all", f"oci:{source}:t", f"oci-archive:{archive}:t"],
        check=True,
        capture_output=True,
    )
    direct = run_export(f"oci:{source}:t", tmp_path / "a", "oci-mediatypes=true", "name=x:1")
    out_b = tmp_path / "b"
    with archive.open("rb") as stdin:
        proc = subprocess.run(
            [str(BIN / "nydus-exporter"), "export", "oci-archive:-", "--progress", "quiet",
             "--output", f"type=nydus,push=false,oci-layout={out_b},oci-mediatypes=true,name=x:1"],
            stdin=stdin, capture_output=True, text=True,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == direct["containerimage.digest"]


def test_docker_archive_source(tmp_path: Path) -> None:
    require(shutil.which("skopeo") is not None, "needs skopeo")
    src = tmp_path / "src"
    ocibuild.write_image(src, {"linux/amd64": [layer_base(), layer_top()]}, tag="t", single_manifest=True)
    archive = tmp_path / "docker.tar"
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{src}:t", f"docker-archive:{archive}:repo/app:t"],
        check=True, capture_output=True,
    )  # fmt: skip
    from_layout = run_export(f"oci:{src}:t", tmp_path / "a", "name=x:1")
    from_archive = run_export(f"docker-archive:{archive}", tmp_path / "b", "name=x:1")
    layers_a = blob_json(tmp_path / "a", from_layout["containerimage.digest"])["layers"]
    layers_b = blob_json(tmp_path / "b", from_archive["containerimage.digest"])["layers"]
    # The same layer content gives the same Nydus blobs, whatever the container format.
    assert [x["digest"] for x in layers_a[:-1]] == [x["digest"] for x in layers_b[:-1]]


def test_same_source_same_image(source: Path, tmp_path: Path) -> None:
    first = run_export(f"oci:{source}:t", tmp_path / "a", "oci-mediatypes=true", "name=x:1")
    second = run_export(f"oci:{source}:t", tmp_path / "b", "oci-mediatypes=true", "name=x:1")
    assert first["containerimage.digest"] == second["containerimage.digest"]


def test_corrupt_source_layer_fails_and_leaves_no_tag(source: Path, tmp_path: Path) -> None:
    manifest_digest = blob_json(source, top_descriptor(source, "t")["digest"])["manifests"][0]["digest"]
    layer = blob_json(source, manifest_digest)["layers"][1]
    path = source / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    work = tmp_path / "work"
    work.mkdir()
    options = parse_output({"push": "false", "oci-layout": str(out), "name": "x:1"}).options
    with pytest.raises(ExporterError, match=layer["digest"].removeprefix("sha256:")[:12] + "|gzip|digest"):
        export(f"oci:{source}:t", options, workdir=work)
    index = (
        json.loads((out / "index.json").read_text()) if (out / "index.json").exists() else {"manifests": []}
    )
    assert index["manifests"] == []
    assert list(work.iterdir()) == []  # no temp files left
    leftovers = [p for p in out.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert leftovers == []


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"push": "false"}, "oci-layout"),
        ({"push": "maybe", "oci-layout": "x"}, "push='maybe' is not a boolean"),
        ({"push": "false", "oci-layout": "x", "chunk-size": "0x3000"}, "chunk-size"),
        ({"push": "false", "oci-layout": "x", "compressor": "gzip"}, "compressor"),
        ({"push": "false", "oci-layout": "x", "merge-manifest-mode": "odd"}, "merge-manifest-mode"),
        ({"push": "false", "oci-layout": "x", "platform": "linux"}, "platform"),
    ],
    ids=["no-output", "bad-bool", "bad-chunk-size", "bad-compressor", "bad-mode", "bad-platform"],
)
def test_bad_attrs_are_config_errors(attrs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_output(attrs)


def test_unknown_attrs_are_warnings() -> None:
    warnings = parse_output({"push": "false", "oci-layout": "x", "frobnicate": "1"}).warnings
    assert warnings == ("unknown exporter key 'frobnicate' ignored",)


def test_missing_platform_is_an_error(source: Path, tmp_path: Path) -> None:
    options = parse_output(
        {"push": "false", "oci-layout": str(tmp_path / "o"), "platform": "linux/s390x"}
    ).options
    with pytest.raises(ConfigError, match="linux/s390x"):
        export(f"oci:{source}:t", options)


def test_dir_source(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_bytes(b"hello\n")
    os.symlink("etc/motd", tree / "motd")
    out = tmp_path / "out"
    meta = run_export(f"dir:{tree}", out, "name=d:1", "oci-mediatypes=true")
    check_nydus_manifest(out, meta["containerimage.digest"], 1, oci=True)


def _built_at(tmp_path: Path, name: str, created: str) -> Path:
    """The same layers, built at ``created`` (as two builds of one commit at different times)."""
    root = tmp_path / name
    history = [
        {"created": "2020-01-01T00:00:00Z", "created_by": "base, before the epoch"},
        {"created": created, "created_by": "top"},
    ]
    ocibuild.write_image(
        root,
        {"linux/amd64": [layer_base(), layer_top()]},
        config_extra={"created": created, "history": history},
    )
    return root


def test_source_date_epoch_makes_builds_at_different_times_identical(tmp_path: Path) -> None:
    monday = _built_at(tmp_path, "monday", "2024-05-06T10:00:00Z")
    friday = _built_at(tmp_path, "friday", "2024-05-10T17:30:00.123456789Z")
    epoch = "source-date-epoch=1700000000"  # 2023-11-14T22:13:20Z, before both builds
    first = run_export(f"oci:{monday}:t", tmp_path / "a", "name=x:1", epoch)
    second = run_export(f"oci:{friday}:t", tmp_path / "b", "name=x:1", epoch)
    assert first["containerimage.digest"] == second["containerimage.digest"]
    manifest = blob_json(tmp_path / "a", first["containerimage.digest"])
    config = blob_json(tmp_path / "a", manifest["config"]["digest"])
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert [h.get("created") for h in config["history"]] == [
        "2020-01-01T00:00:00Z",  # before the epoch: kept, as BuildKit keeps it
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:13:20Z",  # the Nydus bootstrap entry
    ]
    # The bootstrap layer's tar entries are at mtime 0, which no epoch is before.
    bootstrap = manifest["layers"][-1]["digest"]
    with tarfile.open(fileobj=io.BytesIO(blob(tmp_path / "a", bootstrap))) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
    # Without the epoch the two builds differ (their configs keep their own times).
    plain_a = run_export(f"oci:{monday}:t", tmp_path / "c", "name=x:1")
    plain_b = run_export(f"oci:{friday}:t", tmp_path / "d", "name=x:1")
    assert plain_a["containerimage.digest"] != plain_b["containerimage.digest"]
