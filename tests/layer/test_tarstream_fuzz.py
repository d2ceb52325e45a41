"""Fuzzing the layer reader: mutated tars and random bytes, plain and compressed.

Whatever the input, reading a layer either succeeds or raises an InvalidLayerError subclass
(CorruptLayerError, UnsafePathError, UnsupportedEntryError, ...), and it does so within the
hypothesis deadline: never another exception type, never a hang.
"""

from __future__ import annotations

import contextlib
import gzip
import io
from datetime import timedelta
from typing import BinaryIO

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nydus_exporter.errors import InvalidLayerError
from nydus_exporter.layer.compression import open_layer_stream
from nydus_exporter.layer.tarstream import iter_entries
from tests.helpers import tarbuild as tb

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    database=None,  # keep the repository clean; failures print a reproducible blob
    suppress_health_check=[HealthCheck.too_slow],
)
READ_LIMIT = 1 << 20  # per entry: a mutated size may legitimately claim terabytes of zeros


def _seed_tars() -> list[bytes]:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
    return [
        tb.tar_of(
            tb.dir("etc"),
            tb.file("etc/f", b"hello world" * 50, xattrs={"security.capability": cap}, mtime_nsec=5),
            tb.symlink("etc/s", "f"),
            tb.hardlink("etc/h", "etc/f"),
            tb.chardev("dev/c", 1, 3),
            tb.fifo("p"),
            tb.whiteout("etc/old"),
        ),
        tb.tar_of(tb.file("n" * 150, b"long"), tb.symlink("l", "t" * 120), fmt="gnu"),
        tb.tar_of(
            tb.pax_global({"uid": "5"}),
            tb.sparse_file("gnu", 20000, [(i * 2000, b"x" * 10) for i in range(7)], sparse_format="gnu"),
            tb.sparse_file("p10", 9000, [(100, b"y" * 100), (5000, b"z")], sparse_format="pax-1.0"),
            tb.sparse_file("p01", 9000, [(0, b"q")], sparse_format="pax-0.1"),
            tb.sparse_file("p00", 9000, [(10, b"r")], sparse_format="pax-0.0"),
        ),
        tb.tar_of(
            tb.file("a", b"", xattrs={"user.x": b"\x00\n"}, xattr_style="both"),
            tb.raw_header("b", data=b"data", fields={"size": tb.base256(4, 12)}),
        ),
    ]


SEEDS = _seed_tars()


def consume(stream: BinaryIO) -> None:
    """Read a layer like a builder would, bounded per entry."""
    for entry in iter_entries(stream):
        if entry.data is not None:
            entry.data.read(READ_LIMIT)


def check(stream: BinaryIO) -> None:
    with contextlib.suppress(InvalidLayerError):
        consume(stream)


def _header_offsets(data: bytes) -> list[int]:
    """Offsets of the 512-byte blocks of ``data`` that carry a valid ustar checksum."""
    offsets = []
    for offset in range(0, len(data) - 511, 512):
        block = data[offset : offset + 512]
        field = block[148:156].split(b"\0")[0].strip()
        if (
            block.strip(b"\0")
            and field.isdigit()
            and int(field, 8) == sum(block[:148]) + 256 + sum(block[156:])
        ):
            offsets.append(offset)
    return offsets


SEED_HEADERS = [_header_offsets(seed) for seed in SEEDS]
TOKENS = [
    b"77777777777",
    b"0",
    b" ",
    b"\x00",
    b"..",
    b"/",
    b".wh.",
    b"\x80\xff",
    b"\n",
    b"x",
    b"1",
    b"S",
    b"L",
]


def _fix_checksums(data: bytearray, offsets: list[int]) -> None:
    # Re-sign mutated headers so that the parser gets past the checksum into the fields.
    for offset in offsets:
        if offset + 512 <= len(data):
            data[offset + 148 : offset + 156] = b" " * 8
            data[offset + 148 : offset + 156] = b"%06o\x00 " % sum(data[offset : offset + 512])


@st.composite
def mutated_tar(draw: st.DrawFn) -> bytes:
    index = draw(st.integers(0, len(SEEDS) - 1))
    data = bytearray(SEEDS[index])
    headers = SEED_HEADERS[index]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "splice", "delete", "field", "field"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=600))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 600))]
        else:  # a plausible token written into a header field (or into a PAX payload)
            base = draw(st.sampled_from(headers)) if headers else 0
            pos = base + draw(
                st.sampled_from([0, 100, 108, 116, 124, 136, 156, 157, 257, 329, 345, 386, 482, 483, 600])
            )
            token = draw(st.sampled_from(TOKENS))
            data[pos : pos + len(token)] = token
    if draw(st.booleans()):
        _fix_checksums(data, headers)
    return bytes(data)


@FUZZ
@given(mutated_tar())
def test_mutated_tars_raise_only_invalid_layer_errors(data: bytes) -> None:
    check(io.BytesIO(data))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_invalid_layer_errors(data: bytes) -> None:
    check(io.BytesIO(data))
    check(open_layer_stream(io.BytesIO(data)))


@FUZZ
@given(st.sampled_from([b"\x1f\x8b", b"\x28\xb5\x2f\xfd"]), st.binary(max_size=2048))
def test_random_bytes_behind_a_compression_magic(magic: bytes, data: bytes) -> None:
    check(open_layer_stream(io.BytesIO(magic + data)))


@pytest.mark.slow
@FUZZ
@given(mutated_tar(), st.sampled_from(["gzip", "zstd"]), st.data())
def test_mutated_compressed_layers(data: bytes, codec: str, draw: st.DataObject) -> None:
    blob = bytearray(
        gzip.compress(data, mtime=0) if codec == "gzip" else zstandard.ZstdCompressor().compress(data)
    )
    for _ in range(draw.draw(st.integers(0, 3))):
        pos = draw.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= draw.draw(st.integers(1, 255))
    blob = blob[: draw.draw(st.integers(1, len(blob)))]
    check(open_layer_stream(io.BytesIO(bytes(blob))))
