"""The Linux kernel reads what we pack.

For every layer of a corpus covering the tar features we claim to handle: pack it, take the
embedded bootstrap out of the blob, write the blob's uncompressed image (one chunk at each
uncompressed offset, [format §7.3]), loop-mount the bootstrap with ``-t erofs -o device=…`` and
compare the mounted tree with a reference read of the same tar by stdlib ``tarfile``
(``tests/helpers/treesnap.py``): names, types, modes, owners, sizes, content, symlink
targets, xattrs, rdev, mtime with nanoseconds, hardlink identity and nlink.
``fsck.erofs --extract`` must agree on what it can reproduce.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from nydus_exporter.pipeline.pack import PackOptions, pack_layer_to_file
from nydus_exporter.rafs import codecs
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from tests.conftest import nydus_fixture, require
from tests.helpers import tarbuild as tb
from tests.helpers.erofs import (
    FSCK_EROFS_REASON,
    FSCK_EXTRACT_IGNORE,
    KERNEL_EROFS_REASON,
    fsck_erofs_available,
    fsck_extract,
    kernel_erofs_available,
    mount_rafs,
)
from tests.helpers.treesnap import Snapshot, diff_snapshots, snapshot_dir, snapshot_tar

pytestmark = pytest.mark.kernel

_rng = random.Random(20261128)
NOISE = _rng.randbytes((3 << 20) + 12345)  # incompressible, > 1 MiB and not chunk aligned
# > chunk size, contiguous chunks: the chunk-size optimisation of [format §2.11]
CONTIGUOUS = _rng.randbytes(3_800_000)
TEXT = b"".join(b"%06d the same line again and again\n" % (i % 997) for i in range(60_000))
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, NULs inside
EMOJI_NAME = "\U0001f600" * 63 + "abc"  # 255 bytes of UTF-8


def corpus_entry_types() -> list[tb.Member]:
    return [
        tb.dir("etc", mode=0o755, mtime=1_600_000_000, mtime_nsec=123_456_789),
        tb.dir("tmp", mode=0o1777),
        tb.dir("srv", mode=0o2750, uid=33, gid=33),
        tb.file("etc/hostname", b"nydus\n", mtime=1_700_000_000, mtime_nsec=999_999_999),
        tb.file("usr/bin/su", b"\x7fELF" + bytes(100), mode=0o4755),
        tb.file("usr/bin/wall", b"\x7fELF" + bytes(200), mode=0o2755, gid=5),
        tb.file("secret", b"s3cret", mode=0o600, uid=1000, gid=1000),
        tb.file("sizes/0", b""),
        tb.file("sizes/1", b"x"),
        tb.file("sizes/4095", NOISE[:4095]),
        tb.file("sizes/4096", NOISE[:4096]),
        tb.file("sizes/4097", NOISE[:4097]),
        tb.file("sizes/1MiB", NOISE[: 1 << 20]),
        tb.file("sizes/1MiB+1", NOISE[: (1 << 20) + 1]),
        tb.file("sizes/noise", NOISE),
        tb.file("sizes/contiguous", CONTIGUOUS),
        tb.file("sizes/text", TEXT),
        tb.symlink("bin", "usr/bin"),
        tb.symlink("abs", "/etc/hostname"),
        tb.symlink("dangling", "does/not/exist"),
        tb.symlink("long", "d/" * 1500 + "end"),  # > one block: FLAT_PLAIN symlink
        tb.hardlink("etc/hostname.hard", "etc/hostname"),
        tb.hardlink("other/dir/hostname", "etc/hostname"),  # hardlink into another directory
        tb.hardlink("bin.hard", "bin"),  # hardlink to a symlink
        tb.chardev("dev/null", 1, 3, mode=0o666),
        tb.chardev("dev/big", 511, 300_000),
        tb.blockdev("dev/sda1", 8, 1, mode=0o660, gid=6),
        tb.fifo("run/initctl", mode=0o600),
    ]


def corpus_names() -> list[tb.Member]:
    weird = ["-x", "!x", "+x", "#x", "$x", ",x", ".-x", ".x", "..x", "a b", "tab\tname", "\u5510\u8bd7"]
    return [
        tb.file("deep/" + "long-directory-name/" * 8 + "file-with-a-name-over-100-bytes" * 4, b"pax"),
        tb.file("names/" + EMOJI_NAME, b"emoji"),
        tb.dir("names/" + EMOJI_NAME[:-3] + "dir"),
        *[tb.file(f"names/{n}", n.encode()) for n in weird],
        tb.symlink("names/long-target", "t" * 300),
    ]


def corpus_gnu_names() -> list[tb.Member]:
    return [
        tb.file("gnu/" + "g" * 150, b"gnu long name"),
        tb.symlink("gnu/long-link", "l" * 200),
        tb.file("gnu/big-ids", b"ids", uid=3_000_000, gid=4_000_000),
    ]


MANY_XATTRS: dict[str, str | bytes] = {
    "user.a": "1",
    "user.newline": b"line1\nline2\n",
    "trusted.t": b"\x00\x01\x00",
}


def corpus_xattrs() -> list[tb.Member]:
    return [
        tb.file("xattr/cap", b"ping", xattrs={"security.capability": CAPABILITY}),
        tb.file(
            "xattr/many",
            b"m",
            xattrs=MANY_XATTRS,
        ),
        tb.file("xattr/libarchive", b"l", xattrs={"user.la": b"\xff\x00bin"}, xattr_style="libarchive"),
        tb.dir("xattr/dir", xattrs={"trusted.overlay.opaque": "y", "user.d": "v" * 300}),
        tb.file("xattr/big-value", b"b", xattrs={"user.big": bytes(range(256)) * 8}),
    ]


def corpus_pax_misc() -> list[tb.Member]:
    return [
        tb.pax_global([(b"comment", b"global header\nwith a newline")]),
        tb.file("pax/ids", b"ids", uid=2_097_152, gid=4_000_000_000),
        tb.file("pax/ns", b"ns", mtime=1_234_567_890, mtime_nsec=1),
        tb.file("pax/old", b"old", mtime=-1_000_000, mtime_nsec=500_000_000),
        tb.file("pax/aregtype", b"old regular", typeflag=b"\0"),
        tb.file("pax/contiguous", b"contiguous", typeflag=b"7"),
    ]


def corpus_sparse() -> list[tb.Member]:
    return [
        tb.sparse_file(
            f"sparse/{fmt}",
            5 << 20,
            [(0, b"head" * 100), ((2 << 20) + 7, NOISE[:70_000]), ((5 << 20) - 3, b"end")],
            sparse_format=fmt,
        )
        for fmt in tb.SPARSE_FORMATS
    ]


def corpus_whiteouts() -> list[tb.Member]:
    return [
        tb.whiteout("etc/removed"),
        tb.opaque("var/cache"),
        tb.file("var/cache/kept", b"kept"),
        tb.dir("var/cache/sub"),
    ]


def corpus_dedup() -> list[tb.Member]:
    block = NOISE[: 1 << 20]
    return [
        tb.file("dedup/a", block * 3),  # one chunk stored once, referenced three times
        tb.file("dedup/b", block * 3),
        tb.file("dedup/c", TEXT),
        tb.file("dedup/zeros", size=5 << 20),
    ]


def corpus_large_dir() -> list[tb.Member]:
    return [tb.file(f"many/{i:05d}-{'n' * (i % 40)}", b"" if i % 3 else b"%d" % i) for i in range(10_500)]


def corpus_metadata_only() -> list[tb.Member]:
    return [tb.dir("a/b/c"), tb.symlink("a/link", "b"), tb.file("a/empty", b""), tb.fifo("a/fifo")]


CORPUS: dict[str, tuple[Callable[[], list[tb.Member]], str]] = {
    "entry-types": (corpus_entry_types, "pax"),
    "names": (corpus_names, "pax"),
    "gnu-names": (corpus_gnu_names, "gnu"),
    "xattrs": (corpus_xattrs, "pax"),
    "pax-misc": (corpus_pax_misc, "pax"),
    "sparse": (corpus_sparse, "pax"),
    "whiteouts": (corpus_whiteouts, "pax"),
    "dedup": (corpus_dedup, "pax"),
    "large-dir": (corpus_large_dir, "pax"),
    "metadata-only": (corpus_metadata_only, "pax"),
    "empty": (list, "pax"),
}


@dataclasses.dataclass
class Packed:
    bootstrap: Path
    devices: list[Path]


def pack_for_kernel(layer: Path | BinaryIO, tmp: Path, options: PackOptions | None = None) -> Packed:
    """Pack, then lay out what the kernel mounts: the bootstrap and the uncompressed blob image."""
    blob = tmp / "layer.blob"
    if isinstance(layer, Path):
        with layer.open("rb") as f:
            pack_layer_to_file(f, blob, options)
    else:
        pack_layer_to_file(layer, blob, options)
    return mountable(blob, tmp)


def mountable(blob: Path, tmp: Path) -> Packed:
    """The embedded bootstrap of ``blob`` and its uncompressed image ([format §7.3]), written into ``tmp``."""
    with blob.open("rb") as f:
        fd = f.fileno()
        reader = BlobReader(lambda off, n: os.pread(fd, n, off), os.fstat(fd).st_size)
        reader.verify()
        boot = reader.bootstrap()
        assert boot is not None
        bootstrap = tmp / "image.boot"
        bootstrap.write_bytes(boot)
        devices = []
        for info in read_bootstrap(boot).blobs:
            image = tmp / "blob.data"
            with image.open("wb") as out:
                for offset, data in reader.iter_uncompressed():
                    out.seek(offset)
                    out.write(data)
                out.truncate(info.uncompressed_size)
            devices.append(image)
    return Packed(bootstrap, devices)


def _fsck_comparable(snap: Snapshot) -> Snapshot:
    """What an fsck.erofs 1.5 extraction can reproduce: it clears set-id bits (chown after
    chmod) and leaves a symlink's permission bits to the extracting filesystem."""
    return {
        p: dataclasses.replace(e, mode=0o777 if e.kind == "symlink" else e.mode & ~0o6000)
        for p, e in snap.items()
    }


def check_against_kernel(tar: Path, tmp: Path, options: PackOptions | None = None) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    expected = snapshot_tar(tar)
    packed = pack_for_kernel(tar, tmp, options)
    with mount_rafs(packed.bootstrap, packed.devices) as mnt:
        actual = snapshot_dir(mnt)
    assert diff_snapshots(expected, actual) == []
    require(fsck_erofs_available(), FSCK_EROFS_REASON)
    extracted = tmp / "extracted"
    fsck_extract(packed.bootstrap, packed.devices, extracted)
    # fsck.erofs 1.5 also writes no xattrs and splits hardlinks (see erofs.py).
    differences = diff_snapshots(
        _fsck_comparable(expected), _fsck_comparable(snapshot_dir(extracted)), ignore=FSCK_EXTRACT_IGNORE
    )
    assert differences == []


def write_tar(path: Path, members: Sequence[tb.Member], fmt: str) -> Path:
    with path.open("wb") as f:
        for chunk in tb.tar_stream(*members, fmt=fmt):
            f.write(chunk)
    return path


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c == "large-dir" else c for c in sorted(CORPUS)]
)
def test_kernel_reads_the_packed_layer(case: str, tmp_path: Path) -> None:
    members, fmt = CORPUS[case]
    tar = write_tar(tmp_path / "layer.tar", members(), fmt)
    check_against_kernel(tar, tmp_path)


def _chunking_options() -> list[PackOptions]:
    """Every compressor and digester of the codec table, across the smallest, the largest and
    a middle chunk size, with 1 to 3 packing threads."""
    sizes = (4096, 16 << 20, 64 << 10)
    return [
        PackOptions(
            chunk_size=sizes[i % len(sizes)],
            compressor=compressor,
            digester=codecs.DIGESTER_NAMES[i % len(codecs.DIGESTER_NAMES)],
            threads=1 + i % 3,
        )
        for i, compressor in enumerate(codecs.COMPRESSOR_NAMES)
    ]


@pytest.mark.parametrize(
    "options",
    _chunking_options(),
    ids=lambda o: f"{o.chunk_size >> 10}KiB-{o.compressor}-{o.digester}",
)
def test_kernel_reads_every_chunking_option(options: PackOptions, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "layer.tar", corpus_entry_types() + corpus_dedup(), "pax")
    check_against_kernel(tar, tmp_path, options)


@pytest.mark.parametrize("name", ["all-entry-type.tar", "all-entry-type-macos.tar"])
def test_kernel_reads_the_fixture_tars(name: str, tmp_path: Path) -> None:
    tar = nydus_fixture(f"tar/{name}")
    check_against_kernel(tar, tmp_path)


@pytest.mark.parametrize("wrap", ["gzip", "zstd"])
def test_kernel_reads_compressed_layers(wrap: str, tmp_path: Path) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    plain = write_tar(tmp_path / "layer.tar", corpus_entry_types(), "pax")
    data = plain.read_bytes()
    packed_layer = tmp_path / f"layer.tar.{wrap}"
    packed_layer.write_bytes(
        gzip.compress(data) if wrap == "gzip" else zstandard.ZstdCompressor().compress(data)
    )
    packed = pack_for_kernel(packed_layer, tmp_path)
    with mount_rafs(packed.bootstrap, packed.devices) as mnt:
        assert diff_snapshots(snapshot_tar(plain), snapshot_dir(mnt)) == []


def _sha256_of(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


@pytest.mark.slow
def test_kernel_reads_a_file_over_4_gib(tmp_path: Path) -> None:
    """A > 4 GiB file streamed from a generator: never on disk as a tar, never in memory."""
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    size = (4 << 30) + (3 << 20) + 5
    big = tb.file("big/file", size=size, pattern=b"0123456789abcdef-")  # chunks differ: no dedup
    members: list[tb.Member] = [big, tb.file("big/after", b"after")]
    stream = io.BufferedReader(tb.IterStream(tb.tar_stream(*members)), 1 << 20)
    packed = pack_for_kernel(stream, tmp_path)
    with mount_rafs(packed.bootstrap, packed.devices) as mnt:
        st = os.stat(mnt / "big/file")
        assert st.st_size == size
        with (mnt / "big/file").open("rb") as f:
            got = _sha256_of(iter(lambda: f.read(1 << 22), b""))
        assert got == big.content.sha256()
        assert (mnt / "big/after").read_bytes() == b"after"


def test_expected_snapshot_is_not_trivially_equal(tmp_path: Path) -> None:
    """Guard for the oracle itself: a changed byte in the layer shows up as a difference."""
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    tar = write_tar(tmp_path / "layer.tar", corpus_entry_types(), "pax")
    other = write_tar(
        tmp_path / "other.tar",
        [*corpus_entry_types()[:-1], tb.fifo("run/initctl", mode=0o644)],
        "pax",
    )
    packed = pack_for_kernel(other, tmp_path)
    with mount_rafs(packed.bootstrap, packed.devices) as mnt:
        differences = diff_snapshots(snapshot_tar(tar), snapshot_dir(mnt))
    assert any("run/initctl" in d for d in differences)
