"""The annotation… keys, in BuildKit's grammar: where each kind lands in the written image."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.errors import ConfigError
from nydus_exporter.pipeline.options import parse_output
from tests.conftest import require
from tests.e2e.test_export import blob, blob_json, run_export, top_descriptor, write_two_platform_image

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"


def _by_arch(index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["platform"]["architecture"]: m for m in index["manifests"]}


def test_each_kind_of_annotation_lands_where_buildkit_puts_it(tmp_path: Path) -> None:
    source = write_two_platform_image(tmp_path / "src")
    out = tmp_path / "out"
    run_export(
        f"oci:{source}:t",
        out,
        "name=app:1",
        "oci-mediatypes=true",
        "annotation.org.example.all=every",
        "annotation-manifest[linux/arm64/v8].org.example.all=arm",
        "annotation-manifest[linux/amd64].org.example.amd=only",
        "annotation-manifest-descriptor.org.example.entry=listed",
        "annotation-index.org.example.index=top",
        "annotation-index-descriptor.org.example.layout=entry",
    )
    root = top_descriptor(out, "1")
    assert root["annotations"] == {
        REF_NAME: "1",
        IMAGE_NAME: "docker.io/library/app:1",
        "org.example.layout": "entry",
    }
    index = blob_json(out, root["digest"])
    assert index["annotations"] == {"org.example.index": "top"}
    entries = _by_arch(index)
    assert set(entries) == {"amd64", "arm64"}
    for entry in entries.values():
        assert entry["annotations"] == {"org.example.entry": "listed"}
    assert blob_json(out, entries["amd64"]["digest"])["annotations"] == {
        "org.example.all": "every",
        "org.example.amd": "only",
    }
    # the platform's own key wins over the key for every platform
    assert blob_json(out, entries["arm64"]["digest"])["annotations"] == {"org.example.all": "arm"}

    if shutil.which("skopeo") is not None:  # a peer reads the annotated layout as it is
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{out}:1"], check=True, capture_output=True
        ).stdout
        assert raw == blob(out, root["digest"])


def test_a_single_manifest_carries_its_descriptor_annotations_in_the_layout(tmp_path: Path) -> None:
    source = write_two_platform_image(tmp_path / "src")
    out = tmp_path / "out"
    run_export(
        f"oci:{source}:t",
        out,
        "name=app:1",
        "platform=linux/amd64",
        "annotation-manifest-descriptor.org.example.entry=listed",
        "annotation.org.example.m=v",
    )
    root = top_descriptor(out, "1")
    assert root["annotations"] == {
        REF_NAME: "1",
        IMAGE_NAME: "docker.io/library/app:1",
        "org.example.entry": "listed",
    }
    assert blob_json(out, root["digest"])["annotations"] == {"org.example.m": "v"}


def test_merge_manifest_adds_index_annotations_to_the_kept_ones(tmp_path: Path) -> None:
    require(shutil.which("skopeo") is not None, "needs skopeo")
    source = write_two_platform_image(tmp_path / "src")
    index_path = source / "index.json"
    top = json.loads(index_path.read_text())
    kept = blob_json(source, top["manifests"][0]["digest"])
    assert kept["mediaType"].endswith("index.v1+json")
    out = tmp_path / "out"
    run_export(
        f"oci:{source}:t",
        out,
        "name=app:1",
        "oci-mediatypes=true",
        "merge-manifest=true",
        "merge-manifest-source=build",
        "annotation-index.org.example.index=top",
    )
    index = blob_json(out, top_descriptor(out, "1")["digest"])
    assert index["annotations"] == {**kept.get("annotations", {}), "org.example.index": "top"}


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("annotation-layer.x", "unknown annotation type 'layer'"),
        ("annotation-index[linux/amd64].x", "index annotations apply to the whole image"),
        ("annotation.", "is not an annotation key"),
        ("annotation-manifest[linux].x", "invalid platform"),
    ],
)
def test_annotation_keys_that_cannot_apply_are_refused(key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_output({"push": "false", "oci-layout": "x", key: "v"})
