"""Streaming writer of a production Nydus data blob ([format §3.1] "inline + toc", [format §3.8, §8.1]).

``nydus-image create --type tar-rafs --blob-inline-meta --features blob-toc --fs-version 6``
emits, for a layer with chunks::

    chunks ‖ H(image.blob) ‖ ci ‖ ci-header ‖ H(blob.meta) ‖ digests ‖ H(blob.digest)
           ‖ zstd(bootstrap) ‖ H(image.boot) ‖ toc ‖ H(rafs.blob.toc)

and for a layer without chunks only ``zstd(bootstrap) ‖ H(image.boot) ‖ toc ‖ H(rafs.blob.toc)``.
Chunk bytes go to the sink as they are added; only the 16-byte ci entry and the 32-byte digest
of every distinct chunk are kept until :meth:`BlobWriter.finish`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from nydus_exporter.errors import InvalidLayerError
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.chunkinfo import BlobMetaHeader, ChunkInfo, blob_meta_file, encode_v1
from nydus_exporter.rafs.model import BlobInfo, ChunkRef
from nydus_exporter.rafs.tarheader import build_header
from nydus_exporter.rafs.toc import TocEntry, encode_toc

# Features of a per-layer blob with >= 1 chunk ([format §2.5]: 0x7000_0023). Chunk-less blobs write no
# ci header and are absent from the bootstrap, so they have no features at all.
BLOB_FEATURES_INLINE_TOC = (
    layout.BLOB_FEATURE_ALIGNED
    | layout.BLOB_FEATURE_INLINED_FS_META
    | layout.BLOB_FEATURE_INLINED_CHUNK_DIGEST
    | layout.BLOB_FEATURE_HAS_TAR_HEADER
    | layout.BLOB_FEATURE_HAS_TOC
    | layout.BLOB_FEATURE_CAP_TAR_TOC
)
_DIGEST_SIZE = 32
_MAX_COMPRESSED_OFFSET = 1 << 40  # ci comp_info: 40-bit offset ([format §3.4])
_MAX_UNCOMPRESSED_OFFSET = 1 << 44  # V1 uncomp_info bits 12-43
_BOOTSTRAP_COMPRESSOR = "zstd"  # image.boot is always zstd, whatever the chunk compressor ([format §3.8])


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A chunk ready to be appended: computed off the writer's thread by :func:`prepare_chunk`."""

    digest: bytes  # digester(uncompressed bytes), 32 B
    crc32: int  # CRC-32C of the uncompressed bytes
    uncompressed_size: int
    data: bytes  # the bytes to store: compressed, or raw when compression does not shrink them
    compressed: bool


def prepare_chunk(
    raw: bytes, *, compressor: str, digester: str, digest: bytes | None = None
) -> PreparedChunk:
    """Digest, CRC-32C and compress one chunk ([format §3.2]). Pure and thread-safe.

    ``digest``: the chunk's digest when the caller already computed it (hash first, then
    compress only what is new: :mod:`nydus_exporter.pipeline.hash_first`)."""
    if digest is None:
        digest = codecs.digester(digester).digest(raw)
    return prepare_chunks([raw], [digest], compressor=compressor)[0]


def prepare_chunks(raws: list[bytes], digests: list[bytes], *, compressor: str) -> list[PreparedChunk]:
    """:func:`prepare_chunk` of each of ``raws`` whose digests are known: the same chunks,
    compressed in one batch (:func:`~nydus_exporter.rafs.codecs.compress_many_if_smaller`)."""
    if not all(raws):
        raise ValueError("a chunk cannot be empty (zero-size files have no chunks)")
    stored = codecs.compress_many_if_smaller(codecs.thread_compressor(compressor), raws)
    return [
        PreparedChunk(
            digest=digest,
            crc32=codecs.crc32c(raw),
            uncompressed_size=len(raw),
            data=data,
            compressed=compressed,
        )
        for raw, digest, (data, compressed) in zip(raws, digests, stored, strict=True)
    ]


@functools.lru_cache(maxsize=64)
def zero_chunk(size: int, *, compressor: str, digester: str) -> PreparedChunk:
    """:func:`prepare_chunk` of ``size`` zero bytes, computed once per size and codecs.

    Every chunk that lies wholly in a hole of a sparse file is this chunk (the same bytes as
    preparing the zeros would give), so holes cost no per-byte hashing or compression.
    """
    return prepare_chunk(bytes(size), compressor=compressor, digester=digester)


@dataclass(frozen=True, slots=True)
class BlobResult:
    """What :meth:`BlobWriter.finish` produced."""

    # Native nydus blob id: sha256 of everything but the digest payload ([format §3.9]); empty
    # in a result re-derived from a cached blob without reading all of it (blob_result).
    blob_id: str
    digest: str  # "sha256:<hex>" of the whole file = the OCI layer digest
    size: int  # bytes written to the sink
    chunk_count: int
    uncompressed_size: int
    # As a merged bootstrap must describe the blob ([format §5.3]); None without chunks.
    blob_info: BlobInfo | None
    bootstrap: bytes  # the uncompressed embedded bootstrap (image.boot)
    toc: list[TocEntry]
    # The `<blob_id>.blob.meta` cache file ([format §3.10]); None without chunks.
    blob_meta: bytes | None = None


class BlobWriter:
    """Writes one per-layer blob to ``sink``; see the module docstring for the layout."""

    def __init__(
        self,
        sink: Callable[[bytes], object],
        *,
        chunk_size: int,
        compressor: str = "zstd",
        digester: str = "blake3",
    ) -> None:
        self._sink = sink
        self._chunk_size = codecs.check_chunk_size(chunk_size)
        self._compressor_name = compressor
        self._compressor_id = codecs.thread_compressor(compressor).algorithm_id  # validates the name
        self._digester = codecs.digester(digester)
        # Two running hashes ([format §3.9]): the blob id skips the digest-array payload, the OCI layer
        # digest covers every byte. They agree up to that payload, so the file hash is forked
        # from the blob hash there instead of hashing every chunk twice.
        self._blob_hash = hashlib.sha256()
        self._file_hash: hashlib._Hash | None = None  # None while equal to _blob_hash
        self._position = 0  # == current compressed offset (--blob-offset 0)
        self._uncompressed_size = 0  # running 4 KiB-aligned uncompressed cursor
        self._by_digest: dict[bytes, ChunkRef] = {}  # in-layer dedup, first insert wins ([format §4.2])
        self._ci = bytearray()  # V1 entries in ci order
        self._digests = bytearray()  # chunk digests in ci order
        self._finished = False

    @property
    def chunk_count(self) -> int:
        return len(self._digests) // _DIGEST_SIZE

    @property
    def position(self) -> int:
        """Bytes written so far."""
        return self._position

    def reuse(self, digest: bytes, uncompressed_size: int, *, file_offset: int) -> ChunkRef | None:
        """The reference to an identical chunk already in this blob at ``file_offset``, if any
        (what :meth:`add_chunk` returns for a duplicate, without its compressed bytes)."""
        known = self._by_digest.get(digest)
        if known is not None and known.uncompressed_size == uncompressed_size:
            return known.at_file_offset(file_offset)
        return None

    def add_chunk(self, chunk: PreparedChunk, *, file_offset: int) -> ChunkRef:
        """Append ``chunk`` unless an identical one is already in this blob ([format §3.2, §4.2])."""
        if self._finished:
            raise RuntimeError("BlobWriter.add_chunk after finish")
        self._check_chunk(chunk)
        known = self._by_digest.get(chunk.digest)
        if known is not None and known.uncompressed_size == chunk.uncompressed_size:
            return known.at_file_offset(file_offset)

        index = self.chunk_count
        if index >= layout.MAX_CHUNKS_PER_BLOB:
            raise InvalidLayerError(f"layer needs more than {layout.MAX_CHUNKS_PER_BLOB} chunks in one blob")
        stored_size = len(chunk.data)
        if self._position + stored_size > _MAX_COMPRESSED_OFFSET:
            raise InvalidLayerError("layer chunk data exceeds the 1 TiB addressable by a blob's ci entries")
        aligned_size = layout.round_up(chunk.uncompressed_size, layout.EROFS_BLOCK_SIZE)
        if self._uncompressed_size + aligned_size > _MAX_UNCOMPRESSED_OFFSET:
            raise InvalidLayerError("layer uncompressed data exceeds the 16 TiB addressable by a blob")

        flags = layout.CHUNK_FLAG_HAS_CRC32 | (layout.CHUNK_FLAG_COMPRESSED if chunk.compressed else 0)
        ref = ChunkRef(
            digest=chunk.digest,
            blob_index=0,
            index=index,
            compressed_offset=self._position,
            compressed_size=stored_size,
            uncompressed_offset=self._uncompressed_size,
            uncompressed_size=chunk.uncompressed_size,
            flags=flags,
            crc32=chunk.crc32,
            file_offset=file_offset,
        )
        self._ci += encode_v1(
            ChunkInfo(
                index,
                ref.compressed_offset,
                stored_size,
                ref.uncompressed_offset,
                ref.uncompressed_size,
                chunk.compressed,
            )
        )
        self._digests += chunk.digest
        if known is None:
            # Keep a private copy: ChunkRef is mutable and the caller owns the returned one.
            self._by_digest[chunk.digest] = ref.at_file_offset(file_offset)
        self._uncompressed_size += aligned_size
        self._write(chunk.data)
        return ref

    def finish(self, make_bootstrap: Callable[[BlobInfo | None], bytes]) -> BlobResult:
        """Write everything after the chunks, exactly in the order of [format §3.8]."""
        if self._finished:
            raise RuntimeError("BlobWriter.finish called twice")
        self._finished = True
        toc: list[TocEntry] = []
        info: BlobInfo | None = None
        blob_meta: bytes | None = None
        if self.chunk_count:
            info, blob_meta = self._write_chunk_sections(toc)

        bootstrap = make_bootstrap(info)
        stored, compressed = codecs.compress_if_smaller(
            codecs.thread_compressor(_BOOTSTRAP_COMPRESSOR), bootstrap
        )
        boot_flag = layout.TOC_FLAG_ZSTD if compressed else layout.TOC_FLAG_NONE
        toc.append(self._section(layout.TOC_NAME_IMAGE_BOOT, stored, boot_flag, bootstrap))
        # ToC entries + H(rafs.blob.toc), both hashed ([format §3.8] step 6).
        self._write(encode_toc(toc))

        blob_id = self._blob_hash.hexdigest()
        digest_hex = (self._file_hash or self._blob_hash).hexdigest()
        merged_info = None
        if info is not None:
            # A merged bootstrap names the blob by its OCI layer digest and clears
            # INLINED_FS_META; everything else is copied ([format §5.3]).
            merged_info = dataclasses.replace(
                info, blob_id=digest_hex, features=info.features & ~layout.BLOB_FEATURE_INLINED_FS_META
            )
        return BlobResult(
            blob_id=blob_id,
            digest=f"sha256:{digest_hex}",
            size=self._position,
            chunk_count=self.chunk_count,
            uncompressed_size=self._uncompressed_size,
            blob_info=merged_info,
            bootstrap=bootstrap,
            toc=toc,
            blob_meta=blob_meta,
        )

    # -- internals --------------------------------------------------------------------------

    def _check_chunk(self, chunk: PreparedChunk) -> None:
        if len(chunk.digest) != _DIGEST_SIZE:
            raise ValueError(f"chunk digest must be {_DIGEST_SIZE} bytes")
        if not 1 <= chunk.uncompressed_size <= self._chunk_size:
            raise ValueError(f"chunk size {chunk.uncompressed_size} is outside 1..{self._chunk_size}")
        stored = len(chunk.data)
        if chunk.compressed and not 1 <= stored < chunk.uncompressed_size:
            raise ValueError("a compressed chunk must be smaller than its uncompressed size")
        if not chunk.compressed and stored != chunk.uncompressed_size:
            raise ValueError("an uncompressed chunk must store exactly its uncompressed bytes")

    def _write(self, data: bytes, *, blob_hashed: bool = True) -> None:
        if not blob_hashed and self._file_hash is None:
            self._file_hash = self._blob_hash.copy()
        if blob_hashed:
            self._blob_hash.update(data)
        if self._file_hash is not None:
            self._file_hash.update(data)
        self._position += len(data)
        self._sink(data)

    def _write_header(self, name: bytes, size: int) -> None:
        self._write(build_header(name, size))

    def _section(self, name: bytes, stored: bytes, flag: int, uncompressed: bytes) -> TocEntry:
        """Write ``stored`` + its tar header; return its ToC entry."""
        offset = self._position
        self._write(stored)
        self._write_header(name, len(stored))
        return TocEntry(
            flag, name, hashlib.sha256(uncompressed).digest(), offset, len(stored), len(uncompressed)
        )

    def _write_chunk_sections(self, toc: list[TocEntry]) -> tuple[BlobInfo, bytes]:
        """H(image.blob), ci ‖ header ‖ H(blob.meta), digests ‖ H(blob.digest) ([format §3.8] steps 3-4)."""
        chunk_bytes = self._position
        self._write_header(layout.TOC_NAME_IMAGE_BLOB, chunk_bytes)
        # ToC #1 digest: the running blob hash right after H(image.blob) (= sha256 of chunk data
        # ‖ header because nothing precedes the chunks); offset = start of the chunk data.
        toc.append(
            TocEntry(
                layout.TOC_FLAG_NONE,
                layout.TOC_NAME_IMAGE_BLOB,
                self._blob_hash.copy().digest(),
                0,
                chunk_bytes,
                self._uncompressed_size,
            )
        )

        ci = bytes(self._ci)
        ci_stored, ci_compressed = codecs.compress_if_smaller(
            codecs.thread_compressor(self._compressor_name), ci
        )
        ci_compressor = self._compressor_id if ci_compressed else layout.COMPRESSOR_ID_NONE
        ci_offset = self._position
        header = BlobMetaHeader(
            features=BLOB_FEATURES_INLINE_TOC,
            ci_compressor=ci_compressor,
            ci_entries=self.chunk_count,
            ci_offset=ci_offset,
            ci_compressed_size=len(ci_stored),
            ci_uncompressed_size=len(ci),
        ).encode()
        self._write(ci_stored)
        self._write(header)
        self._write_header(layout.TOC_NAME_BLOB_META, len(ci_stored) + len(header))
        ci_flag = codecs.compressor_by_id(ci_compressor).toc_flag
        toc.append(
            TocEntry(
                ci_flag,
                layout.TOC_NAME_BLOB_META,
                hashlib.sha256(ci).digest(),
                ci_offset,
                len(ci_stored),
                len(ci),
            )
        )
        toc.append(
            TocEntry(
                layout.TOC_FLAG_NONE,
                layout.TOC_NAME_BLOB_META_HEADER,
                hashlib.sha256(header).digest(),
                ci_offset + len(ci_stored),
                len(header),
                len(header),
            )
        )

        # The digest payload bypasses the blob-id hash (a nydus quirk, [format §3.5/§3.9]); its
        # header does not.
        digests = bytes(self._digests)
        digests_offset = self._position
        self._write(digests, blob_hashed=False)
        self._write_header(layout.TOC_NAME_BLOB_DIGEST, len(digests))
        toc.append(
            TocEntry(
                layout.TOC_FLAG_NONE,
                layout.TOC_NAME_BLOB_DIGEST,
                hashlib.sha256(digests).digest(),
                digests_offset,
                len(digests),
                len(digests),
            )
        )

        info = BlobInfo(
            blob_id=layout.INLINE_BLOB_ID_PLACEHOLDER,
            chunk_size=self._chunk_size,
            chunk_count=self.chunk_count,
            compressor=self._compressor_id,
            digester=self._digester.algorithm_id,
            features=BLOB_FEATURES_INLINE_TOC,
            compressed_size=self._position,  # position before image.boot ([format §2.5, §3.8] step 5)
            uncompressed_size=self._uncompressed_size,
            ci_compressor=ci_compressor,
            ci_offset=ci_offset,
            ci_compressed_size=len(ci_stored),
            ci_uncompressed_size=len(ci),
        )
        return info, blob_meta_file(BlobMetaHeader.decode(header), ci)
