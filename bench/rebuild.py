#!/usr/bin/env python3
"""Benchmark: export + push against export to a layout + skopeo copy, and a chunk-store rebuild.

The input is the one-layer Debian bookworm minbase rootfs tar that bench/pack.py caches
(bench/.cache/layer.tar, built with debootstrap if missing) and, cached beside it as
bench/.cache/layer-rebuild.tar, the same tar with a few files changed (REBUILT_FILES regular
files of the rootfs get a line appended: "a few files changed in the one layer").

Each measured command pushes to a fresh, empty ``docker-registry`` of its own (plain HTTP on
127.0.0.1, a temporary directory: no blob can be mounted from an earlier push) and, as the
median of --runs runs, reports the wall time of:

1. Push. Side by side (alternating which goes first):

   * ours: ``nydus-exporter export tar:LAYER --output type=nydus,name=HOST/ours/app:1,
     oci-mediatypes=true --progress quiet`` (convert and push in one process),
   * skopeo: ``nydus-exporter export tar:LAYER --output type=nydus,push=false,oci-layout=DIR,
     oci-mediatypes=true,name=app:1`` then ``skopeo copy --dest-tls-verify=false
     oci:DIR:1 docker://HOST/skopeo/app:1``, summed.

   Ratio ours/skopeo (target <= 1.0x).

2. Rebuild with the chunk store: ``nydus-exporter export tar:LAYER --output type=nydus,
   name=HOST/store/app:1,oci-mediatypes=true,chunk-store=true --state-dir STATE`` with a fresh
   STATE (the first export), then the same with LAYER-REBUILD and tag 2 against the same STATE
   and repository (the rebuild). Ratio rebuild/first of the time and of the bytes the registry
   stored (target <= 0.30x time).

This is a benchmark, not a test: it fails (exit 1) with a clear message when a tool is missing
or a command fails. Registries and temporary directories are removed, also on failure.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    LocalRegistry,
    Result,
    bench_parser,
    check_exporter,
    ensure_layer,
    ensure_rootfs,
    find_exporter,
    fmt_ratio,
    fmt_s,
    missing_tools,
    ratio,
    run_once,
    start_registry,
)

REBUILT_FILES = 5
TARGET_PUSH = 1.0
TARGET_REBUILD = 0.30
EXPORT_TIMEOUT = 900.0
TO_LAYOUT = "oci-mediatypes=true,name=app:1"


def ensure_rebuild_layer(cache: Path, layer: Path) -> Path:
    """``layer`` with REBUILT_FILES regular files (spread over the tar) changed."""
    out = cache / "layer-rebuild.tar"
    if out.is_file():
        return out
    tmp = cache / "layer-rebuild.tar.tmp"
    with tarfile.open(layer) as src:
        members = src.getmembers()
        regular = [m for m in members if m.isreg() and m.size > 4096]
        step = max(1, len(regular) // REBUILT_FILES)
        changed = {m.name for m in regular[::step][:REBUILT_FILES]}
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as dst:
            for member in members:
                data = src.extractfile(member) if member.isreg() else None
                if member.name in changed and data is not None:
                    content = data.read() + b"\n# rebuilt\n"
                    member.size = len(content)
                    dst.addfile(member, io.BytesIO(content))
                else:
                    dst.addfile(member, data)
    tmp.rename(out)
    return out


def _stored_bytes(registry: LocalRegistry) -> int:
    return sum(registry.stored_blobs().values())


def _timed(argv: list[str], what: str) -> float:
    wall, _rss, code, tail = run_once(argv, subprocess.DEVNULL, timeout=EXPORT_TIMEOUT)
    if code != 0:
        raise BenchError(f"{what} failed (exit {code}): {' '.join(argv)}\n{tail}")
    return wall


def _export(exporter: Path, layer: Path, output: str, *extra: str) -> list[str]:
    return [str(exporter), "export", f"tar:{layer}", "--output", output, "--progress", "quiet", *extra]


def run(exporter: Path, layer: Path, rebuilt: Path, runs: int, scratch: Path) -> dict[str, Any]:
    ours, skopeo = Result("export + push", []), Result("export to a layout + skopeo copy", [])
    first, rebuild = Result("chunk-store first export", []), Result("chunk-store rebuild", [])
    first_bytes: list[int] = []
    rebuild_bytes: list[int] = []
    for i in range(runs):
        print(f"run {i + 1}/{runs}", file=sys.stderr)
        # Each side on a registry of its own: skopeo would otherwise mount the blob ours
        # pushed (the conversion is reproducible), and the other way round.
        order = ["ours", "skopeo"] if i % 2 == 0 else ["skopeo", "ours"]
        for which in order:
            registry = start_registry(scratch)
            try:
                host = registry.host
                if which == "ours":
                    ours.argv = _export(
                        exporter, layer, f"type=nydus,name={host}/ours/app:1,oci-mediatypes=true"
                    )
                    ours.wall_s.append(_timed(ours.argv, "export + push"))
                    continue
                layout = scratch / "layout"
                shutil.rmtree(layout, ignore_errors=True)
                steps = [
                    _export(exporter, layer, f"type=nydus,push=false,oci-layout={layout},{TO_LAYOUT}"),
                    [
                        "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci:{layout}:1", f"docker://{host}/skopeo/app:1",
                    ],
                ]  # fmt: skip
                skopeo.argv = [" && ".join(" ".join(step) for step in steps)]
                skopeo.wall_s.append(sum(_timed(step, "export + skopeo") for step in steps))
            finally:
                registry.stop()
        # A registry of its own: the first export's blob must count as new bytes.
        registry = start_registry(scratch)
        try:
            host = registry.host
            state = scratch / "state"
            shutil.rmtree(state, ignore_errors=True)
            store = "oci-mediatypes=true,chunk-store=true"
            before = _stored_bytes(registry)
            first_argv = _export(
                exporter, layer, f"type=nydus,name={host}/store/app:1,{store}", "--state-dir", str(state)
            )
            first.wall_s.append(_timed(first_argv, "first export"))
            middle = _stored_bytes(registry)
            rebuild_argv = _export(
                exporter, rebuilt, f"type=nydus,name={host}/store/app:2,{store}", "--state-dir", str(state)
            )
            rebuild.wall_s.append(_timed(rebuild_argv, "rebuild"))
            first.argv, rebuild.argv = first_argv, rebuild_argv
            first_bytes.append(middle - before)
            rebuild_bytes.append(_stored_bytes(registry) - middle)
        finally:
            registry.stop()
    return {
        "results": [r.to_json() for r in (ours, skopeo, first, rebuild)],
        "stored_bytes": {"first": first_bytes, "rebuild": rebuild_bytes},
        "ratios": {
            "push_over_skopeo_wall": ratio(ours.median_wall_s, skopeo.median_wall_s),
            "rebuild_over_first_wall": ratio(rebuild.median_wall_s, first.median_wall_s),
            "rebuild_over_first_bytes": ratio(
                float(sorted(rebuild_bytes)[len(rebuild_bytes) // 2]) if rebuild_bytes else None,
                float(sorted(first_bytes)[len(first_bytes) // 2]) if first_bytes else None,
            ),
        },
        "targets": {"push_over_skopeo_wall": TARGET_PUSH, "rebuild_over_first_wall": TARGET_REBUILD},
        "cpu_count": os.cpu_count(),
    }


def render(report: dict[str, Any]) -> str:
    lines = []
    for r in report["results"]:
        lines.append(f"{r['tool']:<36} {fmt_s(r['median_wall_s'])}")
    ratios = report["ratios"]
    lines.append(
        f"export+push / export+skopeo: {fmt_ratio(ratios['push_over_skopeo_wall'])}"
        f" (target <= {TARGET_PUSH:.2f}x)"
    )
    lines.append(
        f"rebuild / first (chunk store): {fmt_ratio(ratios['rebuild_over_first_wall'])} time, "
        f"{fmt_ratio(ratios['rebuild_over_first_bytes'])} bytes (target <= {TARGET_REBUILD:.2f}x time)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    args = parser.parse_args(argv)
    missing = missing_tools(("skopeo", "docker-registry", "tar"))
    if missing:
        print(f"bench: missing {', '.join(missing)} (run `make system-deps`)", file=sys.stderr)
        return 1
    exporter = find_exporter(args.exporter)
    problem = check_exporter(exporter, "export")
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 1
    cache: Path = args.cache.resolve()
    try:
        layer = ensure_layer(cache, ensure_rootfs(cache, args.mirror))
        rebuilt = ensure_rebuild_layer(cache, layer)
        (cache / "work").mkdir(parents=True, exist_ok=True)
    except (BenchError, OSError, tarfile.TarError, subprocess.CalledProcessError) as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="rebuild-", dir=cache / "work"))
    try:
        report = run(exporter, layer, rebuilt, args.runs, scratch)
    except (BenchError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
