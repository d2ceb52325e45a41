#!/usr/bin/env python3
"""Run every benchmark and print one table: what is compared, the ratio now, the target.

Each benchmark (pack.py, daemon.py, rebuild.py, push.py, dedup.py, concurrency.py) runs as its
own process with ``--json``; its JSON report is kept in bench/.cache/results/NAME.json and its
stderr in NAME.log, and the table is made from those files. Every benchmark measures its pair
side by side in one run (interleaved), so the ratios hold up on a busy machine better than
the absolute times.

``--quick``: one run of each (--runs 1) instead of three. ``--only pack,daemon``: run only
those (the table still shows the others' last saved results). ``--table``: run nothing, print
the table from the saved results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
BENCHES = ("pack", "daemon", "rebuild", "push", "dedup", "concurrency")

Report = dict[str, Any]


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _daemon(r: Report) -> str:
    walls = {x["tool"]: x["median_wall_s"] for x in r["results"]}
    daemon = next((v for k, v in walls.items() if "daemon" in k), None)
    local = next((v for k, v in walls.items() if "in-process" in k), None)
    return _x(daemon / local if daemon and local else None)


def _rebuild_push(r: Report) -> str:
    return _x(r["ratios"]["push_over_skopeo_wall"])


def _rebuild(r: Report) -> str:
    ratios = r["ratios"]
    return f"{_x(ratios['rebuild_over_first_wall'])} time, {_x(ratios['rebuild_over_first_bytes'])} bytes"


def _push(r: Report) -> str:
    return _x(r["ratios"]["ours_over_skopeo_wall"])


def _pack(r: Report) -> str:
    return _x(r["ratios"]["pack_over_mkfs_erofs"])


def _pack_ref(r: Report) -> str:
    ratios = r["ratios"]
    big = ratios.get("big_pack_over_nydus_builder")
    return _x(ratios.get("pack_over_nydus_builder")) + (f"; 2 GiB layer {_x(big)}" if big else "")


def _dedup(r: Report) -> str:
    return _x(r["ratios"]["store_third_over_first_wall"])


def _concurrent(r: Report) -> str:
    ok = "all succeeded" if not r["errors"] else f"{len(r['errors'])} failed"
    return (
        f"{ok}; throughput {_x(r['concurrent_over_sequential_throughput'])} of sequential; "
        f"daemon RSS {r['daemon_peak_rss_kib'] / 1024:.0f} MiB "
        f"({r['daemon_and_workers_peak_rss_kib'] / 1024:.0f} MiB with workers)"
    )


# (benchmark, what, how to read "now" from its report, target)
ROWS: list[tuple[str, str, Callable[[Report], str], str]] = [
    ("daemon", "export through the daemon (`--addr`) / the same export in-process", _daemon, "≤ 1.10x"),
    ("rebuild", "export + push to a local registry / export to a layout + `skopeo copy` of it",
     _rebuild_push, "≤ 1.00x"),
    ("push", "push of a converted layout / `skopeo copy` of the same layout", _push, "≤ 1.10x"),
    ("rebuild", "rebuild (`chunk-store=true`, a few files changed in the one layer) / first export",
     _rebuild, "≤ 0.30x time"),
    ("pack", "`pack` / `mkfs.erofs --chunksize=1M --blobdev` (which compresses nothing)", _pack, "≤ 1.00x"),
    ("pack", "`pack` / nydus-builder (the Rust builder, same tar and settings; `--big`: 2 GiB)", _pack_ref,
     "≤ 1.00x"),
    ("dedup", "three image versions (`make bench-dedup`), time of the third export / the first",
     _dedup, "≤ 0.30x"),
    ("concurrency", "8 concurrent exports of different 200 MB layers through one daemon", _concurrent,
     "all succeed; ≥ 0.85x; RSS ≤ 1 GiB"),
]  # fmt: skip


def table(results: Path) -> str:
    lines = ["| what | now | target |", "| --- | --- | --- |"]
    for bench, what, read, target in ROWS:
        path = results / f"{bench}.json"
        try:
            now = read(json.loads(path.read_text()))
        except FileNotFoundError:
            now = "not run"
        except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
            now = f"no result ({type(exc).__name__}; see {bench}.log)"
        lines.append(f"| {what} | {now} | {target} |")
    return "\n".join(lines)


def run_one(bench: str, runs: int, results: Path, passthrough: list[str]) -> bool:
    argv = [sys.executable, str(BENCH_DIR / f"{bench}.py"), "--json", "--runs", str(runs), *passthrough]
    print(f"bench-all: {bench} ({' '.join(argv[1:])})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    out, log = results / f"{bench}.json", results / f"{bench}.log"
    tmp = out.with_suffix(".json.tmp")
    with tmp.open("wb") as stdout, log.open("wb") as stderr:
        proc = subprocess.run(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, check=False)
    code = proc.returncode
    took = time.perf_counter() - started
    try:
        json.loads(tmp.read_text())
    except ValueError:
        tmp.unlink()
        out.unlink(missing_ok=True)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        print(f"bench-all: {bench} failed (exit {code}, {took:.0f} s):\n{tail}", file=sys.stderr)
        return False
    tmp.rename(out)  # kept even with exit 1 (a target missed, an export failed): the table says
    print(f"bench-all: {bench} done (exit {code}, {took:.0f} s)", file=sys.stderr)
    return code == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run of each benchmark")
    parser.add_argument("--runs", type=int, help="runs of each benchmark (default 3, --quick 1)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--table", action="store_true", help="print the table of the saved results only")
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache", help="benchmark cache directory")
    args = parser.parse_args(argv)
    results = args.cache / "results"
    results.mkdir(parents=True, exist_ok=True)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHES)
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    ok = True
    if not args.table:
        runs = args.runs or (1 if args.quick else 3)
        for bench in chosen:
            ok = run_one(bench, runs, results, ["--cache", str(args.cache)]) and ok
    print(f"\n{os.cpu_count()} CPUs; results in {results}\n")
    print(table(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
