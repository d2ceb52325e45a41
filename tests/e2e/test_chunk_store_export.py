"""``chunk-store=true``: exports to one repository remember their chunks in the state dir's
chunk store, so a later export uploads only chunks the repository does not hold yet; a store
mapping that points at a blob the repository lost is detected and the chunks are stored again.
Real registry (docker-registry), bytes counted by the fault proxy, images read by skopeo and
verified with `nydus-exporter check`."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.errors import ConfigError
from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from nydus_exporter.tools.mount import mount_image, umount_image
from tests.conftest import require
from tests.helpers import tarbuild as tb
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available
from tests.helpers.treesnap import diff_snapshots, snapshot_dir, snapshot_tar
from tests.registry_fixtures import FaultProxy, RegistryServer

BIG = random.Random(11).randbytes((4 << 20) + 99)


def layer(tmp_path: Path, name: str, *members: tb.Member) -> str:
    path = tmp_path / f"{name}.tar"
    path.write_bytes(tb.tar_of(*members))
    return f"tar:{path}"


def push(source: str, name: str, state: Path) -> dict[str, Any]:
    options = parse_output({"name": name, "oci-mediatypes": "true", "chunk-store": "true"}).options
    return export(source, options, state_dir=state).metadata()


def skopeo_manifest(name: str) -> Any:
    require(shutil.which("skopeo") is not None, "needs skopeo")
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}"],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)


def test_second_export_uploads_only_new_chunks(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    host = fault_proxy.host
    first = layer(tmp_path, "base", tb.file("opt/big.bin", BIG), tb.file("opt/a", b"a\n"))
    push(first, f"{host}/{repo_name}:v1", state)
    assert fault_proxy.upload_bytes > len(BIG)

    fault_proxy.upload_bytes = 0
    second = layer(tmp_path, "app", tb.file("app/copy.bin", BIG), tb.file("app/new", b"new\n" * 50))
    meta = push(second, f"{host}/{repo_name}:v2", state)
    assert fault_proxy.upload_bytes < len(BIG) // 8  # the new layer's own chunks, metadata
    (stats,) = json.loads(meta["nydus.dedup"]).values()
    assert stats["from_chunk_dict"] == 5 and stats["stored"] == 1

    # The image is complete in the registry: v1's blob is an extra blob layer of v2.
    v1 = skopeo_manifest(f"{fault_proxy.upstream.host}/{repo_name}:v1")
    v2 = skopeo_manifest(f"{fault_proxy.upstream.host}/{repo_name}:v2")
    assert v1["layers"][0]["digest"] in [x["digest"] for x in v2["layers"][:-1]]
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{fault_proxy.upstream.host}/{repo_name}:v2",
         f"oci:{tmp_path / 'copy'}:v2"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert cli.main(["check", f"oci:{tmp_path / 'copy'}:v2"]) == 0

    # Through the kernel, v2 (one layer, partly in v1's blob) is exactly its layer tar.
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount_image(f"oci:{tmp_path / 'copy'}:v2", mnt, state_dir=tmp_path / "mount-state")
    try:
        actual = snapshot_dir(mnt)
    finally:
        umount_image(mnt, state_dir=tmp_path / "mount-state")
    assert diff_snapshots(snapshot_tar(Path(second.removeprefix("tar:"))), actual) == []


def test_a_blob_the_repository_lost_is_stored_again(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    host = fault_proxy.host
    push(layer(tmp_path, "base", tb.file("big.bin", BIG)), f"{host}/{repo_name}:v1", state)
    v1 = skopeo_manifest(f"{fault_proxy.upstream.host}/{repo_name}:v1")
    # The repository forgets the blob (its link in distribution's storage goes away).
    link = (
        fault_proxy.upstream.root
        / "docker/registry/v2/repositories"
        / repo_name
        / "_layers/sha256"
        / v1["layers"][0]["digest"].removeprefix("sha256:")
    )
    shutil.rmtree(link)
    fault_proxy.upload_bytes = 0
    meta = push(layer(tmp_path, "again", tb.file("copy.bin", BIG)), f"{host}/{repo_name}:v2", state)
    (stats,) = json.loads(meta["nydus.dedup"]).values()
    assert stats["from_chunk_dict"] == 0  # the stale mapping was dropped, not used
    assert fault_proxy.upload_bytes > len(BIG)


def test_chunk_store_needs_push(tmp_path: Path) -> None:
    options = parse_output(
        {"push": "false", "oci-layout": str(tmp_path / "o"), "chunk-store": "true"}
    ).options
    with pytest.raises(ConfigError, match="chunk-store=true needs push=true"):
        export(layer(tmp_path, "x", tb.file("f", b"1")), options, state_dir=tmp_path / "state")


@pytest.mark.slow
def test_unchanged_layers_are_not_converted_again(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    """The layer conversion cache: a rebuild whose lower layers are unchanged converts and
    uploads only the new top layer (the cached conversion is verified in the registry first)."""
    from nydus_exporter.pipeline.progress import ProgressEvent
    from tests.helpers import ocibuild

    base = tb.tar_of(tb.file("opt/big.bin", BIG), tb.file("opt/x", b"x\n"))
    state = tmp_path / "state"
    options = {"oci-mediatypes": "true", "chunk-store": "true"}
    images = {}
    for version, top in (("v1", b"one\n"), ("v2", b"two\n")):
        src = tmp_path / f"src-{version}"
        ocibuild.write_image(src, {"linux/amd64": [base, tb.tar_of(tb.file("app", top))]}, tag="t")
        images[version] = src
    attrs = parse_output({"name": f"{fault_proxy.host}/{repo_name}:v1", **options}).options
    first = export(f"oci:{images['v1']}:t", attrs, state_dir=state)
    fault_proxy.upload_bytes = 0
    events: list[ProgressEvent] = []
    attrs = parse_output({"name": f"{fault_proxy.host}/{repo_name}:v2", **options}).options
    second = export(f"oci:{images['v2']}:t", attrs, state_dir=state, progress=events.append)
    converted = [e for e in events if e.kind == "layer-start"]
    assert [e.layer for e in converted] == [1]  # only the new top layer
    assert [e.layer for e in events if e.kind == "layer-done" and e.message == "cached"] == [0]
    assert fault_proxy.upload_bytes < len(BIG) // 8
    assert first.images[0].blob_layers[0].digest == second.images[0].blob_layers[0].digest
    assert cli.main(["check", f"docker://{fault_proxy.upstream.host}/{repo_name}:v2"]) == 0


@pytest.mark.slow
def test_chunkdict_push_serves_other_repositories(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    """``chunkdict push`` publishes what the store knows of a repository as a Nydus image that
    ``chunk-dict=`` can use from another repository (another replica, another team); on the
    same registry the dictionary's blobs are mounted, not copied through the exporter."""
    state = tmp_path / "state"
    host = fault_proxy.host
    push(layer(tmp_path, "base", tb.file("opt/big.bin", BIG)), f"{host}/{repo_name}:v1", state)
    assert cli.main(["chunkdict", "push", f"{host}/{repo_name}:dict", "--state-dir", str(state)]) == 0
    assert cli.main(["check", f"docker://{host}/{repo_name}:dict"]) == 0

    fault_proxy.upload_bytes = 0
    options = parse_output(
        {
            "name": f"{host}/{repo_name}-b:v1",
            "oci-mediatypes": "true",
            "chunk-dict": f"{host}/{repo_name}:dict",
        }
    ).options
    meta = export(
        layer(tmp_path, "app", tb.file("app/big.bin", BIG), tb.file("app/new", b"n\n")), options
    ).metadata()
    (stats,) = json.loads(meta["nydus.dedup"]).values()
    assert (stats["from_chunk_dict"], stats["stored"]) == (5, 1)
    assert fault_proxy.upload_bytes < len(BIG) // 8  # the dictionary blob was mounted
    assert cli.main(["check", f"docker://{host}/{repo_name}-b:v1"]) == 0


@pytest.mark.slow
def test_killed_export_leaves_a_consistent_store(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    """SIGKILL an export (converting or pushing) and export again: the image is right and the
    store opens cleanly and is used."""
    import signal
    import sys

    from nydus_exporter.chunkstore import ChunkStore
    from tests.helpers.waiting import wait_until

    state = tmp_path / "state"
    name = f"{registry.host}/{repo_name}:v1"
    big = random.Random(3).randbytes(24 << 20)
    source = layer(tmp_path, "big", tb.file("a.bin", big), tb.file("b.bin", big[::-1]))
    argv = [
        str(Path(sys.executable).parent / "nydus-exporter"), "export", source, "--progress", "plain",
        "--state-dir", str(state), "--output", f"type=nydus,name={name},oci-mediatypes=true,chunk-store=true",
    ]  # fmt: skip
    # A killed export cannot remove its work directory: keep it under tmp_path.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    uploads = registry.root / "docker/registry/v2/repositories" / repo_name / "_uploads"

    def kill_when(reached: Callable[[subprocess.Popen[str]], object]) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            reached(proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()

    def progress_line(words: str) -> Callable[[subprocess.Popen[str]], object]:
        def reached(proc: subprocess.Popen[str]) -> object:
            assert proc.stderr is not None
            return next((line for line in proc.stderr if words in line), None)  # None: it ended

        return reached

    def sessions() -> set[Path]:
        return set(uploads.iterdir()) if uploads.is_dir() else set()

    def uploading(earlier: set[Path]) -> Callable[[subprocess.Popen[str]], object]:
        def reached(proc: subprocess.Popen[str]) -> object:
            return wait_until(
                lambda: proc.poll() is not None or sessions() - earlier,
                60,
                what="the registry has a new upload session open (or the export ended)",
            )

        return reached

    kill_when(progress_line(": packing "))  # converting
    kill_when(progress_line(": done, "))  # converted, about to push
    kill_when(uploading(sessions()))  # pushing
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert cli.main(["check", f"docker://{name}"]) == 0
    with ChunkStore.open(state) as store:
        assert store.moved_aside == []
        assert store.stats()["blobs"] >= 1
