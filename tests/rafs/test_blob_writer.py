"""BlobWriter: the production inline-meta + ToC layout ([format §3.1, §3.8]), dedup
([format §4.2]), hashes ([format §3.9]).

The embedded bootstrap is a stub (the real one is built elsewhere); what matters here is that
the writer passes it the right BlobInfo and stores it as image.boot.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.blob import BlobResult, BlobWriter, PreparedChunk, prepare_chunk
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.chunkinfo import BlobMetaHeader, decode_chunk_infos, parse_blob_meta_file
from nydus_exporter.rafs.model import BlobInfo, ChunkRef
from nydus_exporter.rafs.tarheader import TarHeader, parse_header

STUB_BOOTSTRAP = b"stub bootstrap: the real one is written by bootstrap.py\n" * 64
KIB = 1024


class CapturingBootstrap:
    """A make_bootstrap stub: records the BlobInfo it is given and returns fixed bytes."""

    def __init__(self, data: bytes = STUB_BOOTSTRAP) -> None:
        self.data = data
        self.infos: list[BlobInfo | None] = []

    def __call__(self, info: BlobInfo | None) -> bytes:
        self.infos.append(info)
        return self.data


def split_file(
    data: bytes, chunk_size: int, compressor: str = "zstd", digester: str = "blake3"
) -> list[PreparedChunk]:
    """One file cut into chunk_size pieces, like nydus does ([format §3.2])."""
    return [
        prepare_chunk(data[off : off + chunk_size], compressor=compressor, digester=digester)
        for off in range(0, len(data), chunk_size)
    ]


def write_blob(
    files: list[list[PreparedChunk]],
    *,
    chunk_size: int,
    compressor: str = "zstd",
    digester: str = "blake3",
    make_bootstrap: Callable[[BlobInfo | None], bytes] | None = None,
) -> tuple[BlobResult, bytes, list[list[ChunkRef]]]:
    """Write ``files`` (lists of chunks) into one blob; return the result, the bytes and the refs."""
    out = bytearray()
    writer = BlobWriter(out.extend, chunk_size=chunk_size, compressor=compressor, digester=digester)
    refs = []
    for chunks in files:
        offset = 0
        file_refs = []
        for chunk in chunks:
            file_refs.append(writer.add_chunk(chunk, file_offset=offset))
            offset += chunk.uncompressed_size
        refs.append(file_refs)
    result = writer.finish(make_bootstrap or (lambda _info: STUB_BOOTSTRAP))
    return result, bytes(out), refs


def reader_of(blob: bytes, **kwargs: str) -> BlobReader:
    return BlobReader(lambda off, n: blob[off : off + n], len(blob), **kwargs)


def uncompressed_image(reader: BlobReader, size: int) -> bytes:
    image = bytearray(size)
    for offset, data in reader.iter_uncompressed():
        image[offset : offset + len(data)] = data
    return bytes(image)


def _text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"\n", b"nydus", b"erofs"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


# -- dedup ----------------------------------------------------------------------------------


def test_dedup_across_files_and_inside_one_file() -> None:
    chunk_size = 64 * KIB
    block = _text(chunk_size, 1)
    tail = _text(1000, 2)
    file_a = block + block + tail  # the same chunk twice inside one file
    file_b = block  # and once more in another file
    file_c = tail  # a short chunk equal to file_a's last chunk
    result, blob, refs = write_blob(
        [split_file(f, chunk_size) for f in (file_a, file_b, file_c)], chunk_size=chunk_size
    )
    assert result.chunk_count == 2
    a0, a1, a2 = refs[0]
    (b0,) = refs[1]
    (c0,) = refs[2]
    assert {a0.index, a1.index, b0.index} == {0} and {a2.index, c0.index} == {1}
    assert a0.compressed_offset == a1.compressed_offset == b0.compressed_offset == 0
    assert [a0.file_offset, a1.file_offset, a2.file_offset, b0.file_offset] == [
        0,
        chunk_size,
        2 * chunk_size,
        0,
    ]
    assert c0.compressed_offset == a2.compressed_offset and c0.file_offset == 0
    reader = reader_of(blob)
    reader.verify()
    assert len(reader.chunk_infos()) == 2
    assert [data for _, data in reader.iter_uncompressed()] == [block, tail]
    digests = reader.chunk_digests()
    assert digests == [blake3.blake3(block).digest(), blake3.blake3(tail).digest()]


# -- compression ----------------------------------------------------------------------------


def test_incompressible_chunks_are_stored_raw() -> None:
    raw = os.urandom(32 * KIB)
    (chunk,) = split_file(raw, 64 * KIB)
    assert not chunk.compressed and chunk.data == raw
    _, blob, refs = write_blob([[chunk]], chunk_size=64 * KIB)
    ref = refs[0][0]
    assert ref.flags == layout.CHUNK_FLAG_HAS_CRC32  # no COMPRESSED bit
    assert ref.compressed_size == ref.uncompressed_size == len(raw)
    assert ref.crc32 == codecs.crc32c(raw)
    assert blob[: len(raw)] == raw
    reader = reader_of(blob)
    (info,) = reader.chunk_infos()
    assert not info.compressed
    assert reader.read_chunk(info) == raw


def test_compressible_chunk_flags_and_crc() -> None:
    raw = _text(10_000, 3)
    _, _, refs = write_blob([split_file(raw, 64 * KIB)], chunk_size=64 * KIB)
    ref = refs[0][0]
    assert ref.flags == layout.CHUNK_FLAG_COMPRESSED | layout.CHUNK_FLAG_HAS_CRC32 == 0x11
    assert ref.compressed_size < ref.uncompressed_size == 10_000
    assert ref.crc32 == codecs.crc32c(raw)


_HASHERS: dict[str, Callable[[bytes], bytes]] = {
    "blake3": lambda d: blake3.blake3(d).digest(),
    "sha256": lambda d: hashlib.sha256(d).digest(),
}


# Every codec the writer offers (the codec table in rafs/codecs.py), not a hand-made list.
COMPRESSORS = codecs.COMPRESSOR_NAMES
REAL_COMPRESSORS = tuple(name for name in COMPRESSORS if name != "none")


def test_every_digester_has_a_reference_here() -> None:
    assert set(codecs.DIGESTER_NAMES) == set(_HASHERS)


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("digester", codecs.DIGESTER_NAMES)
def test_round_trip_per_algorithm(compressor: str, digester: str) -> None:
    chunk_size = 16 * KIB
    files = [_text(40_000, 4), os.urandom(5000), b"", _text(16 * KIB, 5), b"z" * 7]
    capture = CapturingBootstrap()
    result, blob, refs = write_blob(
        [split_file(f, chunk_size, compressor, digester) for f in files],
        chunk_size=chunk_size,
        compressor=compressor,
        digester=digester,
        make_bootstrap=capture,
    )
    (info,) = capture.infos
    assert info is not None
    assert info.compressor == codecs.thread_compressor(compressor).algorithm_id
    assert info.digester == codecs.digester(digester).algorithm_id
    # Each file reads back from its refs; digests are the chosen algorithm over the raw bytes.
    for data, file_refs in zip(files, refs, strict=True):
        assert len(file_refs) == -(-len(data) // chunk_size)
        for ref in file_refs:
            piece = data[ref.file_offset : ref.file_offset + ref.uncompressed_size]
            assert ref.digest == _HASHERS[digester](piece)
            stored = blob[ref.compressed_offset : ref.compressed_offset + ref.compressed_size]
            expected_raw = (
                codecs.thread_compressor(compressor).decompress(stored, len(piece))
                if ref.compressed
                else stored
            )
            assert expected_raw == piece
    for kwargs in ({}, {"compressor": compressor, "digester": digester}):
        reader = reader_of(blob, **kwargs)
        reader.verify()
        image = uncompressed_image(reader, result.uncompressed_size)
        for data, file_refs in zip(files, refs, strict=True):
            assert (
                b"".join(
                    image[r.uncompressed_offset : r.uncompressed_offset + r.uncompressed_size]
                    for r in file_refs
                )
                == data
            )
        assert reader.bootstrap() == STUB_BOOTSTRAP


@pytest.mark.parametrize("compressor", REAL_COMPRESSORS)
def test_ci_array_compressed_when_smaller(compressor: str) -> None:
    """Many ci entries compress; the ci header, blob info and ToC flag say so ([format §3.3, §3.7])."""
    chunks = [prepare_chunk(b"%08d" % i * 8, compressor=compressor, digester="blake3") for i in range(300)]
    capture = CapturingBootstrap(b"b")
    result, blob, _ = write_blob([chunks], chunk_size=4 * KIB, compressor=compressor, make_bootstrap=capture)
    info = capture.infos[0]
    assert info is not None
    comp = codecs.thread_compressor(compressor)
    assert info.ci_compressor == comp.algorithm_id
    assert info.ci_uncompressed_size == 300 * 16 and info.ci_compressed_size < 300 * 16
    meta_entry = result.toc[1]
    assert meta_entry.name == b"blob.meta" and meta_entry.flags == comp.toc_flag
    reader = reader_of(blob)
    reader.verify()
    assert len(reader.chunk_infos()) == 300


# -- layout ---------------------------------------------------------------------------------


def test_uncompressed_offsets_are_4k_aligned() -> None:
    sizes = [1, 4095, 4096, 4097, 16 * KIB, 10_000]
    files = [
        [prepare_chunk(bytes([i + 1]) * n, compressor="zstd", digester="blake3")] for i, n in enumerate(sizes)
    ]
    result, blob, refs = write_blob(files, chunk_size=16 * KIB)
    offsets = [r[0].uncompressed_offset for r in refs]
    expected, cursor = [], 0
    for n in sizes:
        expected.append(cursor)
        cursor += -(-n // 4096) * 4096
    assert offsets == expected
    assert result.uncompressed_size == cursor == 4096 + 4096 + 4096 + 8192 + 16384 + 12288
    assert [i.uncompressed_offset for i in reader_of(blob).chunk_infos()] == expected


def test_exact_write_sequence_and_hashes() -> None:
    """Walk the blob by hand following [format §3.8] and recompute every hash with hashlib."""
    chunk_size = 32 * KIB
    files = [_text(70_000, 6), os.urandom(3000)]
    capture = CapturingBootstrap()
    result, blob, refs = write_blob(
        [split_file(f, chunk_size) for f in files],
        chunk_size=chunk_size,
        make_bootstrap=capture,
    )
    n = result.chunk_count
    assert n == 4
    ordered = sorted({r.index: r for f in refs for r in f}.values(), key=lambda r: r.index)
    chunk_bytes = sum(r.compressed_size for r in ordered)
    assert [r.compressed_offset for r in ordered] == [
        sum(r.compressed_size for r in ordered[:i]) for i in range(n)
    ]

    def header_at(pos: int) -> TarHeader:
        return parse_header(blob[pos : pos + 512])

    # Walk the reverse tar from the end (each header describes the bytes before it, [format §3.1]).
    sections: dict[bytes, tuple[int, int]] = {}
    pos = len(blob)
    while pos > 0:
        found = header_at(pos - 512)
        sections[found.name] = (pos - 512 - found.size, found.size)
        pos -= 512 + found.size
    assert list(sections) == [b"rafs.blob.toc", b"image.boot", b"blob.digest", b"blob.meta", b"image.blob"]
    assert sections[b"image.blob"] == (0, chunk_bytes)
    meta_start, meta_size = sections[b"blob.meta"]
    assert meta_start == chunk_bytes + 512
    header_bytes = blob[meta_start + meta_size - 4096 : meta_start + meta_size]
    header = BlobMetaHeader.decode(header_bytes)
    assert header.ci_offset == meta_start and header.ci_compressed_size == meta_size - 4096
    assert header.features == 0x7000_0023
    assert header.ci_entries == n and header.ci_uncompressed_size == 16 * n
    ci_stored = blob[meta_start : meta_start + header.ci_compressed_size]
    ci = codecs.compressor_by_id(header.ci_compressor).decompress(ci_stored, header.ci_uncompressed_size)
    infos = decode_chunk_infos(ci, header.features)
    assert [(i.compressed_offset, i.compressed_size, i.uncompressed_offset) for i in infos] == [
        (r.compressed_offset, r.compressed_size, r.uncompressed_offset) for r in ordered
    ]
    digests = b"".join(r.digest for r in ordered)
    digests_start = meta_start + meta_size + 512
    assert sections[b"blob.digest"] == (digests_start, 32 * n)
    assert blob[digests_start : digests_start + 32 * n] == digests
    boot_start, boot_size = sections[b"image.boot"]
    assert boot_start == digests_start + 32 * n + 512
    info = capture.infos[0]
    assert info is not None and info.compressed_size == boot_start  # position before image.boot
    stored_boot = blob[boot_start : boot_start + boot_size]
    assert codecs.thread_compressor("zstd").decompress(stored_boot, len(STUB_BOOTSTRAP)) == STUB_BOOTSTRAP
    assert sections[b"rafs.blob.toc"] == (boot_start + boot_size + 512, 5 * 128)
    assert len(blob) == result.size
    image_blob_end = chunk_bytes + 512

    # ToC entries ([format §3.7] table), digests recomputed independently.
    def sha(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    expected_toc = [
        (
            layout.TOC_FLAG_NONE,
            b"image.blob",
            sha(blob[:image_blob_end]),
            0,
            chunk_bytes,
            result.uncompressed_size,
        ),
        (
            codecs.compressor_by_id(header.ci_compressor).toc_flag,
            b"blob.meta",
            sha(ci),
            header.ci_offset,
            header.ci_compressed_size,
            16 * n,
        ),
        (
            layout.TOC_FLAG_NONE,
            b"blob.meta.header",
            sha(header_bytes),
            header.ci_offset + header.ci_compressed_size,
            4096,
            4096,
        ),
        (layout.TOC_FLAG_NONE, b"blob.digest", sha(digests), digests_start, 32 * n, 32 * n),
        (
            layout.TOC_FLAG_ZSTD,
            b"image.boot",
            sha(STUB_BOOTSTRAP),
            boot_start,
            len(stored_boot),
            len(STUB_BOOTSTRAP),
        ),
    ]
    assert [
        (e.flags, e.name, e.uncompressed_digest, e.compressed_offset, e.compressed_size, e.uncompressed_size)
        for e in result.toc
    ] == expected_toc
    assert reader_of(blob).toc() == result.toc

    # [format §3.9]: blob id skips only the digest payload; the OCI digest covers everything.
    assert result.blob_id == hashlib.sha256(blob[:digests_start] + blob[digests_start + 32 * n :]).hexdigest()
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.bootstrap == STUB_BOOTSTRAP


def test_blob_infos_embedded_and_merged() -> None:
    capture = CapturingBootstrap()
    result, blob, _ = write_blob(
        [split_file(_text(50_000, 7), 16 * KIB)],
        chunk_size=16 * KIB,
        make_bootstrap=capture,
    )
    embedded = capture.infos[0]
    merged = result.blob_info
    assert embedded is not None and merged is not None
    header = reader_of(blob).meta_header()
    assert embedded.blob_id == "x" * 64
    assert embedded.features == 0x7000_0023
    assert embedded.chunk_size == 16 * KIB and embedded.chunk_count == result.chunk_count == 4
    assert (
        embedded.ci_compressor,
        embedded.ci_offset,
        embedded.ci_compressed_size,
        embedded.ci_uncompressed_size,
    ) == (
        header.ci_compressor,
        header.ci_offset,
        header.ci_compressed_size,
        header.ci_uncompressed_size,
    )
    assert embedded.uncompressed_size == result.uncompressed_size == 3 * 16 * KIB + 4 * KIB  # 50000 B
    assert embedded.blob_toc_size == 0 and embedded.blob_toc_digest == bytes(32)
    # Merged bootstrap ([format §5.3]): named by the OCI layer digest, INLINED_FS_META cleared.
    assert merged.blob_id == result.digest.removeprefix("sha256:")
    assert merged.features == 0x7000_0021
    for field in (
        "chunk_size",
        "chunk_count",
        "compressor",
        "digester",
        "compressed_size",
        "uncompressed_size",
        "ci_compressor",
        "ci_offset",
        "ci_compressed_size",
        "ci_uncompressed_size",
    ):
        assert getattr(merged, field) == getattr(embedded, field), field


def test_blob_meta_cache_file_matches_reader() -> None:
    result, blob, _ = write_blob([split_file(_text(300_000, 8), 4 * KIB)], chunk_size=4 * KIB)
    assert result.chunk_count > 0
    assert result.blob_meta == reader_of(blob).blob_meta_file()
    assert result.blob_meta is not None
    header, ci = parse_blob_meta_file(result.blob_meta)
    assert len(result.blob_meta) == -(-16 * result.chunk_count // 4096) * 4096 + 4096
    assert header.ci_entries == result.chunk_count and len(ci) == 16 * result.chunk_count


def test_layer_without_chunks() -> None:
    """[format §3.1]: zstd(bootstrap) ‖ H(image.boot) ‖ toc(1 entry) ‖ H(rafs.blob.toc); no blob in
    the bootstrap."""
    capture = CapturingBootstrap()
    result, blob, _ = write_blob([[], []], chunk_size=0x100000, make_bootstrap=capture)
    assert capture.infos == [None]
    assert result.chunk_count == 0 and result.blob_info is None and result.blob_meta is None
    assert result.uncompressed_size == 0
    assert [e.name for e in result.toc] == [b"image.boot"]
    stored = codecs.compress_if_smaller(codecs.thread_compressor("zstd"), STUB_BOOTSTRAP)[0]
    assert blob[: len(stored)] == stored
    assert parse_header(blob[len(stored) : len(stored) + 512]) == TarHeader(b"image.boot", len(stored))
    assert len(blob) == len(stored) + 512 + 128 + 512
    assert result.blob_id == hashlib.sha256(blob).hexdigest() == result.digest.removeprefix("sha256:")
    reader = reader_of(blob)
    reader.verify()
    assert reader.chunk_infos() == [] and reader.chunk_digests() is None
    assert reader.bootstrap() == STUB_BOOTSTRAP
    assert list(reader.iter_uncompressed()) == []
    with pytest.raises(FormatError, match=r"no blob\.meta"):
        reader.meta_header()


def test_incompressible_bootstrap_is_stored_raw() -> None:
    boot = os.urandom(3000)
    result, blob, _ = write_blob([[]], chunk_size=0x100000, make_bootstrap=lambda _i: boot)
    (entry,) = result.toc
    assert entry.flags == layout.TOC_FLAG_NONE and entry.compressed_size == entry.uncompressed_size == 3000
    assert blob[:3000] == boot
    assert reader_of(blob).bootstrap() == boot


# -- streaming and misuse -------------------------------------------------------------------


def test_chunks_reach_the_sink_immediately() -> None:
    writes: list[bytes] = []
    writer = BlobWriter(writes.append, chunk_size=4 * KIB)
    first = prepare_chunk(_text(4096, 9), compressor="zstd", digester="blake3")
    writer.add_chunk(first, file_offset=0)
    assert writes == [first.data]
    writer.add_chunk(first, file_offset=4096)  # dedup: nothing written
    assert writes == [first.data]
    assert writer.chunk_count == 1 and writer.position == len(first.data)


def test_misuse_is_rejected() -> None:
    writer = BlobWriter(lambda _b: None, chunk_size=4 * KIB)
    with pytest.raises(ValueError):
        writer.add_chunk(prepare_chunk(b"a" * 5000, compressor="zstd", digester="blake3"), file_offset=0)
    with pytest.raises(ValueError):
        prepare_chunk(b"", compressor="zstd", digester="blake3")
    bogus = PreparedChunk(bytes(32), 0, 100, b"short", False)
    with pytest.raises(ValueError):
        writer.add_chunk(bogus, file_offset=0)
    writer.finish(lambda _i: b"boot")
    with pytest.raises(RuntimeError):
        writer.add_chunk(prepare_chunk(b"a", compressor="zstd", digester="blake3"), file_offset=0)
    with pytest.raises(RuntimeError):
        writer.finish(lambda _i: b"boot")


def test_prepare_chunk_is_thread_safe() -> None:
    """The caller prepares chunks in a thread pool: results must equal the serial ones."""
    pieces = [_text(20_000 + i, i) for i in range(32)]
    serial = [prepare_chunk(p, compressor="zstd", digester="blake3") for p in pieces]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda p: prepare_chunk(p, compressor="zstd", digester="blake3"), pieces))
    assert parallel == serial
    for piece, chunk in zip(pieces, serial, strict=True):
        assert chunk.digest == blake3.blake3(piece).digest()
        assert codecs.thread_compressor("zstd").decompress(chunk.data, len(piece)) == piece
