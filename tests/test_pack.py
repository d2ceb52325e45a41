"""The pack pipeline: reproducible output, bad input, atomic output files, the CLI."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import zstandard

from nydus_exporter.cli import main as cli
from nydus_exporter.errors import CorruptLayerError, HardlinkError, UnsafePathError
from nydus_exporter.pipeline.pack import PackOptions, pack_layer, pack_layer_to_file
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data


def _member(name: str, kind: bytes, **kw: object) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755
    for key, value in kw.items():
        setattr(info, key, value)
    return info, None


@pytest.fixture(scope="module")
def sample_tar() -> bytes:
    rng = random.Random(7)
    noise = rng.randbytes(3 << 20)  # incompressible, spans several chunks
    text = b"".join(b"line %d of a compressible file\n" % i for i in range(200_000))
    return _tar(
        [
            _member("etc", tarfile.DIRTYPE),
            _file("etc/hostname", b"nydus\n", mtime=1_700_000_000),
            _file("usr/lib/noise.bin", noise),
            _file("usr/share/doc/text.txt", text),
            _file("usr/share/doc/copy.txt", text),  # dedups against text.txt
            _member("usr/share/doc/link", tarfile.LNKTYPE, linkname="usr/share/doc/text.txt"),
            _member("bin", tarfile.SYMTYPE, linkname="usr/bin"),
            _file("empty", b""),
        ]
    )


def _pack_bytes(data: bytes, **options: object) -> tuple[bytes, object]:
    out = io.BytesIO()
    result = pack_layer(io.BytesIO(data), out.write, PackOptions(**options))  # type: ignore[arg-type]
    return out.getvalue(), result


@pytest.mark.parametrize("threads", [1, 2, 8], ids=lambda t: f"threads={t}")
def test_same_tar_same_bytes_whatever_the_thread_count(sample_tar: bytes, threads: int) -> None:
    reference, _ = _pack_bytes(sample_tar, threads=1)
    again, _ = _pack_bytes(sample_tar, threads=threads)
    assert hashlib.sha256(again).hexdigest() == hashlib.sha256(reference).hexdigest()


def test_digest_and_blob_id_describe_the_written_bytes(sample_tar: bytes) -> None:
    blob, result = _pack_bytes(sample_tar)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()  # type: ignore[attr-defined]
    assert result.size == len(blob)  # type: ignore[attr-defined]
    reader = BlobReader(lambda off, n: blob[off : off + n], len(blob))
    digests = reader.chunk_digests()
    assert digests is not None
    # [format §3.9]: the blob id hashes every byte except the chunk-digest array payload.
    payload = b"".join(digests)
    start = blob.index(payload)
    assert result.blob_id == hashlib.sha256(blob[:start] + blob[start + len(payload) :]).hexdigest()  # type: ignore[attr-defined]


def test_identical_content_is_stored_once(sample_tar: bytes) -> None:
    blob, _ = _pack_bytes(sample_tar)
    reader = BlobReader(lambda off, n: blob[off : off + n], len(blob))
    digests = reader.chunk_digests()
    assert digests is not None and len(digests) == len(set(digests))
    boot = read_bootstrap(reader.bootstrap() or b"")
    doc = boot.root.children[b"usr"].children[b"share"].children[b"doc"].children  # type: ignore[index]
    assert doc is not None
    copy_chunks = [c.index for c in doc[b"copy.txt"].inode.chunks]
    assert copy_chunks == [c.index for c in doc[b"text.txt"].inode.chunks]
    assert doc[b"link"].inode is doc[b"text.txt"].inode


@pytest.mark.parametrize("wrap", ["gzip", "zstd"])
def test_compressed_layers_give_the_same_blob(sample_tar: bytes, wrap: str) -> None:
    plain, _ = _pack_bytes(sample_tar)
    packed = gzip.compress(sample_tar) if wrap == "gzip" else zstandard.ZstdCompressor().compress(sample_tar)
    assert _pack_bytes(packed)[0] == plain


def test_truncated_tar_is_a_corrupt_layer(sample_tar: bytes) -> None:
    with pytest.raises(CorruptLayerError):
        _pack_bytes(sample_tar[: len(sample_tar) // 2])


def test_corrupt_gzip_is_a_corrupt_layer(sample_tar: bytes) -> None:
    data = bytearray(gzip.compress(sample_tar))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(CorruptLayerError):
        _pack_bytes(bytes(data))


def test_parent_escape_is_rejected() -> None:
    with pytest.raises(UnsafePathError):
        _pack_bytes(_tar([_file("a/../../etc/passwd", b"x")]))


def test_missing_hardlink_target_is_rejected() -> None:
    with pytest.raises(HardlinkError, match="missing"):
        _pack_bytes(_tar([_member("link", tarfile.LNKTYPE, linkname="missing")]))


def test_failed_pack_leaves_no_files(tmp_path: Path, sample_tar: bytes) -> None:
    out = tmp_path / "out.blob"
    with pytest.raises(CorruptLayerError):
        pack_layer_to_file(io.BytesIO(sample_tar[:10_000]), out)
    assert list(tmp_path.iterdir()) == []


def test_cli_pack_and_inspect(tmp_path: Path, sample_tar: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(sample_tar)
    out = tmp_path / "layer.blob"
    assert cli.main(["pack", str(layer), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["digest"] == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    assert report["size"] == os.path.getsize(out)

    assert cli.main(["inspect", str(out), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["type"] == "blob"
    assert described["digest"] == report["digest"]
    paths = {f["path"]: f for f in described["bootstrap"]["files"]}
    assert paths["/etc/hostname"]["size"] == 6
    assert paths["/bin"]["target"] == "usr/bin"
    assert [e["name"] for e in described["toc"]] == [
        "image.blob",
        "blob.meta",
        "blob.meta.header",
        "blob.digest",
        "image.boot",
    ]


def test_cli_reports_bad_input_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layer = tmp_path / "bad.tar"
    layer.write_bytes(b"\x1f\x8b\x08garbage" * 10)
    assert cli.main(["pack", str(layer), "-o", str(tmp_path / "x.blob")]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.blob").exists()


@pytest.mark.parametrize("kind", ["files", "metadata-only", "empty"])
def test_the_result_is_rederived_from_the_blob_alone(sample_tar: bytes, kind: str) -> None:
    """A blob is self-describing: what the daemon's layer cache relies on instead of storing
    (and later trusting) a serialised result next to it."""
    from nydus_exporter.rafs.blob_reader import blob_result

    tar = {
        "files": sample_tar,
        "metadata-only": _tar([_member("d", tarfile.DIRTYPE), _member("l", tarfile.SYMTYPE, linkname="d")]),
        "empty": _tar([]),
    }[kind]
    blob, result = _pack_bytes(tar)
    reader = BlobReader(lambda off, n: blob[off : off + n], len(blob))
    assert blob_result(reader, result.digest) == result  # type: ignore[attr-defined]


def test_a_cache_hit_rederives_the_result_without_reading_the_chunk_data(tmp_path: Path) -> None:
    """The chunk store's layer cache reads a blob from the registry by ranges: taking a layer
    converted before must cost its metadata, not a download of the blob."""
    from nydus_exporter.rafs.blob_reader import blob_result

    files: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _file(f"f{i}", os.urandom(300_000)) for i in range(20)
    ]
    blob, result = _pack_bytes(_tar(files))
    read: list[int] = []

    def read_at(offset: int, length: int) -> bytes:
        read.append(length)
        return blob[offset : offset + length]

    found = blob_result(BlobReader(read_at, len(blob)), result.digest, native_id=False)  # type: ignore[attr-defined]
    assert dataclasses.replace(found, blob_id=result.blob_id) == result  # type: ignore[attr-defined]
    assert found.blob_id == ""
    assert sum(read) < len(blob) // 20
