"""Corrupt blobs must end in FormatError only, quickly, whatever the damage.

Bases: the two real fixture blobs and a few writer outputs. Mutations: bit flips (anywhere and
concentrated in the metadata tail, where the parsing happens), truncation from either end,
random tails/heads, overwritten ranges, and synthetic blobs made of a valid ToC frame whose
entries point at random places. Every reader entry point is exercised.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.chunkinfo import BlobMetaHeader
from nydus_exporter.rafs.tarheader import build_header
from nydus_exporter.rafs.toc import TocEntry, decode_toc_entries, encode_toc
from tests.conftest import nydus_fixture
from tests.rafs.test_blob_writer import reader_of, split_file, write_blob

FUZZ = settings(
    database=None,
    deadline=timedelta(seconds=2),
    max_examples=int(os.environ.get("BLOB_FUZZ_EXAMPLES", "150")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIXTURE_BLOBS = [
    ("blobs", "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"),
    ("toc", "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"),
]
SECTION_NAMES = [b"image.blob", b"blob.meta", b"blob.meta.header", b"blob.digest", b"image.boot"]


@functools.cache
def base_blobs() -> tuple[bytes, ...]:
    blobs = []
    for folder, name in FIXTURE_BLOBS:
        blobs.append(nydus_fixture(f"{folder}/{name}").read_bytes())
    text = b"nydus rafs erofs chunk " * 2000
    blobs.append(write_blob([split_file(text, 4096), split_file(os.urandom(3000), 4096)], chunk_size=4096)[1])
    blobs.append(
        write_blob(
            [split_file(text[:20000], 4096, "lz4_block", "sha256")],
            chunk_size=4096,
            compressor="lz4_block",
            digester="sha256",
        )[1]
    )
    blobs.append(write_blob([split_file(text[:9000], 4096, "none")], chunk_size=4096, compressor="none")[1])
    blobs.append(write_blob([[]], chunk_size=4096)[1])
    return tuple(blobs)


def exercise(blob: bytes) -> None:
    """Call every reader entry point; only FormatError may come out."""
    reader = reader_of(blob)
    steps = [
        reader.toc,
        reader.meta_header,
        reader.chunk_infos,
        reader.chunk_digests,
        reader.bootstrap,
        lambda: list(reader.iter_uncompressed()),
        reader.blob_meta_file,
        reader.native_blob_id,
        reader.verify,
    ]
    for step in steps:
        try:
            step()
        except FormatError as exc:
            assert str(exc), "FormatError must name the problem"


def test_bases_are_valid() -> None:
    for blob in base_blobs():
        reader_of(blob).verify()


_base = st.integers(0, 5).map(lambda i: base_blobs()[i % len(base_blobs())])


@FUZZ
@given(base=_base, data=st.data())
def test_bit_flips(base: bytes, data: st.DataObject) -> None:
    blob = bytearray(base)
    tail = min(len(blob), 6000)  # ToC, headers, ci, digests and (small) bootstraps live here
    positions = data.draw(
        st.lists(
            st.one_of(st.integers(0, len(blob) - 1), st.integers(len(blob) - tail, len(blob) - 1)),
            min_size=1,
            max_size=8,
        )
    )
    for pos in positions:
        blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    exercise(bytes(blob))


@FUZZ
@given(base=_base, cut=st.integers(0, 1 << 16), from_front=st.booleans())
def test_truncation(base: bytes, cut: int, from_front: bool) -> None:
    cut %= len(base) + 1
    exercise(base[cut:] if from_front else base[: len(base) - cut])


@FUZZ
@given(base=_base, extra=st.binary(min_size=1, max_size=2048), at_end=st.booleans())
def test_random_tail_or_head(base: bytes, extra: bytes, at_end: bool) -> None:
    exercise(base + extra if at_end else extra + base)


@FUZZ
@given(base=_base, data=st.data())
def test_overwritten_range(base: bytes, data: st.DataObject) -> None:
    start = data.draw(st.integers(max(0, len(base) - 6000), len(base) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=64))
    blob = base[:start] + junk + base[start + len(junk) :]
    exercise(blob[: len(base)])


@FUZZ
@given(st.binary(max_size=8192))
def test_random_bytes(blob: bytes) -> None:
    exercise(blob)


@st.composite
def _synthetic_blob(draw: st.DrawFn) -> bytes:
    """Random body + a well-formed ToC frame whose entries point anywhere (deep parser paths)."""
    body = bytearray(draw(st.binary(min_size=0, max_size=12000)))
    # Sprinkle valid section headers and meta headers so later checks are reached too.
    for _ in range(draw(st.integers(0, 4))):
        if len(body) < 512:
            break
        at = draw(st.integers(0, len(body) - 512))
        body[at : at + 512] = build_header(
            draw(st.sampled_from(SECTION_NAMES)), draw(st.integers(0, len(body)))
        )
    if len(body) >= 4096 and draw(st.booleans()):
        at = draw(st.integers(0, len(body) - 4096))
        header = BlobMetaHeader(
            features=draw(st.sampled_from([0x7000_0023, 0x7000_0021, 0x1, 0x5, 0x8, 0])),
            ci_compressor=draw(st.integers(0, 4)),
            ci_entries=draw(st.integers(0, 600)),
            ci_offset=draw(st.integers(0, len(body))),
            ci_compressed_size=draw(st.integers(0, 9000)),
            ci_uncompressed_size=draw(st.integers(0, 9600)),
        )
        body[at : at + 4096] = header.encode()
    entries = []
    for _ in range(draw(st.integers(1, 6))):
        entries.append(
            TocEntry(
                flags=draw(st.sampled_from([1, 2, 4, 0, 0x11, 8])),
                name=draw(st.sampled_from([*SECTION_NAMES, b"bogus"])),
                uncompressed_digest=draw(st.binary(min_size=32, max_size=32)),
                compressed_offset=draw(
                    st.one_of(st.integers(0, len(body) + 600), st.integers(0, (1 << 64) - 1))
                ),
                compressed_size=draw(
                    st.one_of(st.integers(0, len(body) + 600), st.integers(0, (1 << 64) - 1))
                ),
                uncompressed_size=draw(st.one_of(st.integers(0, 1 << 20), st.integers(0, (1 << 64) - 1))),
            )
        )
    return bytes(body) + encode_toc(entries)


@FUZZ
@given(_synthetic_blob())
def test_synthetic_toc(blob: bytes) -> None:
    exercise(blob)


@FUZZ
@given(base=_base, data=st.data())
def test_toc_field_mutation(base: bytes, data: st.DataObject) -> None:
    """Rewrite one ToC field with a well-formed ToC around it (past the tar checksum)."""
    toc_bytes = int(base[-512 + 124 : -512 + 135], 8)
    entries = decode_toc_entries(base[-512 - toc_bytes : -512])
    index = data.draw(st.integers(0, len(entries) - 1))
    field = data.draw(st.sampled_from(["flags", "compressed_offset", "compressed_size", "uncompressed_size"]))
    old = getattr(entries[index], field)
    new = data.draw(
        st.one_of(
            st.integers(0, len(base) + 8192),
            st.integers(max(0, old - 600), old + 600),
            st.sampled_from([0, 1, 2, 4, 0xF, (1 << 32) - 1, (1 << 63), (1 << 64) - 1]),
        )
    )
    if field == "flags":
        new &= 0xFFFF_FFFF
    changes: dict[str, Any] = {field: new}
    entries[index] = dataclasses.replace(entries[index], **changes)
    exercise(base[: -512 - toc_bytes] + encode_toc(entries))


def test_decompression_bomb_is_refused_before_allocating() -> None:
    """An image.boot whose zstd frame and ToC both claim 1 TiB must fail without allocating it."""
    size = 1 << 40
    # zstd frame: magic, FHD = single segment + 8-byte content size, content size, one RLE block.
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + size.to_bytes(8, "little") + b"\x03\x00\x00" + b"a"
    entry = TocEntry(layout.TOC_FLAG_ZSTD, b"image.boot", hashlib.sha256(b"").digest(), 0, len(frame), size)
    blob = frame + build_header(b"image.boot", len(frame)) + encode_toc([entry])
    reader = BlobReader(lambda off, n: blob[off : off + n], len(blob))
    with pytest.raises(FormatError, match="cannot expand"):
        reader.bootstrap()


def test_short_reads_are_format_errors() -> None:
    blob = base_blobs()[-1]
    reader = BlobReader(lambda off, n: blob[off : off + n][: n // 2], len(blob))
    with pytest.raises(FormatError, match="short read"):
        reader.toc()
