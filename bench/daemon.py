#!/usr/bin/env python3
"""Benchmark: exporting through the daemon (`nydus-exporter serve`, gRPC on a unix socket).

It starts one daemon for the whole run (``nydus-exporter serve --listen unix:///TMP/...
--state-dir TMP/state --allowed-root TMP/out --http 127.0.0.1:PORT`` in a temporary directory
under bench/.cache/work; its metrics endpoint is how the benchmark checks that every layer
was really converted) and reports:

1. gRPC overhead. The 3-layer image that bench/export.py caches (bench/.cache/export/image,
   built on first use exactly as that benchmark builds it) exported, as the median of --runs
   runs, both through the daemon and in-process:

   * ``nydus-exporter export --addr unix:///SOCK oci:IMAGE:bench --output type=nydus,
     push=false,oci-layout=OUT,oci-mediatypes=true --progress quiet`` (the client streams
     every layer over the socket, the daemon spools, converts in a worker process and
     publishes OUT),
   * ``nydus-exporter export oci:IMAGE:bench --output ...`` (in-process),

   alternating which goes first from one run to the next. OUT is removed and the daemon's
   layer cache emptied before every run; after each daemon run its counters must show one
   cache miss per layer and no hit (else the run is an error: it did not really convert).
   Overhead = (daemon - in-process) / in-process of the median wall times (target <= 10 %).
   The two outputs must have the same root manifest digest (the conversion is reproducible).
   The peak RSS shown for the daemon path is the client's only.

2. Concurrency. 8 small images (2 tiny gzip layers each, all 16 layers distinct, so nothing
   is served from the layer cache) exported at once with ``export --addr``, to 8 output
   directories, --runs times (layer cache emptied before each batch): throughput = 8 / the
   median batch wall time, and the per-export latencies. The daemon converts at most
   ``max_concurrent_exports`` (default: CPUs) at a time; the rest wait for a slot.

3. Resolve latency, measured in this process with the Python client
   (``nydus_exporter.client.exporter.ExporterClient.resolve``): 200 Resolve calls spread over
   8 concurrent tasks, once on the idle daemon and once during each export batch of 2
   ("under load"), plus 200 calls one at a time on the idle daemon (the round trip without
   queueing); p50 and p99 in milliseconds. The instances are released afterwards.

This is a benchmark, not a test: it fails (exit 1) with a clear message when a tool or the
venv is missing, when the daemon does not start, or when any export fails. The daemon is
stopped (SIGTERM, then a wait for its drain) and every temporary directory removed, also on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    LocalDaemon,
    MiB,
    Result,
    bench_parser,
    check_exporter,
    find_exporter,
    floor_kib,
    fmt_kib,
    fmt_s,
    missing_tools,
    percentile,
    ratio,
    remove_output,
    run_once,
    start_daemon,
)
from export import TAG, LayerInput, ensure_image, export_argv, write_image

TARGET_OVERHEAD = 0.10  # the daemon path may take at most 10 % longer than in-process
CONCURRENCY = 8  # exports at once, and Resolve tasks at once
SMALL_LAYERS = 2
RESOLVE_CALLS = 200
RESOLVE_WARMUP = 8  # calls before timing (connects the channel, warms the server's code paths)
EXPORT_TIMEOUT = 900.0  # seconds; a hung export is killed and reported, never waited for
SMALL_EXPORT_TIMEOUT = 300.0
DAEMON_GRACE = 10.0  # --grace-period: how long SIGTERM lets running exports finish
TOOLS = ("skopeo", "tar")  # building and checking the cached source image
HITS, MISSES = "nydus_exporter_layer_cache_hits_total", "nydus_exporter_layer_cache_misses_total"
SETUP_ERRORS = (BenchError, subprocess.CalledProcessError, OSError, ValueError, KeyError, tarfile.TarError)


# --------------------------------------------------------------------------------------------
# Importing the client


def load_client() -> Any:
    """``nydus_exporter.client.exporter``, or a clear error when this Python lacks the package."""
    try:
        return importlib.import_module("nydus_exporter.client.exporter")
    except ImportError as exc:
        raise BenchError(
            f"{sys.executable} cannot import nydus_exporter.client.exporter ({exc}); "
            "run it with the project's venv (make venv)"
        ) from None


def remote_argv(exporter: Path, address: str, image: Path, out: Path) -> list[str]:
    """``export_argv`` (bench/export.py) with ``--addr``: the same export through the daemon."""
    argv = export_argv(exporter, image, out)
    return [*argv[:2], "--addr", address, *argv[2:]]


def root_digest(layout: Path) -> str | None:
    """The digest of the (single) root the OCI layout's index.json lists, if any."""
    try:
        index = json.loads((layout / "index.json").read_text())
        return str(index["manifests"][0]["digest"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def cache_counters(daemon: LocalDaemon) -> tuple[float, float]:
    """(layer cache hits, misses) so far; the difference across a run is what it did."""
    try:
        samples = daemon.metrics()
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise BenchError(f"cannot read the daemon's metrics on http://{daemon.http_host}: {exc}") from None
    return samples.get(HITS, 0.0), samples.get(MISSES, 0.0)


def cache_problem(before: tuple[float, float], after: tuple[float, float], layers: int) -> str | None:
    hits, misses = after[0] - before[0], after[1] - before[1]
    if hits or misses != layers:
        return (
            f"the daemon counted {hits:.0f} layer cache hits and {misses:.0f} misses, expected 0 and "
            f"{layers}: the run did not convert every layer"
        )
    return None


# --------------------------------------------------------------------------------------------
# 1. gRPC overhead


@dataclass
class ExportPath:
    """One way of exporting the big image: its result, output directory and root digests."""

    result: Result
    out: Path
    argv: list[str]
    via_daemon: bool
    digests: list[str] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)  # daemon runs: where the time went


def measure_overhead(paths: Sequence[ExportPath], daemon: LocalDaemon, layers: int, runs: int) -> None:
    for i in range(runs):
        # Alternate who goes first: neither path always gets the warmer page cache.
        for path in paths if i % 2 == 0 else paths[::-1]:
            if path.result.error is None:
                print(f"run {i + 1}/{runs}: {path.result.tool}", file=sys.stderr)
                _measure_one(path, daemon, layers)
    for path in paths:
        if path.result.error is None:
            path.result.output_bytes = sum(p.stat().st_size for p in path.out.rglob("*") if p.is_file())


def _measure_one(path: ExportPath, daemon: LocalDaemon, layers: int) -> None:
    result = path.result
    remove_output(path.out)
    before = (0.0, 0.0)
    log_offset = 0
    try:
        if path.via_daemon:
            daemon.clear_layer_cache()
            before = cache_counters(daemon)
            log_offset = daemon.log_file.stat().st_size
        wall, rss, code, tail = run_once(path.argv, subprocess.DEVNULL, timeout=EXPORT_TIMEOUT)
    except (OSError, BenchError) as exc:
        result.error = f"cannot run {path.argv[0]}: {exc}"
        return
    if code != 0:
        result.error = f"exit {code}: {tail or '(no output)'}"
        if path.via_daemon:
            result.error += f"\ndaemon log:\n{daemon.log_tail(8)}"
        return
    digest = root_digest(path.out)
    if digest is None:
        result.error = f"no image in {path.out}/index.json after a successful exit"
        return
    if path.via_daemon:
        try:
            problem = cache_problem(before, cache_counters(daemon), layers)
        except BenchError as exc:
            problem = str(exc)
        if problem is not None:
            result.error = problem
            return
        phases = daemon_phases(daemon.log_file, log_offset, wall)
        if phases is not None:
            path.phases.append(phases)
    path.digests.append(digest)
    result.wall_s.append(wall)
    result.max_rss_kib.append(rss)


def _log_events(log: Path, offset: int) -> list[dict[str, Any]]:
    """The daemon's JSON log lines written after ``offset`` (anything else is skipped)."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def daemon_phases(log: Path, offset: int, wall: float) -> dict[str, float] | None:
    """Where one daemon export's wall time went, from the daemon's log (its ``export
    started``, ``converted`` and ``export finished`` events; None if they are not there):

    * ``receive_s``: from the Export header to the worker spec (the client streams every
      layer, the daemon spools and checks it; a free warm worker already packs each layer
      as its bytes arrive, so this phase overlaps part of the conversion),
    * ``convert_s``: the conversion worker from the spec on (what was not packed while
      receiving, the merge, the image),
    * ``publish_s``: from the end of the conversion to the result (moving it into OUT),
    * ``client_s``: the rest of the wall time: the client's start-up, imports, Resolve and exit.
    """
    found: dict[str, dict[str, Any]] = {}
    for event in _log_events(log, offset):
        name = event.get("event")
        if name in ("export started", "converted", "export finished") and name not in found:
            found[str(name)] = event
    try:
        started = datetime.fromisoformat(str(found["export started"]["timestamp"])).timestamp()
        converted_at = datetime.fromisoformat(str(found["converted"]["timestamp"])).timestamp()
        convert_s = float(found["converted"]["seconds"])
        total_s = float(found["export finished"]["seconds"])
    except (KeyError, ValueError, TypeError):
        return None
    receive_s = converted_at - convert_s - started
    return {
        "receive_s": receive_s,
        "convert_s": convert_s,
        "publish_s": total_s - receive_s - convert_s,
        "client_s": wall - total_s,
    }


def median_phases(runs: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    if not runs:
        return None
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


# --------------------------------------------------------------------------------------------
# 2. Small images, exported 8 at once


def _tar_of(path: Path, files: Mapping[str, bytes]) -> None:
    """A tar of ``files`` (path -> content) and their parent directories, fixed metadata."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({str(Path(name).parent) for name in files} - {"."})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(info, io.BytesIO(data))


def make_small_images(base: Path, count: int) -> list[Path]:
    """``count`` OCI layouts (tag ``bench``) of SMALL_LAYERS tiny layers; every layer's bytes
    name their image, so no two layers share a digest (no cache hit, no dedupe)."""
    images = []
    for n in range(count):
        layers = []
        for k in range(SMALL_LAYERS):
            tar = base / f"small{n}-layer{k}.tar"
            _tar_of(
                tar,
                {
                    f"app{k}/hello.txt": f"image {n} layer {k}\n".encode(),
                    f"app{k}/data.bin": bytes((n * 31 + k * 7 + i) % 256 for i in range(16 << 10)),
                    f"etc/app{k}.conf": f"image={n}\nlayer={k}\n".encode(),
                },
            )
            layers.append(LayerInput(f"small{k}", tar, base, f"COPY app{k}/ /app{k}/"))
        image = base / f"small{n}"
        with contextlib.redirect_stderr(io.StringIO()):  # write_image says "compressing layer ..."
            write_image(image, layers)
        images.append(image)
    return images


@dataclass
class Batch:
    wall_s: float
    latencies_s: list[float]
    errors: list[str]


async def _run_export(argv: list[str], limit: float) -> tuple[float, str | None]:
    """One ``export --addr`` child: (seconds until it exited, the error or None)."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # killed as a group on timeout or Ctrl-C
    )
    try:
        async with asyncio.timeout(limit):
            _, err = await proc.communicate()
    except TimeoutError:
        return time.perf_counter() - start, f"did not finish within {limit:.0f} s (killed)"
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        return elapsed, f"exit {proc.returncode}: {tail or '(no output)'}"
    return elapsed, None


async def run_batch(argvs: Sequence[list[str]], outs: Sequence[Path]) -> Batch:
    start = time.perf_counter()
    # return_exceptions: when cancelled (SIGTERM), gather waits until EVERY child has been
    # killed and reaped; without it, it would return once the first one was.
    gathered = await asyncio.gather(
        *(_run_export(argv, SMALL_EXPORT_TIMEOUT) for argv in argvs), return_exceptions=True
    )
    wall = time.perf_counter() - start
    done = [
        (0.0, f"cannot run {argvs[i][0]}: {item}") if isinstance(item, BaseException) else item
        for i, item in enumerate(gathered)
    ]
    errors = [f"export {i}: {err}" for i, (_, err) in enumerate(done) if err is not None]
    for i, out in enumerate(outs):
        if done[i][1] is None and root_digest(out) is None:
            errors.append(f"export {i}: no image in {out}/index.json after a successful exit")
    return Batch(wall, [elapsed for elapsed, _ in done], errors)


# --------------------------------------------------------------------------------------------
# 3. Resolve latency


@dataclass
class ResolveRun:
    latencies_s: list[float]
    wall_s: float


async def resolve_load(client: Any, attrs: Mapping[str, str], calls: int, tasks: int) -> ResolveRun:
    """``calls`` Resolve RPCs spread over ``tasks`` concurrent tasks, each timed on its own;
    the instances they create are released afterwards (not timed)."""
    remaining = calls
    latencies: list[float] = []
    instances: list[str] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            response = await client.resolve(attrs)
            latencies.append(time.perf_counter() - t0)
            instances.append(response.instance_id)

    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(tasks):
                tg.create_task(worker())
        wall = time.perf_counter() - start
    finally:
        await asyncio.gather(*(client.release(i) for i in instances), return_exceptions=True)
    return ResolveRun(latencies, wall)


def resolve_summary(runs: Sequence[ResolveRun], concurrency: int = CONCURRENCY) -> dict[str, Any]:
    latencies = [s for r in runs for s in r.latencies_s]
    if not latencies:
        return {"calls": 0}

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "calls": len(latencies),
        "concurrency": concurrency,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies)),
        "mean_ms": ms(statistics.fmean(latencies)),
        "calls_per_s": round(len(latencies) / sum(r.wall_s for r in runs), 1),
    }


# --------------------------------------------------------------------------------------------
# 2 + 3 together


@dataclass
class Concurrency:
    batches: list[Batch] = field(default_factory=list)
    resolve_idle: list[ResolveRun] = field(default_factory=list)
    resolve_sequential: list[ResolveRun] = field(default_factory=list)
    resolve_loaded: list[ResolveRun] = field(default_factory=list)
    resolve_during_batch: list[bool] = field(default_factory=list)  # the batch still ran at the end
    errors: list[str] = field(default_factory=list)


async def measure_concurrency(
    client_module: Any, daemon: LocalDaemon, argvs: Sequence[list[str]], outs: Sequence[Path],
    resolve_attrs: Mapping[str, str], runs: int, report: Concurrency,
) -> None:  # fmt: skip
    channel = client_module.open_channel(daemon.address)
    try:
        client = client_module.ExporterClient(channel)
        await resolve_load(client, resolve_attrs, RESOLVE_WARMUP, CONCURRENCY)
        report.resolve_idle.append(await resolve_load(client, resolve_attrs, RESOLVE_CALLS, CONCURRENCY))
        # One at a time: the cost of one round trip, without the queueing of 8 in flight.
        report.resolve_sequential.append(await resolve_load(client, resolve_attrs, RESOLVE_CALLS, 1))
        layers = SMALL_LAYERS * len(argvs)
        for i in range(runs):
            print(f"run {i + 1}/{runs}: {len(argvs)} concurrent small exports", file=sys.stderr)
            for out in outs:
                remove_output(out)
            daemon.clear_layer_cache()
            before = cache_counters(daemon)
            batch_task = asyncio.create_task(run_batch(argvs, outs))
            try:
                loaded = await resolve_load(client, resolve_attrs, RESOLVE_CALLS, CONCURRENCY)
            except BaseException:
                batch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch_task
                raise
            report.resolve_during_batch.append(not batch_task.done())
            report.resolve_loaded.append(loaded)
            batch = await batch_task
            report.batches.append(batch)
            if batch.errors:
                report.errors += batch.errors
                report.errors.append(f"daemon log:\n{daemon.log_tail(8)}")
                return
            problem = cache_problem(before, cache_counters(daemon), layers)
            if problem is not None:
                report.errors.append(problem)
                return
    finally:
        await channel.close()


# --------------------------------------------------------------------------------------------
# Reporting


def render(report: dict[str, Any], results: list[Result]) -> str:
    over = report["overhead"]
    image = report["image"]
    lines = [
        f"image: oci:{image['path']}:{TAG}  {image['layers']} layers, "
        f"{image['blob_bytes'] / MiB:.1f} MiB of gzip layers",
        f"daemon: {report['daemon']['address']}  ({report['cpu_count']} CPUs, max_concurrent_exports = CPUs)",
        f"{'export':<36} {'median wall':>12} {'peak RSS':>12} {'output':>12}  runs",
    ]
    for r in results:
        out = "-" if r.output_bytes is None else f"{r.output_bytes / MiB:.1f} MiB"
        wall, rss = fmt_s(r.median_wall_s), fmt_kib(r.peak_rss_kib, report["rss_floor_kib"])
        lines.append(f"{r.tool:<36} {wall:>12} {rss:>12} {out:>12}  {len(r.wall_s)}")
    value = over["grpc_overhead"]
    shown = "-" if value is None else f"{value * 100:+.1f} %"
    verdict = "" if value is None else (" met" if value <= TARGET_OVERHEAD else " NOT met")
    same = {True: "same root digest", False: "DIFFERENT root digests", None: "root digests not compared"}
    lines.append(
        f"gRPC overhead: {shown} (target <= {TARGET_OVERHEAD * 100:.0f} %{verdict}); "
        f"{same[over['same_root_digest']]}"
    )
    phases = over["median_daemon_phases_s"]
    if phases:
        lines.append(
            "daemon path, median per phase (from the daemon's log): "
            + ", ".join(f"{key.removesuffix('_s')} {value:.2f} s" for key, value in phases.items())
        )
    conc = report["concurrency"]
    if conc["batches"]:
        lat = conc["export_latency_s"]
        lines.append(
            f"{conc['exports']} concurrent small exports ({SMALL_LAYERS} tiny layers each): median batch "
            f"{fmt_s(conc['median_batch_wall_s'])}, throughput {conc['throughput_exports_per_s']:.2f} "
            f"exports/s; per export p50 {fmt_s(lat['p50'])}, p99 {fmt_s(lat['p99'])} "
            f"({conc['batches']} batches)"
        )
    for label, key in (
        ("idle, one at a time", "idle_sequential"),
        ("idle", "idle"),
        ("during the export batches", "under_load"),
    ):
        res = report["resolve"][key]
        if res.get("calls"):
            lines.append(
                f"Resolve ({label}): {res['calls']} calls over {res['concurrency']} tasks: "
                f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, max {res['max_ms']:.2f} ms, "
                f"{res['calls_per_s']:.0f} calls/s"
            )
    for note in report["notes"]:
        lines.append(f"note: {note}")
    for r in results:
        if r.error:
            lines.append(f"ERROR {r.tool}: {r.error}")
    for error in conc["errors"]:
        lines.append(f"ERROR concurrency: {error}")
    return "\n".join(lines)


async def _sigterm_cancels(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; SIGTERM cancels it, so its finally blocks (export children killed and
    reaped, the channel closed) run inside the loop, then the benchmark exits 143."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def cancel() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, cancel)
    try:
        await work
    except asyncio.CancelledError:
        if not terminated:
            raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminated)
    if terminated:
        raise SystemExit(128 + signal.SIGTERM)


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM ends the benchmark like Ctrl-C does: through every finally (daemon stopped,
    # children killed, temporary directories removed), not on the spot.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, runs_help="runs per export path and export batches")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    signal.signal(signal.SIGTERM, _terminated)

    missing = missing_tools(TOOLS)
    if missing:
        print(f"bench: missing {', '.join(missing)} (run `make system-deps`)", file=sys.stderr)
        return 1
    exporter = find_exporter(args.exporter)
    problem = check_exporter(exporter, "export") or check_exporter(exporter, "serve")
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 1
    try:
        client_module = load_client()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    cache: Path = args.cache.resolve()
    work = cache / "work"
    try:
        image, layer_inputs = ensure_image(cache, args.mirror)
        work.mkdir(parents=True, exist_ok=True)
    except SETUP_ERRORS as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1

    scratch = Path(tempfile.mkdtemp(prefix="grpc-", dir=work))
    try:
        return _run(args, exporter, client_module, image, len(layer_inputs), scratch)
    except SETUP_ERRORS as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(
    args: argparse.Namespace, exporter: Path, client_module: Any, image: Path, layers: int, scratch: Path
) -> int:
    outputs = scratch / "out"  # the daemon's allowed root: every oci-layout= is under it
    outputs.mkdir()
    small = scratch / "small"
    small.mkdir()
    small_images = make_small_images(small, CONCURRENCY)
    extra = ["--grace-period", str(DAEMON_GRACE), "--log-level", "info"]
    with start_daemon(exporter, allowed_roots=[outputs], parent=scratch, extra=extra) as daemon:
        print(f"daemon listening on {daemon.address}", file=sys.stderr)
        grpc_out, local_out = outputs / "grpc-oci", outputs / "inprocess-oci"
        via_daemon = ExportPath(
            Result(tool="export --addr unix:// (daemon)", argv=[]), grpc_out,
            remote_argv(exporter, daemon.address, image, grpc_out), via_daemon=True,
        )  # fmt: skip
        in_process = ExportPath(
            Result(tool="export (in-process)", argv=[]), local_out,
            export_argv(exporter, image, local_out), via_daemon=False,
        )  # fmt: skip
        for path in (via_daemon, in_process):
            path.result.argv = path.argv
        measure_overhead([via_daemon, in_process], daemon, layers, args.runs)

        outs = [outputs / f"small{i}-oci" for i in range(CONCURRENCY)]
        argvs = [
            remote_argv(exporter, daemon.address, img, out)
            for img, out in zip(small_images, outs, strict=True)
        ]
        resolve_attrs = {
            "type": "nydus", "push": "false", "oci-layout": str(outputs / "resolve-oci"),
            "oci-mediatypes": "true",
        }  # fmt: skip
        conc = Concurrency()
        try:
            asyncio.run(
                _sigterm_cancels(
                    measure_concurrency(client_module, daemon, argvs, outs, resolve_attrs, args.runs, conc)
                )
            )
        except client_module.RemoteExportError as exc:
            conc.errors.append(f"Resolve failed: {exc}")
        except BenchError as exc:
            conc.errors.append(str(exc))
        if daemon.process.poll() is not None:
            conc.errors.append(
                f"the daemon exited (status {daemon.process.returncode}):\n{daemon.log_tail()}"
            )
        daemon_address = daemon.address

    results = [via_daemon.result, in_process.result]
    notes = []
    grpc_wall = None if via_daemon.result.error else via_daemon.result.median_wall_s
    local_wall = None if in_process.result.error else in_process.result.median_wall_s
    over = ratio(grpc_wall, local_wall)
    overhead = None if over is None else over - 1  # (daemon - in-process) / in-process
    digests = set(via_daemon.digests) | set(in_process.digests)
    same: bool | None = None
    if via_daemon.digests and in_process.digests:
        same = len(digests) == 1
        if not same:
            notes.append(f"the two paths (or runs) produced different root digests: {sorted(digests)}")
    batches = [b for b in conc.batches if not b.errors]
    batch_walls = [b.wall_s for b in batches]
    latencies = [s for b in batches for s in b.latencies_s]
    median_batch = statistics.median(batch_walls) if batch_walls else None
    if conc.resolve_during_batch and not all(conc.resolve_during_batch):
        notes.append("some export batches finished before their Resolve calls: those were not all under load")
    blob_bytes = 0
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        digest = str(json.loads((image / "index.json").read_text())["manifests"][0]["digest"])
        manifest = json.loads((image / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())
        blob_bytes = sum(int(layer["size"]) for layer in manifest["layers"])
    report: dict[str, Any] = {
        "image": {"path": str(image), "tag": TAG, "layers": layers, "blob_bytes": blob_bytes},
        "daemon": {"address": daemon_address, "argv_extra": extra, "grace_period_s": DAEMON_GRACE},
        "results": [r.to_json() for r in results],
        "overhead": {
            "grpc_overhead": overhead,
            "target": TARGET_OVERHEAD,
            "met": None if overhead is None else overhead <= TARGET_OVERHEAD,
            "same_root_digest": same,
            "root_digests": sorted(digests),
            "daemon_phases": via_daemon.phases,
            "median_daemon_phases_s": median_phases(via_daemon.phases),
        },
        "concurrency": {
            "exports": CONCURRENCY,
            "layers_per_image": SMALL_LAYERS,
            "batches": len(batches),
            "batch_wall_s": batch_walls,
            "median_batch_wall_s": median_batch,
            "throughput_exports_per_s": CONCURRENCY / median_batch if median_batch else None,
            "export_latency_s": {
                "p50": percentile(latencies, 50),
                "p99": percentile(latencies, 99),
                "max": max(latencies) if latencies else None,
            },
            "errors": conc.errors,
        },
        "resolve": {
            "idle": resolve_summary(conc.resolve_idle),
            "idle_sequential": resolve_summary(conc.resolve_sequential, 1),
            "under_load": resolve_summary(conc.resolve_loaded),
            "under_load_resolve_finished_while_batch_ran": conc.resolve_during_batch,
        },
        "rss_floor_kib": floor_kib(),
        "cpu_count": os.cpu_count(),
        "notes": notes,
    }
    print(json.dumps(report, indent=2) if args.json else render(report, results))
    failed = any(r.error for r in results) or bool(conc.errors) or same is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
