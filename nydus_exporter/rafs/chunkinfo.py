"""Chunk compression-info ("ci") entries and the blob meta header ([format §3.3, §3.4]).

The ci array tells nydusd (and our reader) where chunk ``i`` of a blob lives, compressed and
uncompressed; it is indexed by the ci index stored in the bootstrap's chunk indexes. V1
entries (16 B) are what native v6 blobs use; V2 (24 B) carry flags and a CRC and are parsed
for completeness.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import layout

# V1 bit layout ([format §3.4]): sizes are stored minus one, split into a low 20-bit and a high 4-bit part.
_V1_SIZE_LOW_BITS = 20
_V1_SIZE_LOW_MASK = (1 << _V1_SIZE_LOW_BITS) - 1
_V1_SIZE_HIGH_MASK = 0xF
_V1_SIZE_LOW_SHIFT = 44  # both words: size bits 0-19 at bits 44-63
_V1_USIZE_HIGH_SHIFT = 8  # uncomp_info: size bits 20-23 at bits 8-11
_V1_CSIZE_HIGH_SHIFT = 40  # comp_info: size bits 20-23 at bits 40-43
_V1_UOFFSET_MASK = ((1 << 44) - 1) & ~(layout.EROFS_BLOCK_SIZE - 1)  # bits 12-43
_COFFSET_BITS = 40  # both versions: compressed offset in bits 0-39 of comp_info
_COFFSET_MASK = (1 << _COFFSET_BITS) - 1

# V2 bit layout ([format §3.4]).
_V2_UOFFSET_MASK = 0xFFFF_FFFF  # uncomp_info bits 0-31: uncompressed offset >> 12
_V2_USIZE_SHIFT = 32  # bits 32-55: uncompressed size - 1
_V2_SIZE_MASK = 0xFF_FFFF
_V2_FLAGS_SHIFT = 56  # bits 56-63: flags
_V2_CSIZE_SHIFT = 40  # comp_info bits 40-63: compressed size (NOT minus one)
# V2 entry flags: a different encoding from the chunk table's BlobChunkFlags ([format §2.14]).
CI_V2_FLAG_COMPRESSED = 0x01
CI_V2_FLAG_ZRAN = 0x02
CI_V2_FLAG_BATCH = 0x04
CI_V2_FLAG_ENCRYPTED = 0x08
CI_V2_FLAG_HAS_CRC32 = 0x10
_CI_V2_KNOWN_FLAGS = 0x1F

_MAX_CHUNK_SIZE = layout.MAX_CHUNK_SIZE  # sizes 1..16 MiB fit the 24-bit fields
_MAX_UNCOMPRESSED_OFFSET = 1 << 44


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """Where chunk ``index`` of a blob lives (one ci entry)."""

    index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int  # 4 KiB aligned
    uncompressed_size: int
    compressed: bool
    crc32: int | None = None  # V2 only (HAS_CRC32); V1 has no room for it

    @property
    def compressed_end(self) -> int:
        return self.compressed_offset + self.compressed_size

    @property
    def uncompressed_end(self) -> int:
        return self.uncompressed_offset + self.uncompressed_size


def _check_common(info: ChunkInfo) -> None:
    if not 1 <= info.uncompressed_size <= _MAX_CHUNK_SIZE:
        raise ValueError(f"chunk {info.index}: uncompressed size {info.uncompressed_size} out of 1..16 MiB")
    if not 1 <= info.compressed_size <= _MAX_CHUNK_SIZE:
        raise ValueError(f"chunk {info.index}: compressed size {info.compressed_size} out of 1..16 MiB")
    if not 0 <= info.compressed_offset <= _COFFSET_MASK:
        raise ValueError(f"chunk {info.index}: compressed offset {info.compressed_offset} exceeds 40 bits")
    if info.uncompressed_offset % layout.EROFS_BLOCK_SIZE or not (
        0 <= info.uncompressed_offset < _MAX_UNCOMPRESSED_OFFSET
    ):
        raise ValueError(
            f"chunk {info.index}: uncompressed offset {info.uncompressed_offset} "
            "is not a 4 KiB aligned 44-bit value"
        )


def encode_v1(info: ChunkInfo) -> bytes:
    """``BlobChunkInfoV1Ondisk`` (16 B). "Compressed" is implied by the sizes differing."""
    _check_common(info)
    if info.compressed != (info.compressed_size != info.uncompressed_size):
        raise ValueError(
            f"chunk {info.index}: V1 infers 'compressed' from the sizes; compressed={info.compressed} "
            f"contradicts sizes {info.compressed_size}/{info.uncompressed_size}"
        )
    usize = info.uncompressed_size - 1
    csize = info.compressed_size - 1
    uncomp_info = (
        ((usize & _V1_SIZE_LOW_MASK) << _V1_SIZE_LOW_SHIFT)
        | info.uncompressed_offset
        | ((usize >> _V1_SIZE_LOW_BITS) << _V1_USIZE_HIGH_SHIFT)
    )
    comp_info = (
        ((csize & _V1_SIZE_LOW_MASK) << _V1_SIZE_LOW_SHIFT)
        | ((csize >> _V1_SIZE_LOW_BITS) << _V1_CSIZE_HIGH_SHIFT)
        | info.compressed_offset
    )
    return layout.CHUNK_INFO_V1.pack(uncomp_info, comp_info)


def decode_v1(data: bytes, index: int) -> ChunkInfo:
    if len(data) != layout.CHUNK_INFO_V1_SIZE:
        raise FormatError(f"V1 ci entry must be {layout.CHUNK_INFO_V1_SIZE} bytes, got {len(data)}")
    uncomp_info, comp_info = layout.CHUNK_INFO_V1.unpack(data)
    usize = (
        ((uncomp_info >> _V1_SIZE_LOW_SHIFT) & _V1_SIZE_LOW_MASK)
        | (((uncomp_info >> _V1_USIZE_HIGH_SHIFT) & _V1_SIZE_HIGH_MASK) << _V1_SIZE_LOW_BITS)
    ) + 1
    csize = (
        ((comp_info >> _V1_SIZE_LOW_SHIFT) & _V1_SIZE_LOW_MASK)
        | (((comp_info >> _V1_CSIZE_HIGH_SHIFT) & _V1_SIZE_HIGH_MASK) << _V1_SIZE_LOW_BITS)
    ) + 1
    return ChunkInfo(
        index=index,
        compressed_offset=comp_info & _COFFSET_MASK,
        compressed_size=csize,
        uncompressed_offset=uncomp_info & _V1_UOFFSET_MASK,
        uncompressed_size=usize,
        compressed=csize != usize,
    )


def encode_v2(info: ChunkInfo) -> bytes:
    """``BlobChunkInfoV2Ondisk`` (24 B) with COMPRESSED / HAS_CRC32 flags."""
    _check_common(info)
    if info.compressed_size > _V2_SIZE_MASK:  # stored as is (not minus one) in 24 bits
        raise ValueError(f"chunk {info.index}: compressed size {info.compressed_size} exceeds V2's 24 bits")
    flags = CI_V2_FLAG_COMPRESSED if info.compressed else 0
    data = 0
    if info.crc32 is not None:
        if not 0 <= info.crc32 <= 0xFFFF_FFFF:
            raise ValueError(f"chunk {info.index}: crc32 {info.crc32} is not a u32")
        flags |= CI_V2_FLAG_HAS_CRC32
        data = info.crc32
    uncomp_info = (
        (info.uncompressed_offset >> layout.EROFS_BLKSZBITS)
        | ((info.uncompressed_size - 1) << _V2_USIZE_SHIFT)
        | (flags << _V2_FLAGS_SHIFT)
    )
    comp_info = info.compressed_offset | (info.compressed_size << _V2_CSIZE_SHIFT)
    return layout.CHUNK_INFO_V2.pack(uncomp_info, comp_info, data)


def decode_v2(data: bytes, index: int) -> ChunkInfo:
    """Parse a V2 entry; ZRAN / BATCH / ENCRYPTED chunks are not supported by this project."""
    if len(data) != layout.CHUNK_INFO_V2_SIZE:
        raise FormatError(f"V2 ci entry must be {layout.CHUNK_INFO_V2_SIZE} bytes, got {len(data)}")
    uncomp_info, comp_info, extra = layout.CHUNK_INFO_V2.unpack(data)
    flags = uncomp_info >> _V2_FLAGS_SHIFT
    if flags & ~_CI_V2_KNOWN_FLAGS:
        raise FormatError(f"ci entry {index}: unknown flags {flags:#x}")
    if flags & (CI_V2_FLAG_ZRAN | CI_V2_FLAG_BATCH | CI_V2_FLAG_ENCRYPTED):
        raise FormatError(
            f"ci entry {index}: zran/batch/encrypted chunks (flags {flags:#x}) are not supported"
        )
    csize = comp_info >> _V2_CSIZE_SHIFT
    if csize == 0:
        raise FormatError(f"ci entry {index}: compressed size is 0")
    return ChunkInfo(
        index=index,
        compressed_offset=comp_info & _COFFSET_MASK,
        compressed_size=csize,
        uncompressed_offset=(uncomp_info & _V2_UOFFSET_MASK) << layout.EROFS_BLKSZBITS,
        uncompressed_size=((uncomp_info >> _V2_USIZE_SHIFT) & _V2_SIZE_MASK) + 1,
        compressed=bool(flags & CI_V2_FLAG_COMPRESSED),
        crc32=extra & 0xFFFF_FFFF if flags & CI_V2_FLAG_HAS_CRC32 else None,
    )


def entry_size(features: int) -> int:
    """Size of one ci entry for blob ``features`` (V2 iff CHUNK_INFO_V2)."""
    if features & layout.BLOB_FEATURE_CHUNK_INFO_V2:
        return layout.CHUNK_INFO_V2_SIZE
    return layout.CHUNK_INFO_V1_SIZE


def encode_chunk_infos(infos: list[ChunkInfo], *, v2: bool = False) -> bytes:
    """The uncompressed ci array; ``infos[i].index`` must be ``i``."""
    for position, info in enumerate(infos):
        if info.index != position:
            raise ValueError(f"ci entry at position {position} has index {info.index}")
    encode = encode_v2 if v2 else encode_v1
    return b"".join(encode(info) for info in infos)


def decode_chunk_infos(data: bytes, features: int) -> list[ChunkInfo]:
    """Parse an uncompressed ci array (entries only, no zran/batch contexts)."""
    size = entry_size(features)
    if len(data) % size:
        raise FormatError(f"ci array size {len(data)} is not a multiple of {size}")
    decode = decode_v2 if size == layout.CHUNK_INFO_V2_SIZE else decode_v1
    return [decode(data[off : off + size], off // size) for off in range(0, len(data), size)]


@dataclass(frozen=True, slots=True)
class BlobMetaHeader:
    """``BlobCompressionContextHeader``: the 4096-byte blob meta header ([format §3.3])."""

    features: int
    ci_compressor: int  # algorithm id (0 none, 1 lz4_block, 2 gzip, 3 zstd)
    ci_entries: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    ci_zran_offset: int = 0
    ci_zran_size: int = 0
    ci_zran_count: int = 0

    @property
    def entry_size(self) -> int:
        return entry_size(self.features)

    def encode(self) -> bytes:
        try:
            return layout.BLOB_META_HEADER.pack(
                layout.BLOB_META_MAGIC,
                self.features,
                self.ci_compressor,
                self.ci_entries,
                self.ci_offset,
                self.ci_compressed_size,
                self.ci_uncompressed_size,
                self.ci_zran_offset,
                self.ci_zran_size,
                self.ci_zran_count,
                bytes(4032),
                layout.BLOB_META_MAGIC,
            )
        except struct.error as exc:  # a field does not fit its width
            raise ValueError(f"blob meta header field out of range: {exc}") from None

    @classmethod
    def decode(cls, data: bytes) -> BlobMetaHeader:
        if len(data) != layout.BLOB_META_HEADER_SIZE:
            raise FormatError(
                f"blob meta header must be {layout.BLOB_META_HEADER_SIZE} bytes, got {len(data)}"
            )
        (
            magic,
            features,
            ci_comp,
            entries,
            ci_off,
            ci_csize,
            ci_usize,
            zran_off,
            zran_size,
            zran_count,
            _,
            magic2,
        ) = layout.BLOB_META_HEADER.unpack(data)
        if magic != layout.BLOB_META_MAGIC or magic2 != layout.BLOB_META_MAGIC:
            raise FormatError(
                f"blob meta header magic {magic:#x}/{magic2:#x} is not {layout.BLOB_META_MAGIC:#x}"
            )
        return cls(features, ci_comp, entries, ci_off, ci_csize, ci_usize, zran_off, zran_size, zran_count)


def blob_meta_file(header: BlobMetaHeader, ci_data: bytes) -> bytes:
    """The local ``<blob_id>.blob.meta`` cache file ([format §3.10]).

    Uncompressed ci data zero-padded to a 4096 multiple, then the 4096-byte header; nydusd
    requires the size to be exactly ``round_up(ci_uncompressed_size, 4096) + 4096``.
    """
    if len(ci_data) != header.ci_uncompressed_size:
        raise ValueError(f"ci data is {len(ci_data)} bytes, header says {header.ci_uncompressed_size}")
    padded = layout.round_up(len(ci_data), layout.EROFS_BLOCK_SIZE)
    return ci_data + bytes(padded - len(ci_data)) + header.encode()


def parse_blob_meta_file(data: bytes) -> tuple[BlobMetaHeader, bytes]:
    """Split a ``.blob.meta`` cache file into its header and uncompressed ci data."""
    if len(data) < layout.BLOB_META_HEADER_SIZE or len(data) % layout.EROFS_BLOCK_SIZE:
        raise FormatError(f"blob.meta file size {len(data)} is not a 4096 multiple holding a header")
    header = BlobMetaHeader.decode(data[-layout.BLOB_META_HEADER_SIZE :])
    expected = (
        layout.round_up(header.ci_uncompressed_size, layout.EROFS_BLOCK_SIZE) + layout.BLOB_META_HEADER_SIZE
    )
    if len(data) != expected:
        raise FormatError(f"blob.meta file is {len(data)} bytes, its header implies {expected}")
    return header, data[: header.ci_uncompressed_size]
