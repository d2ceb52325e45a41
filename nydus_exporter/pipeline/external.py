"""Blobs outside the image whose chunks its layers may reference (chunk-dict semantics, [format §4.2])."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from nydus_exporter.errors import FormatError
from nydus_exporter.image.reader import NydusImage
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor
from nydus_exporter.oci.reference import Reference
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.chunkdict import ChunkDict

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    from nydus_exporter.chunkstore import StoredChunks


@dataclass
class ExternalBlobs:
    """Chunks stored in blobs outside the image ([format §4.2]), with what the image needs of a blob it
    references: its layer descriptor, its blob.meta file, and where its bytes are."""

    chunks: ChunkDict = field(default_factory=ChunkDict)
    layers: dict[str, Descriptor] = field(default_factory=dict)  # blob id (digest hex) -> layer
    blob_metas: dict[str, bytes] = field(default_factory=dict)
    # blob id -> a stream of the blob, to copy it into the output; absent: the blob stays in
    # the target repository, where it was verified to exist (the chunk store's blobs)
    open_blob: dict[str, Callable[[], BinaryIO]] = field(default_factory=dict)
    # blob id -> the registry repository holding it (a chunk-dict image in a registry): a push
    # to the same registry mounts it instead of copying it through this machine
    mount_from: dict[str, Reference] = field(default_factory=dict)

    @classmethod
    def from_image(cls, image: NydusImage) -> ExternalBlobs:
        """``chunk-dict=IMAGE``: every chunk of a Nydus image's merged bootstrap."""
        boot = read_bootstrap(image.bootstrap())
        layers = {d.digest.removeprefix("sha256:"): d for d in image.blob_layers}
        for blob in boot.blobs:
            if blob.blob_id not in layers:
                raise FormatError(
                    f"chunk dictionary {image.reference}: blob {blob.blob_id} is not one of its layers"
                )
        repo = image.repository

        def opener(digest: str) -> Callable[[], BinaryIO]:
            return lambda: repo.open_blob(digest)

        opens = {hex_id: opener(desc.digest) for hex_id, desc in layers.items()}
        source: Reference | None = getattr(repo, "reference", None)  # a RegistryRepository's image
        mounts = {hex_id: source for hex_id in layers} if source is not None else {}
        return cls(ChunkDict.from_bootstrap(boot), layers, image.blob_metas(), opens, mounts)

    def extended(self, other: ExternalBlobs) -> ExternalBlobs:
        """These blobs, then ``other``'s for chunk digests these do not hold."""
        chunks = self.chunks.copy()
        for blob in other.chunks.blobs:
            chunks.add_blob(blob, other.chunks.chunks_of(blob.blob_id))
        return ExternalBlobs(
            chunks,
            {**other.layers, **self.layers},
            {**other.blob_metas, **self.blob_metas},
            {**other.open_blob, **self.open_blob},
            {**other.mount_from, **self.mount_from},
        )


def external_blobs_of_store(found: StoredChunks) -> ExternalBlobs:
    """The chunk store's verified blobs of a repository as a :class:`ExternalBlobs` (the blobs
    stay in the repository: nothing to copy)."""
    blobs = found.blobs.values()
    layers = {
        b.digest.removeprefix("sha256:"): Descriptor(mt.MEDIA_TYPE_NYDUS_BLOB, b.digest, b.size)
        for b in blobs
    }
    metas = {b.digest.removeprefix("sha256:"): b.blob_meta for b in blobs if b.blob_meta is not None}
    return ExternalBlobs(found.chunks, layers, metas)
