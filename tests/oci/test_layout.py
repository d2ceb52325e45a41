"""OciLayout: the OCI image layout directory, cross-checked with skopeo and umoci."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.bootstrap_layer import write_bootstrap_layer
from nydus_exporter.oci.descriptor import Blob, Descriptor
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.nydus_image import (
    MergeMode,
    build_merged_index,
    build_nydus_config,
    build_nydus_manifest,
)
from nydus_exporter.oci.platform import Platform
from tests.conftest import require
from tests.oci.images import small_image, store
from tests.oci.imagespec import check_index, sha256


def _tmp_files(layout: OciLayout) -> list[Path]:
    return [p for p in layout.root.rglob("*") if p.name.startswith(".")]


def _skopeo(*args: str) -> bytes:
    require(shutil.which("skopeo") is not None, "skopeo not installed")
    done = subprocess.run(["skopeo", *args], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


# --- structure --------------------------------------------------------------------------------


def test_create_writes_a_valid_empty_layout(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "new" / "dir")
    assert json.loads((layout.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert check_index(layout.read_index())["manifests"] == []
    assert (layout.root / "blobs" / "sha256").is_dir()
    assert OciLayout.create(layout.root).read_index() == layout.read_index()  # opens if present
    assert OciLayout.open(layout.root).index().manifests == ()


@pytest.mark.parametrize(
    ("oci_layout", "index", "message"),
    [
        (None, b'{"schemaVersion":2,"manifests":[]}', "no oci-layout"),
        (b'{"imageLayoutVersion":"2.0.0"}', b'{"schemaVersion":2,"manifests":[]}', "imageLayoutVersion"),
        (b"nope", b'{"schemaVersion":2,"manifests":[]}', "not valid JSON"),
        (b'{"imageLayoutVersion":"1.0.0"}', None, "no index.json"),
        (b'{"imageLayoutVersion":"1.0.0"}', b'{"schemaVersion":2,"manifests":{}}', "manifests"),
        (
            b'{"imageLayoutVersion":"1.0.0"}',
            b'{"schemaVersion":2,"manifests":[{"mediaType":"a/b"}]}',
            "digest",
        ),
    ],
)
def test_open_rejects(tmp_path: Path, oci_layout: bytes | None, index: bytes | None, message: str) -> None:
    if oci_layout is not None:
        (tmp_path / "oci-layout").write_bytes(oci_layout)
    if index is not None:
        (tmp_path / "index.json").write_bytes(index)
    with pytest.raises(FormatError, match=message):
        OciLayout.open(tmp_path)
    with pytest.raises(FormatError, match="not a directory"):
        OciLayout.open(tmp_path / "missing")


def test_blobs(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    digest = layout.write_blob(b"content")
    assert digest == sha256(b"content")
    assert layout.blob_path(digest) == tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert layout.has_blob(digest)
    assert layout.write_blob(b"content") == digest  # idempotent
    with layout.open_blob(digest) as f:
        assert f.read() == b"content"
    assert layout.read_blob(digest) == b"content"
    missing = sha256(b"other")
    assert not layout.has_blob(missing)
    with pytest.raises(FormatError, match="not found"):
        layout.open_blob(missing)
    layout.blob_path(digest).write_bytes(b"tampered")
    with pytest.raises(FormatError, match="has digest"):
        layout.read_blob(digest)
    with pytest.raises(FormatError, match="digest"):
        layout.blob_path("sha256:../../etc/passwd")
    assert _tmp_files(layout) == []


def test_blob_writer_streams_and_reports_after_close(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    with layout.blob_writer() as sink:
        for i in range(100):
            sink.write(b"%05d" % i)
        with pytest.raises(RuntimeError, match="after the writer is closed"):
            _ = sink.digest
    data = b"".join(b"%05d" % i for i in range(100))
    assert (sink.digest, sink.size) == (sha256(data), len(data))
    assert layout.read_blob(sink.digest) == data
    assert oct(layout.blob_path(sink.digest).stat().st_mode & 0o777) == "0o644"
    with pytest.raises(ValueError, match="closed"):
        sink.write(b"late")


def test_failing_blob_writer_leaves_nothing(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    before = sorted(layout.root.rglob("*"))
    with pytest.raises(KeyError), layout.blob_writer() as sink:
        sink.write(b"partial")
        raise KeyError("producer failed")
    with (
        pytest.raises(FormatError, match="digest mismatch"),
        layout.blob_writer(expected_digest=sha256(b"x")) as sink,
    ):
        sink.write(b"y")
    assert sorted(layout.root.rglob("*")) == before
    assert not layout.has_blob(sha256(b"y"))


def test_import_blob_file(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "layout")
    moved = tmp_path / "moved"
    moved.write_bytes(b"moved content")
    layout.import_blob_file(moved, sha256(b"moved content"))
    assert not moved.exists() and layout.read_blob(sha256(b"moved content")) == b"moved content"

    copied = tmp_path / "copied"
    copied.write_bytes(b"copied content")
    layout.import_blob_file(copied, sha256(b"copied content"), move=False)
    assert copied.exists() and layout.read_blob(sha256(b"copied content")) == b"copied content"

    with pytest.raises(FormatError, match="digest mismatch"):
        layout.import_blob_file(copied, sha256(b"something else"), move=False)
    assert not layout.has_blob(sha256(b"something else")) and _tmp_files(layout) == []

    again = tmp_path / "again"
    again.write_bytes(b"moved content")
    layout.import_blob_file(again, sha256(b"moved content"))  # already present: src consumed
    assert not again.exists()


def test_import_across_filesystems_verifies(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    require(
        shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "/dev/shm on another filesystem"
    )
    layout = OciLayout.create(tmp_path / "layout")
    src = shm / f"nydus-exporter-test-{os.getpid()}"
    try:
        src.write_bytes(b"cross")
        with pytest.raises(FormatError, match="digest mismatch"):
            layout.import_blob_file(src, sha256(b"not cross"))
        assert src.exists()  # a failed import does not consume the source
        layout.import_blob_file(src, sha256(b"cross"))
        assert not src.exists() and layout.read_blob(sha256(b"cross")) == b"cross"
    finally:
        src.unlink(missing_ok=True)


# --- index ------------------------------------------------------------------------------------


def test_add_manifest_tags_and_resolve(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    one, two = small_image(b"one"), small_image(b"two")
    d1 = store(layout, one, "v1")
    d2 = store(layout, two, "v2")
    assert layout.tags() == ["v1", "v2"]
    assert layout.resolve("v1").digest == d1.digest
    assert layout.resolve("v1").annotation(mt.ANNOTATION_REF_NAME) == "v1"
    with pytest.raises(FormatError, match="2 entries"):
        layout.resolve()
    # Re-tagging v1 replaces the old entry; the index stays valid.
    layout.add_manifest(d2, tag="v1")
    assert layout.tags() == ["v2", "v1"]
    assert layout.resolve("v1").digest == d2.digest
    check_index(layout.read_index())
    with pytest.raises(FormatError, match="no image tagged"):
        layout.resolve("v3")
    with pytest.raises(ConfigError, match="tag"):
        layout.add_manifest(d1, tag="bad tag")
    with pytest.raises(FormatError, match="not in OCI layout"):
        layout.add_manifest(Descriptor.of(b"{}", mt.MEDIA_TYPE_IMAGE_MANIFEST), tag="x")
    with pytest.raises(FormatError, match="says"):
        layout.add_manifest(Descriptor(d1.media_type, d1.digest, d1.size + 1), tag="x")
    with pytest.raises(FormatError, match="only list manifests"):
        layout.add_manifest(one.config.descriptor(), tag="x")


def test_untagged_entries_are_not_duplicated(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    d = store(layout, small_image(), None)
    layout.add_manifest(d)
    assert len(layout.index().manifests) == 1
    assert layout.resolve() == d


@pytest.mark.slow
def test_concurrent_tagging(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    images = [small_image(b"%d" % i) for i in range(8)]
    descs = [store(layout, image, None) for image in images]
    barrier = threading.Barrier(16)

    def tag(i: int) -> None:
        # Each thread opens its own OciLayout, as separate processes would.
        mine = OciLayout.open(tmp_path)
        barrier.wait()
        for round_ in range(5):
            mine.add_manifest(descs[(i + round_) % 8], tag=f"t{i}")
            mine.add_manifest(descs[i % 8], tag="shared")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(tag, range(16)))
    tags = layout.tags()
    assert sorted(tags) == sorted([f"t{i}" for i in range(16)] + ["shared"])  # none lost, none doubled
    for i in range(16):
        assert layout.resolve(f"t{i}").digest == descs[(i + 4) % 8].digest
    assert _tmp_files(layout) == []


def test_missing_blobs_walks_indexes_and_manifests(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    image = small_image()
    manifest = store(layout, image, "t")
    index = Blob.from_json(
        {"schemaVersion": 2, "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX, "manifests": [manifest.to_json()]},
        mt.MEDIA_TYPE_IMAGE_INDEX,
    )
    layout.add_manifest(layout.put(index), tag="list")
    assert layout.missing_blobs() == []
    layout.blob_path(sha256(image.layer_gz)).unlink()
    assert layout.missing_blobs() == [sha256(image.layer_gz)]
    layout.blob_path(image.config.digest).write_bytes(b"{}")  # configs are not parsed, only present
    layout.blob_path(manifest.digest).write_bytes(b"{}")
    with pytest.raises(FormatError, match="has digest"):
        layout.missing_blobs()


# --- cross-checks with skopeo and umoci -------------------------------------------------------


def test_skopeo_reads_and_copies(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "src")
    a, b = small_image(b"A"), small_image(b"B", arch="arm64")
    store(layout, a, "a")
    store(layout, b, "b")
    assert _skopeo("inspect", "--raw", f"oci:{layout.root}:a") == a.manifest.data
    assert _skopeo("inspect", "--raw", f"oci:{layout.root}:b") == b.manifest.data
    assert _skopeo("inspect", "--config", "--raw", f"oci:{layout.root}:a") == a.config.data
    info = json.loads(_skopeo("inspect", f"oci:{layout.root}:b"))
    assert info["Architecture"] == "arm64" and info["Digest"] == b.manifest.digest

    _skopeo("copy", f"oci:{layout.root}:a", f"oci:{tmp_path / 'dst'}:copied")
    copy = OciLayout.open(tmp_path / "dst")
    assert copy.resolve("copied").digest == a.manifest.digest
    assert copy.read_blob(a.manifest.digest) == a.manifest.data
    assert copy.read_blob(sha256(a.layer_gz)) == a.layer_gz


def test_umoci_unpacks(tmp_path: Path) -> None:
    require(shutil.which("umoci") is not None, "umoci not installed")
    layout = OciLayout.create(tmp_path / "img")
    store(layout, small_image(b"unpacked by umoci\n"), "latest")
    bundle = tmp_path / "bundle"
    cmd = ["umoci", "unpack", "--image", f"{layout.root}:latest", str(bundle)]
    if os.geteuid() != 0:
        cmd.insert(2, "--rootless")
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert (bundle / "rootfs" / "etc" / "hello").read_bytes() == b"unpacked by umoci\n"
    assert json.loads((bundle / "config.json").read_bytes())["process"]["args"] == ["/bin/sh"]


@pytest.mark.parametrize("mode", ["artifact", "legacy"])
def test_nydus_image_and_merged_index_through_skopeo(tmp_path: Path, mode: MergeMode) -> None:
    """A whole Nydus image + merged index, written with our builders, copied by skopeo."""
    layout = OciLayout.create(tmp_path / "src")
    plain = small_image(b"plain")
    plain_desc = store(layout, plain, None)
    blob = b"stand-in nydus blob"
    blob_desc = Descriptor.of(blob, mt.MEDIA_TYPE_NYDUS_BLOB)
    layout.write_blob(blob)
    with layout.blob_writer() as sink:
        boot = write_bootstrap_layer(sink, b"bootstrap" * 100)
    config = Blob(
        build_nydus_config(plain.config.data, [blob_desc.digest], boot.diff_id), mt.MEDIA_TYPE_IMAGE_CONFIG
    )
    layout.put(config)
    manifest = Blob(
        build_nydus_manifest(
            config=config.descriptor(),
            blob_layers=[blob_desc],
            bootstrap_layer=boot.descriptor(oci=True),
            oci=True,
        ),
        mt.MEDIA_TYPE_IMAGE_MANIFEST,
    )
    nydus_desc = layout.put(manifest)
    layout.add_manifest(nydus_desc, tag="nydus")
    index = Blob(
        build_merged_index(
            existing=plain.manifest.data,
            nydus_manifest=nydus_desc,
            platform=Platform("linux", "amd64"),
            mode=mode,
            oci=True,
        ),
        mt.MEDIA_TYPE_IMAGE_INDEX,
    )
    layout.add_manifest(layout.put(index), tag="merged")

    assert _skopeo("inspect", "--raw", f"oci:{layout.root}:nydus") == manifest.data
    assert _skopeo("inspect", "--raw", f"oci:{layout.root}:merged") == index.data
    # skopeo 1.9 (containers/image without image-spec 1.1 structs) must re-serialise an
    # index whose entries carry artifactType, dropping the field; a legacy-mode index is
    # copied byte for byte.
    args = ["copy", "--all"] + (["--preserve-digests"] if mode == "legacy" else [])
    _skopeo(*args, f"oci:{layout.root}:merged", f"oci:{tmp_path / 'dst'}:merged")
    dst = OciLayout.open(tmp_path / "dst")
    copied = json.loads(dst.read_blob(dst.resolve("merged").digest))
    assert [e["digest"] for e in copied["manifests"]] == [plain_desc.digest, nydus_desc.digest]
    if mode == "legacy":
        assert dst.resolve("merged").digest == index.digest
    for digest in (nydus_desc.digest, blob_desc.digest, boot.digest, config.digest, plain_desc.digest):
        assert dst.has_blob(digest), digest
    assert dst.read_blob(nydus_desc.digest) == manifest.data
