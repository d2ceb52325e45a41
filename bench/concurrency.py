#!/usr/bin/env python3
"""Benchmark: 8 concurrent exports of different 200 MB layers through one daemon.

The layers are the Debian bookworm minbase rootfs tar that bench/pack.py caches
(bench/.cache/layer.tar, ~201 MiB) with one small file appended that names the copy, so all
have different digests (no layer cache hit) and the same conversion cost; they are cached as
bench/.cache/concurrent/layerN.tar. One daemon (``nydus-exporter serve``, default
``max_concurrent_exports`` = CPUs) serves, as the median of --runs runs each:

* sequential: the exports one after another
  (``nydus-exporter export --addr unix:///SOCK tar:layerN.tar --output type=nydus,push=false,
  oci-layout=OUT/N,oci-mediatypes=true --progress quiet``),
* concurrent: the same --exports started at once.

The daemon's layer cache is emptied and the outputs removed before each batch. It reports the
throughput ratio concurrent/sequential (target >= 0.85: within 15 %), that every export
succeeded, and the daemon's peak RSS (VmHWM of the daemon process; target <= 1 GiB) and the
peak sampled RSS of the daemon with its conversion workers.

This is a benchmark, not a test: exit 1 when an export fails or setup is impossible. The
daemon is stopped and temporary directories removed, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    bench_parser,
    check_exporter,
    ensure_layer,
    ensure_rootfs,
    find_exporter,
    fmt_ratio,
    fmt_s,
    ratio,
    start_daemon,
)

EXPORTS = 8
TARGET_THROUGHPUT = 0.85  # concurrent throughput / sequential throughput
TARGET_RSS_KIB = 1 << 20  # 1 GiB
EXPORT_TIMEOUT = 900.0


def ensure_layers(cache: Path, layer: Path, count: int) -> list[Path]:
    base = cache / "concurrent"
    base.mkdir(parents=True, exist_ok=True)
    out = []
    for n in range(count):
        tar = base / f"layer{n}.tar"
        if not tar.is_file():
            tmp = tar.with_suffix(".tmp")
            shutil.copyfile(layer, tmp)
            stamp = base / f"copy-{n}"
            stamp.mkdir(exist_ok=True)
            (stamp / "bench-copy").write_text(f"copy {n}\n")
            # A tar ends with two zero blocks: `tar -r` appends before them.
            subprocess.run(["tar", "-rf", str(tmp), "-C", str(stamp), "bench-copy"], check=True)
            shutil.rmtree(stamp)
            tmp.rename(tar)
        out.append(tar)
    return out


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


class RssSampler:
    """Peak of the summed RSS of a process and its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_kib = max(self.peak_kib, sum(_rss_kib(p) for p in _descendants(self.pid)))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _argv(exporter: Path, address: str, tar: Path, out: Path) -> list[str]:
    output = f"type=nydus,push=false,oci-layout={out},oci-mediatypes=true"
    return [str(exporter), "export", "--addr", address, f"tar:{tar}", "--output", output, "--progress", "quiet"]  # fmt: skip  # noqa: E501


def _batch(argvs: list[list[str]], concurrent: bool) -> tuple[float, list[str]]:
    errors: list[str] = []
    start = time.perf_counter()
    if concurrent:
        procs = [
            subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            for a in argvs
        ]
        try:
            for proc in procs:
                _, err = proc.communicate(timeout=EXPORT_TIMEOUT)
                if proc.returncode != 0:
                    errors.append(err.decode(errors="replace")[-500:])
        finally:
            for proc in procs:  # a timeout or Ctrl-C: no export is left running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    else:
        for a in argvs:
            res = subprocess.run(a, capture_output=True, timeout=EXPORT_TIMEOUT, check=False)
            if res.returncode != 0:
                errors.append(res.stderr.decode(errors="replace")[-500:])
    return time.perf_counter() - start, errors


def run(exporter: Path, layers: list[Path], runs: int, scratch: Path) -> dict[str, Any]:
    outputs = scratch / "out"
    outputs.mkdir()
    seq: list[float] = []
    conc: list[float] = []
    errors: list[str] = []
    with start_daemon(exporter, allowed_roots=[outputs], parent=scratch) as daemon:
        argvs = [_argv(exporter, daemon.address, tar, outputs / f"o{n}") for n, tar in enumerate(layers)]
        with RssSampler(daemon.process.pid) as sampler:
            for i in range(runs):
                # Alternate which goes first (neither always gets the warmer page cache).
                for concurrent in (False, True) if i % 2 == 0 else (True, False):
                    daemon.clear_layer_cache()
                    shutil.rmtree(outputs)
                    outputs.mkdir()
                    what = "concurrent" if concurrent else "sequential"
                    print(f"run {i + 1}/{runs}: {what}", file=sys.stderr)
                    wall, errs = _batch(argvs, concurrent)
                    errors += [f"{what}: {e}" for e in errs]
                    (conc if concurrent else seq).append(wall)
        daemon_hwm = _hwm_kib(daemon.process.pid)
    seq_s, conc_s = sorted(seq)[len(seq) // 2], sorted(conc)[len(conc) // 2]
    # Throughput = exports / wall time: concurrent over sequential is sequential over concurrent wall.
    throughput = ratio(seq_s, conc_s)
    return {
        "exports": len(layers),
        "layer_bytes": layers[0].stat().st_size,
        "sequential_wall_s": seq,
        "concurrent_wall_s": conc,
        "median_sequential_wall_s": seq_s,
        "median_concurrent_wall_s": conc_s,
        "concurrent_over_sequential_throughput": throughput,
        "daemon_peak_rss_kib": daemon_hwm,
        "daemon_and_workers_peak_rss_kib": sampler.peak_kib,
        "errors": errors,
        "targets": {"throughput": TARGET_THROUGHPUT, "daemon_peak_rss_kib": TARGET_RSS_KIB},
        "cpu_count": os.cpu_count(),
    }


def render(report: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{report['exports']} exports of {report['layer_bytes'] / (1 << 20):.0f} MiB layers",
            f"sequential {fmt_s(report['median_sequential_wall_s'])}   "
            f"concurrent {fmt_s(report['median_concurrent_wall_s'])}",
            f"throughput concurrent/sequential {fmt_ratio(report['concurrent_over_sequential_throughput'])}"
            f" (target >= {TARGET_THROUGHPUT:.2f}x)",
            f"daemon peak RSS {report['daemon_peak_rss_kib'] / 1024:.0f} MiB (target <= 1024 MiB); "
            f"with workers {report['daemon_and_workers_peak_rss_kib'] / 1024:.0f} MiB",
            *(f"error: {e}" for e in report["errors"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, runs_help="batches of each kind")
    parser.add_argument("--exports", type=int, default=EXPORTS, help=f"exports at once (default {EXPORTS})")
    args = parser.parse_args(argv)
    exporter = find_exporter(args.exporter)
    problem = check_exporter(exporter, "serve")
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 1
    cache: Path = args.cache.resolve()
    try:
        layer = ensure_layer(cache, ensure_rootfs(cache, args.mirror))
        layers = ensure_layers(cache, layer, args.exports)
        (cache / "work").mkdir(parents=True, exist_ok=True)
    except (BenchError, OSError, subprocess.CalledProcessError) as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="conc-", dir=cache / "work"))
    try:
        report = run(exporter, layers, args.runs, scratch)
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
