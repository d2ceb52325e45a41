"""Attestations over gRPC ([contract §5.7]): the client sends each image's attestations (large
predicates in attestation_chunk messages), the daemon attaches them as attestation manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nydus_exporter.client.exporter import ExporterClient
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.attestation import Attestation
from nydus_exporter.oci.descriptor import ImageIndex, sha256_digest
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.pipeline.sources import open_source

# containerd's platforms.Normalize, as BuildKit's purls spell them (arm64's v8 is implied)
PURL_PLATFORM = {"linux/amd64": "linux%2Famd64", "linux/arm64/v8": "linux%2Farm64"}
PROVENANCE = "https://slsa.dev/provenance/v0.2"
SPDX = "https://spdx.dev/Document"
# Over the client's 1 MiB chunk size: it goes in attestation_chunk messages.
BIG_SBOM = json.dumps({"spdxVersion": "SPDX-2.3", "packages": ["p" * 100] * 30000}).encode()


async def export_attested(
    client: ExporterClient, image: Path, out: Path, workdir: Path, **attrs: str
) -> tuple[dict[str, str], list[str]]:
    """Export the two-platform image with a provenance per platform and an SBOM for the first."""
    resolved = await client.resolve(
        {"push": "false", "oci-layout": str(out), "name": "example.com/app:1", **attrs}
    )
    with open_source(f"oci:{image}:t", workdir=workdir) as src:
        for n, img in enumerate(src.images):
            pid = str(img.platform)
            img.attestations = (
                Attestation(pid, PROVENANCE, json.dumps({"n": n}).encode(), inline_only=True),
            )
            if n == 0:
                img.attestations += (Attestation(pid, SPDX, BIG_SBOM),)
        outcome = await client.export(src, resolved.instance_id)
    warnings = [e.warning.short for e in outcome.events if e.WhichOneof("ev") == "warning"]
    # The root's bytes come with the result (a shim's DescriptorReference).
    assert sha256_digest(outcome.result.root_content) == outcome.result.root_descriptor.digest
    return dict(outcome.result.response), warnings


def statements(layout: OciLayout, entry_digest: str) -> list[dict[str, Any]]:
    manifest = json.loads(layout.read_blob(entry_digest))
    assert manifest["mediaType"] == mt.MEDIA_TYPE_IMAGE_MANIFEST
    out = []
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.in-toto+json"
        body = json.loads(layout.read_blob(layer["digest"], max_size=64 << 20))
        assert layer["annotations"] == {"in-toto.io/predicate-type": body["predicateType"]}
        out.append(body)
    return out


async def test_attestations_become_attestation_manifests_of_the_nydus_manifests(
    client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    out = short_tmp / "out"
    response, warnings = await export_attested(client, image, out, short_tmp, **{"oci-mediatypes": "true"})
    assert warnings == []
    layout = OciLayout.open(out)
    index = ImageIndex.parse(layout.read_blob(response["containerimage.digest"]))
    nydus = json.loads(response["nydus.manifest.digests"])
    entries = index.manifests
    assert [e.digest for e in entries[:2]] == list(nydus.values())
    attestations = entries[2:]
    assert len(attestations) == 2
    for (platform, manifest_digest), entry in zip(nydus.items(), attestations, strict=True):
        assert str(entry.platform) == "unknown/unknown"
        assert entry.annotations == {
            "vnd.docker.reference.digest": manifest_digest,
            "vnd.docker.reference.type": "attestation-manifest",
        }
        found = statements(layout, entry.digest)
        assert found[0]["predicateType"] == PROVENANCE
        for body in found:
            assert body["_type"] == "https://in-toto.io/Statement/v1"
            assert body["subject"] == [
                {
                    "name": f"pkg:docker/example.com/app@1?platform={PURL_PLATFORM[platform]}",
                    "digest": {"sha256": manifest_digest.removeprefix("sha256:")},
                }
            ]
    first = statements(layout, attestations[0].digest)
    assert [b["predicateType"] for b in first] == [PROVENANCE, SPDX]
    assert json.dumps(first[1]["predicate"]).encode() == BIG_SBOM  # every chunk arrived, in order

    # Same input, same bytes.
    again, _ = await export_attested(
        client, image, short_tmp / "again", short_tmp, **{"oci-mediatypes": "true"}
    )
    assert again["containerimage.digest"] == response["containerimage.digest"]


async def test_merged_index_lists_the_attestation_manifests_after_the_nydus_entries(
    client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    out = short_tmp / "out"
    attrs = {"oci-mediatypes": "true", "merge-manifest": "true", "merge-manifest-source": "build"}
    response, _ = await export_attested(client, image, out, short_tmp, **attrs)
    layout = OciLayout.open(out)
    entries = ImageIndex.parse(layout.read_blob(response["containerimage.digest"])).manifests
    nydus = list(json.loads(response["nydus.manifest.digests"]).values())
    described = [
        e.annotation("vnd.docker.reference.digest")
        for e in entries
        if e.annotation("vnd.docker.reference.type") == "attestation-manifest"
    ]
    assert described == nydus
    # Over gRPC the build sends layers, not a source index: the Nydus entries (marked for
    # merged indexes), then the attestation manifests.
    assert [e.digest for e in entries[:2]] == nydus
    assert all(e.artifact_type == mt.ARTIFACT_TYPE_NYDUS_MANIFEST for e in entries[:2])
    assert [str(e.platform) for e in entries[2:]] == ["unknown/unknown"] * 2


async def test_docker_media_types_get_no_attestations_and_a_warning(
    client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    response, warnings = await export_attested(client, image, short_tmp / "out", short_tmp)
    assert warnings == [
        "3 attestation(s) not attached: attestation manifests need oci-mediatypes=true "
        "(as with BuildKit's image exporter)"
    ]
    entries = ImageIndex.parse(OciLayout.open(short_tmp / "out").read_blob(response["containerimage.digest"]))
    assert [e.digest for e in entries.manifests] == list(
        json.loads(response["nydus.manifest.digests"]).values()
    )


async def test_inline_only_attestations_alone_leave_one_platform_a_manifest(
    client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    out = short_tmp / "out"
    attrs = {"push": "false", "oci-layout": str(out), "name": "example.com/app:1", "oci-mediatypes": "true"}
    resolved = await client.resolve({**attrs, "platform": "linux/amd64"})
    with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
        for img in src.images:
            img.attestations = (Attestation(str(img.platform), PROVENANCE, b"{}", inline_only=True),)
        outcome = await client.export(src, resolved.instance_id)
    assert outcome.result.root_descriptor.media_type == mt.MEDIA_TYPE_IMAGE_MANIFEST
    assert list(outcome.result.warnings) == [
        "1 inline-only attestation(s) not attached: a single-platform image has no index for them "
        "(as with BuildKit's image exporter)"
    ]
