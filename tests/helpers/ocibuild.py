"""Build plain OCI source images for tests, with the stdlib only (independent of nydus_exporter).

``write_image(root, {"linux/amd64": [layer_tar_bytes, ...], ...}, tag="t")`` writes an OCI
image layout with gzip layers, one manifest per platform and an index (or, with a single
platform and ``single_manifest=True``, the manifest alone under the tag).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _put(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_image(
    root: Path,
    platforms: Mapping[str, Sequence[bytes]],
    *,
    tag: str = "t",
    single_manifest: bool = False,
    config_extra: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """Write the layout; returns platform -> manifest digest."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entries = []
    digests = {}
    for plat, layers in platforms.items():
        os_name, arch, *variant = plat.split("/")
        layer_descs = []
        diff_ids = []
        for tar in layers:
            diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
            desc = _put(root, gzip.compress(tar, mtime=0))
            layer_descs.append({"mediaType": OCI_LAYER_GZIP, **desc})
        config: dict[str, object] = {
            "architecture": arch,
            "os": os_name,
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
            **(config_extra or {}),
        }
        if variant:
            config["variant"] = variant[0]
        config_desc = {"mediaType": OCI_CONFIG, **_put(root, json.dumps(config).encode())}
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": layer_descs,
        }
        manifest_desc = _put(root, json.dumps(manifest).encode())
        platform: dict[str, str] = {"architecture": arch, "os": os_name}
        if variant:
            platform["variant"] = variant[0]
        entries.append({"mediaType": OCI_MANIFEST, **manifest_desc, "platform": platform})
        digests[plat] = str(manifest_desc["digest"])
    if single_manifest:
        assert len(entries) == 1
        top = dict(entries[0])
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        top = {"mediaType": OCI_INDEX, **_put(root, json.dumps(index).encode())}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    top.pop("platform", None)
    (root / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    )
    return digests
