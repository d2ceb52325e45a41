"""What an export produced, and the response keys BuildKit users know."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.bootstrap_reader import Bootstrap
from nydus_exporter.rafs.model import walk

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    pass


@dataclass(frozen=True)
class PlatformResult:
    platform: str
    manifest: Descriptor
    config: Descriptor
    bootstrap_layer: Descriptor
    blob_layers: tuple[Descriptor, ...]
    dedup: DedupStats = field(default_factory=lambda: DedupStats())


@dataclass
class DedupStats:
    """Chunk references of an image's layers and where their bytes are ([format §4.2])."""

    chunks: int = 0  # chunk references of all files (a hardlinked file counts once)
    stored: int = 0  # chunks the layers stored themselves
    in_layer: int = 0  # references to a chunk stored earlier in the same layer
    from_lower_layers: int = 0  # references to a chunk a lower layer of the image stored
    from_chunk_dict: int = 0  # references to a chunk of the chunk dictionary image
    bytes_not_stored: int = 0  # compressed bytes all those references did not store again

    def add_layer(self, blob: BlobResult, boot: Bootstrap, image_blobs: set[str]) -> None:
        """Count ``blob``'s references; ``boot`` is its parsed (not yet merged) bootstrap."""
        own_index = boot.own_blob_index
        seen_inodes: set[int] = set()
        own_refs = 0
        for _path, node in walk(boot.root):
            if not node.inode.chunks or id(node.inode) in seen_inodes:
                continue
            seen_inodes.add(id(node.inode))
            for chunk in node.inode.chunks:
                self.chunks += 1
                if chunk.blob_index == own_index:
                    own_refs += 1
                    continue
                self.bytes_not_stored += chunk.compressed_size
                if boot.blobs[chunk.blob_index].blob_id in image_blobs:
                    self.from_lower_layers += 1
                else:
                    self.from_chunk_dict += 1
        self.stored += blob.chunk_count
        self.in_layer += own_refs - blob.chunk_count


@dataclass(frozen=True)
class ExportResult:
    descriptor: Descriptor  # the root: manifest, or index
    images: tuple[PlatformResult, ...]
    names: tuple[str, ...]
    oci_layout: Path | None
    warnings: tuple[str, ...] = ()
    compressor: str = "zstd"
    oci_manifests: Mapping[str, str] = field(default_factory=dict)  # merge-manifest: platform -> digest
    remote_blobs: tuple[str, ...] = ()  # blob layers left in the target repository (chunk store)
    packed: tuple[str, ...] = ()  # digests of the layer blobs this export converted

    def metadata(self) -> dict[str, str]:
        """Response keys as BuildKit's image exporter (and our nydus.* extensions) set them."""
        desc = json.dumps(self.descriptor.to_json(), separators=(",", ":")).encode()
        out = {
            "containerimage.digest": self.descriptor.digest,
            "containerimage.descriptor": base64.b64encode(desc).decode(),
            "nydus.manifest.digests": json.dumps({r.platform: r.manifest.digest for r in self.images}),
            "nydus.bootstrap.digests": json.dumps(
                {r.platform: r.bootstrap_layer.digest for r in self.images}
            ),
            "nydus.fs-version": "6",
            "nydus.compressor": self.compressor,
            "nydus.dedup": json.dumps({r.platform: dataclasses.asdict(r.dedup) for r in self.images}),
        }
        if self.oci_manifests:
            out["nydus.oci.manifest.digests"] = json.dumps(dict(self.oci_manifests))
        if self.names:
            out["image.name"] = ",".join(self.names)
        if len(self.images) == 1 and mt.is_manifest(self.descriptor.media_type):
            out["containerimage.config.digest"] = self.images[0].config.digest
        if self.oci_layout is not None:
            out["nydus.oci-layout.path"] = str(self.oci_layout)
        return out


def filter_response(response: Mapping[str, str], *, standard_keys: bool) -> dict[str, str]:
    """``standard-response-keys=false`` keeps only the ``nydus.*`` keys ([contract §5.4])."""
    if standard_keys:
        return dict(response)
    return {k: v for k, v in response.items() if k.startswith("nydus.")}
