"""Random-access reader of Nydus data blobs with a ToC ([format §3.1, §3.7]).

The ToC is found from the end (the last 512 bytes must be ``H(rafs.blob.toc)``, [format §3.7]) and
every section is located through it. Besides the production format this reads the two older
layouts of the fixtures ([format §9]): a separate-bootstrap blob whose ``image.blob`` ToC entry holds
the END offset of the chunk data (pre-v2.2.0 bug, [format §3.7]), and a Dec-2022 inline-meta blob
without ``blob.digest``.

Every size is checked against the blob size before anything is read or allocated, so corrupt
or hostile input ends in :class:`FormatError`, never in another exception or a huge allocation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zstandard

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.chunkinfo import BlobMetaHeader, ChunkInfo, blob_meta_file, decode_chunk_infos
from nydus_exporter.rafs.tarheader import TarHeader, parse_header
from nydus_exporter.rafs.toc import TocEntry, decode_toc_entries

_KNOWN_SECTIONS = frozenset(
    {
        layout.TOC_NAME_IMAGE_BLOB,
        layout.TOC_NAME_BLOB_META,
        layout.TOC_NAME_BLOB_META_HEADER,
        layout.TOC_NAME_BLOB_DIGEST,
        layout.TOC_NAME_IMAGE_BOOT,
    }
)
# Sections that must be stored as-is (ToC flag "none").
_RAW_SECTIONS = frozenset(
    {layout.TOC_NAME_IMAGE_BLOB, layout.TOC_NAME_BLOB_META_HEADER, layout.TOC_NAME_BLOB_DIGEST}
)
# Blob features this reader cannot interpret (ref/zran, batch, encryption, tarfs layouts).
_UNSUPPORTED_FEATURES = (
    layout.BLOB_FEATURE_ZRAN
    | layout.BLOB_FEATURE_SEPARATE
    | layout.BLOB_FEATURE_TARFS
    | layout.BLOB_FEATURE_BATCH
    | layout.BLOB_FEATURE_ENCRYPTED
)
_DIGEST_SIZE = 32
_LZ4_MAX_RATIO = 256  # an LZ4 block cannot expand more than ~255x
# The best zstd can do is an RLE block: 3-byte header + 1 byte -> 128 KiB, i.e. 32768x.
_ZSTD_MAX_RATIO = 32768
_HASH_STEP = 1 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True, slots=True)
class _Section:
    """A ToC entry with its data offset resolved (the old image.blob bug fixed up)."""

    entry: TocEntry
    start: int

    @property
    def end(self) -> int:
        return self.start + self.entry.compressed_size


class BlobReader:
    """Reads one blob through ``read_at(offset, length)``.

    ``compressor`` / ``digester`` name the chunk algorithms when known (they live in the
    bootstrap's blob table, not in the blob). Without them they are taken from the ci header,
    the embedded bootstrap's blob table, or - for a separate-bootstrap blob - the zstd frame
    magic of the chunks and a trial digest of the first chunk.
    """

    def __init__(
        self,
        read_at: Callable[[int, int], bytes],
        size: int,
        *,
        compressor: str | None = None,
        digester: str | None = None,
    ) -> None:
        if size < 0:
            raise FormatError(f"negative blob size {size}")
        self._read_at = read_at
        self._size = size
        self._compressor: codecs.Compressor | None = (
            codecs.thread_compressor(compressor) if compressor is not None else None
        )
        self._digester: codecs.Digester | None = codecs.digester(digester) if digester is not None else None
        self._entries: list[TocEntry] | None = None
        self._sections: dict[bytes, _Section] = {}
        self._toc_start = 0
        self._header: BlobMetaHeader | None = None
        self._ci_data: bytes | None = None
        self._infos: list[ChunkInfo] | None = None
        self._algorithms: tuple[tuple[int, int] | None] | None = None  # cached, see _embedded_algorithms

    @property
    def size(self) -> int:
        return self._size

    # -- ToC ----------------------------------------------------------------------------------

    def toc(self) -> list[TocEntry]:
        """The ToC entries as stored, after checking names, ranges and section tar headers."""
        if self._entries is None:
            self._load_toc()
        assert self._entries is not None
        return list(self._entries)

    def _load_toc(self) -> None:
        if self._size < layout.TAR_BLOCK_SIZE:
            raise FormatError(f"blob of {self._size} bytes is too small to hold a ToC tar header")
        toc_header = self._header_at(self._size - layout.TAR_BLOCK_SIZE)
        if toc_header.name != layout.TOC_NAME_RAFS_BLOB_TOC:
            raise FormatError(
                f"blob does not end with a rafs.blob.toc tar header (found {toc_header.name!r})"
            )
        toc_bytes = toc_header.size
        if toc_bytes > self._size - layout.TAR_BLOCK_SIZE:
            raise FormatError(f"ToC size {toc_bytes} exceeds the blob size {self._size}")
        self._toc_start = self._size - layout.TAR_BLOCK_SIZE - toc_bytes
        entries = decode_toc_entries(self._read(self._toc_start, toc_bytes))
        sections: dict[bytes, _Section] = {}
        for entry in entries:
            if entry.name not in _KNOWN_SECTIONS:
                raise FormatError(f"unknown ToC entry {entry.name!r}")
            if entry.name in sections:
                raise FormatError(f"duplicate ToC entry {entry.name!r}")
            codecs.compressor_by_toc_flag(entry.flags)  # rejects unknown compression flags
            if (
                entry.name in _RAW_SECTIONS
                and entry.flags & layout.TOC_FLAG_COMPRESSION_MASK != layout.TOC_FLAG_NONE
            ):
                raise FormatError(f"ToC entry {entry.name!r} must be uncompressed (flags {entry.flags:#x})")
            sections[entry.name] = self._locate(entry)
        self._check_section_headers(sections)
        self._sections = sections
        self._entries = entries

    def _locate(self, entry: TocEntry) -> _Section:
        """Resolve where an entry's data starts, and check it lies before the ToC."""
        if entry.name == layout.TOC_NAME_IMAGE_BLOB:
            return self._locate_image_blob(entry)
        if (
            entry.compressed_offset > self._toc_start
            or entry.compressed_size > self._toc_start - entry.compressed_offset
        ):
            raise FormatError(
                f"ToC entry {entry.name!r} range {entry.compressed_offset}+{entry.compressed_size} "
                f"is outside the blob data (ToC at {self._toc_start})"
            )
        is_raw = entry.flags & layout.TOC_FLAG_COMPRESSION_MASK == layout.TOC_FLAG_NONE
        if is_raw and entry.uncompressed_size != entry.compressed_size:
            raise FormatError(f"uncompressed ToC entry {entry.name!r} has differing sizes")
        return _Section(entry, entry.compressed_offset)

    def _locate_image_blob(self, entry: TocEntry) -> _Section:
        # Current builders store the START of the chunk data (0); builders before v2.2.0 stored
        # its END ([format §3.7]). Accept whichever has H(image.blob, size) right after the data.
        size = entry.compressed_size
        candidates = [entry.compressed_offset]
        if entry.compressed_offset >= size and entry.compressed_offset != 0:
            candidates.append(entry.compressed_offset - size)
        for start in candidates:
            end = start + size
            if end + layout.TAR_BLOCK_SIZE > self._toc_start:
                continue
            if self._header_at(end, strict=False) == TarHeader(layout.TOC_NAME_IMAGE_BLOB, size):
                return _Section(entry, start)
        raise FormatError(
            f"ToC entry image.blob (offset {entry.compressed_offset}, size {size}) is not followed by "
            "its image.blob tar header"
        )

    def _check_section_headers(self, sections: dict[bytes, _Section]) -> None:
        """Each section must be followed by its tar header ([format §3.1, §3.6])."""
        for name in (layout.TOC_NAME_BLOB_DIGEST, layout.TOC_NAME_IMAGE_BOOT):
            section = sections.get(name)
            if section is not None:
                self._expect_header(section.end, name, section.entry.compressed_size)
        meta = sections.get(layout.TOC_NAME_BLOB_META)
        meta_header = sections.get(layout.TOC_NAME_BLOB_META_HEADER)
        if (meta is None) != (meta_header is None):
            raise FormatError("ToC has only one of blob.meta and blob.meta.header")
        if meta is not None and meta_header is not None:
            if (
                meta_header.start != meta.end
                or meta_header.entry.compressed_size != layout.BLOB_META_HEADER_SIZE
            ):
                raise FormatError("blob.meta.header does not directly follow blob.meta with 4096 bytes")
            # H(blob.meta) covers ci ‖ ci-header ([format §3.1]).
            self._expect_header(meta_header.end, layout.TOC_NAME_BLOB_META, meta_header.end - meta.start)

    def _expect_header(self, offset: int, name: bytes, size: int) -> None:
        if offset + layout.TAR_BLOCK_SIZE > self._toc_start:
            raise FormatError(f"no room for the {name.decode()} tar header at {offset}")
        found = self._header_at(offset)
        if found != TarHeader(name, size):
            raise FormatError(
                f"expected tar header {name.decode()}/{size} at {offset}, found {found.name!r}/{found.size}"
            )

    def section(self, name: bytes) -> TocEntry | None:
        """The ToC entry ``name`` with its offset resolved to where the data really starts."""
        self.toc()
        found = self._sections.get(name)
        if found is None:
            return None
        return dataclasses.replace(found.entry, compressed_offset=found.start)

    # -- ci -----------------------------------------------------------------------------------

    def meta_header(self) -> BlobMetaHeader:
        """The blob meta header, cross-checked against the ToC."""
        if self._header is not None:
            return self._header
        self.toc()
        meta = self._sections.get(layout.TOC_NAME_BLOB_META)
        header_section = self._sections.get(layout.TOC_NAME_BLOB_META_HEADER)
        if meta is None or header_section is None:
            raise FormatError("blob has no blob.meta section (a layer without chunks)")
        header = BlobMetaHeader.decode(self._read(header_section.start, layout.BLOB_META_HEADER_SIZE))
        if header.features & _UNSUPPORTED_FEATURES:
            raise FormatError(f"unsupported blob features {header.features:#x} (zran/batch/encrypted/tarfs)")
        if (header.ci_offset, header.ci_compressed_size, header.ci_uncompressed_size) != (
            meta.start,
            meta.entry.compressed_size,
            meta.entry.uncompressed_size,
        ):
            raise FormatError("blob meta header ci offset/sizes do not match the blob.meta ToC entry")
        ci_comp = codecs.compressor_by_id(header.ci_compressor)
        if ci_comp.toc_flag != meta.entry.flags & layout.TOC_FLAG_COMPRESSION_MASK:
            raise FormatError("blob meta header ci compressor does not match the blob.meta ToC flags")
        if header.ci_entries * header.entry_size != header.ci_uncompressed_size:
            raise FormatError(
                f"ci size {header.ci_uncompressed_size} does not hold "
                f"{header.ci_entries} entries of {header.entry_size} B"
            )
        if header.ci_zran_offset or header.ci_zran_size or header.ci_zran_count:
            raise FormatError("blob meta header has zran/batch contexts but no matching feature")
        # Every chunk stores at least one byte, which bounds the entry count by the blob size.
        data = self._sections.get(layout.TOC_NAME_IMAGE_BLOB)
        if header.ci_entries and (data is None or header.ci_entries > data.entry.compressed_size):
            raise FormatError(f"{header.ci_entries} ci entries do not fit the blob's chunk data")
        self._header = header
        return header

    def ci_data(self) -> bytes:
        """The uncompressed ci array (b"" for a blob without chunks)."""
        if self._ci_data is None:
            self.toc()
            if layout.TOC_NAME_BLOB_META not in self._sections:
                self._ci_data = b""
            else:
                header = self.meta_header()
                stored = self._read(header.ci_offset, header.ci_compressed_size)
                comp = codecs.compressor_by_id(header.ci_compressor)
                self._ci_data = _decompress(comp, stored, header.ci_uncompressed_size, "ci array")
        return self._ci_data

    def chunk_infos(self) -> list[ChunkInfo]:
        """All ci entries in ci order, each checked to lie inside the chunk data."""
        if self._infos is None:
            data = self.ci_data()
            if not data:
                self._infos = []
            else:
                infos = decode_chunk_infos(data, self.meta_header().features)
                for info in infos:
                    self._check_info(info)
                self._infos = infos
        return list(self._infos)

    def _check_info(self, info: ChunkInfo) -> None:
        data = self._sections.get(layout.TOC_NAME_IMAGE_BLOB)
        if data is None:
            raise FormatError("blob has ci entries but no image.blob section")
        if info.compressed_offset < data.start or info.compressed_end > data.end:
            raise FormatError(
                f"chunk {info.index} ({info.compressed_offset}+{info.compressed_size}) "
                "lies outside the chunk data"
            )
        if info.uncompressed_end > data.entry.uncompressed_size:
            raise FormatError(f"chunk {info.index} ends beyond the blob's uncompressed size")
        if info.uncompressed_offset % layout.EROFS_BLOCK_SIZE:
            raise FormatError(f"chunk {info.index} uncompressed offset is not 4 KiB aligned")
        if info.uncompressed_size > layout.MAX_CHUNK_SIZE:
            raise FormatError(f"chunk {info.index} is larger than 16 MiB")
        if not info.compressed and info.compressed_size != info.uncompressed_size:
            raise FormatError(f"uncompressed chunk {info.index} has differing sizes")

    def chunk_digests(self) -> list[bytes] | None:
        """The blob.digest array in ci order, or None when the blob has none."""
        self.toc()
        section = self._sections.get(layout.TOC_NAME_BLOB_DIGEST)
        if section is None:
            return None
        count = len(self.chunk_infos())
        if section.entry.compressed_size != _DIGEST_SIZE * count:
            raise FormatError(f"blob.digest holds {section.entry.compressed_size} bytes for {count} chunks")
        raw = self._read(section.start, section.entry.compressed_size)
        return [raw[off : off + _DIGEST_SIZE] for off in range(0, len(raw), _DIGEST_SIZE)]

    def blob_meta_file(self) -> bytes | None:
        """The ``<blob_id>.blob.meta`` cache file of [format §3.10], or None without chunks."""
        if not self.ci_data():
            return None
        return blob_meta_file(self.meta_header(), self.ci_data())

    # -- data ---------------------------------------------------------------------------------

    def read_chunk(self, info: ChunkInfo) -> bytes:
        """The uncompressed bytes of chunk ``info``."""
        self.toc()
        self._check_info(info)
        stored = self._read(info.compressed_offset, info.compressed_size)
        if not info.compressed:
            return stored
        return _decompress(
            self._chunk_compressor(stored), stored, info.uncompressed_size, f"chunk {info.index}"
        )

    def iter_uncompressed(self) -> Iterator[tuple[int, bytes]]:
        """``(uncompressed_offset, data)`` of every chunk in ci order (the uncompressed blob image)."""
        for info in self.chunk_infos():
            yield info.uncompressed_offset, self.read_chunk(info)

    def bootstrap(self) -> bytes | None:
        """The embedded bootstrap (image.boot), decompressed and checked; None if absent."""
        self.toc()
        section = self._sections.get(layout.TOC_NAME_IMAGE_BOOT)
        if section is None:
            return None
        entry = section.entry
        stored = self._read(section.start, entry.compressed_size)
        data = _decompress(
            codecs.compressor_by_toc_flag(entry.flags), stored, entry.uncompressed_size, "image.boot"
        )
        if hashlib.sha256(data).digest() != entry.uncompressed_digest:
            raise FormatError("image.boot does not match its ToC digest")
        return data

    # -- verification -------------------------------------------------------------------------

    def verify(self) -> None:
        """Check every ToC digest and every chunk (against blob.digest when present)."""
        self.toc()
        for name, section in self._sections.items():
            entry = section.entry
            if name == layout.TOC_NAME_IMAGE_BLOB:
                # The digest covers chunk data ‖ H(image.blob) ([format §3.7]).
                actual = self._hash_range(section.start, entry.compressed_size + layout.TAR_BLOCK_SIZE)
            elif name == layout.TOC_NAME_BLOB_META:
                actual = hashlib.sha256(self.ci_data()).digest()
            elif name == layout.TOC_NAME_IMAGE_BOOT:
                self.bootstrap()  # checks its own digest
                continue
            else:
                actual = self._hash_range(section.start, entry.compressed_size)
            if actual != entry.uncompressed_digest:
                raise FormatError(f"ToC entry {name.decode()} does not match its digest")
        digests = self.chunk_digests()
        for info in self.chunk_infos():
            data = self.read_chunk(info)
            if digests is None:
                continue  # old blobs without blob.digest: decompression checked the size
            if self._chunk_digester(data, digests[info.index]).digest(data) != digests[info.index]:
                raise FormatError(f"chunk {info.index} does not match its digest")

    def native_blob_id(self) -> str:
        """sha256 hex of every byte except the blob.digest payload: nydus's own blob id ([format §3.9])."""
        self.toc()
        h = hashlib.sha256()
        skip = self._sections.get(layout.TOC_NAME_BLOB_DIGEST)
        if skip is None:
            self._hash_into(h, 0, self._size)
        else:
            self._hash_into(h, 0, skip.start)
            self._hash_into(h, skip.end, self._size - skip.end)
        return h.hexdigest()

    def file_digest(self) -> str:
        """``sha256:<hex>`` of the whole blob (its OCI layer digest)."""
        h = hashlib.sha256()
        self._hash_into(h, 0, self._size)
        return f"sha256:{h.hexdigest()}"

    # -- internals ----------------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset > self._size or length > self._size - offset:
            raise FormatError(f"read of {length} bytes at {offset} is outside the {self._size}-byte blob")
        data = self._read_at(offset, length)
        if len(data) != length:
            raise FormatError(f"short read: {len(data)} of {length} bytes at {offset}")
        return bytes(data)

    def _header_at(self, offset: int, *, strict: bool = True) -> TarHeader:
        """The tar header at ``offset``; with ``strict=False`` an invalid one reads as empty."""
        block = self._read(offset, layout.TAR_BLOCK_SIZE)
        try:
            return parse_header(block)
        except FormatError:
            if strict:
                raise
            return TarHeader(b"", -1)

    def _hash_into(self, h: hashlib._Hash, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            step = min(_HASH_STEP, end - offset)
            h.update(self._read(offset, step))
            offset += step

    def _hash_range(self, offset: int, length: int) -> bytes:
        h = hashlib.sha256()
        self._hash_into(h, offset, length)
        return h.digest()

    def _embedded_algorithms(self) -> tuple[int, int] | None:
        """(compression_algo, digest_algo) of blob 0 in the embedded bootstrap's blob table
        ([format §2.5])."""
        if self._algorithms is None:
            self._algorithms = (self._parse_embedded_algorithms(),)
        return self._algorithms[0]

    def _parse_embedded_algorithms(self) -> tuple[int, int] | None:
        boot = self.bootstrap()
        if boot is None or len(boot) < layout.EXT_SUPER_OFFSET + layout.SUPER_BLOCK_EXT.size:
            return None
        ext = layout.SUPER_BLOCK_EXT.unpack_from(boot, layout.EXT_SUPER_OFFSET)
        table_offset, table_size = ext[1], ext[2]
        if table_size < layout.BLOB_ENTRY_SIZE or table_offset + layout.BLOB_ENTRY_SIZE > len(boot):
            return None
        entry = layout.BLOB_ENTRY.unpack_from(boot, table_offset)
        return entry[4], entry[5]

    def _chunk_compressor(self, sample: bytes) -> codecs.Compressor:
        if self._compressor is None:
            header = self.meta_header()
            if header.ci_compressor != layout.COMPRESSOR_ID_NONE:
                # The ci array is compressed with the blob's compressor when that helps ([format §3.3]).
                comp = codecs.compressor_by_id(header.ci_compressor)
            elif (algorithms := self._embedded_algorithms()) is not None:
                comp = codecs.compressor_by_id(algorithms[0])
            else:
                # Separate-bootstrap blob: only zstd frames carry a magic; lz4 blocks have none.
                comp = codecs.thread_compressor("zstd" if sample.startswith(_ZSTD_MAGIC) else "lz4_block")
            self._compressor = comp
        return self._compressor

    def _chunk_digester(self, sample: bytes, expected: bytes) -> codecs.Digester:
        if self._digester is None:
            algorithms = self._embedded_algorithms()
            if algorithms is not None:
                self._digester = codecs.digester_by_id(algorithms[1])
            else:
                # No bootstrap to ask: pick the algorithm that reproduces the first digest.
                matching = [
                    d for d in map(codecs.digester, codecs.DIGESTER_NAMES) if d.digest(sample) == expected
                ]
                self._digester = matching[0] if matching else codecs.digester("blake3")
        return self._digester


def _decompress(comp: codecs.Compressor, data: bytes, uncompressed_size: int, what: str) -> bytes:
    """Decompress after bounding the output size by what the input can possibly produce."""
    if comp.algorithm_id == layout.COMPRESSOR_ID_NONE:
        if len(data) != uncompressed_size:
            raise FormatError(f"{what}: stored {len(data)} bytes, expected {uncompressed_size}")
        return data
    if comp.algorithm_id == layout.COMPRESSOR_ID_ZSTD:
        if uncompressed_size > _ZSTD_MAX_RATIO * len(data):
            raise FormatError(f"{what}: {len(data)} zstd bytes cannot expand to {uncompressed_size}")
        # python-zstandard allocates whatever the frame header declares, so check it first.
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            raise FormatError(f"{what}: not a zstd frame") from None
        if declared != uncompressed_size:
            raise FormatError(f"{what}: zstd frame declares {declared} bytes, expected {uncompressed_size}")
    elif uncompressed_size > _LZ4_MAX_RATIO * len(data):
        raise FormatError(f"{what}: {len(data)} compressed bytes cannot expand to {uncompressed_size}")
    return comp.decompress(data, uncompressed_size)


def blob_result(reader: BlobReader, digest: str, *, native_id: bool = True) -> BlobResult:
    """The :class:`BlobResult` a :class:`BlobWriter` returned for this blob, re-derived from the
    blob's own bytes (a production blob is self-describing: ToC, ci, embedded bootstrap).

    ``digest`` is the OCI digest of the whole file, which the caller has verified while
    reading it (a cache checks it on copy). FormatError if the blob is not one we write.
    ``native_id=False`` leaves ``blob_id`` empty: it is a hash of the whole blob, and a layer
    cache hit (a blob read from a registry) must not read the chunk data; nothing that uses a
    conversion in an image needs it.
    """
    boot = reader.bootstrap()
    if boot is None:
        raise FormatError("blob has no embedded bootstrap (not an inline-meta blob)")
    blobs = read_bootstrap(boot).blobs
    infos = reader.chunk_infos()
    merged = None
    if blobs:
        # As a merged bootstrap names it ([format §5.3]): by the OCI digest, without INLINED_FS_META.
        merged = dataclasses.replace(
            blobs[0],
            blob_id=digest.removeprefix("sha256:"),
            features=blobs[0].features & ~layout.BLOB_FEATURE_INLINED_FS_META,
        )
    return BlobResult(
        blob_id=reader.native_blob_id() if native_id else "",
        digest=digest,
        size=reader.size,
        chunk_count=len(infos),
        uncompressed_size=blobs[0].uncompressed_size if blobs else 0,
        blob_info=merged,
        bootstrap=boot,
        toc=reader.toc(),
        blob_meta=reader.blob_meta_file(),
    )
