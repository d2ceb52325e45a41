"""``buildctl build --output type=nydus,...`` against nydus-buildkitd and the daemon.

Every pushed image is copied back out of the registry with skopeo (an independent client),
mounted through the kernel's EROFS driver (``nydus_exporter.tools.mount``) and compared with
``--output type=local`` of the very same build (both outputs of one ``buildctl build``).
The Dockerfile makes what a real build makes: a pulled multi-layer base, COPY, COPY --link
(a merged layer), a multi-stage COPY --from, and RUN steps that delete a file and a whole
directory (whiteouts, an opaque directory), replace a file, chmod and hardlink.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.tools.mount import mount_image, umount_image
from tests.buildkit.conftest import (
    BUILDCTL,
    BuildKit,
    Daemon,
    docker_config,
    start_buildkitd,
    stop,
    unmount_under,
)
from tests.conftest import require
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available
from tests.helpers.treesnap import Snapshot, diff_snapshots, snapshot_dir
from tests.helpers.waiting import wait_until
from tests.registry_fixtures import RegistryServer, start_registry

NYDUS_BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def app_context(directory: Path, base: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hello.txt").write_text("hello\n")
    (directory / "linked.txt").write_text("linked\n")
    (directory / "Dockerfile").write_text(
        f"FROM {base} AS build\n"
        "RUN mkdir -p /out/sub && echo built > /out/artifact && ln -s artifact /out/link"
        " && chmod 750 /out/sub\n"
        f"FROM {base}\n"
        "COPY hello.txt /app/hello.txt\n"
        "COPY --link linked.txt /app/linked.txt\n"
        "COPY --from=build /out/ /app/out/\n"
        "RUN rm /etc/base-release && rm -r /var/old && mkdir /var/old && echo three > /var/old/three"
        " && echo replaced > /app/hello.txt && chmod 600 /app/linked.txt"
        " && ln /app/hello.txt /app/hard.txt\n"
        "ENV APP_MODE=nydus\n"
        "WORKDIR /app\n"
    )
    return directory


def build_argv(
    bk: BuildKit,
    context: Path,
    outputs: Sequence[str],
    *,
    metadata: Path | None = None,
    opts: Sequence[str] = (),
) -> list[str]:
    argv = [
        str(BUILDCTL),
        "--addr",
        bk.address,
        "build",
        "--progress",
        "plain",
        "--frontend",
        "dockerfile.v0",
    ]
    argv += ["--local", f"context={context}", "--local", f"dockerfile={context}"]
    for opt in opts:
        argv += ["--opt", opt]
    for output in outputs:
        argv += ["--output", output]
    if metadata is not None:
        argv += ["--metadata-file", str(metadata)]
    return argv


def build(
    bk: BuildKit,
    context: Path,
    outputs: Sequence[str],
    *,
    metadata: Path | None = None,
    env: dict[str, str] | None = None,
    opts: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    argv = build_argv(bk, context, outputs, metadata=metadata, opts=opts)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def raw_manifest(ref: str, creds: str | None = None) -> bytes:
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    if creds:
        argv += ["--creds", creds]
    return subprocess.run([*argv, f"docker://{ref}"], capture_output=True, check=True).stdout


def registry_digest(ref: str, creds: str | None = None) -> str:
    return "sha256:" + hashlib.sha256(raw_manifest(ref, creds)).hexdigest()


def image_config(registry: RegistryServer, ref: str, manifest: dict[str, Any]) -> dict[str, Any]:
    repo = ref.removeprefix(registry.host + "/").rsplit(":", 1)[0]
    url = f"{registry.url}/v2/{repo}/blobs/{manifest['config']['digest']}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        config: dict[str, Any] = json.loads(resp.read())
    return config


def mounted_tree(ref: str, tmp: Path) -> Snapshot:
    """Pull the image back from the registry, mount it through the kernel, snapshot it.
    Credentials come from ``$DOCKER_CONFIG``, as for any client."""
    mnt, state = tmp / "mnt", tmp / "mount-state"
    mnt.mkdir()
    mount_image(f"docker://{ref}", mnt, state_dir=state)
    try:
        return snapshot_dir(mnt)
    finally:
        umount_image(mnt, state_dir=state)


def assert_same_tree(local: Path, mounted: Snapshot) -> None:
    """The mounted image equals the type=local output, but for two things no image carries:
    the root directory (type=local's is the destination directory the client made) and
    sub-second mtimes (BuildKit's layer tars store whole seconds, as every docker image does)."""
    expected = {path: entry for path, entry in snapshot_dir(local).items() if path != b"/"}
    actual = {path: entry for path, entry in mounted.items() if path != b"/"}
    assert diff_snapshots(expected, actual, ignore={"mtime_nsec"}) == []


def big_context(directory: Path, base: str) -> Path:
    """A context whose export takes seconds: 160 MiB that do not compress."""
    directory.mkdir()
    with open(directory / "random.bin", "wb") as f:
        for _ in range(160):
            f.write(os.urandom(1 << 20))
    (directory / "Dockerfile").write_text(f"FROM {base}\nCOPY random.bin /random.bin\n")
    return directory


def run_until_export(
    argv: Sequence[str], act: Callable[[subprocess.Popen[str]], None]
) -> subprocess.CompletedProcess[str]:
    """Run buildctl; ``act`` on it once the exporter's vertex starts; wait for the end."""
    seen = []
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "exporting to nydus image" in line:
                act(proc)
                break
        seen.append(proc.stderr.read())
        code = proc.wait(timeout=300)
    return subprocess.CompletedProcess(argv, code, "", "".join(seen))


def tag_link(registry: RegistryServer, repo: str, tag: str) -> str | None:
    """The digest under a tag, read from the registry's storage (works with it stopped)."""
    link = registry.root / "docker/registry/v2/repositories" / repo / "_manifests/tags" / tag / "current/link"
    return link.read_text() if link.exists() else None


@pytest.fixture
def app(base_image: str, tmp_path: Path) -> Path:
    return app_context(tmp_path / "app", base_image)


@pytest.mark.parametrize(
    ("layers", "oci"),
    [("stream", True), ("stream", False), ("by-reference", True), ("snapshot", False)],
)
def test_pushed_image_equals_local_output(
    buildkitd: BuildKit, registry: RegistryServer, app: Path, tmp_path: Path, layers: str, oci: bool
) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    ref = f"{registry.host}/app-{layers}-{str(oci).lower()}:nydus"
    local, meta = tmp_path / "local", tmp_path / "metadata.json"
    res = build(
        buildkitd,
        app,
        [
            f"type=nydus,name={ref},push=true,registry.insecure=true,oci-mediatypes={str(oci).lower()},layers={layers}",
            f"type=local,dest={local}",
        ],
        metadata=meta,
    )
    assert res.returncode == 0, res.stderr[-6000:]
    # the daemon's per-layer progress, inside the exporter's vertex
    assert f"exporting to nydus image {ref}" in res.stderr
    assert "layer 8/8" in res.stderr

    response = json.loads(meta.read_text())
    assert response["containerimage.digest"] == registry_digest(ref)
    assert response["image.name"] == ref
    manifest = json.loads(raw_manifest(ref))
    assert manifest["mediaType"] == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
    assert manifest["layers"][-1]["annotations"][NYDUS_BOOTSTRAP_ANNOTATION] == "true"
    assert len(manifest["layers"]) == 9  # 8 blobs (WORKDIR makes one too) and the bootstrap
    config = image_config(registry, ref, manifest)  # the Dockerfile's image config, carried over
    assert "APP_MODE=nydus" in config["config"]["Env"] and config["config"]["WorkingDir"] == "/app"

    assert_same_tree(local, mounted_tree(ref, tmp_path))


def test_merge_manifest_joins_the_image_under_the_tag(
    buildkitd: BuildKit, registry: RegistryServer, app: Path, tmp_path: Path
) -> None:
    """merge-manifest=true: the Nydus manifest joins the image already under the tag in one
    index (the push reads the live tag, so this export pushes before Export returns)."""
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    ref = f"{registry.host}/app-merged:1"
    plain = build(
        buildkitd, app, [f"type=image,name={ref},push=true,registry.insecure=true,oci-mediatypes=true"]
    )
    assert plain.returncode == 0, plain.stderr[-6000:]
    original = registry_digest(ref)

    local, meta = tmp_path / "local", tmp_path / "metadata.json"
    nydus = f"type=nydus,name={ref},push=true,registry.insecure=true,oci-mediatypes=true,merge-manifest=true"
    res = build(buildkitd, app, [nydus, f"type=local,dest={local}"], metadata=meta)
    assert res.returncode == 0, res.stderr[-6000:]
    assert json.loads(meta.read_text())["containerimage.digest"] == registry_digest(ref)
    index = json.loads(raw_manifest(ref))
    assert index["mediaType"] == OCI_INDEX
    digests = [m["digest"] for m in index["manifests"]]
    assert len(digests) == 2 and original in digests
    assert_same_tree(local, mounted_tree(ref, tmp_path))


def test_image_and_nydus_outputs_in_one_build(
    buildkitd: BuildKit, registry: RegistryServer, app: Path, tmp_path: Path
) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    image_ref, nydus_ref = f"{registry.host}/app-both:image", f"{registry.host}/app-both:nydus"
    local, meta = tmp_path / "local", tmp_path / "metadata.json"
    res = build(
        buildkitd,
        app,
        [
            f"type=image,name={image_ref},push=true,registry.insecure=true",
            # without the standard keys, type=image's containerimage.digest stays in the map
            f"type=nydus,name={nydus_ref},push=true,registry.insecure=true,standard-response-keys=false",
            f"type=local,dest={local}",
        ],
        metadata=meta,
    )
    assert res.returncode == 0, res.stderr[-6000:]
    response = json.loads(meta.read_text())
    assert response["containerimage.digest"] == registry_digest(image_ref)
    assert list(json.loads(response["nydus.manifest.digests"]).values()) == [registry_digest(nydus_ref)]
    assert_same_tree(local, mounted_tree(nydus_ref, tmp_path))


@pytest.mark.parametrize("flavour", ["registry_basic", "registry_token"])
def test_push_credentials_come_from_the_clients_docker_config(
    buildkitd: BuildKit,
    flavour: str,
    app: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The daemon's auth_request is answered from buildctl's session: basic credentials, or
    (token registry) the bearer token BuildKit's own authorizer fetched."""
    reg: RegistryServer = request.getfixturevalue(flavour)
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    ref = f"{reg.host}/app-auth:1"
    output = f"type=nydus,name={ref},push=true,registry.insecure=true"

    anonymous = build(buildkitd, app, [output], env={"DOCKER_CONFIG": str(tmp_path / "empty")})
    assert anonymous.returncode != 0
    assert "UNAUTHENTICATED" in anonymous.stderr or "401" in anonymous.stderr, anonymous.stderr[-4000:]

    env = docker_config(tmp_path / "docker", reg)
    local, meta = tmp_path / "local", tmp_path / "metadata.json"
    res = build(buildkitd, app, [output, f"type=local,dest={local}"], metadata=meta, env=env)
    assert res.returncode == 0, res.stderr[-6000:]
    creds = f"{reg.username}:{reg.password}"
    assert json.loads(meta.read_text())["containerimage.digest"] == registry_digest(ref, creds)
    monkeypatch.setenv("DOCKER_CONFIG", env["DOCKER_CONFIG"])
    assert_same_tree(local, mounted_tree(ref, tmp_path))


def test_invalid_key_fails_before_the_build(buildkitd: BuildKit, registry: RegistryServer, app: Path) -> None:
    ref = f"{registry.host}/app-invalid:1"
    res = build(buildkitd, app, [f"type=nydus,name={ref},push=true,fs-version=5"])
    assert res.returncode != 0
    assert "fs-version" in res.stderr, res.stderr[-4000:]
    assert "COPY hello.txt" not in res.stderr  # Resolve failed: no step of the build ran


def test_daemon_down_names_the_socket(
    buildkit_dir: Path, registry: RegistryServer, app: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-daemon" / "exporter.sock"
    bk, proc = start_buildkitd(tmp_path / "buildkitd", daemon_address=f"unix://{missing}")
    try:
        res = build(bk, app, [f"type=nydus,name={registry.host}/app-down:1,push=true"])
    finally:
        stop(proc)
        unmount_under(bk.root)
    assert res.returncode != 0
    assert str(missing) in res.stderr and "not reachable" in res.stderr, res.stderr[-4000:]
    assert "COPY hello.txt" not in res.stderr


def test_interrupted_export_cancels_the_job(
    buildkitd: BuildKit, nydus_daemon: Daemon, registry: RegistryServer, base_image: str, tmp_path: Path
) -> None:
    """SIGINT to buildctl while the layers stream: the daemon cancels the job, removes its
    files, pushes nothing, and serves the next export."""
    context = big_context(tmp_path / "big", base_image)
    ref = f"{registry.host}/app-interrupted:1"
    cancelled = nydus_daemon.metric("nydus_exporter_exports_total", outcome="cancelled")
    argv = build_argv(buildkitd, context, [f"type=nydus,name={ref},push=true,registry.insecure=true"])
    res = run_until_export(argv, lambda proc: proc.send_signal(signal.SIGINT))
    assert res.returncode != 0, res.stderr[-4000:]

    wait_until(
        lambda: nydus_daemon.metric("nydus_exporter_exports_total", outcome="cancelled") > cancelled,
        60,
        what="the daemon counts the export as cancelled",
    )
    wait_until(
        lambda: not any((nydus_daemon.state_dir / "jobs").glob("*")), 60, what="no job directory is left"
    )
    assert (
        subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"]).returncode
        != 0
    )

    again = build(buildkitd, context, [f"type=nydus,name={ref},push=true,registry.insecure=true"])
    assert again.returncode == 0, again.stderr[-4000:]


def test_attestations_with_docker_media_types_and_unknown_keys_are_warnings(
    buildkitd: BuildKit, registry: RegistryServer, app: Path
) -> None:
    """Attestation manifests need OCI media types (BuildKit's image exporter refuses the build
    without them); ours never fail a build: a warning, and the image without them."""
    ref = f"{registry.host}/app-attested:1"
    res = build(
        buildkitd,
        app,
        [f"type=nydus,name={ref},push=true,registry.insecure=true,frobnicate=1"],
        opts=["attest:provenance=mode=max"],
    )
    assert res.returncode == 0, res.stderr[-6000:]
    warnings = [line for line in res.stderr.splitlines() if "WARN:" in line]
    assert any("not attached" in w and "oci-mediatypes=true" in w for w in warnings), res.stderr[-4000:]
    assert any("frobnicate" in w for w in warnings), res.stderr[-4000:]  # the daemon's Resolve warning
    assert json.loads(raw_manifest(ref))["layers"][-1]["annotations"][NYDUS_BOOTSTRAP_ANNOTATION] == "true"


def test_registry_killed_mid_push_leaves_the_tag(
    buildkitd: BuildKit, base_image: str, app: Path, tmp_path: Path
) -> None:
    target = start_registry(tmp_path / "registry")
    try:
        ref = f"{target.host}/app:1"
        first = build(buildkitd, app, [f"type=nydus,name={ref},push=true,registry.insecure=true"])
        assert first.returncode == 0, first.stderr[-4000:]
        before = tag_link(target, "app", "1")
        assert before is not None

        context = big_context(tmp_path / "big", base_image)
        argv = build_argv(buildkitd, context, [f"type=nydus,name={ref},push=true,registry.insecure=true"])
        res = run_until_export(argv, lambda proc: target.stop())
    finally:
        target.stop()
    assert res.returncode != 0, res.stderr[-4000:]
    assert "nydus exporter" in res.stderr, res.stderr[-4000:]
    assert tag_link(target, "app", "1") == before
