"""Export over gRPC: same image as in-process, layer cache, concurrency, idempotency, Finalize, push."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import grpc
import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.client.exporter import ExporterClient, RemoteExportError, open_channel
from nydus_exporter.pipeline.sources import open_source
from nydus_exporter.registry.credentials import DockerConfigCredentials
from nydus_exporter.service.jobs import SLOT_ROW
from nydus_exporter.service.metrics import DEDUP_KINDS
from nydus_exporter.service.server import RunningServer, serve
from tests.e2e.test_export import layer_base, layer_top
from tests.registry_fixtures import FaultProxy, RegistryServer
from tests.service.conftest import config_for


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def in_process(source: str, out: Path, *attrs: str) -> dict[str, str]:
    metadata = out.parent / f"{out.name}.json"
    output = ",".join(["type=nydus", "push=false", f"oci-layout={out}", *attrs])
    assert (
        cli.main(
            ["export", source, "--output", output, "--progress", "quiet", "--metadata-file", str(metadata)]
        )
        == 0
    )
    return dict(json.loads(metadata.read_text()))


async def remote(
    client: ExporterClient, source: str, out: Path, workdir: Path, **attrs: str
) -> tuple[dict[str, str], int]:
    resolved = await client.resolve({"push": "false", "oci-layout": str(out), **attrs})
    with open_source(source, workdir=workdir) as src:
        outcome = await client.export(src, resolved.instance_id)
    return dict(outcome.result.response), outcome.bytes_sent


async def test_same_image_as_the_in_process_export(
    client: ExporterClient, daemon: RunningServer, image: Path, short_tmp: Path
) -> None:
    local = in_process(f"oci:{image}:t", short_tmp / "local", "name=example.com/app:1", "oci-mediatypes=true")
    response, sent = await remote(
        client,
        f"oci:{image}:t",
        short_tmp / "remote",
        short_tmp,
        name="example.com/app:1",
        **{"oci-mediatypes": "true"},
    )
    assert sent > 0
    assert response["containerimage.digest"] == local["containerimage.digest"]
    assert response["nydus.manifest.digests"] == local["nydus.manifest.digests"]
    assert response["image.name"] == "example.com/app:1"
    descriptor = json.loads(base64.b64decode(response["containerimage.descriptor"]))
    assert descriptor["digest"] == local["containerimage.digest"]
    assert response["nydus.oci-layout.path"] == str(short_tmp / "remote")
    # The whole layout, byte for byte: blobs, index.json (with the tag), oci-layout.
    assert files_of(short_tmp / "remote") == files_of(short_tmp / "local")
    # The dedup statistics reach the metrics: every chunk reference is counted once.
    assert response["nydus.dedup"] == local["nydus.dedup"]
    counted = sum(daemon.metrics.chunks.labels(kind)._value.get() for kind in DEDUP_KINDS)
    assert (
        counted
        == sum(stats[kind] for stats in json.loads(local["nydus.dedup"]).values() for kind in DEDUP_KINDS)
        > 0
    )


async def test_tar_source_single_platform_has_the_config_digest(
    client: ExporterClient, short_tmp: Path
) -> None:
    tars = []
    for i, data in enumerate((layer_base(), layer_top())):
        path = short_tmp / f"l{i}.tar"
        path.write_bytes(data)
        tars.append(str(path))
    source = "tar:" + ",".join(tars)
    local = in_process(source, short_tmp / "local")
    response, _ = await remote(client, source, short_tmp / "remote", short_tmp)
    assert response["containerimage.digest"] == local["containerimage.digest"]
    assert response["containerimage.config.digest"] == local["containerimage.config.digest"]
    assert files_of(short_tmp / "remote") == files_of(short_tmp / "local")


@pytest.mark.slow
async def test_second_export_of_the_same_layers_sends_no_layer_data(
    client: ExporterClient, daemon: RunningServer, image: Path, short_tmp: Path
) -> None:
    first, sent_first = await remote(client, f"oci:{image}:t", short_tmp / "a", short_tmp)
    # The layer cache took the converted blobs without copying them: hard links.
    published = {p.stat().st_ino for p in (short_tmp / "a" / "blobs" / "sha256").iterdir()}
    entries = [p for p in daemon.jobs.cache.root.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 3
    assert {(e / "blob").stat().st_ino for e in entries} <= published
    second, sent_second = await remote(client, f"oci:{image}:t", short_tmp / "b", short_tmp)
    assert sent_first > 0 and sent_second == 0
    assert first["containerimage.digest"] == second["containerimage.digest"]
    assert files_of(short_tmp / "a") == files_of(short_tmp / "b")
    # 3 distinct layers (both platforms share base and top): each found once in the cache.
    assert daemon.metrics.cache_hits._value.get() == 3
    # A corrupt cache entry is dropped and the layer asked for again. (A new file: the entry's
    # blob is a hard link to the blob the first export published.)
    entry = next(p for p in daemon.jobs.cache.root.iterdir() if not p.name.startswith("."))
    (entry / "blob").unlink()
    (entry / "blob").write_bytes(b"garbage")
    _, sent_third = await remote(client, f"oci:{image}:t", short_tmp / "c", short_tmp)
    assert sent_third > 0
    assert files_of(short_tmp / "c") == files_of(short_tmp / "a")


@pytest.mark.slow
async def test_eight_concurrent_exports_with_two_slots(short_tmp: Path, image: Path) -> None:
    async with serve(config_for(short_tmp, max_concurrent_exports=2)) as daemon:
        async with open_channel(daemon.addresses[0]) as channel:
            client = ExporterClient(channel)

            async def one(i: int) -> tuple[str, list[str]]:
                resolved = await client.resolve({"push": "false", "oci-layout": str(short_tmp / f"out{i}")})
                with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
                    outcome = await client.export(src, resolved.instance_id)
                actions = [
                    e.progress.action
                    for e in outcome.events
                    if e.WhichOneof("ev") == "progress" and e.progress.id == SLOT_ROW
                ]
                return outcome.result.response["containerimage.digest"], actions

            results = await asyncio.gather(*(one(i) for i in range(8)))
    assert len({digest for digest, _ in results}) == 1
    waited = [actions for _, actions in results if actions]
    assert waited, "no export reported waiting for a build slot"
    assert all(a == ["waiting for a build slot"] * 2 for a in waited)  # started, then completed
    assert len(waited) <= 6


async def test_idempotency_key_resumes_and_conflicts(
    client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    attrs = {"push": "false", "oci-layout": str(short_tmp / "out")}
    first = await client.resolve(attrs)
    with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
        done = await client.export(src, first.instance_id, idempotency_key="build-1/0")
        again = await client.export(
            src, (await client.resolve(attrs)).instance_id, idempotency_key="build-1/0"
        )
        assert not done.resumed and again.resumed and again.job_id == done.job_id
        assert again.bytes_sent == 0
        assert again.result.response == done.result.response
        other = await client.resolve({**attrs, "compressor": "lz4_block"})
        with pytest.raises(RemoteExportError) as info:
            await client.export(src, other.instance_id, idempotency_key="build-1/0")
    assert info.value.code == grpc.StatusCode.ABORTED
    assert "idempotency key 'build-1/0'" in info.value.message


async def test_defer_push_publishes_only_in_finalize(
    client: ExporterClient, daemon: RunningServer, image: Path, short_tmp: Path
) -> None:
    out = short_tmp / "out"
    resolved = await client.resolve({"push": "false", "oci-layout": str(out), "name": "example.com/app:2"})
    with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
        outcome = await client.export(src, resolved.instance_id, defer_push=True)
    token = outcome.result.finalize_token
    assert token and not out.exists()
    final = await client.finalize(resolved.instance_id, token)
    index = json.loads((out / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["2"]
    assert final.response["containerimage.digest"] == outcome.result.response["containerimage.digest"]
    assert (await client.finalize(resolved.instance_id, token)).response == final.response  # idempotent
    with pytest.raises(RemoteExportError) as info:
        await client.finalize(resolved.instance_id, "not-a-token")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert await client.release(resolved.instance_id)
    assert list((daemon.config.state_dir / "jobs").iterdir()) == []


async def test_release_drops_an_unfinalized_export(
    client: ExporterClient, daemon: RunningServer, image: Path, short_tmp: Path
) -> None:
    resolved = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})
    with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
        outcome = await client.export(src, resolved.instance_id, defer_push=True)
    assert list((daemon.config.state_dir / "jobs").iterdir())
    assert await client.release(resolved.instance_id)
    assert list((daemon.config.state_dir / "jobs").iterdir()) == []
    assert not (short_tmp / "out").exists()
    with pytest.raises(RemoteExportError) as info:
        await client.finalize(resolved.instance_id, outcome.result.finalize_token)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


async def test_directory_layer_by_reference_only_under_allowed_roots(
    client: ExporterClient, short_tmp: Path
) -> None:
    rootfs = short_tmp / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("dir\n")
    response, sent = await remote(client, f"dir:{rootfs}", short_tmp / "out", short_tmp)
    assert sent == 0 and response["containerimage.digest"].startswith("sha256:")
    local = in_process(f"dir:{rootfs}", short_tmp / "local")
    assert response["containerimage.digest"] == local["containerimage.digest"]

    async with serve(config_for(short_tmp / "other", allowed_roots=())) as strict:
        async with open_channel(strict.addresses[0]) as channel:
            with pytest.raises(RemoteExportError) as info:
                await remote(
                    ExporterClient(channel), f"dir:{rootfs}", strict.config.state_dir / "out", short_tmp
                )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{rootfs} is not under an allowed root" in info.value.message


@pytest.mark.slow
async def test_push_asks_the_client_for_registry_credentials(
    client: ExporterClient, image: Path, short_tmp: Path, registry_basic: RegistryServer, repo_name: str
) -> None:
    config = short_tmp / "docker-config.json"
    auth = base64.b64encode(f"{registry_basic.username}:{registry_basic.password}".encode()).decode()
    config.write_text(json.dumps({"auths": {registry_basic.host: {"auth": auth}}}))
    name = f"{registry_basic.host}/{repo_name}:v1"
    resolved = await client.resolve({"name": name, "registry.insecure": "true"})
    with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
        # Without credentials on the client side the push is refused (the daemon has none).
        with pytest.raises(RemoteExportError) as info:
            await client.export(src, resolved.instance_id)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        outcome = await client.export(src, resolved.instance_id, credentials=DockerConfigCredentials(config))
    kinds = [e.WhichOneof("ev") for e in outcome.events]
    assert "auth_request" in kinds
    assert outcome.result.response["image.name"] == name
    tags = registry_basic.root / f"docker/registry/v2/repositories/{repo_name}/_manifests/tags/v1"
    assert tags.is_dir()


@pytest.mark.slow
async def test_merge_manifest_into_the_live_tag_over_grpc(
    client: ExporterClient, image: Path, short_tmp: Path, registry: RegistryServer, repo_name: str
) -> None:
    """The daemon merges into the image under the tag when it pushes (the worker converts)."""
    name = f"{registry.host}/{repo_name}:app"
    await _skopeo("copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{image}:t", f"docker://{name}")
    before = json.loads(await _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}"))
    attrs = {"name": name, "oci-mediatypes": "true", "merge-manifest": "true"}
    for _ in range(2):  # a second run replaces the Nydus entries, it does not add more
        resolved = await client.resolve(attrs)
        with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
            outcome = await client.export(src, resolved.instance_id)
        after_raw = await _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}")
        after = json.loads(after_raw)
        nydus = [m for m in after["manifests"] if "artifactType" in m]
        assert [m for m in after["manifests"] if m not in nydus] == before["manifests"]
        assert len(nydus) == len(before["manifests"])
        assert (
            outcome.result.response["containerimage.digest"]
            == "sha256:" + hashlib.sha256(after_raw).hexdigest()
        )


@pytest.mark.slow
async def test_chunk_store_over_grpc(
    client: ExporterClient, short_tmp: Path, fault_proxy: FaultProxy, repo_name: str
) -> None:
    """chunk-store=true through the daemon: the second export to a repository references the
    chunks the first one pushed (the daemon verifies them in the registry for its worker)."""
    import random

    from tests.helpers import tarbuild as tb

    big = random.Random(5).randbytes((2 << 20) + 3)
    first, second = short_tmp / "first.tar", short_tmp / "second.tar"
    first.write_bytes(tb.tar_of(tb.file("big.bin", big)))
    second.write_bytes(tb.tar_of(tb.file("copy.bin", big), tb.file("new", b"new\n")))
    responses = []
    for version, tar in (("v1", first), ("v2", second)):
        fault_proxy.upload_bytes = 0
        attrs = {
            "name": f"{fault_proxy.host}/{repo_name}:{version}",
            "oci-mediatypes": "true",
            "chunk-store": "true",
        }
        resolved = await client.resolve(attrs)
        with open_source(f"tar:{tar}", workdir=short_tmp) as src:
            outcome = await client.export(src, resolved.instance_id)
        responses.append(outcome.result.response)
    (stats,) = json.loads(responses[1]["nydus.dedup"]).values()
    assert (stats["from_chunk_dict"], stats["stored"]) == (3, 1)
    assert fault_proxy.upload_bytes < len(big) // 4  # only the new chunk, metadata and manifests
    assert cli.main(["check", f"docker://{fault_proxy.upstream.host}/{repo_name}:v2"]) == 0


async def test_progress_rows_name_the_platform_once(
    client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    resolved = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})
    with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
        outcome = await client.export(src, resolved.instance_id)
    rows = [(e.progress.id, e.progress.action) for e in outcome.events if e.WhichOneof("ev") == "progress"]
    manifests = [(row, action) for row, action in rows if row.endswith("manifest")]
    assert sorted(row for row, _ in manifests) == ["[linux/amd64] manifest", "[linux/arm64/v8] manifest"]
    # The row names the platform; the action does not repeat it.
    assert all(action.startswith("writing manifest sha256:") for _, action in manifests), manifests
    assert not [action for _, action in rows if action.startswith("[")]


async def _skopeo(*args: str) -> bytes:
    """Run skopeo off the event loop (the daemon under test shares it); its stdout."""
    import subprocess

    done = await asyncio.to_thread(subprocess.run, ["skopeo", *args], check=True, capture_output=True)
    return done.stdout
