"""push=true against a real registry (docker-registry on 127.0.0.1), cross-checked with skopeo."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.cli.main import main as cli_main
from nydus_exporter.errors import RegistryAuthError
from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from tests.conftest import require
from tests.helpers import ocibuild
from tests.helpers import tarbuild as tb
from tests.registry_fixtures import FaultProxy, RegistryServer

ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"


def layers(tmp_path: Path) -> list[Path]:
    contents = [
        tb.tar_of(
            tb.dir("etc"), tb.file("etc/os-release", b"ID=test\n"), tb.file("big", bytes(range(256)) * 20000)
        ),
        tb.tar_of(tb.file("etc/app.conf", b"x=1\n"), tb.whiteout("big")),
    ]
    paths = []
    for i, data in enumerate(contents):
        path = tmp_path / f"layer{i}.tar"
        path.write_bytes(data)
        paths.append(path)
    return paths


def skopeo(*args: str) -> bytes:
    require(shutil.which("skopeo") is not None, "needs skopeo")
    proc = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def raw_manifest(host: str, repo: str, tag: str) -> Any:
    return json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/{repo}:{tag}"))


def do_export(source: str, **attrs: str) -> dict[str, str]:
    parsed = parse_output(attrs)
    assert parsed.warnings == ()
    options = parsed.options
    return export(source, options).metadata()


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_push_is_readable_by_skopeo(
    registry: RegistryServer, repo_name: str, tmp_path: Path, oci: bool
) -> None:
    source = "tar:" + ",".join(str(p) for p in layers(tmp_path))
    name = f"{registry.host}/{repo_name}:v1"
    meta = do_export(source, name=name, **({"oci-mediatypes": "true"} if oci else {}))
    pushed = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}")
    descriptor = json.loads(base64.b64decode(meta["containerimage.descriptor"]))
    assert "sha256:" + __import__("hashlib").sha256(pushed).hexdigest() == descriptor["digest"]
    manifest = json.loads(pushed)
    assert manifest["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    for layer in manifest["layers"]:  # every blob is really in the registry's storage
        assert registry.stored_blob(layer["digest"]).stat().st_size == layer["size"]
    if oci:
        skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{name}", f"oci:{tmp_path / 'copy'}:v1")


def test_plain_progress_of_a_clean_push_says_what_was_pushed_and_warns_of_nothing(
    registry: RegistryServer, repo_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "tar:" + ",".join(str(p) for p in layers(tmp_path))
    name = f"{registry.host}/{repo_name}:v1"
    argv = ["export", source, "--output", f"type=nydus,name={name}", "--progress", "plain"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).splitlines()
    assert not [line for line in lines if "warning" in line], lines
    assert [line for line in lines if line.startswith("pushed ")], lines


def test_second_push_uploads_no_blob_bytes(fault_proxy: FaultProxy, repo_name: str, tmp_path: Path) -> None:
    source = "tar:" + ",".join(str(p) for p in layers(tmp_path))
    name = f"{fault_proxy.host}/{repo_name}:v1"
    first = do_export(source, name=name, **{"oci-mediatypes": "true"})
    assert fault_proxy.upload_bytes > 0
    fault_proxy.upload_bytes = 0
    second = do_export(source, name=name, **{"oci-mediatypes": "true"})
    assert second["containerimage.digest"] == first["containerimage.digest"]
    assert fault_proxy.upload_bytes == 0


def test_transient_registry_errors_are_retried(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    source = "tar:" + ",".join(str(p) for p in layers(tmp_path))
    fault_proxy.fail(2, 503, methods=("PUT", "POST"))
    name = f"{fault_proxy.host}/{repo_name}:v1"
    meta = do_export(source, name=name, **{"oci-mediatypes": "true"})
    assert raw_manifest(fault_proxy.upstream.host, repo_name, "v1")["layers"]
    assert meta["containerimage.digest"].startswith("sha256:")


@pytest.fixture
def oci_source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    base = tb.tar_of(tb.dir("etc"), tb.file("etc/hostname", b"base\n"))
    top = tb.tar_of(tb.file("etc/motd", b"hello\n"))
    ocibuild.write_image(root, {"linux/amd64": [base, top], "linux/arm64/v8": [base]}, tag="t")
    return root


@pytest.mark.parametrize("mode", ["artifact", "legacy"])
def test_merge_manifest_onto_a_live_oci_tag(
    registry: RegistryServer, repo_name: str, oci_source: Path, mode: str
) -> None:
    name = f"{registry.host}/{repo_name}:app"
    skopeo("copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{oci_source}:t", f"docker://{name}")
    original = raw_manifest(registry.host, repo_name, "app")
    attrs = {"name": name, "oci-mediatypes": "true", "merge-manifest": "true", "merge-manifest-mode": mode}
    for _ in range(2):  # a second run replaces the Nydus entries instead of adding more
        do_export(f"oci:{oci_source}:t", **attrs)
        index = raw_manifest(registry.host, repo_name, "app")
        nydus = [
            m for m in index["manifests"] if "artifactType" in m or "os.features" in m.get("platform", {})
        ]
        plain = [m for m in index["manifests"] if m not in nydus]
        assert plain == original["manifests"]
        assert len(nydus) == 2
        if mode == "artifact":
            assert {m["artifactType"] for m in nydus} == {ARTIFACT}
        else:
            assert all(m["platform"]["os.features"] == ["nydus.remoteimage.v1"] for m in nydus)


def test_merge_manifest_source_build_pushes_the_oci_image_too(
    registry: RegistryServer, repo_name: str, oci_source: Path, tmp_path: Path
) -> None:
    name = f"{registry.host}/{repo_name}:both"
    attrs = {
        "name": name,
        "oci-mediatypes": "true",
        "merge-manifest": "true",
        "merge-manifest-source": "build",
    }
    do_export(f"oci:{oci_source}:t", **attrs)
    index = raw_manifest(registry.host, repo_name, "both")
    assert len(index["manifests"]) == 4
    # The whole index is complete in the registry: skopeo can copy every platform of it
    # (skopeo 1.9 rewrites the index on the way, dropping artifactType, so no --preserve-digests).
    skopeo(
        "copy", "-q", "--all", "--src-tls-verify=false", f"docker://{name}", f"oci:{tmp_path / 'copy'}:both",
    )  # fmt: skip


def test_basic_auth_from_docker_config(
    registry_basic: RegistryServer, repo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = "tar:" + ",".join(str(p) for p in layers(tmp_path))
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    name = f"{registry_basic.host}/{repo_name}:v1"

    wrong = base64.b64encode(f"{registry_basic.username}:wrong-password".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry_basic.host: {"auth": wrong}}}))
    with pytest.raises(RegistryAuthError) as excinfo:
        do_export(source, name=name)
    assert "wrong-password" not in str(excinfo.value)
    assert not any(
        (registry_basic.root / "docker/registry/v2/repositories").glob(f"{repo_name}/_manifests/tags/*")
    )

    right = base64.b64encode(f"{registry_basic.username}:{registry_basic.password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry_basic.host: {"auth": right}}}))
    meta = do_export(source, name=name)
    tags = registry_basic.root / f"docker/registry/v2/repositories/{repo_name}/_manifests/tags/v1"
    assert tags.is_dir()
    assert meta["image.name"] == name


def test_a_layer_blob_uploads_while_the_image_is_still_being_built(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    """Push while packing: a layer's blob starts uploading as soon as it is written. The
    export waits, in its layer-done progress event (before the merge, the bootstrap layer and
    the manifest exist), until the registry has stored that blob: without the early upload it
    never would, and the export fails."""
    import os
    import threading
    import time

    from nydus_exporter.pipeline.progress import ProgressEvent

    layer = tmp_path / "layer.tar"
    layer.write_bytes(tb.tar_of(tb.file("data.bin", os.urandom(3 << 20))))
    blobs = registry.root / "docker/registry/v2/blobs/sha256"

    def stored(size: int) -> bool:
        return any(p.stat().st_size == size for p in blobs.glob("*/*/data"))

    seen: list[int] = []

    def progress(event: ProgressEvent) -> None:
        if event.kind != "layer-done":
            return
        deadline = time.monotonic() + 30
        while not stored(event.bytes_out):
            assert time.monotonic() < deadline, "the layer blob was not uploaded before the image was built"
            threading.Event().wait(0.05)
        seen.append(event.bytes_out)

    parsed = parse_output({"name": f"{registry.host}/{repo_name}:v1", "oci-mediatypes": "true"})
    meta = export(f"tar:{layer}", parsed.options, progress=progress).metadata()
    assert len(seen) == 1
    manifest = raw_manifest(registry.host, repo_name, "v1")
    assert manifest["layers"][0]["size"] == seen[0]
    assert meta["containerimage.digest"].startswith("sha256:")
