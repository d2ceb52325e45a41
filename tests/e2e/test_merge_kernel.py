"""The Linux kernel reads merged images as ``umoci unpack`` extracts the same layers.

For every multi-layer corpus below: each layer tar is packed into a blob file with
``pack_layer_to_file``; the per-layer bootstraps (taken back out of the blob files) are merged
with ``merge_layers``; each blob of the merged blob table is written as its uncompressed image
(one chunk at each uncompressed offset, [format §7.3]) and the merged bootstrap is loop-mounted with
those devices, in blob-table order. The mounted tree must equal the rootfs that ``umoci
unpack`` produces from an OCI image built independently from the same layer tars
(``umoci init`` / ``new`` / ``raw add-layer`` per layer / ``unpack``): names, types, modes,
owners, sizes, content, symlink targets, xattrs, rdev, mtime with nanoseconds, nlink and
hardlink identity. ``fsck.erofs`` must decode every file of each merged image.

Where umoci 0.4 provably differs from a containerd apply, the difference is listed per corpus
(``umoci_differences``: path -> fields left out for that path only), with the reason:

* umoci refuses to set ``trusted.overlay.opaque`` ("ignoring forbidden xattr", it is on its
  list of overlay/host-specific xattrs never unpacked); containerd keeps the xattr of a tar
  entry, and so does the merged image under the ``oci`` whiteout spec.

And for every corpus, automatically, mtimes that umoci takes from the wall clock: a
directory that no layer tar lists (an implied parent such as ``usr/`` of ``usr/bin/ping``, or
the root when no layer has ``./``) is created by umoci at unpack time, and creating it also
stamps its parent with the unpack time (umoci restores a parent's mtime only around entries
the tar lists). The merged image gives implied directories mtime 0 like nydus-image ([format §5.1]),
the only reproducible choice, and keeps the tar mtime of listed directories (containerd also
re-applies listed directories' mtimes at the end of a layer). So for implied directories and
the parents of implied directories, ``mtime``/``mtime_nsec`` are not compared when, and only
when, umoci's value is the unpack time (at least the time the unpack started, far above every
mtime in the corpora). All other fields of those directories are compared.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nydus_exporter.pipeline.pack import PackOptions, pack_layer_to_file
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.merge import MergeLayer, MergeResult, merge_layers
from tests.conftest import require
from tests.helpers import tarbuild as tb
from tests.helpers.erofs import (
    FSCK_EROFS_REASON,
    KERNEL_EROFS_REASON,
    fsck_check,
    fsck_erofs_available,
    kernel_erofs_available,
    mount_rafs,
)
from tests.helpers.treesnap import Snapshot, diff_snapshots, snapshot_dir

pytestmark = pytest.mark.kernel

UMOCI_REASON = "needs umoci (apt-get install umoci) to build the reference rootfs"

F, D, S, H = tb.file, tb.dir, tb.symlink, tb.hardlink
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep
BIG = b"".join(b"%08d:" % i + bytes([i % 251]) * 23 for i in range(70_000))  # 2.2 MB, 3 chunks


def _noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Corpus:
    layers: list[list[tb.Member]]
    spec: str = "oci"
    # What umoci is given instead of ``layers`` (OCI forms of overlayfs-spec layers).
    umoci_layers: list[list[tb.Member]] | None = None
    umoci_differences: dict[bytes, frozenset[str]] = field(default_factory=dict)
    expected_blobs: list[int] | None = None  # layer numbers of the merged blob table, in order


# fmt: off
def corpus_whiteouts() -> Corpus:
    return Corpus(
        [
            [
                D("etc", mtime=100), F("etc/passwd", b"root\n", mtime=101), F("etc/shadow", b"x", mode=0o600),
                D("var", mtime=102), D("var/cache", mtime=103), F("var/cache/a", b"a" * 5000),
                D("var/cache/sub"), F("var/cache/sub/b", b"b"), F("x", b"x0", mtime=104),
                F("y", b"y0", mtime=105),
            ],
            [
                D("etc", mtime=200), tb.whiteout("etc/shadow"),  # file whiteout
                tb.whiteout("var/cache"),  # directory whiteout: the subtree goes
                F("x", b"x1", mtime=201), tb.whiteout("x"),  # whiteout after the layer's own entry
                tb.whiteout("y"), F("y", b"y1", mtime=202),  # whiteout before it
                tb.whiteout("never-existed"),
                D("new", mtime=203), tb.whiteout("new/x"), tb.opaque("new"), F("new/f", b"f"),  # new dir
            ],
            [D("var", mtime=300), D("var/cache", mtime=301), F("var/cache/new", b"new"),
             tb.whiteout("etc/passwd")],
        ]
    )


def corpus_opaque() -> Corpus:
    return Corpus(
        [
            [
                D("a", mode=0o750, uid=3, mtime=100), F("a/1", b"1"), D("a/d", mtime=101), F("a/d/2", b"2"),
                D("b", mtime=102), F("b/1", b"b1"), F("b/keep", b"old"),
                D("c", mtime=103), F("c/1", b"c1"), D("n", mtime=104), D("n/m", mtime=105), F("n/m/1", b"n"),
            ],
            [
                D("a", mtime=200), tb.opaque("a"), F("a/new", b"new"),  # marker before siblings
                D("b", mtime=201), F("b/keep", b"new"), F("b/2", b"b2"), tb.opaque("b"),  # marker after
                tb.opaque("c"),  # no entry for c/: c keeps its metadata, loses its children
                tb.opaque("n/m"), F("n/m/2", b"n2"),
            ],
            [D("c", mtime=300), F("c/again", b"again")],
        ]
    )


def corpus_replacements() -> Corpus:
    return Corpus(
        [
            [
                D("f2d", mtime=100), F("f2d/x", b"x"), D("f2d/sub"), F("f2d/sub/y", b"y"),
                D("s2d", mtime=101), D("s2d/sub"), F("s2d/sub/z", b"z"),
                F("d2f", b"file", mtime=102), S("d2s-target", "nowhere"), F("keep", b"k"),
                D("fifo2d", mtime=103), F("fifo2d/x", b"x"), D("dir", mtime=104), F("dir/x", b"x"),
                S("l2f", "keep"),
            ],
            [
                F("f2d", b"now a file", mtime=200),  # file replaces directory
                S("s2d", "keep", mtime=201),  # symlink replaces directory
                D("d2f", mtime=202), F("d2f/inside", b"in"),  # directory replaces file
                D("d2s-target", mtime=203), F("d2s-target/in", b"in"),  # directory replaces symlink
                tb.fifo("fifo2d", mode=0o600),  # fifo replaces directory
                F("l2f", b"was a symlink", mtime=204),
            ],
            [
                D("f2d", mtime=300), F("f2d/back", b"dir again"),  # and back to a directory
                S("d2f", "f2d", mtime=301),  # the directory becomes a symlink
                D("dir", mode=0o700, uid=7, gid=8, mtime=302), F("dir/y", b"y"),  # dir over dir merges
            ],
        ]
    )


def corpus_hardlinks() -> Corpus:
    return Corpus(
        [
            [
                F("h/a", b"shared content", mtime=100), H("h/b", "h/a"), H("h/c", "h/a"), D("h/dir"),
                H("h/dir/d", "h/a"), F("g/1", b"group two"), H("g/2", "g/1"), H("g/3", "g/1"),
                F("k/1", b"group three"), H("k/2", "k/1"),
            ],
            [
                tb.whiteout("h/b"),  # a member is removed: the others stay linked, nlink 3
                F("g/1", b"replaced", mtime=200),  # the first member is replaced
                tb.whiteout("k/2"),  # down to a single member
            ],
            [
                tb.whiteout("h/dir"),  # the directory of a member goes
                F("new/1", b"upper group"), H("new/2", "new/1"),  # a group of an upper layer
            ],
        ]
    )


def corpus_metadata() -> Corpus:
    return Corpus(
        [
            [
                D(".", mode=0o751, uid=1, gid=2, mtime=50),
                D("etc", mode=0o755, uid=0, gid=0, mtime=1_600_000_000, mtime_nsec=123_456_789),
                D("srv", mode=0o2750, uid=33, gid=33, mtime=101),
                F("usr/bin/ping", b"\x7fELF", mode=0o4755, xattrs={"security.capability": CAPABILITY}),
                F("x/attrs", b"a", xattrs={"user.a": b"1", "trusted.t": b"\x00\x01"}),
                D("x/dir", mtime=102, xattrs={"user.d": "v" * 300}),
                F("owned", b"o", uid=1000, gid=1000, mode=0o600, mtime=103),
                D("tmp", mode=0o1777, mtime=104),
            ],
            [
                # No "./" entry: the root keeps layer 0's metadata (as umoci/containerd do).
                F("etc/hostname", b"nydus\n", mtime=1_700_000_000, mtime_nsec=999_999_999),  # implied etc/
                D("srv", mode=0o755, uid=0, gid=0, mtime=201),  # explicit: replaces srv's metadata
                F("x/attrs", b"b", xattrs={"user.b": "2"}, mtime=202),  # xattrs go with the inode
                D("x/dir", mtime=203, xattrs={"user.e": "w"}),
                D("ovl", mtime=204, xattrs={"trusted.overlay.opaque": "y", "user.o": "1"}),
                F("ovl/f", b"f"),
            ],
            [D(".", mode=0o755, uid=0, gid=0, mtime=300), F("top", b"t", mtime=301)],
        ],
        # umoci never sets trusted.overlay.opaque (module docstring); containerd would.
        umoci_differences={b"/ovl": frozenset({"xattrs"})},
    )


def corpus_devices() -> Corpus:
    return Corpus(
        [
            [
                D("dev", mtime=100), tb.chardev("dev/null", 1, 3, mode=0o666),
                tb.chardev("dev/big", 511, 300_000),
                tb.blockdev("dev/sda1", 8, 1, mode=0o660, gid=6), tb.fifo("run/initctl", mode=0o600),
                tb.chardev("dev/tty", 5, 0),
            ],
            [tb.whiteout("dev/sda1"), tb.blockdev("dev/null", 7, 0), F("run/initctl", b"now a file")],
            [tb.chardev("dev/sda1", 4, 64), tb.fifo("dev/tty")],
        ]
    )


def corpus_empty_and_metadata_only() -> Corpus:
    return Corpus(
        [
            [],  # an empty layer at the bottom
            [D("a/b/c", mtime=100), S("a/link", "b"), F("a/empty", b""), tb.fifo("a/fifo"),
             S("bin", "usr/bin")],
            [],
            [F("a/data", b"data" * 3000), D("a/b/c", mtime=300)],
        ],
        expected_blobs=[3],  # only the last layer has chunks
    )


def corpus_whiteout_everything() -> Corpus:
    return Corpus(
        [
            [F("gone/1", _noise(1, 300_000)), F("gone2", b"two" * 1000), D("stays", mtime=100)],
            [F("z-second", b"second layer data"), F("stays/f", b"f")],
            [tb.whiteout("gone"), tb.whiteout("gone2"), F("a-third", b"third layer data")],
        ],
        expected_blobs=[2, 1],  # layer 0's blob is unreferenced; /a-third is met before /z-second
    )


def corpus_first_layer_whiteouts() -> Corpus:
    return Corpus(
        [
            [tb.whiteout("nothing"), tb.opaque("d"), F("d/f", b"f"), tb.whiteout("d/x"), F("k", b"k")],
            [tb.whiteout("k"), F("l", b"l")],
        ]
    )


def corpus_data() -> Corpus:
    noise = _noise(7, (3 << 20) + 12345)
    return Corpus(
        [
            [F("big/noise", noise), F("big/text", BIG), F("big/same", BIG), F("small", b"s" * 10)],
            # dedup across layers: more/copy has the chunks of big/noise, in another blob
            [F("big/text", BIG[::-1]), F("mid", noise[: 1 << 20]), F("more/copy", noise)],
            [F("small", b"replaced"), F("big/zeros", size=(1 << 20) + 1)],
        ]
    )


# fmt: on


CORPORA: dict[str, Callable[[], Corpus]] = {
    "whiteouts": corpus_whiteouts,
    "opaque": corpus_opaque,
    "replacements": corpus_replacements,
    "hardlinks": corpus_hardlinks,
    "metadata": corpus_metadata,
    "devices": corpus_devices,
    "empty-and-metadata-only": corpus_empty_and_metadata_only,
    "whiteout-everything": corpus_whiteout_everything,
    "first-layer-whiteouts": corpus_first_layer_whiteouts,
    "data": corpus_data,
}


# ---------------------------------------------------------------------------------------------
# The two sides


def _write_tar(path: Path, members: list[tb.Member]) -> Path:
    with path.open("wb") as f:
        for chunk in tb.tar_stream(*members, fmt="pax"):
            f.write(chunk)
    return path


def _run(argv: list[str], cwd: Path) -> None:
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"


def umoci_rootfs(tars: list[Path], work: Path) -> Path:
    """Unpack an OCI image made of ``tars`` (in order) with umoci; returns the rootfs."""
    work.mkdir()
    _run(["umoci", "init", "--layout", "oci"], work)
    _run(["umoci", "new", "--image", "oci:ref"], work)
    for tar in tars:
        _run(["umoci", "raw", "add-layer", "--no-history", "--image", "oci:ref", str(tar)], work)
    _run(["umoci", "unpack", "--image", "oci:ref", "bundle"], work)
    return work / "bundle" / "rootfs"


@dataclass
class MergedImage:
    result: MergeResult
    bootstrap: Path
    devices: list[Path]  # uncompressed blob images in merged blob-table order
    layer_blob_ids: list[str]  # blob id of each layer, in layer order


def _blob_reader(fd: int) -> BlobReader:
    return BlobReader(lambda off, n: os.pread(fd, n, off), os.fstat(fd).st_size)


def build_merged(tars: list[Path], spec: str, work: Path) -> MergedImage:
    work.mkdir()
    layers: list[MergeLayer] = []
    blob_files: dict[str, Path] = {}
    for i, tar in enumerate(tars):
        blob = work / f"layer{i}.blob"
        with tar.open("rb") as f:
            packed = pack_layer_to_file(f, blob, PackOptions(threads=2))
        blob_id = packed.digest.removeprefix("sha256:")
        with blob.open("rb") as f:
            bootstrap = _blob_reader(
                f.fileno()
            ).bootstrap()  # taken back out of the blob, as a converter would
        assert bootstrap == packed.bootstrap
        layers.append(MergeLayer(bootstrap, blob_id, spec))
        blob_files[blob_id] = blob
    result = merge_layers(layers)
    boot_path = work / "image.boot"
    boot_path.write_bytes(result.bootstrap)
    devices = []
    for info in result.blobs:
        image = work / f"{info.blob_id}.data"
        with blob_files[info.blob_id].open("rb") as f, image.open("wb") as out:
            for offset, data in _blob_reader(f.fileno()).iter_uncompressed():
                out.seek(offset)
                out.write(data)
            out.truncate(info.uncompressed_size)
        devices.append(image)
    return MergedImage(result, boot_path, devices, [layer.blob_id for layer in layers])


def _forgive(expected: Snapshot, actual: Snapshot, differences: dict[bytes, frozenset[str]]) -> Snapshot:
    """``actual`` with the listed fields of the listed paths taken from ``expected``."""
    out = dict(actual)
    for path, names in differences.items():
        assert path in expected and path in actual, f"documented difference for missing {path!r}"
        out[path] = dataclasses.replace(actual[path], **{n: getattr(expected[path], n) for n in names})
    return out


def listed_directories(layers: list[list[tb.Member]]) -> set[bytes]:
    """Absolute paths of the directories that some layer tar has an entry for."""
    out = set()
    for members in layers:
        for member in members:
            if isinstance(member, tb.Entry) and member.typeflag == tarfile.DIRTYPE:
                parts = [p for p in member.path.split(b"/") if p not in (b"", b".")]
                out.add(b"/" + b"/".join(parts))
    return out


def unpack_time_differences(
    expected: Snapshot, layers: list[list[tb.Member]], unpack_started: float
) -> dict[bytes, frozenset[str]]:
    """The wall-clock mtimes of umoci described in the module docstring."""
    listed = listed_directories(layers)
    implied = {path for path, entry in expected.items() if entry.kind == "dir" and path not in listed}
    parents = {path.rsplit(b"/", 1)[0] or b"/" for path in implied if path != b"/"}
    return {
        path: frozenset({"mtime", "mtime_nsec"})
        for path in implied | parents
        if expected[path].mtime >= int(unpack_started) - 1
    }


def check_corpus(corpus: Corpus, tmp: Path) -> tuple[Snapshot, Snapshot]:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    require(shutil.which("umoci") is not None, UMOCI_REASON)
    require(fsck_erofs_available(), FSCK_EROFS_REASON)
    tars = [_write_tar(tmp / f"layer{i}.tar", members) for i, members in enumerate(corpus.layers)]
    umoci_tars = tars
    if corpus.umoci_layers is not None:
        umoci_tars = [_write_tar(tmp / f"oci{i}.tar", m) for i, m in enumerate(corpus.umoci_layers)]
    unpack_started = time.time()
    expected = snapshot_dir(umoci_rootfs(umoci_tars, tmp / "umoci"))
    differences = unpack_time_differences(expected, corpus.umoci_layers or corpus.layers, unpack_started)
    overlap = differences.keys() & corpus.umoci_differences.keys()
    assert not overlap, f"documented differences on implied directories {overlap}"
    differences.update(corpus.umoci_differences)

    image = build_merged(tars, corpus.spec, tmp / "nydus")
    if corpus.expected_blobs is not None:
        assert image.result.blob_ids == [image.layer_blob_ids[i] for i in corpus.expected_blobs]
    with mount_rafs(image.bootstrap, image.devices) as mnt:
        actual = snapshot_dir(mnt)
    fsck_check(image.bootstrap, image.devices)
    return expected, _forgive(expected, actual, differences)


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_merged_image_mounts_like_umoci_unpack(name: str, tmp_path: Path) -> None:
    corpus = CORPORA[name]()
    expected, actual = check_corpus(corpus, tmp_path)
    differences = diff_snapshots(expected, actual)
    assert not differences, "\n".join(differences)


def test_the_oracle_sees_a_wrong_merge(tmp_path: Path) -> None:
    """Guard for the oracle: dropping a layer's whiteouts shows up as differences."""
    corpus = corpus_whiteouts()
    expected, _ = check_corpus(corpus, tmp_path)
    no_whiteouts = [m for m in corpus.layers[1] if not (isinstance(m, tb.Entry) and b".wh." in m.path)]
    wrong = Corpus([corpus.layers[0], no_whiteouts, corpus.layers[2]])
    image = build_merged(
        [_write_tar(tmp_path / f"wrong{i}.tar", members) for i, members in enumerate(wrong.layers)],
        "oci",
        tmp_path / "wrong",
    )
    with mount_rafs(image.bootstrap, image.devices) as mnt:
        differences = diff_snapshots(expected, snapshot_dir(mnt))
    assert any("etc/shadow" in d for d in differences)
    assert any("var/cache/sub" in d for d in differences)
