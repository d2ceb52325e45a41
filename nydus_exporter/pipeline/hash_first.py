"""Hash first, compress only what is new.

Digesting a chunk (blake3, ~2 GB/s per core) costs a fraction of compressing it (zstd-3,
~160 MB/s), and a chunk that the chunk dictionary already holds, or that appears earlier in
the same layer, is never stored again: its compressed bytes would be thrown away. So the pack
pool digests each chunk first and compresses only the chunks it is the first to claim; a
rebuild of a layer whose chunks are mostly in the chunk store then costs hashing.

The output does not change: a dictionary hit and an in-layer duplicate are committed as
references exactly as before, and a chunk whose first occurrence (in reading order) happened
to be claimed by a later batch is compressed when it is committed (compression is
deterministic, so the bytes are the same).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from nydus_exporter.rafs import codecs
from nydus_exporter.rafs.blob import PreparedChunk, prepare_chunk, prepare_chunks
from nydus_exporter.rafs.chunkdict import ChunkDict


@dataclass(frozen=True, slots=True)
class DigestedChunk:
    """A chunk left uncompressed because it is known (dictionary) or claimed by another."""

    digest: bytes
    uncompressed_size: int
    raw: bytes  # kept for the rare case it must be compressed at commit after all


class HashFirst:
    """Prepares batches of raw chunks in the pack pool's threads (thread-safe)."""

    def __init__(self, *, compressor: str, digester: str, chunk_dict: ChunkDict | None) -> None:
        self._compressor = compressor
        self._digester = digester
        self._digest = codecs.digester(digester).digest
        self._dict = chunk_dict
        self._claimed: set[tuple[bytes, int]] = set()
        self._lock = threading.Lock()

    def prepare_batch(self, raws: list[bytes | PreparedChunk]) -> list[PreparedChunk | DigestedChunk]:
        """Raw chunks digested (and compressed if new); prepared ones (holes) as they are."""
        out: list[PreparedChunk | DigestedChunk] = []
        firsts: list[tuple[int, DigestedChunk]] = []  # the chunks this batch claimed first
        for raw in raws:
            if isinstance(raw, PreparedChunk):
                out.append(raw)
                continue
            chunk = DigestedChunk(self._digest(raw), len(raw), raw)
            out.append(chunk)
            if self._dict is not None and self._dict.lookup(chunk.digest, len(raw)) is not None:
                continue
            key = (chunk.digest, len(raw))
            with self._lock:
                if key in self._claimed:
                    continue
                self._claimed.add(key)
            firsts.append((len(out) - 1, chunk))
        if firsts:
            prepared = prepare_chunks(
                [c.raw for _, c in firsts], [c.digest for _, c in firsts], compressor=self._compressor
            )
            for (position, _), done in zip(firsts, prepared, strict=True):
                out[position] = done
        return out

    def complete(self, raw: bytes, digest: bytes) -> PreparedChunk:
        """CRC-32C and compression of a chunk whose digest is known."""
        return prepare_chunk(raw, compressor=self._compressor, digester=self._digester, digest=digest)
