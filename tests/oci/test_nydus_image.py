"""The Nydus image shape ([format §6]): config, manifest, merged index, detection.

Every produced document is validated against image-spec rules by the independent checks
in ``tests/oci/imagespec.py`` and compared with the real nydusify fixtures
``manifest/manifest.json`` and ``manifest/index.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Blob, Descriptor, canonical_json
from nydus_exporter.oci.nydus_image import (
    BOOTSTRAP_HISTORY_ENTRY,
    MergeMode,
    build_merged_index,
    build_nydus_config,
    build_nydus_manifest,
    find_nydus_manifest,
    is_nydus_entry,
    is_nydus_manifest,
    resolve_nydus_manifest,
    split_nydus_layers,
)
from nydus_exporter.oci.platform import Platform
from tests.oci.imagespec import check_index, check_manifest, sha256

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")

SOURCE_CONFIG = (
    b'{"architecture":"amd64","config":{"Env":["PATH=/usr/bin"],"Cmd":["sh"],"Labels":{"b":"1","a":"2"}},'
    b'"created":"2024-01-02T03:04:05Z",'
    b'"history":[{"created":"2024-01-01T00:00:00Z","created_by":"ADD rootfs"},'
    b'{"created_by":"ENV PATH","empty_layer":true},{"created_by":"RUN make"}],"os":"linux",'
    b'"rootfs":{"type":"layers","diff_ids":["sha256:' + b"1" * 64 + b'","sha256:' + b"2" * 64 + b'"]},'
    b'"variant":"","zz_unknown":{"nested":[1,2.5,"x"]}}'
)
BLOBS = {name: name * 1000 + b"-nydus-blob" for name in (b"A", b"B")}  # stand-in blob bytes
BOOTSTRAP_TAR_GZ = b"\x1f\x8b stand-in for the bootstrap layer"
BOOTSTRAP_DIFF_ID = "sha256:" + "3" * 64


def _blob_descriptors() -> list[Descriptor]:
    return [Descriptor.of(data, mt.MEDIA_TYPE_NYDUS_BLOB) for data in BLOBS.values()]


def _nydus_image(*, oci: bool) -> tuple[Blob, Blob, dict[str, bytes]]:
    """(config, manifest, all blobs by digest) of a small Nydus image."""
    blob_descs = _blob_descriptors()
    config = Blob(
        build_nydus_config(SOURCE_CONFIG, [d.digest for d in blob_descs], BOOTSTRAP_DIFF_ID),
        mt.config_media_type(oci=oci),
    )
    bootstrap = Descriptor.of(BOOTSTRAP_TAR_GZ, mt.MEDIA_TYPE_IMAGE_LAYER_GZIP)
    manifest = Blob(
        build_nydus_manifest(
            config=config.descriptor(), blob_layers=blob_descs, bootstrap_layer=bootstrap, oci=oci
        ),
        mt.manifest_media_type(oci=oci),
    )
    blobs = {sha256(b): b for b in [*BLOBS.values(), BOOTSTRAP_TAR_GZ, config.data, manifest.data]}
    return config, manifest, blobs


# --- config -----------------------------------------------------------------------------------


def test_config_changes_only_diff_ids_and_history() -> None:
    digests = [d.digest for d in _blob_descriptors()]
    out = build_nydus_config(SOURCE_CONFIG, digests, BOOTSTRAP_DIFF_ID)
    src, new = json.loads(SOURCE_CONFIG), json.loads(out)
    assert new["rootfs"] == {"type": "layers", "diff_ids": [*digests, BOOTSTRAP_DIFF_ID]}
    assert new["history"] == [
        *src["history"],
        {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"},
    ]
    for key in src:
        if key not in ("rootfs", "history"):
            assert new[key] == src[key], key
    assert list(new) == list(src)  # key order of the source kept
    assert list(new["config"]["Labels"]) == ["b", "a"]  # nested order too
    # History still accounts for every layer: non-empty entries == diff_ids (image-spec config.md).
    assert sum(not h.get("empty_layer") for h in new["history"]) == len(new["rootfs"]["diff_ids"])
    assert out == build_nydus_config(SOURCE_CONFIG, digests, BOOTSTRAP_DIFF_ID)  # deterministic
    assert out == canonical_json(new)


def test_config_without_history_or_rootfs() -> None:
    out = json.loads(build_nydus_config(b'{"os":"linux","architecture":"arm64"}', [], BOOTSTRAP_DIFF_ID))
    assert out["rootfs"] == {"type": "layers", "diff_ids": [BOOTSTRAP_DIFF_ID]}
    assert out["history"] == [dict(BOOTSTRAP_HISTORY_ENTRY)]


@pytest.mark.parametrize(
    ("source", "blobs", "bootstrap", "message"),
    [
        (b"[]", [], BOOTSTRAP_DIFF_ID, "JSON object"),
        (b"{", [], BOOTSTRAP_DIFF_ID, "not valid JSON"),
        (b'{"rootfs":[]}', [], BOOTSTRAP_DIFF_ID, "rootfs"),
        (b'{"history":{}}', [], BOOTSTRAP_DIFF_ID, "history"),
        (b"{}", ["sha256:nope"], BOOTSTRAP_DIFF_ID, "blob digest"),
        (b"{}", [], "nope", "bootstrap diff id"),
    ],
)
def test_config_rejects(source: bytes, blobs: list[str], bootstrap: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        build_nydus_config(source, blobs, bootstrap)


# --- manifest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_manifest_shape(oci: bool) -> None:
    config, manifest, blobs = _nydus_image(oci=oci)
    obj = check_manifest(manifest.data, blobs)  # image-spec rules + sizes/digests == bytes
    assert list(obj) == ["schemaVersion", "mediaType", "config", "layers"]
    assert obj["mediaType"] == (
        "application/vnd.oci.image.manifest.v1+json"
        if oci
        else "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert obj["config"] == {"mediaType": config.media_type, "digest": config.digest, "size": config.size}
    *blob_layers, bootstrap = obj["layers"]
    assert [layer["digest"] for layer in blob_layers] == [
        sha256(b) for b in BLOBS.values()
    ]  # layer order kept
    for layer in blob_layers:
        # Nydus blob type even in Docker manifests ([format §6.1]).
        assert layer["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1"
        assert layer["annotations"] == {"containerd.io/snapshot/nydus-blob": "true"}
    assert bootstrap["mediaType"] == (
        "application/vnd.oci.image.layer.v1.tar+gzip"
        if oci
        else "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    assert bootstrap["annotations"] == {
        "containerd.io/snapshot/nydus-bootstrap": "true",
        "containerd.io/snapshot/nydus-fs-version": "6",
    }
    # The config's diff_ids line up with the layers: blobs are their own diff ids ([format §6.3]).
    diff_ids = json.loads(blobs[config.digest])["rootfs"]["diff_ids"]
    assert diff_ids == [*(layer["digest"] for layer in blob_layers), BOOTSTRAP_DIFF_ID]


def test_manifest_shape_matches_the_real_fixture(nydus_fixtures: Path) -> None:
    real = json.loads((nydus_fixtures / "manifest/manifest.json").read_bytes())
    _, manifest, _ = _nydus_image(oci=True)
    ours = json.loads(manifest.data)
    assert set(ours) - {"mediaType"} == set(real)  # the fixture omits the optional mediaType
    assert set(ours["config"]) == set(real["config"])
    for ours_layer, real_layer in zip(ours["layers"][:-1], real["layers"][:-1], strict=False):
        assert list(ours_layer) == list(real_layer)
        assert ours_layer["mediaType"] == real_layer["mediaType"]
        assert ours_layer["annotations"] == real_layer["annotations"]
    ours_boot, real_boot = ours["layers"][-1], real["layers"][-1]
    assert list(ours_boot) == list(real_boot)
    assert ours_boot["mediaType"] == real_boot["mediaType"]
    # The fixture predates nydus-fs-version and carries the deprecated reference-blob-ids.
    shared = set(ours_boot["annotations"]) & set(real_boot["annotations"])
    assert shared == {"containerd.io/snapshot/nydus-bootstrap"}
    assert (
        ours_boot["annotations"][mt.ANNOTATION_NYDUS_BOOTSTRAP]
        == real_boot["annotations"]["containerd.io/snapshot/nydus-bootstrap"]
    )


def test_manifest_annotations_subject_and_extra_layer_annotations() -> None:
    uncompressed = {mt.ANNOTATION_UNCOMPRESSED: "sha256:" + "9" * 64}
    blob = Descriptor.of(
        b"blob",
        mt.MEDIA_TYPE_NYDUS_BLOB,
        annotations={mt.ANNOTATION_NYDUS_REF: "sha256:" + "4" * 64, **uncompressed},
    )
    boot = Descriptor.of(b"boot", mt.MEDIA_TYPE_DOCKER_LAYER_GZIP, annotations=uncompressed)
    config = Descriptor.of(b"{}", mt.MEDIA_TYPE_NYDUS_CONFIG)
    subject = Descriptor.of(b"{}", mt.MEDIA_TYPE_IMAGE_MANIFEST)
    raw = build_nydus_manifest(
        config=config,
        blob_layers=[blob],
        bootstrap_layer=boot,
        oci=True,
        annotations={"z": "1", mt.ANNOTATION_NYDUS_SOURCE_DIGEST: "sha256:" + "5" * 64},
        subject=subject,
    )
    obj = check_manifest(raw)
    assert list(obj) == ["schemaVersion", "mediaType", "config", "layers", "subject", "annotations"]
    assert list(obj["annotations"]) == sorted(obj["annotations"])
    assert obj["subject"]["digest"] == subject.digest
    assert obj["config"]["mediaType"] == "application/vnd.nydus.image.config.v1+json"
    # containerd.io/uncompressed is converter-internal and never reaches the manifest ([format §6.2]).
    assert obj["layers"][0]["annotations"] == {
        "containerd.io/snapshot/nydus-blob": "true",
        "containerd.io/snapshot/nydus-ref": "sha256:" + "4" * 64,
    }
    assert mt.ANNOTATION_UNCOMPRESSED not in obj["layers"][1]["annotations"]
    assert obj["layers"][1]["mediaType"] == mt.MEDIA_TYPE_IMAGE_LAYER_GZIP  # follows the manifest


def test_manifest_rejects() -> None:
    config = Descriptor.of(b"{}", mt.MEDIA_TYPE_IMAGE_CONFIG)
    good_blob = Descriptor.of(b"x", mt.MEDIA_TYPE_NYDUS_BLOB)
    boot = Descriptor.of(b"y", mt.MEDIA_TYPE_IMAGE_LAYER_GZIP)
    tar_layer = Descriptor.of(b"x", mt.MEDIA_TYPE_IMAGE_LAYER_GZIP)
    with pytest.raises(FormatError, match="not a Nydus blob"):
        build_nydus_manifest(config=config, blob_layers=[tar_layer], bootstrap_layer=boot, oci=True)
    with pytest.raises(FormatError, match="tar\\+gzip"):
        build_nydus_manifest(config=config, blob_layers=[good_blob], bootstrap_layer=good_blob, oci=True)
    with pytest.raises(FormatError, match="not an image config"):
        build_nydus_manifest(config=good_blob, blob_layers=[], bootstrap_layer=boot, oci=True)
    with pytest.raises(ConfigError, match="subject"):
        build_nydus_manifest(config=config, blob_layers=[], bootstrap_layer=boot, oci=False, subject=config)


# --- merged index -----------------------------------------------------------------------------


def _plain_manifest(tag: bytes, *, docker: bool = False) -> bytes:
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": mt.manifest_media_type(oci=not docker),
            "config": Descriptor.of(b"cfg" + tag, mt.config_media_type(oci=not docker)).to_json(),
            "layers": [Descriptor.of(b"layer" + tag, mt.gzip_layer_media_type(oci=not docker)).to_json()],
        }
    )


def test_merge_into_single_docker_manifest_matches_fixture_shape(nydus_fixtures: Path) -> None:
    existing = _plain_manifest(b"amd64", docker=True)
    _, nydus, _ = _nydus_image(oci=True)
    raw = build_merged_index(existing=existing, nydus_manifest=nydus.descriptor(), platform=AMD64, oci=False)
    obj = check_index(raw, {sha256(existing): existing, nydus.digest: nydus.data})
    real = json.loads((nydus_fixtures / "manifest/index.json").read_bytes())
    assert obj["mediaType"] == "application/vnd.oci.image.index.v1+json"  # artifactType needs OCI
    assert set(obj) - {"mediaType"} == set(real)
    assert [list(e) for e in obj["manifests"]] == [list(e) for e in real["manifests"]]
    for ours, theirs in zip(obj["manifests"], real["manifests"], strict=True):
        assert ours["mediaType"] == theirs["mediaType"]
        assert ours["platform"] == theirs["platform"]
        assert ours.get("artifactType") == theirs.get("artifactType")
    assert obj["manifests"][0]["digest"] == sha256(existing)  # the original stays first
    assert obj["manifests"][1]["digest"] == nydus.digest


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_merge_legacy_mode(oci: bool) -> None:
    existing = _plain_manifest(b"amd64", docker=True)
    _, nydus, _ = _nydus_image(oci=oci)
    raw = build_merged_index(
        existing=existing, nydus_manifest=nydus.descriptor(), platform=AMD64, mode="legacy", oci=oci
    )
    obj = check_index(raw, {sha256(existing): existing, nydus.digest: nydus.data})
    assert obj["mediaType"] == (
        "application/vnd.oci.image.index.v1+json"
        if oci
        else "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    entry = obj["manifests"][-1]
    assert "artifactType" not in entry
    assert entry["platform"] == {
        "architecture": "amd64",
        "os": "linux",
        "os.features": ["nydus.remoteimage.v1"],
    }
    assert entry["mediaType"] == nydus.media_type


def test_merge_without_existing() -> None:
    _, nydus, _ = _nydus_image(oci=True)
    raw = build_merged_index(existing=None, nydus_manifest=nydus.descriptor(), platform=ARM64, oci=True)
    obj = check_index(raw, {nydus.digest: nydus.data})
    assert obj["manifests"] == [
        {
            "mediaType": mt.MEDIA_TYPE_IMAGE_MANIFEST,
            "digest": nydus.digest,
            "size": nydus.size,
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            "artifactType": "application/vnd.nydus.image.manifest.v1+json",
        }
    ]
    legacy = json.loads(
        build_merged_index(
            existing=None, nydus_manifest=nydus.descriptor(), platform=ARM64, mode="legacy", oci=False
        )
    )
    assert legacy["mediaType"] == mt.MEDIA_TYPE_DOCKER_MANIFEST_LIST


def _entry(data: bytes, platform: Platform, **kw: Any) -> dict[str, object]:
    return Descriptor.of(data, mt.MEDIA_TYPE_IMAGE_MANIFEST, platform=platform, **kw).to_json()


def test_merge_replaces_older_nydus_entry_and_keeps_other_platforms() -> None:
    amd, arm = _plain_manifest(b"amd64"), _plain_manifest(b"arm64")
    old_amd_nydus, old_arm_nydus = b'{"old":"amd"}', b'{"old":"arm"}'
    old_legacy_amd = b'{"old":"legacy"}'
    existing_obj = {
        "schemaVersion": 2,
        "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX,
        "manifests": [
            _entry(amd, AMD64),
            _entry(old_amd_nydus, AMD64, artifact_type=mt.ARTIFACT_TYPE_NYDUS_MANIFEST),
            {**_entry(arm, ARM64), "data": "e30="},  # unknown-to-us fields survive
            _entry(old_arm_nydus, ARM64, artifact_type=mt.ARTIFACT_TYPE_NYDUS_MANIFEST),
            _entry(old_legacy_amd, Platform("linux", "x86_64").with_os_features([mt.NYDUS_OS_FEATURE])),
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    existing = canonical_json(existing_obj)
    _, nydus, _ = _nydus_image(oci=True)
    raw = build_merged_index(existing=existing, nydus_manifest=nydus.descriptor(), platform=AMD64, oci=True)
    obj = check_index(raw)
    m = existing_obj["manifests"]
    assert isinstance(m, list)
    assert obj["manifests"][:3] == [m[0], m[2], m[3]]  # kept verbatim, in order
    assert obj["manifests"][3]["digest"] == nydus.digest
    assert obj["manifests"][3]["artifactType"] == mt.ARTIFACT_TYPE_NYDUS_MANIFEST
    assert obj["annotations"] == existing_obj["annotations"]
    # Merging again is idempotent: the entry with the same digest is replaced, not duplicated.
    again = build_merged_index(existing=raw, nydus_manifest=nydus.descriptor(), platform=AMD64, oci=True)
    assert again == raw


def test_merge_supersedes_a_plain_nydus_manifest_of_the_same_platform() -> None:
    _, old_nydus, _ = _nydus_image(oci=False)
    _, nydus, _ = _nydus_image(oci=True)
    raw = build_merged_index(
        existing=old_nydus.data, nydus_manifest=nydus.descriptor(), platform=AMD64, oci=True
    )
    assert [e["digest"] for e in json.loads(raw)["manifests"]] == [nydus.digest]
    # ... but a single manifest of another platform stays.
    other = build_merged_index(
        existing=_plain_manifest(b"arm"),
        nydus_manifest=nydus.descriptor(),
        platform=AMD64,
        existing_platform=ARM64,
        oci=True,
    )
    entries = json.loads(other)["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["arm64", "amd64"]
    # A single Nydus manifest of another platform stays, marked as Nydus like ours.
    for mode in ("artifact", "legacy"):
        raw = build_merged_index(
            existing=old_nydus.data,
            nydus_manifest=nydus.descriptor(),
            platform=AMD64,
            existing_platform=ARM64,
            mode=mode,
            oci=True,
        )
        first, second = check_index(raw)["manifests"]
        assert first["digest"] == old_nydus.digest and first["platform"]["architecture"] == "arm64"
        assert is_nydus_entry(Descriptor.from_json(first)) and is_nydus_entry(Descriptor.from_json(second))


def test_merge_rejects() -> None:
    _, nydus, _ = _nydus_image(oci=True)
    with pytest.raises(ConfigError, match="merge mode"):
        bad_mode: Any = "x"
        build_merged_index(
            existing=None, nydus_manifest=nydus.descriptor(), platform=AMD64, mode=bad_mode, oci=True
        )
    with pytest.raises(FormatError):
        build_merged_index(existing=b"garbage", nydus_manifest=nydus.descriptor(), platform=AMD64, oci=True)
    with pytest.raises(FormatError, match="Nydus manifest"):
        build_merged_index(existing=None, nydus_manifest=Descriptor.of(b"x", "a/b"), platform=AMD64, oci=True)
    with pytest.raises(FormatError, match="not a manifest or index"):
        build_merged_index(
            existing=canonical_json({"schemaVersion": 2, "mediaType": "a/b"}),
            nydus_manifest=nydus.descriptor(),
            platform=AMD64,
            oci=True,
        )


# --- detection --------------------------------------------------------------------------------


def _fetcher(store: dict[str, bytes], calls: list[str]) -> Callable[[Descriptor], bytes]:
    def fetch(d: Descriptor) -> bytes:
        calls.append(d.digest)
        return store[d.digest]

    return fetch


@pytest.mark.parametrize("mode", ["artifact", "legacy"])
def test_find_nydus_manifest_in_merged_index(mode: MergeMode) -> None:
    amd, arm = _plain_manifest(b"amd64"), _plain_manifest(b"arm64")
    _, nydus, _ = _nydus_image(oci=True)
    base = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX,
            "manifests": [_entry(amd, AMD64), _entry(arm, ARM64)],
        }
    )
    index = build_merged_index(
        existing=base, nydus_manifest=nydus.descriptor(), platform=AMD64, mode=mode, oci=True
    )
    store = {sha256(b): b for b in (amd, arm, nydus.data)}
    calls: list[str] = []
    desc, data = resolve_nydus_manifest(index, _fetcher(store, calls), Platform.parse("linux/x86_64"))
    assert desc.digest == nydus.digest and data == nydus.data
    assert calls == [nydus.digest]  # the marked entry is tried first: one fetch
    with pytest.raises(FormatError, match="not a Nydus image"):
        find_nydus_manifest(index, _fetcher(store, []), Platform.parse("linux/riscv64"))
    with pytest.raises(FormatError, match="not a Nydus image"):
        find_nydus_manifest(base, _fetcher(store, []), AMD64)


def test_find_nydus_manifest_direct_and_unmarked() -> None:
    _, nydus, _ = _nydus_image(oci=False)
    assert find_nydus_manifest(nydus.data, _fetcher({}, []), AMD64) == Descriptor(
        mt.MEDIA_TYPE_DOCKER_MANIFEST, nydus.digest, nydus.size
    )
    # A plain Nydus image pushed inside an index without markers is still found.
    unmarked = canonical_json(
        {"schemaVersion": 2, "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX, "manifests": [_entry(nydus.data, AMD64)]}
    )
    found = find_nydus_manifest(unmarked, _fetcher({nydus.digest: nydus.data}, []), AMD64)
    assert found.digest == nydus.digest and found.platform == AMD64


def test_find_nydus_manifest_verifies_fetched_bytes() -> None:
    _, nydus, _ = _nydus_image(oci=True)
    index = build_merged_index(existing=None, nydus_manifest=nydus.descriptor(), platform=AMD64, oci=True)
    with pytest.raises(FormatError, match=r"digest mismatch|bytes"):
        find_nydus_manifest(index, lambda d: nydus.data.replace(b"nydus", b"NYDUS"), AMD64)


def test_split_nydus_layers() -> None:
    _, nydus, _ = _nydus_image(oci=True)
    blobs, bootstrap = split_nydus_layers(nydus.data)
    assert [b.digest for b in blobs] == [sha256(b) for b in BLOBS.values()]
    assert bootstrap.digest == sha256(BOOTSTRAP_TAR_GZ)
    assert is_nydus_manifest(nydus.data)
    assert not is_nydus_manifest(_plain_manifest(b"x"))
    with pytest.raises(FormatError, match="not a Nydus image"):
        split_nydus_layers(_plain_manifest(b"x"))


def test_split_nydus_layers_fixture(nydus_fixtures: Path) -> None:
    blobs, bootstrap = split_nydus_layers((nydus_fixtures / "manifest/manifest.json").read_bytes())
    assert [b.size for b in blobs] == [83528010, 40712206, 441, 7]
    assert bootstrap.digest == "sha256:aec98c9e3dce739877b8f5fe1cddd339de1db2b36c20995d76f6265056dbdb08"


def test_split_rejects_mixed_layers() -> None:
    _, nydus, _ = _nydus_image(oci=True)
    obj = json.loads(nydus.data)
    obj["layers"][0] = Descriptor.of(b"t", mt.MEDIA_TYPE_IMAGE_LAYER_GZIP).to_json()
    with pytest.raises(FormatError, match="is not a Nydus blob"):
        split_nydus_layers(canonical_json(obj))
    obj["layers"] = []
    with pytest.raises(FormatError, match="no layers"):
        split_nydus_layers(canonical_json(obj))
