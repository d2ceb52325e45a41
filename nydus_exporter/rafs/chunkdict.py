"""A chunk dictionary: chunks already stored in other blobs, to reference instead of storing
again (nydus-image ``--chunk-dict`` semantics, [format §4.2]).

A layer packed with a dictionary references a dictionary chunk by (blob, ci index, offsets)
and writes no bytes for it; the dictionary's blob then appears in that layer's bootstrap blob
table, and the merged bootstrap keeps it ([format §5.3]). Chunks match by digest and uncompressed size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nydus_exporter.rafs.bootstrap_reader import Bootstrap
from nydus_exporter.rafs.model import BlobInfo, ChunkRef


@dataclass(frozen=True, slots=True)
class DictChunk:
    blob: BlobInfo  # as a merged bootstrap names it (blob_id = the blob layer digest hex)
    chunk: ChunkRef  # the chunk in that blob (its blob_index is meaningless here)


class ChunkDict:
    """Digest -> the first blob chunk known to hold it."""

    def __init__(self) -> None:
        self._chunks: dict[bytes, DictChunk] = {}
        self._blobs: dict[str, BlobInfo] = {}

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def blobs(self) -> list[BlobInfo]:
        return list(self._blobs.values())

    def add_blob(self, blob: BlobInfo, chunks: Iterable[ChunkRef]) -> None:
        """Learn ``chunks``, all stored in ``blob``; the first blob to offer a digest keeps it."""
        self._blobs.setdefault(blob.blob_id, blob)
        for chunk in chunks:
            self._chunks.setdefault(chunk.digest, DictChunk(blob, chunk))

    def copy(self) -> ChunkDict:
        other = ChunkDict()
        other._chunks = dict(self._chunks)
        other._blobs = dict(self._blobs)
        return other

    @classmethod
    def from_bootstrap(cls, bootstrap: Bootstrap) -> ChunkDict:
        """Every chunk of an image's merged bootstrap, in the blobs its table names (the
        ``--chunk-dict bootstrap=…`` of nydus-image)."""
        out = cls()
        for chunk in bootstrap.chunk_table:
            out.add_blob(bootstrap.blobs[chunk.blob_index], (chunk,))
        return out

    def add_layer(self, bootstrap: Bootstrap, blob: BlobInfo | None) -> None:
        """Learn the chunks a packed layer stored itself: those of its own blob (the one its
        embedded bootstrap names with the inline placeholder id), now known as ``blob``."""
        if blob is not None:
            self.add_blob(blob, bootstrap.own_chunks())

    def chunks_of(self, blob_id: str) -> list[ChunkRef]:
        """The chunks this dictionary takes from blob ``blob_id``."""
        return [hit.chunk for hit in self._chunks.values() if hit.blob.blob_id == blob_id]

    def lookup(self, digest: bytes, uncompressed_size: int) -> DictChunk | None:
        hit = self._chunks.get(digest)
        if hit is None or hit.chunk.uncompressed_size != uncompressed_size:
            return None
        return hit
