"""What a client can make the daemon hold: metadata and attrs (per job and in total), streams
that never send their header, and open streams per client. Each refusal is
RESOURCE_EXHAUSTED (or DEADLINE_EXCEEDED) naming the limit, and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.client.exporter import ExporterClient, RemoteExportError, open_channel
from nydus_exporter.service.server import RunningServer, serve
from nydus_exporter.service.servicer import peer_host
from tests.e2e.test_export import layer_meta_only
from tests.service import streams as s
from tests.service.conftest import config_for

MiB = 1 << 20
LAYER = layer_meta_only()


@pytest.fixture
async def strict(short_tmp: Path) -> AsyncIterator[RunningServer]:
    """A daemon with small limits (the defaults are tens of MiB)."""
    config = config_for(
        short_tmp,
        max_metadata_bytes_per_job=2 * MiB,
        max_metadata_bytes_total=3 * MiB,
        max_attrs_bytes_per_instance=MiB,
        max_attrs_bytes_total=3 * MiB,
        header_timeout=0.5,
        max_streams_per_peer=3,
    )
    async with serve(config) as running:
        yield running


@pytest.fixture
async def strict_client(strict: RunningServer) -> AsyncIterator[ExporterClient]:
    async with open_channel(strict.addresses[0]) as channel:
        yield ExporterClient(channel)


async def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def _metadata(key: str, size: int) -> list[pb.ExportRequest]:
    """``size`` bytes of metadata ``key`` in 1 MiB chunks."""
    chunks, offset = [], 0
    while offset < size:
        n = min(MiB, size - offset)
        chunks.append(
            pb.ExportRequest(
                metadata_chunk=pb.MetadataChunk(
                    key=key, offset=offset, data=bytes(n), last=offset + n == size
                )
            )
        )
        offset += n
    return chunks


async def _send(call: Any, requests: list[pb.ExportRequest]) -> None:
    """Write ``requests``, stopping quietly where the daemon already ended the call."""
    for request in requests:
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return


async def _failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(30):
            async for _ in call:
                pass
    return info.value


async def _export_ok(client: ExporterClient, short_tmp: Path) -> None:
    resolved = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "ok")})
    call = client.stub.Export()
    for request in (
        s.header(resolved.instance_id),
        s.begin("p", LAYER),
        s.data("p", 0, 0, LAYER),
        s.end("p", 0, s.sha(LAYER)),
        s.platform_end("p"),
        s.commit(),
    ):
        await call.write(request)
    await call.done_writing()
    result = await s.read_until(call, "result")
    assert result.result.root_descriptor.digest.startswith("sha256:")


async def test_metadata_of_one_export_is_capped(
    strict_client: ExporterClient, strict: RunningServer, short_tmp: Path
) -> None:
    instance = (
        await strict_client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})
    ).instance_id
    call = strict_client.stub.Export()
    await call.write(s.header(instance))
    # Many keys, each under the 16 MiB per-value limit: together over the per-job limit.
    await _send(call, [r for key in ("a", "b", "c") for r in _metadata(key, MiB)])
    error = await _failure(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "max_metadata_bytes_per_job" in (error.details() or "")
    await _wait_for(lambda: strict.jobs.metadata_held.used == 0, "metadata given back")
    await _export_ok(strict_client, short_tmp)


async def test_metadata_across_exports_is_capped_and_given_back_on_cancel(
    strict_client: ExporterClient, strict: RunningServer, short_tmp: Path
) -> None:
    instance = (
        await strict_client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})
    ).instance_id
    first = strict_client.stub.Export()
    await first.write(s.header(instance))
    for request in _metadata("a", 2 * MiB - 1024):  # within the per-job limit
        await first.write(request)
    await _wait_for(lambda: strict.jobs.metadata_held.used > MiB, "the first export holds its metadata")
    second = strict_client.stub.Export()
    await second.write(s.header(instance))
    await _send(second, _metadata("a", 2 * MiB - 1024))
    error = await _failure(second)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "max_metadata_bytes_total" in (error.details() or "")
    first.cancel()
    await _wait_for(lambda: strict.jobs.metadata_held.used == 0, "metadata given back on cancel")
    await _export_ok(strict_client, short_tmp)


async def test_attrs_are_capped_per_resolve_and_in_total_until_released(
    strict_client: ExporterClient, strict: RunningServer, short_tmp: Path
) -> None:
    attrs = {"push": "false", "oci-layout": str(short_tmp / "out")}
    with pytest.raises(RemoteExportError) as info:
        await strict_client.resolve({**attrs, "annotation.big": "x" * (2 * MiB)})
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_attrs_bytes_per_instance" in info.value.message
    held = [
        (await strict_client.resolve({**attrs, "annotation.big": "x" * (MiB - 4096)})).instance_id
        for _ in range(3)
    ]
    with pytest.raises(RemoteExportError) as info:
        await strict_client.resolve({**attrs, "annotation.big": "x" * (MiB - 4096)})
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_attrs_bytes_total" in info.value.message
    assert await strict_client.release(held[0])
    assert (await strict_client.resolve({**attrs, "annotation.big": "x" * (MiB - 4096)})).instance_id


async def test_a_stream_without_a_header_times_out(
    strict_client: ExporterClient, strict: RunningServer, short_tmp: Path
) -> None:
    call = strict_client.stub.Export()
    error = await _failure(call)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert "no header within 0.5 s" in (error.details() or "")
    await _wait_for(lambda: strict.metrics.in_flight._value.get() == 0, "no longer in flight")
    await _export_ok(strict_client, short_tmp)


async def test_open_streams_per_client_are_capped(
    strict_client: ExporterClient, strict: RunningServer, short_tmp: Path
) -> None:
    instance = (
        await strict_client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})
    ).instance_id
    held = []
    for _ in range(3):
        call = strict_client.stub.Export()
        await call.write(s.header(instance))  # a header: these do not time out
        held.append(call)
        await s.read_until(call, "accepted")
    extra = strict_client.stub.Export()
    error = await _failure(extra)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "max_streams_per_peer" in (error.details() or "")
    for call in held:
        call.cancel()
    await _wait_for(lambda: strict.metrics.in_flight._value.get() == 0, "the held streams ended")
    await _export_ok(strict_client, short_tmp)


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:10.0.0.7:51234") == "ipv4:10.0.0.7"
    assert peer_host("ipv6:[::1]:5000") == "ipv6:[::1]"
    assert peer_host("unix:/run/x.sock") == "unix:/run/x.sock"
