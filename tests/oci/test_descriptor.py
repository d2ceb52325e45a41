"""Descriptor, digests, Blob, canonical JSON, manifest/index parse views."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.errors import FormatError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import (
    Blob,
    Descriptor,
    ImageIndex,
    ImageManifest,
    canonical_json,
    digest_hex,
    document_media_type,
    validate_digest,
    verify_content,
)
from nydus_exporter.oci.platform import Platform

HEX = "a" * 64
D = f"sha256:{HEX}"


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "digest",
    [D, "sha256:" + "0123456789abcdef" * 4, "sha512:" + "f" * 128],
)
def test_valid_digests(digest: str) -> None:
    assert validate_digest(digest) == digest


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "A" * 64,  # upper-case hex is not the registered encoding
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha512:" + "a" * 64,
        "md5:" + "a" * 32,
        HEX,
        "",
        "sha256:",
        "sha256:" + "g" * 64,
        None,
        123,
    ],
)
def test_invalid_digests(digest: object) -> None:
    with pytest.raises(FormatError, match="digest"):
        validate_digest(digest)


def test_digest_hex() -> None:
    assert digest_hex(D) == HEX


def test_descriptor_json_field_order_and_bytes_pinned() -> None:
    # Go's json.Marshal of specs-go Descriptor: struct order, annotations map sorted.
    d = Descriptor(
        mt.MEDIA_TYPE_IMAGE_MANIFEST,
        D,
        7,
        annotations={"z": "1", "a": "2"},
        platform=Platform("linux", "arm64", "v8", os_features=("f",)),
        artifact_type=mt.ARTIFACT_TYPE_NYDUS_MANIFEST,
        urls=("https://x",),
    )
    assert canonical_json(d.to_json()) == (
        b'{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"digest":"sha256:' + HEX.encode() + b'","size":7,"urls":["https://x"],'
        b'"annotations":{"a":"2","z":"1"},'
        b'"platform":{"architecture":"arm64","os":"linux","os.features":["f"],"variant":"v8"},'
        b'"artifactType":"application/vnd.nydus.image.manifest.v1+json"}'
    )


def test_descriptor_omits_empty_fields() -> None:
    d = Descriptor(mt.MEDIA_TYPE_IMAGE_CONFIG, D, 0, annotations={}, urls=())
    assert d.to_json() == {"mediaType": mt.MEDIA_TYPE_IMAGE_CONFIG, "digest": D, "size": 0}


def test_descriptor_round_trips_the_real_fixtures(nydus_fixtures: Path) -> None:
    # Parsing and re-writing the real nydusify descriptors gives the same JSON, key order
    # included: our order is the Go struct order the real toolchain emits.
    index = json.loads((nydus_fixtures / "manifest/index.json").read_bytes())
    manifest = json.loads((nydus_fixtures / "manifest/manifest.json").read_bytes())
    for obj in [*index["manifests"], manifest["config"], *manifest["layers"]]:
        assert canonical_json(Descriptor.from_json(obj).to_json()) == _compact(obj)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"digest": D, "size": 1}, "mediaType"),
        ({"mediaType": "", "digest": D, "size": 1}, "mediaType"),
        ({"mediaType": "a/b", "size": 1}, "digest"),
        ({"mediaType": "a/b", "digest": "sha256:xyz", "size": 1}, "digest"),
        ({"mediaType": "a/b", "digest": D}, "size"),
        ({"mediaType": "a/b", "digest": D, "size": -1}, "size"),
        ({"mediaType": "a/b", "digest": D, "size": True}, "size"),
        ({"mediaType": "a/b", "digest": D, "size": "1"}, "size"),
        ({"mediaType": "a/b", "digest": D, "size": 1, "annotations": {"k": 1}}, "annotations"),
        ({"mediaType": "a/b", "digest": D, "size": 1, "annotations": []}, "annotations"),
        ({"mediaType": "a/b", "digest": D, "size": 1, "platform": {"os": "linux"}}, "architecture"),
        ({"mediaType": "a/b", "digest": D, "size": 1, "artifactType": 5}, "artifactType"),
        ([], "object"),
    ],
)
def test_descriptor_from_json_rejects(obj: object, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Descriptor.from_json(obj)


def test_canonical_json_is_deterministic_and_go_like() -> None:
    value = {"b": [1, 2, {"y": None, "x": True}], "a": "<tag> & \u2028 é ✓"}
    first = canonical_json(value)
    assert first == canonical_json(json.loads(first))  # same value -> same bytes
    # Insertion order kept (not sorted), no whitespace, Go's HTML-safe escapes, raw UTF-8.
    assert first == (
        b'{"b":[1,2,{"y":null,"x":true}],"a":"\\u003ctag\\u003e \\u0026 \\u2028 ' + "é ✓".encode() + b'"}'
    )
    assert json.loads(first) == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": object()}, {1: b"x"}, "\ud800"])
def test_canonical_json_rejects_non_json(value: object) -> None:
    with pytest.raises(FormatError):
        canonical_json(value)


def test_blob_digests_its_exact_bytes() -> None:
    raw = b'{ "schemaVersion": 2,\n "mediaType": "x" }'  # deliberately not canonical
    blob = Blob(raw, mt.MEDIA_TYPE_IMAGE_MANIFEST)
    assert blob.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert blob.size == len(raw)
    assert blob.data == raw
    d = blob.descriptor(platform=Platform("linux", "amd64"))
    assert (d.digest, d.size, d.media_type) == (blob.digest, len(raw), mt.MEDIA_TYPE_IMAGE_MANIFEST)
    assert blob.parse() == {"schemaVersion": 2, "mediaType": "x"}
    verify_content(raw, d)
    with pytest.raises(FormatError, match="digest mismatch"):
        verify_content(raw.replace(b"x", b"y"), d)
    with pytest.raises(FormatError, match="bytes"):
        verify_content(raw + b" ", d)


def test_blob_from_json_serialises_once() -> None:
    blob = Blob.from_json({"b": 1, "a": 2}, mt.MEDIA_TYPE_IMAGE_CONFIG)
    assert blob.data == b'{"b":1,"a":2}'
    assert Descriptor.of(blob.data, mt.MEDIA_TYPE_IMAGE_CONFIG) == blob.descriptor()


def test_image_manifest_parse_fixture(nydus_fixtures: Path) -> None:
    raw = (nydus_fixtures / "manifest/manifest.json").read_bytes()
    m = ImageManifest.parse(raw)
    # The fixture omits the top-level mediaType (allowed by image-spec): inferred as OCI.
    assert m.media_type == mt.MEDIA_TYPE_IMAGE_MANIFEST
    assert m.raw.data == raw
    assert len(m.layers) == 5
    assert m.layers[-1].annotation(mt.ANNOTATION_NYDUS_BOOTSTRAP) == "true"
    assert m.config.size == 523


def test_image_index_parse_fixture(nydus_fixtures: Path) -> None:
    idx = ImageIndex.parse((nydus_fixtures / "manifest/index.json").read_bytes())
    assert idx.media_type == mt.MEDIA_TYPE_IMAGE_INDEX
    assert [d.artifact_type for d in idx.manifests] == [None, mt.ARTIFACT_TYPE_NYDUS_MANIFEST]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"schemaVersion": 1, "manifests": []}, "schemaVersion"),
        ({"schemaVersion": 2}, "neither"),
        ({"schemaVersion": 2, "mediaType": 3}, "mediaType"),
    ],
)
def test_document_media_type_rejects(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        document_media_type(obj)


def test_manifest_parse_rejects_an_index() -> None:
    raw = canonical_json({"schemaVersion": 2, "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX, "manifests": []})
    with pytest.raises(FormatError, match="expected an image manifest"):
        ImageManifest.parse(raw)
    with pytest.raises(FormatError, match="not valid JSON"):
        ImageManifest.parse(b"{nope")
