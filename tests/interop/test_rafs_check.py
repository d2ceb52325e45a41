"""The real Nydus runtime code reads every kind of image we write, as the kernel does.

For each image below (made by ``nydus-exporter export`` from tars built with
tests/helpers/tarbuild.py), ``bin/rafs-check`` loads the merged bootstrap with nydusd's RAFS
loader (``nydus-rafs`` 0.4.1, ``RafsSuper::load_from_file`` with validation on, every inode
validated, every chunk reference looked up), then serves it with the RAFS filesystem nydusd
mounts over FUSE and reads every regular file through the real storage layer
(``nydus-storage`` 0.7.2: localfs backend over the layout's blobs, file cache with chunk digest
validation). The tree it reports must equal the tree the Linux kernel mounts from the same
image (``nydus-exporter mount``, tests/helpers/treesnap.py ``snapshot_dir``), field by field:
type, permission bits, owner, size, content sha256, symlink target, xattrs, rdev, mtime with
nanoseconds, nlink and hardlink identity.

What the two readers legitimately show differently is normalised in :func:`as_nydusd_shows`,
each with its reason; nothing else is.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from tests.conftest import require
from tests.e2e.test_merge_kernel import CORPORA
from tests.helpers import tarbuild as tb
from tests.helpers.treesnap import Snapshot, diff_snapshots, snapshot_tar
from tests.interop import summary
from tests.interop.images import TAG, Image, export_image, kernel_tree, open_layout, write_tars
from tests.interop.tools import CheckResult, rafs_check
from tests.registry_fixtures import RegistryServer

pytestmark = pytest.mark.kernel

F, D, S, H = tb.file, tb.dir, tb.symlink, tb.hardlink
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep


def _noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# fmt: off
def rich_layer() -> list[tb.Member]:
    """One layer with every kind of entry a layer can hold."""
    long_dir = "l" * 200
    return [
        D("etc", mtime=1_600_000_000, mtime_nsec=123_456_789),
        F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mtime=1_600_000_001, mtime_nsec=1),
        F("etc/shadow", b"root:*:1::::::\n", mode=0o600, mtime=1_600_000_002),
        H("etc/passwd.hard", "etc/passwd"),
        H("etc/passwd.hard2", "etc/passwd"),
        D("bin", mtime=1_600_000_003),
        F("bin/su", b"\x7fELF" + b"\x00" * 5000, mode=0o4755, mtime=1_600_000_004),
        F("bin/wall", b"wall", mode=0o2755, gid=5, mtime=1_600_000_005),
        D("tmp", mode=0o1777, mtime=1_600_000_006),
        S("bin/sh", "busybox", mtime=1_600_000_007),
        S("dangling", "/nowhere/at/all", mtime=1_600_000_008),
        D("dev", mtime=1_600_000_009),
        tb.chardev("dev/null", 1, 3, mode=0o666),
        tb.chardev("dev/tty5", 4, 5, mode=0o620, gid=5),
        tb.blockdev("dev/loop300", 7, 300, mode=0o660, gid=6),  # minor > 255: the new encoding
        tb.fifo("dev/initctl", mode=0o600),
        D("data", mtime=1_600_000_010, xattrs={"user.dir": "d"}),
        F("data/empty", b"", mtime=1_600_000_011),
        F("data/big.bin", _noise(1, (3 << 20) + 17), mtime=1_600_000_012),  # several chunks
        F("data/zeros", size=(2 << 20) + 5, pattern=b"\x00", mtime=1_600_000_013),
        F("data/text", size=(1 << 20) + 4097, pattern=b"compressible ", mtime=1_600_000_014),
        tb.sparse_file("data/sparse", 9 << 20, [(0, b"head"), (6 << 20, b"mid" * 1000)], mtime=1_600_000_015),
        F("data/ping", b"ping", mode=0o755, uid=1_000_000, gid=65534, mtime=1_600_000_016,
          xattrs={"security.capability": CAPABILITY, "user.note": b"hello", "trusted.t": b"\x00\xff"}),
        F("data/pre1970", b"old", mtime=-86_400),
        F("data/" + "n" * 255, b"longest name", mtime=1_600_000_017),
        F(b"data/caf\xe9", b"latin-1 name", mtime=1_600_000_018),
        D(long_dir, mtime=1_600_000_019),
        *[F(f"{long_dir}/{i:04d}-" + "x" * 180, b"%d" % i, mtime=1_600_000_020) for i in range(60)],
    ]
# fmt: on


@dataclass(frozen=True)
class Kind:
    """One kind of image: layer tars and the export attributes to build it with."""

    layers: Callable[[], list[list[tb.Member]]]
    attrs: tuple[str, ...] = ()
    spec: str = "oci"


def _merge_corpus(make: Callable[[], object]) -> Callable[[], list[list[tb.Member]]]:
    return lambda: list(make().layers)  # type: ignore[attr-defined]


FORMAT_KINDS = {
    "zstd-blake3-1m": Kind(lambda: [rich_layer()]),
    "lz4-sha256-4k": Kind(
        lambda: [rich_layer()], ("compressor=lz4_block", "digester=sha256", "chunk-size=0x1000")
    ),
    "none-blake3-64k": Kind(lambda: [rich_layer()], ("compressor=none", "chunk-size=0x10000")),
    "zstd-sha256-16m": Kind(lambda: [rich_layer()], ("digester=sha256", "chunk-size=0x1000000")),
}
MERGE_KINDS = {name: Kind(_merge_corpus(make)) for name, make in CORPORA.items()}
DEDUP_BIG = _noise(6, (3 << 20) + 777)
DEDUP_KIND = Kind(
    lambda: [
        [D("opt"), F("opt/big.bin", DEDUP_BIG), F("opt/readme", b"one\n")],
        [F("srv/copy.bin", DEDUP_BIG), F("srv/new", b"two\n" * 100)],  # the same chunks again
        [tb.whiteout("opt/big.bin"), F("etc/conf", b"three\n")],  # the original goes
    ],
    ("chunk-dedup=true",),
)


def as_nydusd_shows(kernel: Snapshot, rafs: CheckResult, started: float) -> Snapshot:
    """The kernel's tree with what nydusd's RAFS filesystem reports differently by design."""
    out: Snapshot = {}
    for path, entry in kernel.items():
        change: dict[str, object] = {}
        stored = rafs.stored_mtimes.get(path)
        if (entry.mtime, entry.mtime_nsec) == (0, 0) == stored and path in rafs.tree:
            # nydus-rafs `Rafs::get_inode_entry`: "Older rafs image doesn't include mtime, in
            # such case we use runtime timestamp": an inode storing mtime 0 (implied
            # directories, device entries of tars without one) is served with the mount time.
            shown = rafs.tree[path]
            if shown.mtime >= int(started):
                change.update(mtime=shown.mtime, mtime_nsec=shown.mtime_nsec)
        if path == b"/":
            # `get_inode_entry` also forces the root's permission bits to 0755 ("nydusify gives
            # root directory permission of 0o750 ..."): only the 9 rwx bits change.
            change["mode"] = entry.mode & ~0o777 | 0o755
        out[path] = dataclasses.replace(entry, **change) if change else entry  # type: ignore[arg-type]
    return out


def check_against_kernel(image: Image, work: Path, name: str) -> CheckResult:
    summary.record(summary.CHECKED, name, False)
    started = time.time()
    result = rafs_check(image.bootstrap, image.blob_dir)
    kernel = kernel_tree(image.ref, work)
    diff = diff_snapshots(as_nydusd_shows(kernel, result, started), result.tree)
    assert diff == [], "rafs-check tree differs from the kernel mount:\n" + "\n".join(diff[:50])
    summary.record(summary.CHECKED, name, True)
    assert {b["id"] for b in result.blobs} <= {d["digest"].removeprefix("sha256:") for d in image.blob_layers}
    return result


def _build(kind: Kind, tmp_path: Path) -> Image:
    tars = write_tars(tmp_path / "tars", kind.layers())
    return export_image(tars, tmp_path / "layout", *kind.attrs)


@pytest.mark.parametrize("name", sorted(FORMAT_KINDS))
def test_formats(name: str, tmp_path: Path) -> None:
    """Each compressor, digester and chunk size: the loader validates and the tree matches."""
    kind = FORMAT_KINDS[name]
    result = check_against_kernel(_build(kind, tmp_path), tmp_path, name)
    compressor = next((a.split("=")[1] for a in kind.attrs if a.startswith("compressor=")), "zstd")
    digester = next((a.split("=")[1] for a in kind.attrs if a.startswith("digester=")), "blake3")
    (blob,) = result.blobs
    # nydus-utils prints its algorithm enums by variant name (Zstd, Lz4Block, None; Blake3, Sha256).
    assert blob["compressor"].lower().replace("lz4block", "lz4_block") == compressor
    assert blob["digester"].lower() == digester


@pytest.mark.parametrize("name", sorted(MERGE_KINDS))
def test_merged_layers(name: str, tmp_path: Path) -> None:
    """Merged multi-layer images: whiteouts, opaque directories, replacements, hardlinks."""
    check_against_kernel(_build(MERGE_KINDS[name], tmp_path), tmp_path, f"merge-{name}")


def test_chunk_dedup(tmp_path: Path) -> None:
    """``chunk-dedup=true``: a later layer's file reads chunks stored in a lower layer's blob."""
    image = _build(DEDUP_KIND, tmp_path)
    result = check_against_kernel(image, tmp_path, "chunk-dedup")
    assert len(result.blobs) == 3


def test_chunk_dict(tmp_path: Path) -> None:
    """``chunk-dict=IMAGE``: the dictionary image's blob is an extra blob of the new image."""
    dict_tars = write_tars(tmp_path / "dict-tars", [[F("opt/big.bin", DEDUP_BIG)]])
    dict_image = export_image(dict_tars, tmp_path / "dict")
    app_tars = write_tars(tmp_path / "app-tars", [[F("app/data.bin", DEDUP_BIG), F("app/new", b"new\n")]])
    image = export_image(app_tars, tmp_path / "app", f"chunk-dict=oci:{dict_image.layout}:1")
    result = check_against_kernel(image, tmp_path / "app-check", "chunk-dict")
    assert len(result.blobs) == 2


@pytest.mark.slow
def test_hundred_thousand_entries(tmp_path: Path) -> None:
    """A 100k-entry layer: directories spanning many blocks, a wide inode table."""
    members: list[tb.Member] = []
    for d in range(100):
        members.append(D(f"d{d:03d}", mtime=1_700_000_000))
        members.extend(
            F(f"d{d:03d}/file-{i:04d}", b"%d/%d\n" % (d, i), mtime=1_700_000_000 + i) for i in range(999)
        )
    check_against_kernel(_build(Kind(lambda: [members]), tmp_path), tmp_path, "100k-entries")


def test_chunk_store(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    """``chunk-store=true``: the second image pushed to a repository references chunks of the
    first image's blob, an extra blob layer of its own (copied back with skopeo)."""
    require(shutil.which("skopeo") is not None, "needs skopeo")
    state = tmp_path / "state"
    for tag, members in (
        ("v1", [D("opt", mtime=1_700_000_000), F("opt/big.bin", DEDUP_BIG, mtime=1_700_000_001)]),
        ("v2", [F("app/copy.bin", DEDUP_BIG, mtime=1_700_000_002), F("app/new", b"new\n" * 50)]),
    ):
        (tar,) = write_tars(tmp_path / tag, [members])
        attrs = {
            "name": f"{registry.host}/{repo_name}:{tag}",
            "oci-mediatypes": "true",
            "chunk-store": "true",
        }
        options = parse_output(attrs).options
        export(f"tar:{tar}", options, state_dir=state)
    layout = tmp_path / "copy"
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{registry.host}/{repo_name}:v2",
         f"oci:{layout}:{TAG}"],
        check=True, capture_output=True,
    )  # fmt: skip
    result = check_against_kernel(open_layout(layout), tmp_path, "chunk-store")
    assert len(result.blobs) == 2  # v2's own blob and v1's


def test_pack_blob_loads_as_its_own_bootstrap(tmp_path: Path) -> None:
    """``nydus-exporter pack``'s blob given to the loader as the bootstrap: nydusd finds the
    inlined bootstrap through the blob's ToC (``TocEntryList::extract_rafs_meta``), as it does
    for a blob named in place of a bootstrap, and serves the layer tar's tree."""
    (tar,) = write_tars(tmp_path / "tars", [rich_layer()])
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    blob = blob_dir / "packed.blob"
    exe = Path(sys.executable).with_name("nydus-exporter")
    report = subprocess.run(
        [exe, "pack", tar, "-o", blob, "--json"], check=True, capture_output=True, text=True
    )
    # The loader takes the blob id from the file name; the localfs backend reads DIR/<blob id>.
    named = blob_dir / json.loads(report.stdout)["blob_id"]
    blob.rename(named)
    result = rafs_check(named, blob_dir)
    summary.record(summary.CHECKED, "pack-blob", False)
    assert diff_snapshots(snapshot_tar(tar), result.zero_mtimes_as_stored()) == []
    summary.record(summary.CHECKED, "pack-blob", True)


def test_a_corrupted_chunk_is_caught(tmp_path: Path) -> None:
    """The check really validates data: one flipped byte in an uncompressed chunk fails the
    read with nydus-storage's digest check (the file cache's ``validate``)."""
    (tar,) = write_tars(tmp_path / "tars", [[F("f", b"hello world " * 1000, mtime=5)]])
    image = export_image([tar], tmp_path / "layout", "compressor=none")
    (layer,) = image.blob_layers
    blob = image.blob(layer["digest"])
    rafs_check(image.bootstrap, image.blob_dir)  # intact: passes
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # inside the file's only chunk (the data starts at offset 0)
    blob.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="digest value doesn't match"):
        rafs_check(image.bootstrap, image.blob_dir)
