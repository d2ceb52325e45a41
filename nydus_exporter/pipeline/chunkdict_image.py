"""``nydus-exporter chunkdict push REF``: publish the chunk store's view of a repository as a
Nydus image, so other exporter replicas (``chunk-dict=REF``) or nydusify
(``--chunk-dict bootstrap:registry:REF``) can deduplicate against it. The registry is the
shared store: there is no other distribution layer.

The image is a regular Nydus image whose blob layers are the repository's blobs the store
knows (verified there first, never re-uploaded) and whose bootstrap holds one file per chunk,
``/chunks/<blob>/<ci index>``, so every recorded chunk is in its chunk table ([format §2.14]) and the
image mounts and ``check``s like any other.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

from nydus_exporter.chunkstore import ChunkStore
from nydus_exporter.errors import ConfigError
from nydus_exporter.image.reader import host_platform_of
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.bootstrap_layer import write_bootstrap_layer
from nydus_exporter.oci.descriptor import Descriptor, canonical_json
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.nydus_image import build_nydus_config, build_nydus_manifest
from nydus_exporter.oci.reference import Reference
from nydus_exporter.pipeline.push import push_image
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.bootstrap import write_bootstrap
from nydus_exporter.rafs.model import Inode
from nydus_exporter.rafs.tree import TreeBuilder
from nydus_exporter.registry.sync import SyncRegistry


@dataclass(frozen=True)
class ChunkDictPush:
    manifest: Descriptor
    blobs: int
    chunks: int


def push_chunk_dict(
    registry: SyncRegistry,
    store: ChunkStore,
    ref: Reference,
    workdir: Path,
    *,
    chunk_size: int = layout.DEFAULT_CHUNK_SIZE,
    digester: str = "blake3",
    compressor: str = "zstd",
) -> ChunkDictPush:
    """Build the dictionary image of ``ref``'s repository from ``store`` and push it to ``ref``."""
    location = f"{ref.api_host}/{ref.repository}"
    found = store.chunk_dict(
        location,
        chunk_size=chunk_size,
        digester=digester,
        compressor=compressor,
        verify=lambda digest, size: registry.blob_exists(ref, digest) == size,
    )
    if not found.blobs:
        raise ConfigError(f"the chunk store knows no blob of {location} (export with chunk-store=true first)")
    blob_ids = list(found.blobs)  # recorded order; blob table index = position
    tree = TreeBuilder()
    chunks = 0
    for index, hex_id in enumerate(blob_ids):
        for chunk in found.chunks.chunks_of(hex_id):
            ref_chunk = chunk.at_file_offset(0)
            ref_chunk.blob_index = index
            tree.add(
                f"/chunks/{hex_id}/{chunk.index}".encode(),
                Inode(mode=stat.S_IFREG | 0o444, size=chunk.uncompressed_size, chunks=[ref_chunk]),
            )
            chunks += 1
    infos = [found.blobs[hex_id].info for hex_id in blob_ids]
    flags = (
        codecs.thread_compressor(compressor).super_flag
        | codecs.digester(digester).super_flag
        | layout.RAFS_EXPLICIT_UID_GID
        | layout.RAFS_ENCRYPTION_NONE
        | layout.RAFS_HAS_XATTR
    )
    if all(info.features & layout.BLOB_FEATURE_INLINED_CHUNK_DIGEST for info in infos):
        flags |= layout.RAFS_INLINED_CHUNK_DIGEST
    bootstrap = write_bootstrap(tree.root, infos, chunk_size=chunk_size, flags=flags)

    out = OciLayout.create(workdir / "chunkdict")
    metas = [(h, m) for h in blob_ids if (m := found.blobs[h].blob_meta) is not None]
    with out.blob_writer() as sink:
        boot = write_bootstrap_layer(sink, bootstrap, metas)
    blob_layers = [
        Descriptor(mt.MEDIA_TYPE_NYDUS_BLOB, found.blobs[h].digest, found.blobs[h].size) for h in blob_ids
    ]
    platform = host_platform_of()
    source_config = canonical_json(
        {"architecture": platform.architecture, "os": platform.os, "config": {}, "rootfs": {}}
    )
    config_raw = build_nydus_config(source_config, [d.digest for d in blob_layers], boot.diff_id)
    config = Descriptor(mt.MEDIA_TYPE_IMAGE_CONFIG, out.write_blob(config_raw), len(config_raw))
    manifest_raw = build_nydus_manifest(
        config=config,
        blob_layers=blob_layers,
        bootstrap_layer=boot.descriptor(oci=True),
        oci=True,
        annotations={"containerd.io/snapshot/nydus-chunk-dict": json.dumps({"location": location})},
    )
    manifest = Descriptor(mt.MEDIA_TYPE_IMAGE_MANIFEST, out.write_blob(manifest_raw), len(manifest_raw))
    # The blob layers are the repository's own, verified above: only the rest is uploaded.
    push_image(registry, out, manifest, [ref], remote={d.digest for d in blob_layers})
    return ChunkDictPush(manifest, len(blob_ids), chunks)
