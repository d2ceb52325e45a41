"""ToC entries ([format §3.7]) and the reverse-tar GNU headers ([format §3.6]), checked against the
tables of the format notes."""

from __future__ import annotations

import hashlib
import tarfile
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.tarheader import TarHeader, build_header, parse_header
from nydus_exporter.rafs.toc import (
    TocEntry,
    decode_toc_entries,
    encode_toc,
    encode_toc_entries,
    find_entry,
    toc_digest,
    toc_size,
)

# -- tar headers ----------------------------------------------------------------------------


def test_header_fields_follow_the_spec_table() -> None:
    block = build_header(b"image.blob", 7802)
    assert len(block) == 512
    assert block[0:100] == b"image.blob".ljust(100, b"\x00")
    assert block[100:124] == bytes(24)  # mode, uid, gid all NUL
    assert block[124:136] == b"%011o\x00" % 7802
    assert block[136:148] == b"00000000000\x00"
    assert block[156:157] == b"0"
    assert block[157:257] == bytes(100)
    assert block[257:265] == b"ustar  \x00"
    assert block[265:] == bytes(512 - 265)
    # POSIX checksum: sum of all bytes with the checksum field read as 8 spaces.
    expected = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    assert block[148:156] == b"%07o\x00" % expected


def test_header_is_read_by_an_independent_tar_parser() -> None:
    """Python's tarfile (like Go's archive/tar) validates the checksum and sees a GNU regular file."""
    payload = b"x" * 1000
    data = BytesIO(build_header(b"blob.meta", len(payload)) + payload + bytes(24))
    with tarfile.open(fileobj=data, mode="r:") as archive:
        member = archive.next()
        assert member is not None
        assert (member.name, member.size, member.type) == ("blob.meta", 1000, tarfile.REGTYPE)


@pytest.mark.parametrize("size", [0, 1, 4096, 8**11 - 1, 8**11, 1 << 40])
def test_header_round_trip(size: int) -> None:
    block = build_header(b"rafs.blob.toc", size)
    assert parse_header(block) == TarHeader(b"rafs.blob.toc", size)
    assert TarHeader(b"rafs.blob.toc", size).encode() == block


def test_large_size_uses_gnu_base256() -> None:
    block = build_header(b"image.blob", 8**11)
    assert block[124] & 0x80
    assert int.from_bytes(bytes([block[124] & 0x7F]) + block[125:136], "big") == 8**11


def test_header_rejects_corruption() -> None:
    good = build_header(b"image.boot", 501)
    bad_checksum = bytearray(good)
    bad_checksum[5] ^= 1
    with pytest.raises(FormatError, match="checksum"):
        parse_header(bytes(bad_checksum))
    ustar_posix = bytearray(good)
    ustar_posix[257:265] = b"ustar\x0000"
    with pytest.raises(FormatError, match="GNU magic"):
        parse_header(bytes(ustar_posix))
    with pytest.raises(FormatError):
        parse_header(good[:511])
    with pytest.raises(FormatError):
        parse_header(bytes(512))


def test_build_header_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_header(b"", 1)
    with pytest.raises(ValueError):
        build_header(b"a" * 101, 1)
    with pytest.raises(ValueError):
        build_header(b"a", -1)


# -- ToC entries ----------------------------------------------------------------------------


def _entry(name: bytes = b"blob.meta", flags: int = layout.TOC_FLAG_ZSTD) -> TocEntry:
    return TocEntry(flags, name, hashlib.sha256(name).digest(), 8314, 32, 48)


def test_entry_layout_follows_the_spec_table() -> None:
    raw = _entry().encode()
    assert len(raw) == 128
    assert raw[0:4] == layout.TOC_FLAG_ZSTD.to_bytes(4, "little")
    assert raw[4:8] == bytes(4)
    assert raw[8:24] == b"blob.meta".ljust(16, b"\x00")
    assert raw[24:56] == hashlib.sha256(b"blob.meta").digest()
    assert raw[56:64] == (8314).to_bytes(8, "little")
    assert raw[64:72] == (32).to_bytes(8, "little")
    assert raw[72:80] == (48).to_bytes(8, "little")
    assert raw[80:128] == bytes(48)


@given(
    flags=st.sampled_from([layout.TOC_FLAG_NONE, layout.TOC_FLAG_ZSTD, layout.TOC_FLAG_LZ4_BLOCK]),
    name=st.binary(min_size=1, max_size=16).filter(lambda n: b"\x00" not in n and n.isascii()),
    digest=st.binary(min_size=32, max_size=32),
    numbers=st.tuples(*[st.integers(0, (1 << 64) - 1)] * 3),
)
@settings(database=None)
def test_entry_round_trip(flags: int, name: bytes, digest: bytes, numbers: tuple[int, int, int]) -> None:
    entry = TocEntry(flags, name, digest, *numbers)
    assert TocEntry.decode(entry.encode()) == entry


def test_toc_section_is_entries_then_header() -> None:
    entries = [_entry(b"image.blob", layout.TOC_FLAG_NONE), _entry(b"blob.meta"), _entry(b"image.boot")]
    data = encode_toc(entries)
    assert data[:384] == encode_toc_entries(entries)
    assert parse_header(data[384:]) == TarHeader(b"rafs.blob.toc", 384)
    assert toc_size(entries) == len(data) == 384 + 512
    assert toc_digest(entries) == hashlib.sha256(data).digest()
    assert decode_toc_entries(data[:384]) == entries
    assert find_entry(entries, b"blob.meta") == entries[1]
    assert find_entry(entries, b"blob.digest") is None


def test_toc_decode_rejects_bad_sizes_and_names() -> None:
    with pytest.raises(FormatError):
        decode_toc_entries(b"")
    with pytest.raises(FormatError):
        decode_toc_entries(bytes(130))
    with pytest.raises(FormatError, match="name"):
        decode_toc_entries(bytes(128))  # empty name
    raw = bytearray(_entry().encode())
    raw[8:24] = b"\xffbad".ljust(16, b"\x00")
    with pytest.raises(FormatError, match="name"):
        TocEntry.decode(bytes(raw))
