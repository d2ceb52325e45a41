"""Independent checks of image-spec rules, written from the spec text, not from our code.

Used by the tests to validate what :mod:`nydus_exporter.oci` produces: a bug shared by the
builder and these checks would have to be a misreading of the spec in two places.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

# RFC 6838 restricted-name: type "/" subtype, both [A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}
MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
DESCRIPTOR_KEYS = {"mediaType", "digest", "size", "urls", "annotations", "data", "platform", "artifactType"}
PLATFORM_KEYS = {"architecture", "os", "os.version", "os.features", "variant", "features"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_annotations(value: Any) -> None:
    assert isinstance(value, dict) and value, "annotations, when present, are a non-empty object"
    for k, v in value.items():
        assert isinstance(k, str) and isinstance(v, str), (k, v)


def check_descriptor(d: Any) -> None:
    assert isinstance(d, dict), d
    assert set(d) <= DESCRIPTOR_KEYS, set(d) - DESCRIPTOR_KEYS
    assert isinstance(d["mediaType"], str) and MEDIA_TYPE_RE.match(d["mediaType"]), d
    assert isinstance(d["digest"], str) and SHA256_RE.match(d["digest"]), d
    assert type(d["size"]) is int and d["size"] >= 0, d
    if "annotations" in d:
        check_annotations(d["annotations"])
    if "artifactType" in d:
        assert MEDIA_TYPE_RE.match(d["artifactType"]), d
    if "platform" in d:
        p = d["platform"]
        assert set(p) <= PLATFORM_KEYS, p
        assert isinstance(p["architecture"], str) and p["architecture"], p
        assert isinstance(p["os"], str) and p["os"], p
        if "os.features" in p:
            assert isinstance(p["os.features"], list) and all(isinstance(f, str) for f in p["os.features"])


def check_manifest(raw: bytes, blobs: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """image-spec manifest.md (+ Docker schema2): required fields, descriptors, and — given
    the blobs — that every descriptor's digest and size match the bytes."""
    obj = json.loads(raw)
    assert obj["schemaVersion"] == 2
    assert obj["mediaType"] in (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    check_descriptor(obj["config"])
    assert isinstance(obj["layers"], list)
    for layer in obj["layers"]:
        check_descriptor(layer)
    if "annotations" in obj:
        check_annotations(obj["annotations"])
    if blobs is not None:
        for d in [obj["config"], *obj["layers"]]:
            data = blobs[d["digest"]]
            assert sha256(data) == d["digest"] and len(data) == d["size"], d
    return obj  # type: ignore[no-any-return]


def check_index(raw: bytes, manifests: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    obj = json.loads(raw)
    assert obj["schemaVersion"] == 2
    assert obj["mediaType"] in (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
    assert isinstance(obj["manifests"], list)
    for d in obj["manifests"]:
        check_descriptor(d)
        if obj["mediaType"].startswith("application/vnd.docker."):
            assert "platform" in d, "a Docker manifest list entry needs a platform"
        if manifests is not None and d["digest"] in manifests:
            data = manifests[d["digest"]]
            assert sha256(data) == d["digest"] and len(data) == d["size"], d
    if "annotations" in obj:
        check_annotations(obj["annotations"])
    return obj  # type: ignore[no-any-return]
