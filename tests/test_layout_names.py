"""Which names find an exported image in an OCI layout: `name=sample:1` is tagged `1` and
named `docker.io/library/sample:1`, and `oci:DIR:1`, `oci:DIR:sample:1` and the full name all
find it, as they find the layouts skopeo and containerd write; a miss lists the tags."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.errors import FormatError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.layout import OciLayout, split_layout_spec
from tests.conftest import require


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("names")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/motd")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    (root / "layer.tar").write_bytes(buf.getvalue())
    out = root / "out"
    output = f"type=nydus,push=false,oci-layout={out},name=sample:1,oci-mediatypes=true"
    assert cli.main(["export", f"tar:{root / 'layer.tar'}", "--output", output, "--progress", "quiet"]) == 0
    return out


def test_the_layout_entry_has_the_tag_and_the_full_name(exported: Path) -> None:
    (entry,) = json.loads((exported / "index.json").read_text())["manifests"]
    assert entry["annotations"][mt.ANNOTATION_REF_NAME] == "1"
    assert entry["annotations"][mt.ANNOTATION_IMAGE_NAME] == "docker.io/library/sample:1"


@pytest.mark.parametrize("name", ["1", "sample:1", "docker.io/library/sample:1"])
def test_check_finds_the_export_by_tag_or_name(exported: Path, name: str) -> None:
    assert cli.main(["check", f"oci:{exported}:{name}"]) == 0


@pytest.mark.parametrize("name", ["2", "other:1", "sample:2"])
def test_a_miss_lists_the_tags(exported: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", f"oci:{exported}:{name}"]) == 1
    out = capsys.readouterr().out
    assert f"no image tagged or named {name!r}" in out
    assert "its tags: 1 (docker.io/library/sample:1)" in out


def test_a_layout_without_image_names_is_found_by_name_and_tag(exported: Path, tmp_path: Path) -> None:
    """Layouts written before the full name was recorded carry the tag only."""
    copy = tmp_path / "old"
    shutil.copytree(exported, copy)
    index = json.loads((copy / "index.json").read_text())
    del index["manifests"][0]["annotations"][mt.ANNOTATION_IMAGE_NAME]
    (copy / "index.json").write_text(json.dumps(index))
    assert cli.main(["check", f"oci:{copy}:sample:1"]) == 0
    with pytest.raises(FormatError, match="its tags: 1"):  # a digest is no tag
        OciLayout.open(copy).resolve("sample:1@sha256:" + "0" * 64)


def test_a_layout_written_by_skopeo_is_found_by_its_name(exported: Path, tmp_path: Path) -> None:
    require(shutil.which("skopeo") is not None, "skopeo is not installed")
    target = tmp_path / "skopeo"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{exported}:1", f"oci:{target}:sample:1"], check=True)
    assert OciLayout.open(target).tags() == ["sample:1"]  # skopeo keeps the whole name
    assert cli.main(["check", f"oci:{target}:sample:1"]) == 0


def test_a_directory_name_may_contain_colons(tmp_path: Path) -> None:
    layout = tmp_path / "a:b"
    layout.mkdir()
    assert split_layout_spec(f"{layout}") == (layout, None)
    assert split_layout_spec(f"{layout}:sample:1") == (layout, "sample:1")
    assert split_layout_spec(f"{layout}:localhost:5000/app:1") == (layout, "localhost:5000/app:1")
    assert split_layout_spec(f"{tmp_path}/missing:1") == (tmp_path / "missing", "1")
