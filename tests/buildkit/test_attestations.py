"""Attestations (``--opt attest:provenance=...``) attached to the pushed Nydus image as
attestation manifests, the way BuildKit's image exporter attaches them ([contract §5.7]).

Everything is read back from the registry: the index under the tag, the attestation manifest,
the in-toto statement; the Nydus image is still mounted through the kernel and compared with
``type=local`` of the same build.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.buildkit.conftest import BuildKit
from tests.buildkit.test_buildkit import (
    NYDUS_BOOTSTRAP_ANNOTATION,
    OCI_INDEX,
    OCI_MANIFEST,
    app_context,
    assert_same_tree,
    build,
    mounted_tree,
    raw_manifest,
    registry_digest,
)
from tests.conftest import require
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available
from tests.registry_fixtures import RegistryServer

SLSA_PROVENANCE = "https://slsa.dev/provenance/"


@pytest.fixture
def app(base_image: str, tmp_path: Path) -> Path:
    return app_context(tmp_path / "app", base_image)


def blob(registry: RegistryServer, repo: str, digest: str) -> bytes:
    with urllib.request.urlopen(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30) as resp:
        data: bytes = resp.read()
    return data


def manifest_by_digest(registry: RegistryServer, repo: str, digest: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(raw_manifest(f"{registry.host}/{repo}@{digest}"))
    return found


def attestation_of(
    registry: RegistryServer, repo: str, index: dict[str, Any], digest: str
) -> list[dict[str, Any]]:
    """The in-toto statements of the attestation manifest that describes ``digest``."""
    entries = [
        m for m in index["manifests"] if m.get("annotations", {}).get("vnd.docker.reference.digest") == digest
    ]
    assert len(entries) == 1, index
    entry = entries[0]
    assert entry["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
    assert entry["platform"] == {"architecture": "unknown", "os": "unknown"}
    manifest = manifest_by_digest(registry, repo, entry["digest"])
    assert manifest["mediaType"] == OCI_MANIFEST
    statements = []
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.in-toto+json"
        body = json.loads(blob(registry, repo, layer["digest"]))
        assert layer["annotations"]["in-toto.io/predicate-type"] == body["predicateType"]
        statements.append(body)
    return statements


def history_result(bk: BuildKit, digest: str) -> bytes:
    """The result of the build whose root is ``digest`` as BuildKit's build history keeps it
    (the exporter's DescriptorReference): the root's bytes from the history's content store."""
    listed = bk.buildctl(["debug", "histories", "--format", "{{json .}}"], timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert f'"digest":"{digest}"' in listed.stdout  # a record's Result names it
    got = bk.buildctl(["debug", "get", digest], timeout=60)
    assert got.returncode == 0, got.stderr
    return got.stdout.encode()


@pytest.mark.parametrize("mode", ["min", "max"])
def test_provenance_is_attached_to_the_nydus_manifest(
    buildkitd: BuildKit, registry: RegistryServer, app: Path, tmp_path: Path, mode: str
) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    repo = f"app-provenance-{mode}"
    ref = f"{registry.host}/{repo}:1"
    local, meta = tmp_path / "local", tmp_path / "metadata.json"
    res = build(
        buildkitd,
        app,
        [
            f"type=nydus,name={ref},push=true,registry.insecure=true,oci-mediatypes=true",
            f"type=local,dest={local}",
        ],
        metadata=meta,
        opts=[f"attest:provenance=mode={mode}"],
    )
    assert res.returncode == 0, res.stderr[-6000:]
    assert "not attached" not in res.stderr, res.stderr[-4000:]

    response = json.loads(meta.read_text())
    assert response["containerimage.digest"] == registry_digest(ref)
    assert history_result(buildkitd, response["containerimage.digest"]) == raw_manifest(ref)
    index = json.loads(raw_manifest(ref))  # one platform, still an index: as BuildKit makes it
    assert index["mediaType"] == OCI_INDEX
    nydus_digest = index["manifests"][0]["digest"]
    assert list(json.loads(response["nydus.manifest.digests"]).values()) == [nydus_digest]
    nydus = manifest_by_digest(registry, repo, nydus_digest)
    assert nydus["layers"][-1]["annotations"][NYDUS_BOOTSTRAP_ANNOTATION] == "true"
    platform = index["manifests"][0]["platform"]
    assert len(index["manifests"]) == 2

    [statement] = attestation_of(registry, repo, index, nydus_digest)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"].startswith(SLSA_PROVENANCE)
    assert statement["subject"] == [
        {
            "name": f"pkg:docker/{registry.host.replace(':', '%3A')}/{repo}@1?platform="
            f"{platform['os']}%2F{platform['architecture']}",
            "digest": {"sha256": nydus_digest.removeprefix("sha256:")},
        }
    ]
    # BuildKit's SLSA provenance of this build, as it made it: the pulled base is a dependency
    definition = statement["predicate"]["buildDefinition"]
    assert any("/base@1?" in d["uri"] for d in definition["resolvedDependencies"])
    # max mode records the build's steps (the Dockerfile's LLB); min mode does not
    assert ("buildConfig" in definition["internalParameters"]) == (mode == "max")
    # type=local of the same build writes the same provenance as a file next to the tree. Only
    # the build's definition and invocation are compared: in max mode BuildKit's per-step layer
    # list (runDetails.metadata.buildkit_metadata.layers) names the blobs each exporter happened
    # to compute, which differs between exporters of one build.
    provenance_file = local / "provenance.json"
    written = json.loads(provenance_file.read_text())["predicate"]
    assert written["buildDefinition"] == statement["predicate"]["buildDefinition"]
    assert (
        written["runDetails"]["metadata"]["invocationId"]
        == statement["predicate"]["runDetails"]["metadata"]["invocationId"]
    )
    provenance_file.unlink()

    assert_same_tree(local, mounted_tree(ref, tmp_path))


def test_merged_index_keeps_each_images_attestation_next_to_it(
    buildkitd: BuildKit, registry: RegistryServer, app: Path, tmp_path: Path
) -> None:
    """type=image with provenance under the tag, then type=nydus merge-manifest=true with
    provenance: one index with both images and each one's attestation manifest."""
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    repo = "app-merged-attested"
    ref = f"{registry.host}/{repo}:1"
    opts = ["attest:provenance=mode=min"]
    plain = build(
        buildkitd,
        app,
        [f"type=image,name={ref},push=true,registry.insecure=true,oci-mediatypes=true"],
        opts=opts,
    )
    assert plain.returncode == 0, plain.stderr[-6000:]
    original = json.loads(raw_manifest(ref))
    image_digest = original["manifests"][0]["digest"]

    local, meta = tmp_path / "local", tmp_path / "metadata.json"
    nydus_out = (
        f"type=nydus,name={ref},push=true,registry.insecure=true,oci-mediatypes=true,merge-manifest=true"
    )
    res = build(buildkitd, app, [nydus_out, f"type=local,dest={local}"], metadata=meta, opts=opts)
    assert res.returncode == 0, res.stderr[-6000:]
    response = json.loads(meta.read_text())
    assert response["containerimage.digest"] == registry_digest(ref)
    index = json.loads(raw_manifest(ref))
    [nydus_digest] = json.loads(response["nydus.manifest.digests"]).values()
    assert [m["digest"] for m in index["manifests"]][:2] == [image_digest, original["manifests"][1]["digest"]]
    assert nydus_digest in [m["digest"] for m in index["manifests"]]
    assert len(index["manifests"]) == 4
    # BuildKit's own attestation still describes the plain image; ours the Nydus one.
    for digest in (image_digest, nydus_digest):
        [statement] = attestation_of(registry, repo, index, digest)
        assert statement["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}

    # The same export again replaces the Nydus manifest's attestation, it does not add one.
    again = build(buildkitd, app, [nydus_out], opts=opts)
    assert again.returncode == 0, again.stderr[-6000:]
    assert len(json.loads(raw_manifest(ref))["manifests"]) == 4

    (local / "provenance.json").unlink()  # type=local writes the attestation as a file
    assert_same_tree(local, mounted_tree(ref, tmp_path))


# BuildKit's SBOM scanner protocol (frontend/attestations/sbom): the scanner image runs with the
# build result mounted at $BUILDKIT_SCAN_SOURCE and writes in-toto statements (SPDX) into
# $BUILDKIT_SCAN_DESTINATION. This one lists /app of the result and pads its predicate past the
# 1 MiB chunk size (a real SBOM is that large), with nothing but the base image's sh and cat.
SCANNER_SCRIPT = """\
set -e
files=""
for f in "$BUILDKIT_SCAN_SOURCE"/app/*; do
  files="$files${files:+,}{\\"fileName\\":\\"${f#"$BUILDKIT_SCAN_SOURCE"}\\"}"
done
{
  echo "{\\"_type\\":\\"https://in-toto.io/Statement/v0.1\\",\\"predicateType\\":\\"https://spdx.dev/Document\\","
  echo "\\"subject\\":[],\\"predicate\\":{\\"spdxVersion\\":\\"SPDX-2.3\\",\\"name\\":\\"test-scanner\\","
  echo "\\"files\\":[$files],\\"comment\\":"
  cat /padding.json
  echo "}}"
} > "$BUILDKIT_SCAN_DESTINATION/sbom.spdx.json"
"""
PADDING = 3 << 20


def scanner_context(directory: Path, base: str) -> Path:
    directory.mkdir()
    (directory / "scan.sh").write_text(SCANNER_SCRIPT)
    (directory / "padding.json").write_text(json.dumps("s" * PADDING))
    (directory / "Dockerfile").write_text(
        f'FROM {base}\nCOPY scan.sh padding.json /\nENTRYPOINT ["/bin/sh", "/scan.sh"]\n'
    )
    return directory


def test_sbom_from_a_scanner_is_attached(
    buildkitd: BuildKit, registry: RegistryServer, base_image: str, app: Path, tmp_path: Path
) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    scanner = f"{registry.host}/test-scanner:1"
    made = build(
        buildkitd,
        scanner_context(tmp_path / "scanner", base_image),
        [f"type=image,name={scanner},push=true,registry.insecure=true,oci-mediatypes=true"],
    )
    assert made.returncode == 0, made.stderr[-6000:]

    repo = "app-sbom"
    ref = f"{registry.host}/{repo}:1"
    meta = tmp_path / "metadata.json"
    res = build(
        buildkitd,
        app,
        [f"type=nydus,name={ref},push=true,registry.insecure=true,oci-mediatypes=true"],
        metadata=meta,
        opts=[f"attest:sbom=generator={scanner}"],
    )
    assert res.returncode == 0, res.stderr[-6000:]
    assert "generating sbom using" in res.stderr  # the scanner ran
    assert json.loads(meta.read_text())["containerimage.digest"] == registry_digest(ref)
    index = json.loads(raw_manifest(ref))
    nydus_digest = index["manifests"][0]["digest"]
    [statement] = attestation_of(registry, repo, index, nydus_digest)
    assert statement["predicateType"] == "https://spdx.dev/Document"
    assert statement["subject"][0]["digest"] == {"sha256": nydus_digest.removeprefix("sha256:")}
    sbom = statement["predicate"]
    assert sbom["name"] == "test-scanner"
    assert sorted(f["fileName"] for f in sbom["files"]) == [
        "/app/hard.txt",
        "/app/hello.txt",
        "/app/linked.txt",
        "/app/out",
    ]
    assert sbom["comment"] == "s" * PADDING  # every attestation_chunk arrived, in order
    assert mounted_tree(ref, tmp_path)[b"/app/hello.txt"].kind == "reg"


def test_inline_only_provenance_leaves_a_single_platform_image_a_manifest(
    buildkitd: BuildKit, registry: RegistryServer, app: Path, tmp_path: Path
) -> None:
    """buildx's provenance for ``--load`` is inline-only: BuildKit's image exporter does not make
    an index for it alone, and neither do we (a warning says so)."""
    ref = f"{registry.host}/app-inline-only:1"
    meta = tmp_path / "metadata.json"
    res = build(
        buildkitd,
        app,
        [f"type=nydus,name={ref},push=true,registry.insecure=true,oci-mediatypes=true"],
        metadata=meta,
        opts=["attest:provenance=mode=min,inline-only=true"],
    )
    assert res.returncode == 0, res.stderr[-6000:]
    assert "1 inline-only attestation(s) not attached" in res.stderr, res.stderr[-4000:]
    manifest = json.loads(raw_manifest(ref))
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["layers"][-1]["annotations"][NYDUS_BOOTSTRAP_ANNOTATION] == "true"
    assert json.loads(meta.read_text())["containerimage.digest"] == registry_digest(ref)
