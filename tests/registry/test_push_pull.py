"""Blob and manifest round trips against a real distribution registry (docker-registry)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nydus_exporter.errors import ConfigError, RegistryNotFoundError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.registry import StaticCredentials, SyncRegistry
from nydus_exporter.registry.client import UploadParts
from tests.registry.util import (
    FAST_RETRY,
    blob_file,
    client,
    config_blob,
    digest_of,
    manifest_bytes,
    push_image,
    skopeo_inspect_raw,
)
from tests.registry_fixtures import FaultProxy, RegistryServer


async def test_ping(registry: RegistryServer) -> None:
    async with client() as c:
        await c.ping(registry.host)
        assert c.stats.requests >= 1


async def test_monolithic_push_then_head_skip(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 300_000)
    ref = fault_proxy.ref(repo_name)
    async with client() as c:
        first = await c.push_blob(ref, blob.digest, blob.size, blob.path)
        assert (first.outcome, first.uploaded_bytes) == ("uploaded", blob.size)
        assert fault_proxy.upload_bytes == blob.size
        assert not any(method == "PATCH" for method, _, _ in fault_proxy.log)  # one PUT
        second = await c.push_blob(ref, blob.digest, blob.size, blob.path)
        assert second.outcome == "exists"
        assert fault_proxy.upload_bytes == blob.size  # nothing more went over the wire
        assert await c.blob_exists(ref, blob.digest) == blob.size
    assert registry.stored_blob(blob.digest).read_bytes() == blob.data


async def test_chunked_push_above_threshold(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 1_000_000)
    async with client(uploads=UploadParts(threshold=200_000, part_size=300_000)) as c:
        result = await c.push_blob(fault_proxy.ref(repo_name), blob.digest, blob.size, blob.path)
    assert result.outcome == "uploaded"
    patches = [entry for entry in fault_proxy.log if entry[0] == "PATCH"]
    assert [status for _, _, status in patches] == [202] * 4  # 300k, 300k, 300k, 100k
    assert fault_proxy.upload_bytes == blob.size
    assert registry.stored_blob(blob.digest).read_bytes() == blob.data


async def test_push_from_async_iterator(registry: RegistryServer, repo_name: str) -> None:
    data = bytes(range(256)) * 4000
    digest = digest_of(data)

    def source() -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 7777):
                yield data[i : i + 7777]

        return chunks()

    async with client(uploads=UploadParts(threshold=100_000, part_size=250_000)) as c:
        result = await c.push_blob(registry.ref(repo_name), digest, len(data), source)
    assert result.outcome == "uploaded"
    assert registry.stored_blob(digest).read_bytes() == data


async def test_declared_size_must_match_file(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 1000)
    async with client() as c:
        with pytest.raises(ConfigError, match="has 1000 bytes, not 999"):
            await c.push_blob(registry.ref(repo_name), blob.digest, 999, blob.path)


async def test_cross_repository_mount(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 50_000)
    source, target = f"{repo_name}/src", f"{repo_name}/dst"
    async with client() as c:
        await c.push_blob(fault_proxy.ref(source), blob.digest, blob.size, blob.path)
        uploaded = fault_proxy.upload_bytes
        result = await c.push_blob(
            fault_proxy.ref(target),
            blob.digest,
            blob.size,
            blob.path,
            mount_from=["t/does-not-exist", source],
        )
        assert result.outcome == "mounted"
        assert fault_proxy.upload_bytes == uploaded
        assert await c.blob_exists(registry.ref(target), blob.digest) == blob.size
        # Mounting something the source does not have falls back to an upload.
        other = blob_file(tmp_path, 1234)
        assert await c.mount_blob(registry.ref(target), other.digest, source) is False


async def test_concurrent_pushes_of_one_blob_share_an_upload(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 200_000)
    async with client() as c:
        results = await asyncio.gather(
            *(c.push_blob(fault_proxy.ref(repo_name), blob.digest, blob.size, blob.path) for _ in range(5))
        )
    assert {r.outcome for r in results} == {"uploaded"}
    assert fault_proxy.upload_bytes == blob.size


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
async def test_manifest_put_get_and_tags(
    registry: RegistryServer, repo_name: str, tmp_path: Path, docker: bool
) -> None:
    ref = registry.ref(repo_name, "v1")
    async with client() as c:
        config = config_blob(tmp_path)
        layer = blob_file(tmp_path, 4096)
        for blob in (config, layer):
            await c.push_blob(ref, blob.digest, blob.size, blob.path)
        raw, media_type = manifest_bytes(config, [layer], docker=docker)
        digest = await c.put_manifest(ref, raw, media_type, tags=["v1", "latest"])
        assert digest == digest_of(raw)

        by_tag = await c.get_manifest(ref)
        assert by_tag is not None
        assert (by_tag.raw, by_tag.media_type, by_tag.digest) == (raw, media_type, digest)
        by_digest = await c.get_manifest(registry.ref(repo_name).with_digest(digest))
        assert by_digest is not None and by_digest.raw == raw
        assert sorted(await c.list_tags(ref)) == ["latest", "v1"]
        assert await c.get_manifest(registry.ref(repo_name, "nope")) is None
        missing = "sha256:" + "0" * 64
        with pytest.raises(RegistryNotFoundError, match=r"HTTP 404 \(MANIFEST_UNKNOWN"):
            await c.get_manifest(registry.ref(repo_name).with_digest(missing))
    # An independent client sees the same bytes under the tag.
    assert skopeo_inspect_raw(f"{registry.host}/{repo_name}:latest") == raw


async def test_index_put_get(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    ref = registry.ref(repo_name, "multi")
    async with client() as c:
        manifest_digest, manifest = await push_image(c, registry.ref(repo_name), tmp_path)
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX,
                "manifests": [
                    {
                        "mediaType": mt.MEDIA_TYPE_IMAGE_MANIFEST,
                        "digest": manifest_digest,
                        "size": len(manifest),
                        "platform": {"architecture": "amd64", "os": "linux"},
                    }
                ],
            }
        ).encode()
        digest = await c.put_manifest(ref, index, mt.MEDIA_TYPE_IMAGE_INDEX)
        got = await c.get_manifest(ref)
    assert got is not None
    assert (got.raw, got.media_type, got.digest) == (index, mt.MEDIA_TYPE_IMAGE_INDEX, digest)
    assert skopeo_inspect_raw(f"{registry.host}/{repo_name}:multi") == index


async def test_blob_stream_range_and_fetch(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    blob = blob_file(tmp_path, 3_000_000)
    ref = registry.ref(repo_name)
    async with client() as c:
        await c.push_blob(ref, blob.digest, blob.size, blob.path)
        async with c.open_blob(ref, blob.digest) as stream:
            assert stream.size == blob.size
            received = b"".join([chunk async for chunk in stream])
        assert received == blob.data
        assert await c.read_blob_range(ref, blob.digest, 1_234_567, 1000) == blob.data[1_234_567:1_235_567]
        assert await c.read_blob_range(ref, blob.digest, blob.size - 10, 10) == blob.data[-10:]
        dest = tmp_path / "out" / "blob"
        dest.parent.mkdir()
        assert await c.fetch_blob(ref, blob.digest, dest) == blob.size
        assert dest.read_bytes() == blob.data
        assert list(dest.parent.iterdir()) == [dest]  # no temp file left behind
        with pytest.raises(RegistryNotFoundError):
            await c.fetch_blob(ref, digest_of(b"absent"), tmp_path / "out" / "absent")
        assert list(dest.parent.iterdir()) == [dest]


def test_sync_facade_from_worker_threads(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    blobs = [blob_file(tmp_path, 10_000 + i) for i in range(6)]
    ref = registry.ref(repo_name)
    errors: list[BaseException] = []
    with SyncRegistry(credentials=StaticCredentials({}), retry=FAST_RETRY) as sync:

        def worker(index: int) -> None:
            try:
                blob = blobs[index]
                assert sync.push_blob(ref, blob.digest, blob.size, blob.path).outcome == "uploaded"
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(blobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert sync.stats.blobs_uploaded == len(blobs)
        assert sync.read_blob_range(ref, blobs[0].digest, 5, 5) == blobs[0].data[5:10]
    for blob in blobs:
        assert registry.stored_blob(blob.digest).read_bytes() == blob.data
