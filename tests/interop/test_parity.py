"""Byte parity with the reference builder: ``nydus-exporter pack`` and nydus-builder 0.2.0 (the
builder of ``nydus-image`` ≈ v2.3.9, run by ``bin/rafs-ref-build`` exactly as ``nydus-image
create --type tar-rafs --blob-inline-meta --features blob-toc``) on the same layer tars.

For every case the data blob is cut into its sections (tests/interop/blobparts.py): the chunk
data, the chunk info (``blob.meta``), the chunk digests (``blob.digest``) and the ToC must be
byte-identical, and so must the blob id; the per-layer bootstrap (``image.boot``) must be
byte-identical unless the case triggers a deliberate difference listed in docs/nydus-parity.md
(:data:`DELIBERATE`). Where a listed difference applies, both blobs are read with
``rafs-check`` and their trees may differ only in what that difference explains.

The merge: ``rafs-ref-merge`` (nydus-builder's ``Merger``, as ``nydus-image merge`` runs for
nydusify) over our per-layer bootstraps gives the same tree as our merged bootstrap.

The summary ``parity: N/M data blobs identical, K/M bootstraps identical`` is printed at the end.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import tarbuild as tb
from tests.helpers.treesnap import Snapshot, diff_snapshots
from tests.interop import summary
from tests.interop.blobparts import BlobParts, split_blob
from tests.interop.images import export_image, write_tars
from tests.interop.tools import rafs_check, run_tool

F, D, S, H = tb.file, tb.dir, tb.symlink, tb.hardlink

# The deliberate differences of docs/nydus-parity.md: id -> the tree fields they may change
# (empty: the bytes differ, the trees must not).
DELIBERATE: dict[str, frozenset[str]] = {
    # nydus-builder sets INLINED_CHUNK_DIGEST on bootstraps without any blob; we set it only
    # when a blob exists. A flag bit of the extended superblock; nothing a reader shows.
    "chunkless-inlined-chunk-digest": frozenset(),
    # We keep sub-second mtimes (PAX mtime records); nydus-builder drops the nanoseconds.
    "subsecond-mtime": frozenset({"mtime_nsec"}),
    # nydus-builder keeps an inode's xattrs in a HashMap (RafsXAttrs.pairs) and writes them in
    # its iteration order, random per process (its own output differs run to run); we write
    # them sorted by name, so a bootstrap with 2+ xattrs on one inode is identical only by luck.
    "xattr-order": frozenset(),
    # A hardlink to a symlink, device or FIFO shares one inode with its target in our images,
    # as on a real filesystem; nydus-builder gives each name its own inode with nlink 1.
    "hardlinked-special-files": frozenset({"nlink", "link_group"}),
}


def _noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass(frozen=True)
class Case:
    members: Callable[[], list[tb.Member]]
    chunk_size: int = 0x100000
    compressor: str = "zstd"
    digester: str = "blake3"
    deliberate: frozenset[str] = field(default_factory=frozenset)
    fmt: str = "pax"
    whiteout_spec: str = "oci"  # nydus-image's default; nydus-snapshotter's converter passes none


def go_fifo(path: str, mtime: int) -> tb.Member:
    """A FIFO as Go's archive/tar and GNU tar write it, with octal zero device numbers.

    Python's tarfile leaves devmajor/devminor empty for FIFOs, and nydus-builder (tar-rs)
    refuses that ("numeric field was not a number ... device_major for fifo"); we accept both.
    """
    return tb.raw_header(path, typeflag=b"6", mode=0o644, mtime=mtime)


# fmt: off
def plain_layer() -> list[tb.Member]:
    """Every ordinary kind of entry, whole-second mtimes (what both builders store alike).

    As GNU tar and Go write them: a hardlink header carries its target's metadata (nydus-builder
    takes the shared inode's metadata from the last header, we from the target), and every
    directory has its own entry (nydus-builder 0.2.0 loses a file whose parent directories are
    missing from the tar two levels deep: see docs/nydus-parity.md).
    """
    return [
        D("etc", mtime=1_600_000_000), F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mtime=1_600_000_001),
        F("etc/shadow", b"root:*::\n", mode=0o600, mtime=1_600_000_002),
        H("etc/passwd-", "etc/passwd", mtime=1_600_000_001),
        D("usr", mtime=1_600_000_003), D("usr/bin", mtime=1_600_000_004),
        F("usr/bin/su", b"\x7fELF" + _noise(1, 70_000), mode=0o4755, mtime=1_600_000_005),
        S("usr/bin/sh", "su", mtime=1_600_000_006),
        F("usr/bin/big", _noise(2, (3 << 20) + 11), mode=0o755, mtime=1_600_000_007),
        F("usr/bin/zeros", size=(2 << 20) + 3, mtime=1_600_000_008),
        F("usr/bin/text", size=300_000, pattern=b"text that compresses ", mtime=1_600_000_009),
        F("usr/bin/copy", _noise(2, (3 << 20) + 11), mtime=1_600_000_010),  # every chunk a duplicate
        F("empty", b"", mtime=1_600_000_011),
        tb.chardev("dev-null", 1, 3, mode=0o666),
        tb.blockdev("dev-loop", 7, 300, mode=0o660),
        go_fifo("fifo", 1_600_000_014),
        F("xattr", b"x", uid=1000, gid=1000, mtime=1_600_000_015,
          xattrs={"security.capability": bytes.fromhex("0100000200200000000000000000000000000000")}),
        D("wide", mtime=1_600_000_016),
        *[F(f"wide/{i:03d}-" + "n" * 200, b"%d" % i, mtime=1_600_000_017) for i in range(40)],
        D("nested", mtime=1_600_000_018), D("nested/parent", mtime=1_600_000_019),
        F("nested/parent/file", b"f", mtime=1_600_000_020),
    ]


def xattrs_layer() -> list[tb.Member]:
    return [D("d", mtime=1_600_000_000, xattrs={"user.a": b"1", "trusted.overlay.opaque": b"y"}),
            F("d/f", b"data", mtime=1_600_000_001,
              xattrs={"security.capability": b"\x01\x00\x00\x02", "user.a": b"1", "user.b": b"\x00\xff"})]


def whiteouts_layer() -> list[tb.Member]:
    return [D("etc", mtime=1_600_000_000), tb.whiteout("etc/passwd"), D("opt", mtime=1_600_000_001),
            tb.opaque("opt"), F("opt/x", b"x", mtime=1_600_000_002), tb.whiteout("gone")]


def chunkless_layer() -> list[tb.Member]:
    return [D("etc", mtime=1_600_000_000), F("etc/empty", b"", mtime=1_600_000_001),
            S("link", "etc", mtime=1_600_000_002), tb.whiteout("gone")]


def subsecond_layer() -> list[tb.Member]:
    return [D("d", mtime=1_600_000_000, mtime_nsec=5),
            F("d/f", b"data", mtime=1_600_000_001, mtime_nsec=999_999_999)]


# fmt: on


CASES: dict[str, Case] = {
    "plain-zstd-blake3-1m": Case(plain_layer),
    "plain-lz4-sha256-4k": Case(plain_layer, 0x1000, "lz4_block", "sha256"),
    "plain-none-blake3-64k": Case(plain_layer, 0x10000, "none"),
    "plain-zstd-sha256-16m": Case(plain_layer, 0x1000000, "zstd", "sha256"),
    "gnu-long-names": Case(
        lambda: [F("d" * 120 + "/" + "f" * 250, b"long", mtime=1_600_000_000), S("l" * 200, "x" * 300)],
        fmt="gnu",
    ),
    # No sparse files: nydus-builder 0.2.0 refuses GNU sparse members ("unsupported gnu sparse
    # file extension from tar header"); docs/nydus-parity.md lists what the reference cannot read.
    "whiteouts-spec-oci": Case(whiteouts_layer),
    "whiteouts-spec-none": Case(whiteouts_layer, whiteout_spec="none"),
    "xattrs": Case(xattrs_layer, deliberate=frozenset({"xattr-order"})),
    "chunkless": Case(chunkless_layer, deliberate=frozenset({"chunkless-inlined-chunk-digest"})),
    "subsecond-mtime": Case(subsecond_layer, deliberate=frozenset({"subsecond-mtime"})),
    # No hardlinks to symlinks/devices/FIFOs: nydus-builder 0.2.0 refuses them ("target /s for
    # hardlink /s2 is not a regular file"); later nydus gives each name its own inode.
}


@dataclass
class Built:
    blob: Path
    blob_id: str
    parts: BlobParts


def build_ours(tar: Path, case: Case, out: Path) -> Built:
    """``nydus-exporter pack`` (the console script of this virtualenv)."""
    argv = [str(Path(sys.executable).with_name("nydus-exporter")), "pack", str(tar), "-o", str(out)]
    argv += ["--chunk-size", hex(case.chunk_size)]
    argv += ["--compressor", case.compressor, "--digester", case.digester]
    report = json.loads(subprocess.run([*argv, "--json"], check=True, capture_output=True, text=True).stdout)
    return Built(out, report["blob_id"], split_blob(out.read_bytes()))


def build_reference(tar: Path, case: Case, out: Path) -> Built:
    args: list[str | Path] = [tar, "-o", out, "--chunk-size", hex(case.chunk_size)]
    args += ["--compressor", case.compressor, "--digester", case.digester, "--prefetch-policy", "fs"]
    args += ["--whiteout-spec", case.whiteout_spec]
    # The prefetch pattern nydusify gives nydus-image on stdin by default: "/" (prefetch all),
    # which is the prefetch table our bootstraps carry.
    report = json.loads(run_tool("rafs-ref-build", args, stdin="/\n"))
    blob = out / "blob"
    # BuildOutput.blobs: the blob table of the bootstrap (empty for a layer without chunks).
    (blob_id,) = report["blob_ids"] or [""]
    return Built(blob, blob_id, split_blob(blob.read_bytes()))


def _data_differences(ours: BlobParts, ref: BlobParts) -> list[str]:
    out = []
    if ours.chunk_region != ref.chunk_region:
        out.append(f"chunk data ({len(ours.chunk_region)} vs {len(ref.chunk_region)} bytes)")
    for name in sorted((ours.sections.keys() | ref.sections.keys()) - {"image.boot"}):
        a, b = ours.section(name), ref.section(name)
        if a is None or b is None:
            out.append(f"section {name} only in {'ours' if b is None else 'the reference'}")
        elif (a.stored, a.header, a.digest, a.flags) != (b.stored, b.header, b.digest, b.flags):
            out.append(f"section {name}")
    return out


def _byte_ranges(a: bytes, b: bytes, limit: int = 8) -> str:
    ranges: list[str] = []
    i = 0
    n = max(len(a), len(b))
    while i < n and len(ranges) < limit:
        if i < len(a) and i < len(b) and a[i] == b[i]:
            i += 1
            continue
        j = i
        while j < n and not (j < len(a) and j < len(b) and a[j] == b[j]):
            j += 1
        ranges.append(f"{i:#x}..{j:#x}: ours {a[i : min(j, i + 16)].hex()} ref {b[i : min(j, i + 16)].hex()}")
        i = j
    return f"sizes {len(a)} vs {len(b)}; " + "; ".join(ranges)


def _tree(built: Built, work: Path) -> Snapshot:
    """The tree nydusd serves from a per-layer bootstrap over its blob."""
    work.mkdir(parents=True, exist_ok=True)
    boot = built.parts.section("image.boot")
    assert boot is not None
    # The loader names an INLINED_FS_META blob after the bootstrap file (`<blob id>.boot`).
    (work / f"{built.blob_id}.boot").write_bytes(boot.data)
    (work / built.blob_id).symlink_to(built.blob)
    return rafs_check(work / f"{built.blob_id}.boot", work).zero_mtimes_as_stored()


def test_layer_parity(tmp_path: Path) -> None:
    data_same = boot_same = 0
    failures: list[str] = []
    for name, case in CASES.items():
        work = tmp_path / name
        (tar,) = write_tars(work, [case.members()], fmt=case.fmt)
        ours = build_ours(tar, case, work / "ours.blob")
        ref = build_reference(tar, case, work / "ref")
        data_diff = _data_differences(ours.parts, ref.parts)
        if data_diff:
            failures.append(f"{name}: data blob differs: {', '.join(data_diff)}")
        else:
            data_same += 1
        our_boot, ref_boot = ours.parts.section("image.boot"), ref.parts.section("image.boot")
        assert our_boot is not None and ref_boot is not None
        summary.record(summary.IDENTICAL, name, not data_diff and our_boot.data == ref_boot.data)
        if our_boot.data == ref_boot.data:
            boot_same += 1
            if ours.blob_id != ref.blob_id and ref.blob_id:
                failures.append(
                    f"{name}: blob ids differ with identical sections: {ours.blob_id} {ref.blob_id}"
                )
            continue
        if not case.deliberate:
            failures.append(f"{name}: bootstrap differs: {_byte_ranges(our_boot.data, ref_boot.data)}")
            continue
        # A listed difference: the trees may differ only in the fields it explains.
        allowed = frozenset().union(*(DELIBERATE[d] for d in case.deliberate))
        ignore = allowed | ({"link_group"} if "nlink" in allowed else set())
        tree_diff = diff_snapshots(
            _tree(ref, work / "ref-tree"), _tree(ours, work / "our-tree"), ignore=ignore
        )
        if tree_diff:
            failures.append(f"{name}: trees differ beyond {sorted(case.deliberate)}: {tree_diff[:10]}")
    total = len(CASES)
    line = f"parity: {data_same}/{total} data blobs identical, {boot_same}/{total} bootstraps identical"
    summary.note(line)
    print(line)
    assert failures == [], "\n".join(failures)


# fmt: off
MERGE_LAYERS: list[list[tb.Member]] = [
    [D("etc", mtime=100), F("etc/passwd", b"root\n", mtime=101), F("etc/shadow", b"x", mode=0o600, mtime=102),
     H("etc/passwd2", "etc/passwd", mtime=101),
     D("var", mtime=103), D("var/cache", mtime=104), F("var/cache/a", b"a" * 5000, mtime=105),
     F("big", _noise(9, (2 << 20) + 5), mtime=106)],
    [D("etc", mtime=200), tb.whiteout("etc/shadow"), tb.whiteout("var/cache"), F("x", b"x1", mtime=201),
     D("new", mtime=203), tb.opaque("new"), F("new/f", b"f", mtime=204)],
    [D("var", mtime=300), D("var/cache", mtime=301), F("var/cache/new", b"new", mtime=302)],
]
# fmt: on


def test_merge_parity(tmp_path: Path) -> None:
    """nydus-builder's Merger over our per-layer bootstraps, run as nydus-snapshotter's
    converter runs ``nydus-image merge`` for tar-rafs layers (``--prefetch-policy fs``, the
    pattern "/" on stdin, each bootstrap file named by its blob layer's digest hex, which
    becomes the blob id; no --blob-digests/--blob-sizes, which it passes only for OCI-ref
    layers), writes the same merged bootstrap our export writes."""
    image = export_image(write_tars(tmp_path / "tars", MERGE_LAYERS), tmp_path / "layout")
    boots: list[str | Path] = []
    for layer in image.blob_layers:
        boot = split_blob(image.blob(layer["digest"]).read_bytes()).section("image.boot")
        assert boot is not None
        path = tmp_path / "bootstraps" / layer["digest"].removeprefix("sha256:")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(boot.data)
        boots.append(path)
    target = tmp_path / "ref-merged.boot"
    run_tool("rafs-ref-merge", ["-o", target, "--prefetch-policy", "fs", *boots], stdin="/\n")
    ours = rafs_check(image.bootstrap, image.blob_dir)
    ref = rafs_check(target, image.blob_dir)
    assert diff_snapshots(ref.zero_mtimes_as_stored(), ours.zero_mtimes_as_stored()) == []
    assert [b["id"] for b in ref.blobs] == [b["id"] for b in ours.blobs]
    assert target.read_bytes() == image.bootstrap.read_bytes(), _byte_ranges(
        image.bootstrap.read_bytes(), target.read_bytes()
    )
