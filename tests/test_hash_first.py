"""Pack digests every chunk first and compresses only chunks it will store: a chunk the chunk
dictionary holds, or one seen earlier in the same layer, costs a digest, not a compression.
The output bytes are those of compressing everything (the writer keeps only new chunks)."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Iterator

import pytest

from nydus_exporter.pipeline.pack import PackOptions, pack_layer
from nydus_exporter.rafs import codecs
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.chunkdict import ChunkDict
from tests.helpers import tarbuild as tb

CHUNK = 64 << 10
# lz4_block for the chunks, so the bootstrap's zstd compression is not counted.
COMPRESSOR = "lz4_block"
CI_TABLE = 1  # the blob's chunk table is compressed with the chunk compressor too


class _Counting:
    """The real lz4_block compressor, counting the chunks it compresses."""

    calls = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        self._inner = codecs._Lz4BlockCompressor()
        self.algorithm_id = self._inner.algorithm_id
        self.super_flag = self._inner.super_flag
        self.toc_flag = self._inner.toc_flag

    def compress(self, data: bytes) -> bytes:
        with _Counting.lock:
            _Counting.calls += 1
        return self._inner.compress(data)

    def compress_many(self, datas: list[bytes]) -> list[bytes]:
        return [self.compress(d) for d in datas]

    def decompress(self, data: bytes, uncompressed_size: int) -> bytes:
        return self._inner.decompress(data, uncompressed_size)


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Counting]]:
    monkeypatch.setitem(codecs._COMPRESSORS, COMPRESSOR, _Counting)
    # Threads that already made an lz4_block instance would bypass the counting one.
    monkeypatch.setattr(codecs, "_local", threading.local())
    _Counting.calls = 0
    yield _Counting


def _text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(8)) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def _pack(layer: bytes, chunk_dict: ChunkDict | None = None, threads: int = 4) -> tuple[bytes, BlobResult]:
    sink = io.BytesIO()
    options = PackOptions(chunk_size=CHUNK, compressor=COMPRESSOR, threads=threads)
    result = pack_layer(io.BytesIO(layer), sink.write, options, chunk_dict=chunk_dict)
    return sink.getvalue(), result


# Eight distinct chunks, each file twice, plus a file made of one of those chunks.
SHARED = _text(1, 4 * CHUNK)
OTHER = _text(2, 4 * CHUNK)
LAYER = tb.tar_of(
    tb.file("a/shared", SHARED),
    tb.file("b/shared-again", SHARED),
    tb.file("a/other", OTHER),
    tb.file("b/other-again", OTHER),
    tb.file("c/piece", OTHER[CHUNK : 2 * CHUNK]),
)


def test_duplicates_in_a_layer_are_compressed_once(compressions: type[_Counting]) -> None:
    # One thread: with more, a later batch may claim a chunk first, and the earlier batch then
    # compresses it again when it commits (rare, and still the same bytes).
    blob, result = _pack(LAYER, threads=1)
    assert result.chunk_count == 8
    assert compressions.calls == 8 + CI_TABLE
    assert _pack(LAYER, threads=4)[0] == blob


def test_chunks_in_the_dictionary_are_not_compressed(compressions: type[_Counting]) -> None:
    _, base = _pack(tb.tar_of(tb.file("base/shared", SHARED)))
    assert base.blob_info is not None
    chunk_dict = ChunkDict()
    chunk_dict.add_layer(read_bootstrap(base.bootstrap), base.blob_info)
    compressions.calls = 0

    _, result = _pack(LAYER, chunk_dict, threads=1)
    assert compressions.calls == 4 + CI_TABLE  # OTHER's chunks only: SHARED's are in the dictionary
    assert result.chunk_count == 4
    assert len(read_bootstrap(result.bootstrap).blobs) == 2  # its own blob and the dictionary's
