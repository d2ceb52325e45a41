#!/usr/bin/env python3
"""Benchmark: `nydus-exporter pack` against mkfs.erofs and gzip on a realistic layer.

On the first run it builds a Debian bookworm minbase rootfs with debootstrap (needs root
and a Debian mirror; the one from the apt sources, else debootstrap's default) and tars it
into a layer. Both are cached under bench/.cache/. It then reports, as the median of
--runs runs, the wall time and peak RSS of:

* ``nydus-exporter pack layer.tar -o out.blob`` (zstd, blake3, 1 MiB chunks),
* ``mkfs.erofs --chunksize=1048576 --blobdev=blob.img meta.img ROOTFS`` on the same tree,
* ``gzip -6 -c layer.tar > /dev/null``,
* the Rust builder, nydus-builder (``bin/rafs-ref-build`` of the interop harness, built by
  ``make interop-tools``: nydus-image's tar-to-RAFS conversion) on the same tar with the same
  chunk size, compressor and digester,

and the ratios pack/mkfs.erofs, pack/nydus-builder and pack/gzip. ``--big`` also builds a
layer of about 2 GiB (renamed copies of the rootfs plus incompressible files) and reports
pack's and nydus-builder's wall time and peak RSS on it. Each command runs under a small
launcher that reaps it with wait4(2), so the peak RSS is the command's own; readings at the
launcher's floor (measured with `true`, a few MiB) are shown as "<= floor".

This is a benchmark, not a test: it fails (exit 1) with a clear message when
``nydus-exporter pack`` is missing or fails, after reporting the other tools.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _common import (
    CHUNK_SIZE,
    PROJECT_ROOT,
    BenchError,
    Contender,
    MiB,
    Result,
    bench_parser,
    check_exporter,
    ensure_layer,
    ensure_rootfs,
    find_exporter,
    floor_kib,
    fmt_kib,
    fmt_s,
    layer_stats,
    measure,
    measure_side_by_side,
    ratio,
)

BIG_TARGET = 2 << 30  # bytes of file content in the --big layer


# --------------------------------------------------------------------------------------------
# The cached inputs


def _kept_pax(headers: Mapping[str, str]) -> dict[str, str]:
    # Drop path/linkpath/size/sparse records: they would override the renamed TarInfo.
    keep = ("SCHILY.xattr.", "LIBARCHIVE.xattr.", "mtime")
    return {k: v for k, v in headers.items() if k.startswith(keep)}


def _prefixed(prefix: str, name: str) -> str:
    """``./etc/.bashrc`` -> ``copy00/etc/.bashrc``; the root ``./`` -> ``copy00``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join([prefix, *parts])


def ensure_big_layer(cache: Path, layer: Path) -> Path:
    """About BIG_TARGET bytes of content: renamed rootfs copies (up to ~3/4) + random files."""
    big = cache / "big.tar"
    if big.is_file():
        return big
    tmp = cache / "big.tar.tmp"
    print(f"building the ~{BIG_TARGET // MiB} MiB layer {big}", file=sys.stderr)
    content = 0
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        n_copies = 0
        while content < BIG_TARGET * 3 // 4:
            prefix = f"copy{n_copies:02d}"
            with tarfile.open(layer) as src:
                for member in src:
                    clone = copy.copy(member)
                    clone.name = _prefixed(prefix, member.name)
                    clone.pax_headers = _kept_pax(member.pax_headers)
                    if member.islnk():
                        clone.linkname = _prefixed(prefix, member.linkname)
                    data = src.extractfile(member) if member.isreg() else None
                    out.addfile(clone, data)
                    content += member.size if member.isreg() else 0
            n_copies += 1
        rng = random.Random(20240601)  # reproducible, incompressible
        index = 0
        while content < BIG_TARGET:
            size = min(64 * MiB, BIG_TARGET - content)
            info = tarfile.TarInfo(f"random/file{index:03d}.bin")
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            out.addfile(info, _RandomReader(rng, size))
            content += size
            index += 1
    tmp.rename(big)
    return big


class _RandomReader:
    """A file-like object of ``size`` pseudo-random bytes (for tarfile.addfile)."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self._rng, self._left = rng, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._rng.randbytes(n)


# The settings pack and nydus-builder both run with: zstd, blake3, 1 MiB chunks.
SETTINGS = ["--compressor", "zstd", "--digester", "blake3", "--chunk-size", str(CHUNK_SIZE)]


def pack_argv(exporter: Path, layer: Path, out: Path) -> list[str]:
    return [str(exporter), "pack", str(layer), "-o", str(out), *SETTINGS]


REF_BUILD = PROJECT_ROOT / "bin" / "rafs-ref-build"


def ref_build_argv(layer: Path, out_dir: Path) -> list[str]:
    return [str(REF_BUILD), str(layer), "-o", str(out_dir), *SETTINGS]


def ref_build_contender(tool: str, layer: Path, out_dir: Path) -> tuple[Contender, str | None]:
    problem = None if REF_BUILD.is_file() else f"{REF_BUILD} is missing: run `make interop-tools`"
    return Contender(tool, ref_build_argv(layer, out_dir), [out_dir]), problem


def side_by_side(contenders: list[tuple[Contender, str | None]], runs: int) -> list[Result]:
    """:func:`measure_side_by_side` of the contenders that can run; the others carry their
    problem as the error."""
    runnable = [c for c, problem in contenders if problem is None]
    measured = iter(measure_side_by_side(runnable, runs))
    return [
        next(measured) if problem is None else Result(tool=c.tool, argv=c.argv, error=problem)
        for c, problem in contenders
    ]


# --------------------------------------------------------------------------------------------
# Reporting


def render(report: dict[str, Any], results: list[Result], big_results: list[Result]) -> str:
    big = big_results[0] if big_results else None
    layer = report["layer"]
    lines = [
        f"layer: {layer['path']}  {layer['tar_bytes'] / MiB:.1f} MiB tar, {layer['entries']} entries, "
        f"{layer['regular_files']} files, {layer['content_bytes'] / MiB:.1f} MiB of content",
        f"{'tool':<24} {'median wall':>12} {'peak RSS':>12} {'output':>12}  runs",
    ]
    for r in [*results, *big_results]:
        out = "-" if r.output_bytes is None else f"{r.output_bytes / MiB:.1f} MiB"
        wall, rss = fmt_s(r.median_wall_s), fmt_kib(r.peak_rss_kib, report["rss_floor_kib"])
        lines.append(f"{r.tool:<24} {wall:>12} {rss:>12} {out:>12}  {len(r.wall_s)}")
    ratios = report["ratios"]

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines.append(
        f"ratios: pack/mkfs.erofs {fmt(ratios['pack_over_mkfs_erofs'])}"
        f"   pack/nydus-builder {fmt(ratios['pack_over_nydus_builder'])}"
        f"   pack/gzip {fmt(ratios['pack_over_gzip'])}"
        f"   pack peak RSS {fmt_kib(report['pack_peak_rss_kib'])}"
    )
    if big:
        big_mib = report["big_layer"]["tar_bytes"] / MiB
        lines.append(
            f"big layer ({big_mib:.0f} MiB): pack/nydus-builder {fmt(ratios['big_pack_over_nydus_builder'])}"
            f"   pack peak RSS {fmt_kib(big.peak_rss_kib)}"
        )
    for r in [*results, *big_results]:
        if r.error:
            lines.append(f"ERROR {r.tool}: {r.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, runs_help="runs per tool; the median is reported")
    parser.add_argument("--big", action="store_true", help="also measure pack on a ~2 GiB layer")
    parser.add_argument("--big-runs", type=int, default=1, help="runs of pack on the big layer (default 1)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.big_runs < 1:
        parser.error("--runs and --big-runs must be at least 1")

    try:
        rootfs = ensure_rootfs(args.cache, args.mirror)
        layer = ensure_layer(args.cache, rootfs)
        big_layer = ensure_big_layer(args.cache, layer) if args.big else None
    except (BenchError, subprocess.CalledProcessError, OSError, tarfile.TarError) as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1
    if shutil.which("mkfs.erofs") is None or shutil.which("gzip") is None:
        print("bench: mkfs.erofs and gzip are needed (run `make system-deps`)", file=sys.stderr)
        return 1

    work = args.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    exporter = find_exporter(args.exporter)
    problem = check_exporter(exporter)

    out_blob = work / "out.blob"
    meta, blob = work / "meta.img", work / "blob.img"
    mkfs_argv = [
        "mkfs.erofs",
        "--quiet",
        f"--chunksize={CHUNK_SIZE}",
        f"--blobdev={blob}",
        str(meta),
        str(rootfs),
    ]
    # pack, mkfs.erofs and nydus-builder run in turn, round after round; gzip (five times
    # slower, a reference point only) after them.
    pack, mkfs, ref = side_by_side(
        [
            (Contender("nydus-exporter pack", pack_argv(exporter, layer, out_blob), [out_blob]), problem),
            (Contender("mkfs.erofs --chunksize", mkfs_argv, [meta, blob]), None),
            ref_build_contender("nydus-builder", layer, work / "ref"),
        ],
        args.runs,
    )
    gzip = measure("gzip -6", ["gzip", "-6", "-c", str(layer)], args.runs, [])
    results = [pack, mkfs, ref, gzip]

    big: Result | None = None
    big_ref: Result | None = None
    report: dict[str, Any] = {"layer": {"path": str(layer), **layer_stats(layer)}}
    if big_layer is not None:
        big_out = work / "big.blob"
        big_argv = pack_argv(exporter, big_layer, big_out)
        big, big_ref = side_by_side(
            [
                (Contender("nydus-exporter pack (big)", big_argv, [big_out]), problem),
                ref_build_contender("nydus-builder (big)", big_layer, work / "big-ref"),
            ],
            args.big_runs,
        )
        report["big_layer"] = {"path": str(big_layer), **layer_stats(big_layer)}
    big_results = [r for r in (big, big_ref) if r is not None]
    report["results"] = [r.to_json() for r in [*results, *big_results]]
    report["ratios"] = {
        "pack_over_mkfs_erofs": ratio(pack.median_wall_s, mkfs.median_wall_s),
        "pack_over_nydus_builder": ratio(pack.median_wall_s, ref.median_wall_s),
        "pack_over_gzip": ratio(pack.median_wall_s, gzip.median_wall_s),
        "big_pack_over_nydus_builder": ratio(big.median_wall_s, big_ref.median_wall_s)
        if big and big_ref
        else None,
    }
    report["pack_peak_rss_kib"] = pack.peak_rss_kib
    report["big_pack_peak_rss_kib"] = big.peak_rss_kib if big else None
    report["rss_floor_kib"] = floor_kib()
    report["cpu_count"] = os.cpu_count()

    print(json.dumps(report, indent=2) if args.json else render(report, results, big_results))
    failed = [r for r in [*results, *big_results] if r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
