"""open_layer_stream: gzip / zstd / plain sniffing over any stream, streaming, corruption."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import BinaryIO, cast

import pytest
import zstandard

from nydus_exporter.errors import CorruptLayerError
from nydus_exporter.layer.compression import open_layer_stream
from tests.helpers import tarbuild as tb

RNG = random.Random(1234)  # deterministic "random" bytes: failures must reproduce
# Compressible but not trivial: text-like lines plus a random block.
PAYLOAD = b"".join(b"line %06d of the layer\n" % i for i in range(20000)) + RNG.randbytes(50000)


def _zstd(data: bytes, **kw: object) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(data)  # type: ignore[arg-type]


def _skippable_frame(payload: bytes) -> bytes:
    # RFC 8878 §3.1.2: magic 0x184D2A5?, 4-byte little-endian size, user data.
    return struct.pack("<II", 0x184D2A53, len(payload)) + payload


ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda d: d,
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "gzip-two-members": lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:]),
    "gzip-zero-padded": lambda d: gzip.compress(d) + bytes(700),
    "gzip-header-fields": lambda d: _gzip_with_name_and_comment(d),
    "zstd": lambda d: _zstd(d),
    "zstd-checksum-content-size": lambda d: _zstd(d, write_checksum=True, write_content_size=True),
    "zstd-two-frames": lambda d: _zstd(d[:1000]) + _zstd(d[1000:], write_checksum=True),
    "zstd-skippable-frame-between": lambda d: _zstd(d[:10]) + _skippable_frame(b"meta") + _zstd(d[10:]),
}


def _gzip_with_name_and_comment(data: bytes) -> bytes:
    # FLG.FNAME | FLG.FCOMMENT | FLG.FEXTRA | FLG.FHCRC set, as some tools write them (RFC 1952).
    body = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = body.compress(data) + body.flush()
    extra = b"AB\x02\x00hi"
    header = b"\x1f\x8b\x08\x1e" + bytes(4) + b"\x00\x03" + struct.pack("<H", len(extra)) + extra
    header += b"layer.tar\x00" + b"a comment\x00"
    header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    return header + deflated + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


class TrickleRaw(io.RawIOBase):
    """A raw stream that hands out at most ``step`` bytes per read (a slow pipe)."""

    def __init__(self, data: bytes, step: int = 1) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data))
        memoryview(b).cast("B")[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class ReadOnly:
    """Only ``read()``: no readinto, no peek, no seek (a minimal file-like)."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(min(n, 3) if n and n > 0 else n)


@contextmanager
def _bytesio(data: bytes) -> Iterator[BinaryIO]:
    yield io.BytesIO(data)


@contextmanager
def _pipe(data: bytes) -> Iterator[BinaryIO]:
    with tb.piped([data[i : i + 4096] for i in range(0, len(data), 4096)]) as pipe:
        yield cast(BinaryIO, pipe.stream)


@contextmanager
def _trickle(data: bytes) -> Iterator[BinaryIO]:
    yield cast(BinaryIO, TrickleRaw(data, step=1))


@contextmanager
def _read_only(data: bytes) -> Iterator[BinaryIO]:
    yield cast(BinaryIO, ReadOnly(data))


SOURCES: dict[str, Callable[[bytes], AbstractContextManager[BinaryIO]]] = {
    "bytesio": _bytesio,
    "os-pipe": _pipe,
    "one-byte-reads": _trickle,
    "read-only-object": _read_only,
}


def _read_all(stream: BinaryIO, piece: int = 1 << 16) -> bytes:
    out = bytearray()
    while chunk := stream.read(piece):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=list(ENCODINGS))
@pytest.mark.parametrize("source", SOURCES, ids=list(SOURCES))
def test_decodes_every_encoding_from_every_kind_of_stream(encoding: str, source: str) -> None:
    data = PAYLOAD if source != "one-byte-reads" or encoding == "plain" else PAYLOAD[:20000]
    with SOURCES[source](ENCODINGS[encoding](data)) as stream:
        assert _read_all(open_layer_stream(stream)) == data


@pytest.mark.parametrize("data", [b"", b"\x1f", b"ab", b"abc", b"\x28\xb5\x2f"], ids=repr)
def test_inputs_shorter_than_the_magic_pass_through(data: bytes) -> None:
    assert open_layer_stream(io.BytesIO(data)).read() == data
    with tb.piped([data]) as pipe:
        assert open_layer_stream(cast(BinaryIO, pipe.stream)).read() == data


def test_plain_buffered_stream_is_returned_unchanged_without_losing_bytes(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "layer.tar")
    with open(path, "wb") as f:
        f.write(PAYLOAD)
    with open(path, "rb") as f:
        assert open_layer_stream(f) is f  # peeked, not consumed: no wrapper on the hot path
        assert f.read() == PAYLOAD


@pytest.mark.slow
def test_large_reads_return_exactly_what_was_asked() -> None:
    data = RNG.randbytes(1 << 20) * 40  # 40 MiB, compressible across the repeats
    for blob in (gzip.compress(data, compresslevel=1), _zstd(data)):
        stream = open_layer_stream(io.BytesIO(blob))
        digest = hashlib.sha256()
        sizes = []
        while chunk := stream.read(16 << 20):
            sizes.append(len(chunk))
            digest.update(chunk)
        assert sizes == [16 << 20, 16 << 20, 8 << 20]
        assert digest.digest() == hashlib.sha256(data).digest()


def test_readinto_works_on_the_decoded_stream() -> None:
    stream = open_layer_stream(io.BytesIO(_zstd(PAYLOAD)))
    buf = bytearray(len(PAYLOAD) + 10)
    view = memoryview(buf)
    got = 0
    while n := stream.readinto(view[got:]):  # type: ignore[attr-defined]
        got += n
    assert bytes(buf[:got]) == PAYLOAD


# --------------------------------------------------------------------------------------------
# Corruption


SMALL = b"".join(b"entry %d\n" % i for i in range(300)) + RNG.randbytes(300)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x55]) + data[index + 1 :]


_GZ_FIRST = gzip.compress(SMALL[:100])
_ZST_FIRST = _zstd(SMALL[:100])


@pytest.mark.parametrize(
    ("codec", "blob", "member_end"),
    [
        ("gzip", gzip.compress(SMALL), None),
        ("gzip", _GZ_FIRST + gzip.compress(SMALL[100:]), len(_GZ_FIRST)),
        ("zstd", _zstd(SMALL), None),
        ("zstd", _zstd(SMALL, write_checksum=True), None),
        ("zstd", _ZST_FIRST + _zstd(SMALL[100:]), len(_ZST_FIRST)),
    ],
    ids=["gzip", "gzip-two-members", "zstd", "zstd-checksum", "zstd-two-frames"],
)
def test_every_truncation_is_reported_with_the_codec_name(
    codec: str, blob: bytes, member_end: int | None
) -> None:
    magic_len = 2 if codec == "gzip" else 4
    for cut in range(magic_len, len(blob)):
        if cut == member_end:
            # Cut exactly after the first member / frame: a complete, valid stream.
            assert _read_all(open_layer_stream(io.BytesIO(blob[:cut]))) == SMALL[:100]
            continue
        with pytest.raises(CorruptLayerError, match=codec):
            _read_all(open_layer_stream(io.BytesIO(blob[:cut])))


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(_flip(gzip.compress(SMALL), 20), id="deflate-data"),
        pytest.param(_flip(gzip.compress(SMALL), len(gzip.compress(SMALL)) - 6), id="crc32"),
        pytest.param(_flip(gzip.compress(SMALL), len(gzip.compress(SMALL)) - 2), id="isize"),
        pytest.param(b"\x1f\x8b\x07" + gzip.compress(SMALL)[3:], id="bad-method"),
        pytest.param(gzip.compress(SMALL) + b"garbage", id="trailing-garbage"),
        pytest.param(gzip.compress(SMALL) + b"\x00\x00x", id="trailing-garbage-after-zeros"),
        pytest.param(b"\x1f\x8b" + RNG.randbytes(200), id="random-after-magic"),
    ],
)
def test_corrupt_gzip_raises(blob: bytes) -> None:
    with pytest.raises(CorruptLayerError, match="gzip"):
        _read_all(open_layer_stream(io.BytesIO(blob)))


_ZSTD_CHECKED = _zstd(SMALL, write_checksum=True)


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(_flip(_ZSTD_CHECKED, len(_ZSTD_CHECKED) // 2), id="block-data"),
        pytest.param(_flip(_ZSTD_CHECKED, len(_ZSTD_CHECKED) - 1), id="content-checksum"),
        pytest.param(_ZSTD_CHECKED + b"garbage!", id="trailing-garbage"),
        pytest.param(_ZSTD_CHECKED + b"\x28\xb5\x2f\xfd", id="trailing-magic-only"),
        pytest.param(b"\x28\xb5\x2f\xfd" + RNG.randbytes(200), id="random-after-magic"),
    ],
)
def test_corrupt_zstd_raises(blob: bytes) -> None:
    with pytest.raises(CorruptLayerError, match="zstd"):
        _read_all(open_layer_stream(io.BytesIO(blob)))
