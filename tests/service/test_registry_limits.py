"""A registry that never answers fails a daemon export within the configured bound: the
daemon's config sets the default, a client's key wins (issue 13). The daemon keeps serving."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nydus_exporter.client.exporter import ExporterClient, RemoteExportError, open_channel
from nydus_exporter.pipeline.sources import open_source
from nydus_exporter.service.server import serve
from tests.registry_fixtures import FaultProxy
from tests.service.conftest import config_for


@pytest.mark.slow  # waits out a (short) retry deadline against a hanging registry
@pytest.mark.parametrize(
    ("config", "attrs"),
    [
        ({"registry_timeout": 0.5, "registry_retry_deadline": 1.0}, {}),
        ({"registry_retry_deadline": 600.0}, {"registry.timeout": "500ms", "registry.retry-deadline": "1s"}),
    ],
    ids=["daemon-config", "client-keys"],
)
async def test_a_never_answering_registry_fails_the_export_at_the_deadline(
    short_tmp: Path,
    image: Path,
    fault_proxy: FaultProxy,
    repo_name: str,
    config: dict[str, float],
    attrs: dict[str, str],
) -> None:
    fault_proxy.hang = True
    async with serve(config_for(short_tmp, **config)) as daemon:
        channel = open_channel(daemon.addresses[0])
        try:
            client = ExporterClient(channel)
            resolved = await client.resolve({"name": f"{fault_proxy.host}/{repo_name}:v1", **attrs})
            with open_source(f"oci:{image}:t", workdir=short_tmp) as src:
                with pytest.raises(RemoteExportError) as info:
                    await client.export(src, resolved.instance_id)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE, info.value
            assert fault_proxy.host in info.value.message
            assert "retry deadline of 1s exceeded" in info.value.message
            still = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})
            assert still.instance_id
        finally:
            await channel.close()
