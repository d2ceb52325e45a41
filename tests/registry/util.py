"""Helpers shared by the registry tests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.reference import Reference
from nydus_exporter.registry import RegistryClient, RetryPolicy, StaticCredentials
from tests.conftest import require

# Tests never sleep for real backoffs.
FAST_RETRY = RetryPolicy(attempts=6, backoff_base=0.001, backoff_max=0.01, deadline=20.0)


def client(**options: Any) -> RegistryClient:
    """A client with fast retries and no ambient docker config (unless given)."""
    options.setdefault("credentials", StaticCredentials({}))
    options.setdefault("retry", FAST_RETRY)
    return RegistryClient(**options)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BlobFile:
    path: Path
    data: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)


def blob_file(directory: Path, size: int) -> BlobFile:
    data = os.urandom(size)
    path = directory / f"blob-{size}-{data[:4].hex()}"
    path.write_bytes(data)
    return BlobFile(path, data, digest_of(data))


def manifest_bytes(config: BlobFile, layers: list[BlobFile], *, docker: bool = False) -> tuple[bytes, str]:
    media_type = mt.MEDIA_TYPE_DOCKER_MANIFEST if docker else mt.MEDIA_TYPE_IMAGE_MANIFEST
    layer_type = mt.MEDIA_TYPE_DOCKER_LAYER_GZIP if docker else mt.MEDIA_TYPE_IMAGE_LAYER_GZIP
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": mt.MEDIA_TYPE_DOCKER_CONFIG if docker else mt.MEDIA_TYPE_IMAGE_CONFIG,
            "digest": config.digest,
            "size": config.size,
        },
        "layers": [{"mediaType": layer_type, "digest": b.digest, "size": b.size} for b in layers],
    }
    return json.dumps(document, indent=1).encode(), media_type


def config_blob(directory: Path) -> BlobFile:
    data = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    path = directory / f"config-{digest_of(data)[7:19]}.json"
    path.write_bytes(data)
    return BlobFile(path, data, digest_of(data))


async def push_image(
    c: RegistryClient, ref: Reference, directory: Path, *, docker: bool = False
) -> tuple[str, bytes]:
    """Push a config + one layer + manifest tagged ``ref.tag``; returns (digest, manifest)."""
    config = config_blob(directory)
    layer = blob_file(directory, 5000)
    for blob in (config, layer):
        await c.push_blob(ref, blob.digest, blob.size, blob.path)
    raw, media_type = manifest_bytes(config, [layer], docker=docker)
    digest = await c.put_manifest(ref, raw, media_type)
    return digest, raw


def skopeo_inspect_raw(ref: str, *, creds: str | None = None, cert_dir: Path | None = None) -> bytes:
    """``skopeo inspect --raw`` of ``docker://ref``: an independent client's view."""
    require(shutil.which("skopeo") is not None, "skopeo is not installed")
    command = ["skopeo", "inspect", "--raw"]
    if cert_dir is not None:
        command.append(f"--cert-dir={cert_dir}")
    else:
        command.append("--tls-verify=false")
    if creds:
        command.append(f"--creds={creds}")
    command.append(f"docker://{ref}")
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout
