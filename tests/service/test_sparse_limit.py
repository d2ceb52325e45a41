"""The daemon refuses sparse layers beyond its `sparse_limit` and keeps serving."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nydus_exporter.client.exporter import ExporterClient, RemoteExportError, open_channel
from nydus_exporter.pipeline.sources import open_source
from nydus_exporter.service.config import load_config
from nydus_exporter.service.server import serve
from tests.helpers import tarbuild as tb
from tests.service.conftest import config_for

MIB = 1 << 20


def _sparse_tar(path: Path, size: int) -> Path:
    path.write_bytes(
        tb.tar_of(
            tb.sparse_file("var/log/lastlog", size, [(size - 3, b"end")], sparse_format="pax-0.1"), fmt="pax"
        )
    )
    return path


async def _export(client: ExporterClient, layer: Path, out: Path, workdir: Path, **attrs: str) -> str:
    resolved = await client.resolve({"push": "false", "oci-layout": str(out), **attrs})
    with open_source(f"tar:{layer}", workdir=workdir) as source:
        outcome = await client.export(source, resolved.instance_id)
    return outcome.result.response["containerimage.digest"]


async def test_a_terabyte_of_holes_is_refused_and_the_daemon_keeps_serving(
    client: ExporterClient, short_tmp: Path
) -> None:
    huge = _sparse_tar(short_tmp / "huge.tar", 1 << 40)
    with pytest.raises(RemoteExportError) as info:
        await _export(client, huge, short_tmp / "out", short_tmp)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sparse file '/var/log/lastlog' declares 1099511627776 bytes" in info.value.message
    small = _sparse_tar(short_tmp / "small.tar", 5 * MIB)
    assert (await _export(client, small, short_tmp / "out", short_tmp)).startswith("sha256:")


async def test_the_configured_limit_is_the_default_and_the_ceiling(short_tmp: Path) -> None:
    assert load_config(env={"NYDUS_EXPORTER_SPARSE_LIMIT": "4194304"}).sparse_limit == 4 * MIB
    small = _sparse_tar(short_tmp / "small.tar", 5 * MIB)
    async with serve(config_for(short_tmp, sparse_limit=4 * MIB)) as strict:
        async with open_channel(strict.addresses[0]) as channel:
            client = ExporterClient(channel)
            with pytest.raises(RemoteExportError) as refused:
                await _export(client, small, short_tmp / "out", short_tmp)
            assert "more than sparse-limit=4194304" in refused.value.message
            with pytest.raises(RemoteExportError) as above:
                await _export(client, small, short_tmp / "out", short_tmp, **{"sparse-limit": "8MiB"})
            assert above.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "above this daemon's limit" in above.value.message
