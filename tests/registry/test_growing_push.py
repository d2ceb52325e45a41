"""Push while packing: a blob uploads while its file is still being written, against a real
registry; a failed stream leaves the blob to the ordinary upload."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from nydus_exporter.errors import RegistryError
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.pipeline.early_push import EarlyPush
from nydus_exporter.registry import SyncRegistry
from nydus_exporter.registry.growing import GrowingBlob
from tests.registry.util import client, digest_of
from tests.registry_fixtures import FaultProxy, RegistryServer

HALF = 3 << 20


def _wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


async def test_a_growing_blob_is_uploaded_while_it_is_written(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    data = os.urandom(2 * HALF + 12345)
    path = tmp_path / "layer.blob"
    f = path.open("wb")
    growing = GrowingBlob(path)
    async with client() as c:

        def writer() -> None:
            f.write(data[:HALF])
            f.flush()
            # The second half is written only once the registry client has sent the first:
            # the upload runs while the file is incomplete.
            _wait_for(lambda: c.stats.bytes_uploaded >= HALF, "the first half to be sent")
            f.write(data[HALF:])
            f.close()
            growing.finish(digest_of(data), len(data))

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            result = await c.push_growing_blob(registry.ref(repo_name), growing)
        finally:
            await asyncio.to_thread(thread.join)
            growing.close()
        assert c.stats.blobs_uploaded == 1
    assert (result.digest, result.size, result.outcome) == (digest_of(data), len(data), "uploaded")
    assert result.uploaded_bytes == len(data)
    assert registry.stored_blob(result.digest).read_bytes() == data


async def test_an_abandoned_blob_fails_its_stream_and_is_not_committed(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    path = tmp_path / "layer.blob"
    path.write_bytes(data)
    growing = GrowingBlob(path)
    ref = registry.ref(repo_name)
    async with client() as c:
        upload = asyncio.ensure_future(c.push_growing_blob(ref, growing))
        await asyncio.sleep(0.2)
        assert not upload.done()  # waiting for more bytes or the writer's finish
        growing.abandon()
        with pytest.raises(RegistryError, match="abandoned"):
            await asyncio.wait_for(upload, 10)
        assert await c.blob_exists(ref, digest_of(data)) is None
    growing.close()


def test_early_push_falls_back_to_an_ordinary_upload_when_the_stream_fails(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    layout = OciLayout.create(tmp_path / "out")
    data = os.urandom(500_000)
    digest = digest_of(data)
    work = tmp_path / "layer.blob"
    with SyncRegistry() as sync:
        early = EarlyPush(sync, layout, fault_proxy.ref(repo_name))
        fault_proxy.fail(1, 500, methods=("PATCH",))  # the stream's one PATCH
        try:
            with work.open("wb") as f:
                stream = early.blob_started(work)
                assert stream is not None
                f.write(data)
            stream.finish(digest, len(data))
            layout.import_blob_file(work, digest)
            early.blob_ready(digest, len(data), stream)
            results = early.results()
        finally:
            early.close()
    assert results[digest].outcome == "uploaded"
    assert ("PATCH", 500) in [(method, status) for method, _, status in fault_proxy.log]
    assert registry.stored_blob(digest).read_bytes() == data
