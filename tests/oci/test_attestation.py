"""Attestation statements and manifests: the shape BuildKit's image exporter writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nydus_exporter.errors import FormatError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.attestation import (
    Attestation,
    Subject,
    attestation_manifest,
    image_purl,
    statement,
    without_dangling,
)
from nydus_exporter.oci.descriptor import Descriptor, sha256_digest
from nydus_exporter.oci.platform import Platform

MANIFEST = Descriptor.of(b"{}", mt.MEDIA_TYPE_IMAGE_MANIFEST)
AMD64 = Platform.parse("linux/amd64")
PROVENANCE = "https://slsa.dev/provenance/v0.2"


# Values printed by BuildKit v0.32.2's purl.RefToPURL("docker", ref, platform).
@pytest.mark.parametrize(
    ("ref", "platform", "purl"),
    [
        ("127.0.0.1:5000/app:1", "linux/amd64", "pkg:docker/127.0.0.1%3A5000/app@1?platform=linux%2Famd64"),
        ("docker.io/library/busybox", "linux/arm64/v8", "pkg:docker/busybox@latest?platform=linux%2Farm64"),
        (
            "ghcr.io/org/team/app:v1",
            "linux/arm",
            "pkg:docker/ghcr.io/org/team/app@v1?platform=linux%2Farm%2Fv7",
        ),
        ("foo/bar:x", "linux/amd64", "pkg:docker/foo/bar@x?platform=linux%2Famd64"),
        (
            "localhost:5000/a/b:1@sha256:" + "0123456789abcdef" * 4,
            "linux/amd64",
            "pkg:docker/localhost%3A5000/a/b@1?digest=sha256:"
            + "0123456789abcdef" * 4
            + "&platform=linux%2Famd64",
        ),
    ],
)
def test_image_purl_is_buildkits(ref: str, platform: str, purl: str) -> None:
    assert image_purl(ref, Platform.parse(platform)) == purl


def test_statement_names_the_image_under_each_name() -> None:
    att = Attestation("linux/amd64", PROVENANCE, b'{"buildType": "x", "n": [1, 2]}')
    raw = statement(att, ["reg/app:1", "reg/app:latest"], AMD64, MANIFEST)
    body = json.loads(raw)
    assert list(body) == ["_type", "predicateType", "subject", "predicate"]
    assert body["_type"] == "https://in-toto.io/Statement/v1"
    assert body["predicateType"] == PROVENANCE
    assert body["predicate"] == {"buildType": "x", "n": [1, 2]}
    assert body["subject"] == [
        {"name": "pkg:docker/reg/app@1?platform=linux%2Famd64", "digest": {"sha256": MANIFEST.hex}},
        {"name": "pkg:docker/reg/app@latest?platform=linux%2Famd64", "digest": {"sha256": MANIFEST.hex}},
    ]
    assert statement(att, ["reg/app:1", "reg/app:latest"], AMD64, MANIFEST) == raw  # reproducible


def test_statement_keeps_raw_subjects_and_names_self_subjects() -> None:
    att = Attestation(
        "linux/amd64",
        "https://spdx.dev/Document",
        b"{}",
        subjects=(Subject("extra"), Subject("other", {"sha256": "ab" * 32})),
    )
    subjects = json.loads(statement(att, ["reg/app:1"], AMD64, MANIFEST))["subject"]
    own = {"sha256": MANIFEST.hex}
    assert subjects == [
        {"name": "pkg:docker/reg/app@1?platform=linux%2Famd64", "digest": own},
        {"name": "extra", "digest": own},
        {"name": "other", "digest": {"sha256": "ab" * 32}},
    ]


def test_a_predicate_that_is_not_json_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="not JSON"):
        statement(Attestation("linux/amd64", PROVENANCE, b"{nope"), ["r/a:1"], AMD64, MANIFEST)


def test_attestation_manifest_shape() -> None:
    stmts = [(PROVENANCE, b'{"a":1}'), ("https://spdx.dev/Document", b'{"b":2}')]
    made = attestation_manifest(stmts, MANIFEST, oci=True)
    manifest = json.loads(made.manifest[1])
    assert manifest["mediaType"] == mt.MEDIA_TYPE_IMAGE_MANIFEST
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.in-toto+json"] * 2
    assert [layer["annotations"] for layer in manifest["layers"]] == [
        {"in-toto.io/predicate-type": PROVENANCE},
        {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
    ]
    assert [layer["digest"] for layer in manifest["layers"]] == [sha256_digest(s) for _, s in stmts]
    config = json.loads(made.config[1])
    assert manifest["config"]["mediaType"] == mt.MEDIA_TYPE_IMAGE_CONFIG
    assert config == {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(s) for _, s in stmts]},
    }
    entry = made.entry.to_json()
    assert entry == {
        "mediaType": mt.MEDIA_TYPE_IMAGE_MANIFEST,
        "digest": sha256_digest(made.manifest[1]),
        "size": len(made.manifest[1]),
        "annotations": {
            "vnd.docker.reference.digest": MANIFEST.digest,
            "vnd.docker.reference.type": "attestation-manifest",
        },
        "platform": {"architecture": "unknown", "os": "unknown"},
    }
    assert attestation_manifest(stmts, MANIFEST, oci=True) == made


def test_attestation_manifests_of_replaced_manifests_are_dropped() -> None:
    kept: dict[str, Any] = {
        "mediaType": mt.MEDIA_TYPE_IMAGE_MANIFEST,
        "digest": "sha256:" + "1" * 64,
        "size": 1,
    }
    att: dict[str, Any] = {
        "digest": "sha256:" + "2" * 64,
        "annotations": {
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": kept["digest"],
        },
    }
    gone = {**att, "annotations": {**att["annotations"], "vnd.docker.reference.digest": "sha256:" + "3" * 64}}
    assert without_dangling([kept, att, gone]) == [kept, att]
