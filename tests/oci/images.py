"""Small but valid OCI images for layout / archive tests (a gzip tar layer made with tarfile)."""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass

from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Blob, Descriptor
from nydus_exporter.oci.layout import OciLayout
from tests.oci.imagespec import sha256


@dataclass(frozen=True)
class SmallImage:
    manifest: Blob
    config: Blob
    layer_tar: bytes
    layer_gz: bytes


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def small_image(content: bytes = b"hello\n", *, arch: str = "amd64") -> SmallImage:
    tar = layer_tar({"etc/hello": content})
    gz = gzip.compress(tar, mtime=0)
    config = Blob.from_json(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
            "history": [{"created_by": "test layer"}],
        },
        mt.MEDIA_TYPE_IMAGE_CONFIG,
    )
    manifest = Blob.from_json(
        {
            "schemaVersion": 2,
            "mediaType": mt.MEDIA_TYPE_IMAGE_MANIFEST,
            "config": config.descriptor().to_json(),
            "layers": [Descriptor.of(gz, mt.MEDIA_TYPE_IMAGE_LAYER_GZIP).to_json()],
        },
        mt.MEDIA_TYPE_IMAGE_MANIFEST,
    )
    return SmallImage(manifest, config, tar, gz)


def store(layout: OciLayout, image: SmallImage, tag: str | None) -> Descriptor:
    layout.write_blob(image.layer_gz)
    layout.put(image.config)
    desc = layout.put(image.manifest)
    layout.add_manifest(desc, tag=tag)
    return desc
