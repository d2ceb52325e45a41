"""Converting an image that already holds Nydus manifests (issue 13): a merged index is
converted from its OCI manifests only and its old Nydus entries are replaced, so the same
``merge-manifest=true`` export run twice onto its own tag gives the same index; an image
that is only Nydus is refused. Against a real registry, cross-checked with skopeo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nydus_exporter.errors import ConfigError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from nydus_exporter.registry import StaticCredentials, SyncRegistry
from tests.e2e.test_push import skopeo
from tests.helpers import ocibuild
from tests.helpers import tarbuild as tb
from tests.registry.util import skopeo_inspect_raw
from tests.registry_fixtures import RegistryServer


def _export(source: str, **attrs: str) -> dict[str, str]:
    parsed = parse_output(attrs)
    assert parsed.warnings == ()
    return export(source, parsed.options).metadata()


def _push_oci_image(tmp_path: Path, ref: str) -> None:
    base = tb.tar_of(tb.dir("etc"), tb.file("etc/hostname", b"base\n"))
    top = tb.tar_of(tb.file("etc/motd", b"hello\n"))
    ocibuild.write_image(tmp_path / "src", {"linux/amd64": [base, top], "linux/arm64/v8": [base]}, tag="t")
    skopeo("copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:t", f"docker://{ref}")


@pytest.mark.parametrize("mode", ["artifact", "legacy"])
def test_merge_manifest_onto_its_own_source_tag_twice_gives_the_same_index(
    registry: RegistryServer, repo_name: str, tmp_path: Path, mode: str
) -> None:
    ref = f"{registry.host}/{repo_name}:1"
    _push_oci_image(tmp_path, ref)
    original = json.loads(skopeo_inspect_raw(ref))
    attrs = {"name": ref, "merge-manifest": "true", "merge-manifest-mode": mode, "oci-mediatypes": "true"}

    first = _export(f"docker://{ref}", **attrs)
    first_raw = skopeo_inspect_raw(ref)
    second = _export(f"docker://{ref}", **attrs)  # the source is now the merged index
    second_raw = skopeo_inspect_raw(ref)

    assert second["containerimage.digest"] == first["containerimage.digest"]
    assert second_raw == first_raw
    assert "sha256:" + hashlib.sha256(second_raw).hexdigest() == second["containerimage.digest"]
    entries = json.loads(second_raw)["manifests"]
    assert entries[: len(original["manifests"])] == original["manifests"]  # the OCI ones, untouched
    assert len(entries) == 2 * len(original["manifests"])  # one Nydus manifest per platform, no more


def test_an_image_that_is_only_nydus_is_refused(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tb.tar_of(tb.file("hello", b"hello\n")))
    single = f"{registry.host}/{repo_name}:single"
    _export(f"tar:{layer}", name=single, **{"oci-mediatypes": "true"})
    assert json.loads(skopeo_inspect_raw(single))["mediaType"] == mt.MEDIA_TYPE_IMAGE_MANIFEST
    with pytest.raises(ConfigError, match="already a Nydus image"):
        _export(f"docker://{single}", name=f"{registry.host}/{repo_name}:again")

    plain_index = f"{registry.host}/{repo_name}:index"  # two platforms: an index of Nydus manifests
    _push_oci_image(tmp_path, f"{registry.host}/{repo_name}:src")
    _export(f"docker://{registry.host}/{repo_name}:src", name=plain_index)
    assert len(json.loads(skopeo_inspect_raw(plain_index))["manifests"]) == 2
    with pytest.raises(ConfigError, match="already a Nydus image"):
        _export(f"docker://{plain_index}", name=f"{registry.host}/{repo_name}:again")

    merged = f"{registry.host}/{repo_name}:merged"
    _push_oci_image(tmp_path, merged)
    _export(f"docker://{merged}", name=merged, **{"merge-manifest": "true", "oci-mediatypes": "true"})
    index = json.loads(skopeo_inspect_raw(merged))
    index["manifests"] = [m for m in index["manifests"] if "artifactType" in m]  # its Nydus entries only
    nydus_only = f"{registry.host}/{repo_name}:nydus-only"
    with SyncRegistry(credentials=StaticCredentials({})) as client:
        client.put_manifest(
            parse_reference(nydus_only), json.dumps(index).encode(), mt.MEDIA_TYPE_IMAGE_INDEX
        )
    with pytest.raises(
        ConfigError, match="the index holds only Nydus manifests: it is already a Nydus image"
    ):
        _export(f"docker://{nydus_only}", name=f"{registry.host}/{repo_name}:again")
