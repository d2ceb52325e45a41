"""Bootstrap layer tar.gz ([format §6.3]): layout, reproducibility, digests, reading back."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import struct
import tarfile
import threading
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from nydus_exporter.errors import FormatError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.bootstrap_layer import BootstrapLayerInfo, read_bootstrap_layer, write_bootstrap_layer

RNG = random.Random(6)
BOOTSTRAP = RNG.randbytes(3 * 4096 + 100)  # not a real bootstrap: the layer does not parse it
META_A = ("a" * 64, RNG.randbytes(4096) + bytes(4096))
META_B = ("sha256:" + "b" * 64, bytes(3 * 4096))


def _write(
    bootstrap: bytes = BOOTSTRAP, metas: list[tuple[str, bytes]] | None = None
) -> tuple[bytes, BootstrapLayerInfo]:
    out = io.BytesIO()
    info = write_bootstrap_layer(out, bootstrap, [META_A, META_B] if metas is None else metas)
    return out.getvalue(), info


def test_reproducible() -> None:
    first, info1 = _write()
    second, info2 = _write()
    assert first == second and info1 == info2
    assert _write(metas=[META_A])[0] != first


def test_digests_and_size() -> None:
    data, info = _write()
    tar = gzip.decompress(data)
    assert info.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert info.size == len(data)
    d = info.descriptor(oci=False)
    assert (d.media_type, d.digest, d.size) == (mt.MEDIA_TYPE_DOCKER_LAYER_GZIP, info.digest, info.size)
    assert d.annotations == {
        "containerd.io/snapshot/nydus-bootstrap": "true",
        "containerd.io/snapshot/nydus-fs-version": "6",
    }


def test_tar_layout_read_by_stdlib() -> None:
    data, _ = _write()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == [
            "image",
            "image/image.boot",
            f"image/{'a' * 64}.blob.meta",
            f"image/{'b' * 64}.blob.meta",
        ]
        assert members[0].isdir() and members[0].mode == 0o755
        for m in members[1:]:
            assert m.isreg() and m.mode == 0o444
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
        assert tar.extractfile(members[1]).read() == BOOTSTRAP  # type: ignore[union-attr]
        assert tar.extractfile(members[2]).read() == META_A[1]  # type: ignore[union-attr]
        assert tar.extractfile(members[3]).read() == META_B[1]  # type: ignore[union-attr]
    raw_tar = gzip.decompress(data)
    # Go archive/tar: the directory name as given (no trailing slash), octal-zero devmajor/minor.
    assert raw_tar[:6] == b"image\x00" and raw_tar[257:263] == b"ustar\x00"
    assert raw_tar[329:345] == b"0000000\x000000000\x00"
    assert raw_tar.endswith(bytes(1024)) and len(raw_tar) % 512 == 0


def test_gzip_header_is_reproducible_form() -> None:
    data, _ = _write()
    magic, method, flags, mtime, _xfl, os_byte = struct.unpack("<2sBBIBB", data[:10])
    assert (magic, method, flags, mtime, os_byte) == (b"\x1f\x8b", 8, 0, 0, 255)  # no FNAME, no mtime


def test_round_trip() -> None:
    data, _ = _write()
    bootstrap, metas = read_bootstrap_layer(io.BytesIO(data))
    assert bootstrap == BOOTSTRAP
    assert metas == {"a" * 64: META_A[1], "b" * 64: META_B[1]}


def test_read_from_a_pipe() -> None:
    data, _ = _write()
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb", buffering=0) as f:
        bootstrap, metas = read_bootstrap_layer(cast(BinaryIO, f))
    t.join()
    assert bootstrap == BOOTSTRAP and len(metas) == 2


def test_real_snapshotter_fixture(nydus_fixtures: Path) -> None:
    with (nydus_fixtures / "v6-bootstrap-chunk-pos-438272.tar.gz").open("rb") as f:
        bootstrap, metas = read_bootstrap_layer(f)
    assert len(bootstrap) == 643072
    assert (
        hashlib.sha256(bootstrap).hexdigest()
        == "4f9744a85eb30089395035c73ba790971e9039a8b4037b022441459a6fdee6cf"
    )
    assert metas == {}
    assert bootstrap[1024:1028] == struct.pack("<I", 0xE0F5E1E2)  # EROFS magic at 1024


def _tar(*entries: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_legacy_root_bootstrap_and_plain_tar() -> None:
    bootstrap, metas = read_bootstrap_layer(io.BytesIO(_tar(("image.boot", b"boot"), ("other", b"x"))))
    assert (bootstrap, metas) == (b"boot", {})
    bootstrap, _ = read_bootstrap_layer(io.BytesIO(gzip.compress(_tar(("./image/image.boot", b"b2")))))
    assert bootstrap == b"b2"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_tar(("image/other", b"x")), "no image/image.boot"),
        (_tar(("image/image.boot", b"")), "empty"),
        (_tar(("image/image.boot", b"a"), ("image.boot", b"b")), "more than one"),
        (gzip.compress(_tar(("image/image.boot", b"a" * 5000)))[:-30], "corrupt"),
        (b"\x1f\x8b\x08\x00garbage" * 10, "corrupt"),
        (_tar(("image/image.boot", b"a" * 5000))[:1000], "not a valid tar"),
    ],
    ids=["missing", "empty", "two", "truncated-gzip", "garbage-gzip", "truncated-tar"],
)
def test_read_rejects(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        read_bootstrap_layer(io.BytesIO(data))


@pytest.mark.parametrize(
    ("bootstrap", "metas", "message"),
    [
        (b"", [], "empty"),
        (b"x", [("nothex", bytes(4096))], "not a sha256"),
        (b"x", [("a" * 64, bytes(100))], "multiple of 4096"),
        (b"x", [("a" * 64, b"")], "multiple of 4096"),
        (b"x", [("a" * 64, bytes(4096)), ("sha256:" + "a" * 64, bytes(4096))], "duplicate"),
    ],
)
def test_write_rejects(bootstrap: bytes, metas: list[tuple[str, bytes]], message: str) -> None:
    out = io.BytesIO()
    with pytest.raises(FormatError, match=message):
        write_bootstrap_layer(out, bootstrap, metas)
    assert out.getvalue() == b""  # validated before the first byte is written
