"""ci entries V1/V2 and the blob meta header ([format §3.3, §3.4, §3.10]), against the spec bit tables."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.chunkinfo import (
    BlobMetaHeader,
    ChunkInfo,
    blob_meta_file,
    decode_chunk_infos,
    decode_v1,
    decode_v2,
    encode_chunk_infos,
    encode_v1,
    encode_v2,
    parse_blob_meta_file,
)


def _words(raw: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(raw) // 8}Q", raw)


def test_v1_spec_example() -> None:
    """[format §3.4]: uncomp_info 0x00AFF000_00000000 = size 2816 at offset 0."""
    info = ChunkInfo(0, 0, 1211, 0, 2816, True)
    assert _words(encode_v1(info))[0] == 0x00AFF000_00000000


def test_v1_bit_layout_by_hand() -> None:
    # usize 16 MiB -> 0xFFFFFF: low 20 bits at 44..63, high 4 bits at 8..11; offset at 12..43.
    # csize 0x123456 + 1 -> 0x123456: low 20 bits 0x23456 at 44..63, high 4 bits 0x1 at 40..43.
    info = ChunkInfo(7, 0xAB_CDEF_0123, 0x123457, 0xABC_DEF0_1000, 1 << 24, True)
    uncomp, comp = _words(encode_v1(info))
    assert uncomp == (0xFFFFF << 44) | 0xABC_DEF0_1000 | (0xF << 8)
    assert comp == (0x23456 << 44) | (0x1 << 40) | 0xAB_CDEF_0123
    assert decode_v1(encode_v1(info), 7) == info


def test_v1_uncompressed_chunk_has_equal_sizes() -> None:
    info = ChunkInfo(0, 100, 4096, 8192, 4096, False)
    assert decode_v1(encode_v1(info), 0) == info
    with pytest.raises(ValueError, match="contradicts"):
        encode_v1(ChunkInfo(0, 100, 4000, 8192, 4096, False))


_chunk_infos = st.builds(
    ChunkInfo,
    index=st.integers(0, (1 << 24) - 1),
    compressed_offset=st.integers(0, (1 << 40) - 1),
    compressed_size=st.integers(1, 1 << 24),
    uncompressed_offset=st.integers(0, (1 << 32) - 1).map(lambda block: block << 12),
    uncompressed_size=st.integers(1, 1 << 24),
    compressed=st.just(True),
).map(
    lambda i: ChunkInfo(
        i.index,
        i.compressed_offset,
        i.compressed_size,
        i.uncompressed_offset,
        i.uncompressed_size,
        i.compressed_size != i.uncompressed_size,
    )
)


@given(_chunk_infos)
@settings(database=None)
def test_v1_round_trip(info: ChunkInfo) -> None:
    assert decode_v1(encode_v1(info), info.index) == info


@given(_chunk_infos, st.one_of(st.none(), st.integers(0, 0xFFFF_FFFF)))
@settings(database=None)
def test_v2_round_trip(info: ChunkInfo, crc: int | None) -> None:
    with_crc = ChunkInfo(
        info.index,
        info.compressed_offset,
        min(info.compressed_size, (1 << 24) - 1),  # V2 stores the size itself in 24 bits
        info.uncompressed_offset,
        info.uncompressed_size,
        info.compressed,
        crc,
    )
    assert decode_v2(encode_v2(with_crc), info.index) == with_crc


def test_v2_bit_layout_by_hand() -> None:
    info = ChunkInfo(3, 0x12_3456_789A, 5000, 0x5000, 13400, True, 0xDEADBEEF)
    uncomp, comp, data = _words(encode_v2(info))
    assert uncomp == 0x5 | (13399 << 32) | ((0x01 | 0x10) << 56)
    assert comp == 0x12_3456_789A | (5000 << 40)
    assert data == 0xDEADBEEF


def test_v2_rejects_zran_batch_encrypted_and_unknown_flags() -> None:
    base = ChunkInfo(0, 0, 10, 0, 20, True)
    for flag in (0x02, 0x04, 0x08, 0x80):
        uncomp, comp, data = _words(encode_v2(base))
        raw = struct.pack("<QQQ", uncomp | (flag << 56), comp, data)
        with pytest.raises(FormatError):
            decode_v2(raw, 0)


@pytest.mark.parametrize(
    "bad",
    [
        ChunkInfo(0, 0, 10, 0, 0, True),  # empty chunk
        ChunkInfo(0, 0, 10, 0, (1 << 24) + 1, True),  # over 16 MiB
        ChunkInfo(0, 0, 0, 0, 10, True),
        ChunkInfo(0, 1 << 40, 10, 0, 20, True),  # offset beyond 40 bits
        ChunkInfo(0, 0, 10, 100, 20, True),  # unaligned uncompressed offset
        ChunkInfo(0, 0, 10, 1 << 44, 20, True),
    ],
)
def test_encode_range_checks(bad: ChunkInfo) -> None:
    with pytest.raises(ValueError):
        encode_v1(bad)
    with pytest.raises(ValueError):
        encode_v2(bad)


def test_array_encode_decode_by_features() -> None:
    infos = [ChunkInfo(0, 0, 10, 0, 20, True), ChunkInfo(1, 10, 4096, 4096, 4096, False)]
    v1 = encode_chunk_infos(infos)
    assert len(v1) == 32
    assert decode_chunk_infos(v1, layout.BLOB_FEATURE_ALIGNED) == infos
    v2 = encode_chunk_infos(infos, v2=True)
    assert len(v2) == 48
    assert decode_chunk_infos(v2, layout.BLOB_FEATURE_CHUNK_INFO_V2) == infos
    with pytest.raises(FormatError):
        decode_chunk_infos(v1[:-1], 0)
    with pytest.raises(ValueError, match="index"):
        encode_chunk_infos(infos[1:])


def test_meta_header_layout() -> None:
    header = BlobMetaHeader(0x7000_0023, 3, 2, 8314, 30, 32)
    raw = header.encode()
    assert len(raw) == 4096
    assert struct.unpack_from("<IIIIQQQ", raw) == (0xB10BB10B, 0x7000_0023, 3, 2, 8314, 30, 32)
    assert raw[40:4092] == bytes(4052)
    assert raw[4092:] == (0xB10BB10B).to_bytes(4, "little")
    assert BlobMetaHeader.decode(raw) == header
    assert header.entry_size == 16
    with pytest.raises(FormatError, match="magic"):
        BlobMetaHeader.decode(raw[:4092] + bytes(4))
    with pytest.raises(FormatError):
        BlobMetaHeader.decode(raw[:100])


def test_blob_meta_cache_file() -> None:
    """[format §3.10]: ci ‖ zero pad to 4 KiB ‖ header, size round_up(ci, 4096) + 4096."""
    ci = encode_chunk_infos([ChunkInfo(i, i * 10, 10, i * 4096, 20, True) for i in range(300)])
    header = BlobMetaHeader(0x7000_0023, 0, 300, 123, len(ci), len(ci))
    data = blob_meta_file(header, ci)
    assert len(data) == 8192 + 4096  # 4800 bytes of ci round up to 8192
    assert data[:4800] == ci and data[4800:8192] == bytes(8192 - 4800)
    assert data[8192:] == header.encode()
    assert parse_blob_meta_file(data) == (header, ci)
    with pytest.raises(FormatError):
        parse_blob_meta_file(data[4096:])
