"""TLS: a registry with a certificate from a CA made in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from nydus_exporter.errors import ConfigError, RegistryError
from tests.registry.util import blob_file, client, push_image, skopeo_inspect_raw
from tests.registry_fixtures import RegistryServer


async def test_custom_ca_bundle(registry_tls: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    ref = registry_tls.ref(repo_name, "v1")
    async with client(ca_file=registry_tls.ca_file) as c:
        digest, raw = await push_image(c, ref, tmp_path)
        got = await c.get_manifest(ref)
    assert got is not None and got.digest == digest
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    assert registry_tls.ca_file is not None
    (cert_dir / "ca.crt").write_bytes(registry_tls.ca_file.read_bytes())
    assert skopeo_inspect_raw(f"{registry_tls.host}/{repo_name}:v1", cert_dir=cert_dir) == raw


async def test_untrusted_certificate_is_not_downgraded(registry_tls: RegistryServer) -> None:
    # Loopback may use plain HTTP, but a registry that speaks TLS must present a trusted
    # certificate unless the host is marked insecure.
    async with client() as c:
        with pytest.raises(RegistryError, match="TLS certificate not trusted") as caught:
            await c.ping(registry_tls.host)
    assert not caught.value.temporary
    assert caught.value.url.startswith("https://")


async def test_insecure_host_skips_verification(
    registry_tls: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 10_000)
    async with client(insecure_hosts=[registry_tls.host]) as c:
        result = await c.push_blob(registry_tls.ref(repo_name), blob.digest, blob.size, blob.path)
        assert await c.read_blob_range(registry_tls.ref(repo_name), blob.digest, 0, 4) == blob.data[:4]
    assert result.outcome == "uploaded"


async def test_insecure_plain_http_registry(registry: RegistryServer) -> None:
    async with client(insecure_hosts=[registry.host]) as c:
        await c.ping(registry.host)


def test_bad_ca_file(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load CA bundle"):
        client(ca_file=bogus)
