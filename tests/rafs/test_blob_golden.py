"""Golden tests on the two data blobs written by the real nydus toolchain ([format §9]).

* ``blobs/be7d77…`` (Feb 2023, separate bootstrap ``bootstrap/rafs-v6-2.2.boot``, blob-toc):
  ToC of 4 entries whose image.blob offset is the END of the chunk data (pre-v2.2.0 bug).
* ``toc/2fa78cad…`` (Dec 2022, inline meta + ToC, no blob.digest).

Expected numbers come from the spec's fixture table ([format §3.4, §9]) or from the real bootstrap that
pairs with ``be7d77…``, never from the code under test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import zstandard

from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.blob import PreparedChunk, prepare_chunk
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.chunkinfo import encode_v1
from nydus_exporter.rafs.tarheader import TarHeader, build_header, parse_header
from nydus_exporter.rafs.toc import encode_toc, toc_digest, toc_size
from tests.conftest import require
from tests.rafs.test_blob_writer import write_blob

BE7D = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
TOC2FA = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
BOOT_2FA_SHA256 = "d85f1b77aab4849b34ffc447fee67a46ae9eb2af8533bf5faa62224df1796871"
# nydus-image >= v2.3 links libzstd 1.5.6 (zstd-sys 2.0.13, [format §3.2]); libzstd 1.5.7 emits
# different level-3 frames for the be7d77 chunks, 1.5.2/1.5.5/1.5.6 reproduce them.
NYDUS_LIBZSTD = (1, 5, 6)


def _load(path: Path) -> tuple[bytes, BlobReader]:
    data = path.read_bytes()
    return data, BlobReader(lambda off, n: data[off : off + n], len(data))


@pytest.fixture(scope="module")
def be7d(nydus_fixtures: Path) -> tuple[bytes, BlobReader]:
    return _load(nydus_fixtures / "blobs" / BE7D)


@pytest.fixture(scope="module")
def toc2fa(nydus_fixtures: Path) -> tuple[bytes, BlobReader]:
    return _load(nydus_fixtures / "toc" / TOC2FA)


@pytest.fixture(scope="module")
def boot22(nydus_fixtures: Path) -> bytes:
    return (nydus_fixtures / "bootstrap" / "rafs-v6-2.2.boot").read_bytes()


def _blob_entry(boot: bytes) -> tuple[object, ...]:
    """Blob 0 of a bootstrap's blob table, parsed with the layout structs only."""
    ext = layout.SUPER_BLOCK_EXT.unpack_from(boot, layout.EXT_SUPER_OFFSET)
    return layout.BLOB_ENTRY.unpack_from(boot, ext[1])


# -- ToC ------------------------------------------------------------------------------------


def test_toc_entries_be7d(be7d: tuple[bytes, BlobReader]) -> None:
    data, reader = be7d
    entries = reader.toc()
    assert [e.name for e in entries] == [b"image.blob", b"blob.meta", b"blob.meta.header", b"blob.digest"]
    assert all(e.flags == layout.TOC_FLAG_NONE for e in entries)
    image_blob, meta, header, digest = entries
    # [format §9]: chunks of 4828 + 2974 bytes; old bug: offset = END of the chunk data.
    assert (image_blob.compressed_offset, image_blob.compressed_size) == (7802, 7802)
    assert image_blob.uncompressed_size == 36864  # [format §9]: a 36864-byte uncompressed device
    assert (meta.compressed_offset, meta.compressed_size, meta.uncompressed_size) == (7802 + 512, 32, 32)
    assert (header.compressed_offset, header.compressed_size) == (7802 + 512 + 32, 4096)
    assert (digest.compressed_offset, digest.compressed_size) == (7802 + 512 + 32 + 4096 + 512, 64)
    section = reader.section(b"image.blob")
    assert section is not None and section.compressed_offset == 0
    assert len(data) == digest.compressed_offset + 64 + 512 + 4 * 128 + 512


def test_toc_entries_2fa(toc2fa: tuple[bytes, BlobReader]) -> None:
    _, reader = toc2fa
    entries = reader.toc()
    assert [e.name for e in entries] == [b"image.blob", b"blob.meta", b"blob.meta.header", b"image.boot"]
    assert [e.flags for e in entries] == [1, 1, 1, layout.TOC_FLAG_ZSTD]
    boot = entries[3]
    assert (boot.compressed_size, boot.uncompressed_size) == (501, 20480)  # [format §9]
    assert boot.uncompressed_digest.hex() == BOOT_2FA_SHA256
    assert entries[1].compressed_size == 48  # [format §9]: V1 ci of 48 bytes
    assert reader.chunk_digests() is None  # Dec 2022: no blob.digest section


@pytest.mark.parametrize("which", ["be7d", "toc2fa"])
def test_toc_digests(which: str, request: pytest.FixtureRequest) -> None:
    """Every ToC digest recomputed here with hashlib from the raw file ([format §3.7] table)."""
    data, reader = request.getfixturevalue(which)
    for entry in reader.toc():
        section = reader.section(entry.name)
        assert section is not None
        start, size = section.compressed_offset, section.compressed_size
        if entry.name == b"image.blob":
            covered = data[start : start + size + 512]  # chunk data ‖ H(image.blob)
        elif entry.flags == layout.TOC_FLAG_ZSTD:
            covered = zstandard.ZstdDecompressor().decompress(data[start : start + size])
        else:
            covered = data[start : start + size]
        assert hashlib.sha256(covered).digest() == entry.uncompressed_digest, entry.name
    reader.verify()


def test_blob_toc_digest_and_size(be7d: tuple[bytes, BlobReader], boot22: bytes) -> None:
    """The real bootstrap records blob_toc_size/digest of be7d77 ([format §2.5])."""
    data, reader = be7d
    entry = _blob_entry(boot22)
    assert entry[0].rstrip(b"\x00") == BE7D.encode()  # type: ignore[attr-defined]
    recorded_size, recorded_digest = entry[9], entry[14]
    assert recorded_size == toc_size(reader.toc()) == 1024
    assert recorded_digest == toc_digest(reader.toc()) == hashlib.sha256(data[-1024:]).digest()
    assert encode_toc(reader.toc()) == data[-1024:]


# -- tar headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["be7d", "toc2fa"])
def test_tar_headers_reencode(which: str, request: pytest.FixtureRequest) -> None:
    data, reader = request.getfixturevalue(which)
    headers: list[tuple[int, TarHeader]] = [(len(data) - 512, TarHeader(b"rafs.blob.toc", 4 * 128))]
    for entry in reader.toc():
        section = reader.section(entry.name)
        assert section is not None
        if entry.name == b"blob.meta.header":
            continue  # covered by H(blob.meta); never a tar header of its own ([format §3.6])
        if entry.name == b"blob.meta":
            headers.append(
                (
                    section.compressed_offset + section.compressed_size + 4096,
                    TarHeader(b"blob.meta", section.compressed_size + 4096),
                )
            )
        else:
            end = section.compressed_offset + section.compressed_size
            headers.append((end, TarHeader(entry.name, section.compressed_size)))
    assert len(headers) == 4
    for offset, expected in headers:
        block = data[offset : offset + 512]
        assert parse_header(block) == expected
        assert build_header(expected.name, expected.size) == block, expected


# -- ci -------------------------------------------------------------------------------------


def test_ci_v1_bit_packing_be7d(be7d: tuple[bytes, BlobReader], boot22: bytes) -> None:
    data, reader = be7d
    header = reader.meta_header()
    assert header.features == 0x7000_0021  # [format §2.5] "non-inline --features blob-toc"
    infos = reader.chunk_infos()
    stored = data[header.ci_offset : header.ci_offset + header.ci_compressed_size]
    assert b"".join(encode_v1(info) for info in infos) == stored
    # [format §9]: lib.rs 16931 B and sync_io.rs 13400 B, stored in 4828 + 2974 zstd bytes.
    assert [(i.uncompressed_size, i.compressed_size) for i in infos] == [(16931, 4828), (13400, 2974)]
    assert [i.uncompressed_offset for i in infos] == [0, 20480]
    # Cross-check with the chunk table of the real bootstrap ([format §2.14]), matched by ci index.
    ext = layout.SUPER_BLOCK_EXT.unpack_from(boot22, layout.EXT_SUPER_OFFSET)
    table_offset, table_size = ext[4], ext[5]
    rows = [
        layout.CHUNK_TABLE_ENTRY.unpack_from(boot22, table_offset + k * layout.CHUNK_TABLE_ENTRY_SIZE)
        for k in range(table_size // layout.CHUNK_TABLE_ENTRY_SIZE)
    ]
    by_index = {row[8]: row for row in rows}
    digests = reader.chunk_digests()
    assert digests is not None
    for info in infos:
        row = by_index[info.index]
        assert (row[3], row[4], row[5], row[6]) == (
            info.compressed_size,
            info.uncompressed_size,
            info.compressed_offset,
            info.uncompressed_offset,
        )
        assert row[0] == digests[info.index]


def test_ci_v1_bit_packing_2fa(toc2fa: tuple[bytes, BlobReader]) -> None:
    data, reader = toc2fa
    header = reader.meta_header()
    infos = reader.chunk_infos()
    stored = data[header.ci_offset : header.ci_offset + header.ci_compressed_size]
    assert b"".join(encode_v1(info) for info in infos) == stored
    # [format §9]: error.rs 2816, lib.rs 678, logger.rs 3115; [format §3.4] example: uncomp_info of chunk 0.
    assert [i.uncompressed_size for i in infos] == [2816, 678, 3115]
    assert int.from_bytes(stored[:8], "little") == 0x00AFF000_00000000
    assert [i.uncompressed_offset for i in infos] == [0, 4096, 8192]


# -- blob ids -------------------------------------------------------------------------------


def test_blob_id_rules(be7d: tuple[bytes, BlobReader], toc2fa: tuple[bytes, BlobReader]) -> None:
    data, reader = be7d
    digest = reader.section(b"blob.digest")
    assert digest is not None
    payload = slice(digest.compressed_offset, digest.compressed_offset + digest.compressed_size)
    without_payload = data[: payload.start] + data[payload.stop :]
    assert hashlib.sha256(without_payload).hexdigest() == BE7D == reader.native_blob_id()
    assert hashlib.sha256(data).hexdigest().startswith("4b16fb83")  # [format §3.9]: sha256(file) differs
    assert reader.file_digest() == "sha256:" + hashlib.sha256(data).hexdigest()

    data, reader = toc2fa
    assert hashlib.sha256(data).hexdigest() == TOC2FA == reader.native_blob_id()


# -- chunk data and bootstrap ---------------------------------------------------------------


def _require_nydus_libzstd() -> None:
    require(
        zstandard.ZSTD_VERSION == NYDUS_LIBZSTD,
        f"byte-identical zstd needs libzstd {NYDUS_LIBZSTD} like nydus-image "
        f"(python-zstandard 0.23.x); installed libzstd {zstandard.ZSTD_VERSION}",
    )


def _assert_chunks_recompress(data: bytes, reader: BlobReader) -> None:
    for info in reader.chunk_infos():
        stored = data[info.compressed_offset : info.compressed_end]
        raw = zstandard.ZstdDecompressor().decompress(stored)
        assert len(raw) == info.uncompressed_size
        prepared = prepare_chunk(raw, compressor="zstd", digester="blake3")
        assert prepared.compressed
        assert prepared.data == stored, f"chunk {info.index}"


def test_zstd_chunks_recompress_2fa(toc2fa: tuple[bytes, BlobReader]) -> None:
    _assert_chunks_recompress(*toc2fa)


def test_zstd_chunks_recompress_be7d(be7d: tuple[bytes, BlobReader]) -> None:
    _require_nydus_libzstd()
    _assert_chunks_recompress(*be7d)


def test_chunk_digests_are_blake3(be7d: tuple[bytes, BlobReader]) -> None:
    _, reader = be7d
    digests = reader.chunk_digests()
    assert digests is not None
    for (_, raw), digest in zip(reader.iter_uncompressed(), digests, strict=True):
        assert codecs.digester("blake3").digest(raw) == digest


def test_embedded_bootstrap_2fa(toc2fa: tuple[bytes, BlobReader]) -> None:
    data, reader = toc2fa
    boot = reader.bootstrap()
    assert boot is not None
    assert len(boot) == 20480
    assert hashlib.sha256(boot).hexdigest() == BOOT_2FA_SHA256
    # image.boot is zstd level 3 as well ([format §3.2] VERIFIED): recompressing reproduces the section.
    section = reader.section(b"image.boot")
    assert section is not None
    stored = data[section.compressed_offset : section.compressed_offset + section.compressed_size]
    assert codecs.compress_if_smaller(codecs.thread_compressor("zstd"), boot) == (stored, True)


def test_separate_blob_has_no_bootstrap(be7d: tuple[bytes, BlobReader]) -> None:
    assert be7d[1].bootstrap() is None


def test_blob_meta_cache_file_from_fixture(be7d: tuple[bytes, BlobReader]) -> None:
    data, reader = be7d
    header = reader.meta_header()
    meta = reader.blob_meta_file()
    assert meta is not None
    assert len(meta) == 4096 + 4096  # round_up(32, 4096) + header ([format §3.10])
    assert meta[:32] == data[header.ci_offset : header.ci_offset + 32]
    assert meta[-4096:] == data[header.ci_offset + 32 : header.ci_offset + 32 + 4096]


# -- the writer against be7d77 --------------------------------------------------------------


def _compare_writer_with_be7d(data: bytes, reader: BlobReader, chunks: list[PreparedChunk]) -> None:
    """Write the fixture's chunks (each one a 'file') and compare with the fixture.

    The fixture was built with a separate bootstrap, ours inlines it, so the common part is
    everything up to and including H(blob.digest). The only byte that may differ there is
    the ci header's features word: 0x7000_0021 in the fixture, 0x7000_0023 in ours because
    of INLINED_FS_META ([format §2.5]). Everything after H(blob.digest) (image.boot, ToC with its
    image.blob offset of 0 instead of the old END offset) legitimately differs.
    """
    result, out, _ = write_blob([[c] for c in chunks], chunk_size=0x100000)
    digest_section = reader.section(b"blob.digest")
    assert digest_section is not None
    common = digest_section.compressed_offset + digest_section.compressed_size + 512
    features_at = reader.meta_header().ci_offset + reader.meta_header().ci_compressed_size + 4
    assert int.from_bytes(data[features_at : features_at + 4], "little") == 0x7000_0021
    assert int.from_bytes(out[features_at : features_at + 4], "little") == 0x7000_0023
    masked_ours = out[:features_at] + data[features_at : features_at + 4] + out[features_at + 4 : common]
    assert masked_ours == data[:common]
    assert result.chunk_count == 2
    assert result.uncompressed_size == 36864


def test_writer_reproduces_be7d_layout(be7d: tuple[bytes, BlobReader]) -> None:
    """Layout only: the chunks are given with the fixture's own stored zstd bytes."""
    data, reader = be7d
    chunks = []
    for info in reader.chunk_infos():
        raw = reader.read_chunk(info)
        stored = data[info.compressed_offset : info.compressed_end]
        chunks.append(
            PreparedChunk(codecs.digester("blake3").digest(raw), codecs.crc32c(raw), len(raw), stored, True)
        )
    _compare_writer_with_be7d(data, reader, chunks)


def test_writer_reproduces_be7d_from_raw_chunks(be7d: tuple[bytes, BlobReader]) -> None:
    """End to end: decompressed chunks through prepare_chunk + BlobWriter."""
    _require_nydus_libzstd()
    data, reader = be7d
    chunks = [
        prepare_chunk(raw, compressor="zstd", digester="blake3") for _, raw in reader.iter_uncompressed()
    ]
    _compare_writer_with_be7d(data, reader, chunks)
