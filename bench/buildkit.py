#!/usr/bin/env python3
"""Benchmark: the export phase of one BuildKit build, as type=nydus and as type=image.

One build, ``FROM scratch`` + ``COPY`` of a Debian bookworm minbase rootfs (built with
debootstrap on the first run and cached under bench/.cache/, as for bench/pack.py) padded to
at least 200 MB, then app layers (a COPY of generated files, a RUN that writes, deletes and
chmods), is exported and pushed to a local registry as:

* ``type=nydus`` with ``layers=stream``, ``layers=by-reference`` and ``layers=snapshot``
  (bin/nydus-buildkitd and a nydus-exporter daemon),
* ``type=image,compression=gzip`` and ``type=image,compression=zstd`` (BuildKit's own).

Every run of every output starts from nothing: a fresh buildkitd root (no blobs compressed
by an earlier export), a fresh daemon (empty layer cache) and a fresh repository. The time
reported is the export phase as BuildKit's progress shows it: from the first start to the
last completion of the exporter's vertex ("exporting to ..."), which includes the push (for
type=nydus, the Finalize step too). The report gives the median of --runs runs per output
and each output's ratio to type=image,compression=gzip.

Needs root (buildkitd's OCI worker, overlayfs), runc, docker-registry and `make buildkit`.
This is a benchmark, not a test: it exits 1 with a clear message when something is missing.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    PROJECT_ROOT,
    BenchError,
    LocalDaemon,
    LocalRegistry,
    bench_parser,
    ensure_rootfs,
    find_exporter,
    fmt_ratio,
    fmt_s,
    ratio,
    start_daemon,
    start_registry,
)

BUILDKITD = PROJECT_ROOT / "bin" / "nydus-buildkitd"
BUILDCTL = PROJECT_ROOT / "bin" / "buildctl"
MIN_BASE_BYTES = 200 << 20
APP_FILES = 64  # generated files of the app layer, 256 KiB each (half compressible)
BASELINE = "image gzip"
OUTPUTS: dict[str, str] = {
    "nydus stream": "type=nydus,layers=stream",
    "nydus by-reference": "type=nydus,layers=by-reference",
    "nydus snapshot": "type=nydus,layers=snapshot",
    "image gzip": "type=image,compression=gzip,force-compression=true",
    "image zstd": "type=image,compression=zstd,force-compression=true",
}
_START_TIMEOUT = 60.0
_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass
class Outcome:
    name: str
    export_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.export_s) if self.export_s else None


def ensure_context(cache: Path, rootfs: Path) -> Path:
    """The build context: the rootfs (padded to MIN_BASE_BYTES), the app files, the Dockerfile."""
    context = cache / "buildkit-context"
    if (context / "Dockerfile").is_file():
        return context
    tmp = cache / "buildkit-context.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"copying the rootfs into {context}", file=sys.stderr)
    subprocess.run(["cp", "-a", f"{rootfs}/.", str(tmp / "rootfs")], check=True)
    size = sum(p.lstat().st_size for p in (tmp / "rootfs").rglob("*") if p.is_file() and not p.is_symlink())
    padding = tmp / "rootfs" / "opt" / "padding"
    padding.mkdir(parents=True, exist_ok=True)
    n = 0
    while size < MIN_BASE_BYTES:  # a copy of usr/ files (compressible like the rest) as padding
        for path in sorted((tmp / "rootfs" / "usr").rglob("*.so*")):
            if size >= MIN_BASE_BYTES or not path.is_file() or path.is_symlink():
                continue
            n += 1
            shutil.copyfile(path, padding / f"{n}-{path.name}")
            size += path.stat().st_size
    app = tmp / "app"
    app.mkdir()
    for i in range(APP_FILES):
        (app / f"data-{i}.bin").write_bytes(os.urandom(128 << 10) + bytes(128 << 10))
    (tmp / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "COPY app/ /srv/app/\n"
        'RUN ["/bin/sh", "-c", "rm -rf /usr/share/doc /srv/app/data-0.bin && chmod 700 /srv/app '
        '&& cp -a /usr/bin /srv/bin-copy && echo done > /srv/app/stamp"]\n'
    )
    tmp.rename(context)
    return context


@dataclass
class BuildKitd:
    root: Path
    socket: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(self.root)):
                subprocess.run(["umount", "-l", target], check=False)
        shutil.rmtree(self.root.parent, ignore_errors=True)


def start_buildkitd(parent: Path, daemon: LocalDaemon | None) -> BuildKitd:
    directory = Path(tempfile.mkdtemp(prefix="bk-", dir=parent))
    root, sock = directory / "root", directory / "bk.sock"
    argv = [
        str(BUILDKITD), "--root", str(root), "--addr", f"unix://{sock}",
        "--oci-worker=true", "--oci-worker-snapshotter=overlayfs", "--oci-worker-net=host",
        "--oci-worker-gc=false", "--containerd-worker=false",
        "--config", str(directory / "none.toml"),
    ]  # fmt: skip
    if daemon is not None:
        argv += ["--nydus-exporter-addr", daemon.address]
    with (directory / "buildkitd.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    bk = BuildKitd(root, sock, proc)
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise BenchError(
                f"nydus-buildkitd exited at start:\n{(directory / 'buildkitd.log').read_text()[-2000:]}"
            )
        if sock.exists():
            res = subprocess.run(
                [str(BUILDCTL), "--addr", bk.address, "debug", "workers"], capture_output=True
            )
            if res.returncode == 0:
                return bk
        if time.monotonic() > deadline:
            bk.stop()
            raise BenchError("nydus-buildkitd did not come up")
        time.sleep(0.2)


def _time(value: str) -> float:
    return datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", value).replace("Z", "+00:00")).timestamp()


def export_seconds(rawjson: str) -> float:
    """First start to last completion of the exporter vertex in ``--progress rawjson``."""
    starts, ends = [], []
    for line in rawjson.splitlines():
        if not line.startswith("{"):
            continue
        for vertex in json.loads(line).get("vertexes") or []:
            if not vertex.get("name", "").startswith("exporting to"):
                continue
            if vertex.get("started"):
                starts.append(_time(vertex["started"]))
            if vertex.get("completed"):
                ends.append(_time(vertex["completed"]))
    if not starts or not ends:
        raise BenchError("no exporter vertex in BuildKit's progress")
    return max(ends) - min(starts)


def run_one(name: str, output: str, context: Path, registry: LocalRegistry, work: Path, n: int) -> float:
    nydus = output.startswith("type=nydus")
    daemon = None
    bk = None
    try:
        if nydus:
            daemon = start_daemon(find_exporter(None), parent=work, allowed_roots=[work])
        bk = start_buildkitd(work, daemon)
        ref = f"{registry.host}/bench-{name.replace(' ', '-')}:{n}"
        argv = [
            str(BUILDCTL), "--addr", bk.address, "build", "--progress", "rawjson",
            "--frontend", "dockerfile.v0",
            "--local", f"context={context}", "--local", f"dockerfile={context}",
            "--output", f"{output},name={ref},push=true,registry.insecure=true",
        ]  # fmt: skip
        res = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if res.returncode != 0:
            raise BenchError(f"{name}: buildctl failed:\n{res.stderr[-3000:]}")
        return export_seconds(res.stderr)
    finally:
        if bk is not None:
            bk.stop()
        if daemon is not None:
            daemon.stop()


def render(outcomes: list[Outcome], runs: int) -> str:
    base = next((o.median_s for o in outcomes if o.name == BASELINE), None)
    lines = [
        f"export phase (push included), median of {runs} run(s); ratio to type=image,compression=gzip",
        "",
    ]
    lines.append(f"{'output':<22} {'export':>10} {'ratio':>8}")
    for o in outcomes:
        if o.error:
            lines.append(f"{o.name:<22} failed: {o.error.splitlines()[0]}")
            continue
        lines.append(f"{o.name:<22} {fmt_s(o.median_s):>10} {fmt_ratio(ratio(o.median_s, base)):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, runs_help="runs per output; the median is reported")
    parser.set_defaults(runs=1)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    missing = [str(p) for p in (BUILDKITD, BUILDCTL) if not p.is_file()]
    if missing:
        print(f"bench: {', '.join(missing)} missing: run `make buildkit`", file=sys.stderr)
        return 1
    if os.geteuid() != 0 or shutil.which("runc") is None:
        print("bench: needs root and runc (buildkitd's OCI worker)", file=sys.stderr)
        return 1
    try:
        rootfs = ensure_rootfs(args.cache, args.mirror)
        context = ensure_context(args.cache, rootfs)
    except (BenchError, subprocess.CalledProcessError, OSError) as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bkb-", dir="/tmp"))  # short: unix socket paths
    outcomes = [Outcome(name) for name in OUTPUTS]
    try:
        with start_registry(work) as registry:
            for n in range(args.runs):
                for outcome in outcomes:
                    if outcome.error:
                        continue
                    try:
                        outcome.export_s.append(
                            run_one(outcome.name, OUTPUTS[outcome.name], context, registry, work, n)
                        )
                    except (BenchError, subprocess.SubprocessError, OSError) as exc:
                        outcome.error = str(exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "runs": args.runs,
        "results": {
            o.name: {"export_s": o.export_s, "median_s": o.median_s, "error": o.error} for o in outcomes
        },
        "ratios_to_gzip": {
            o.name: ratio(o.median_s, next(x.median_s for x in outcomes if x.name == BASELINE))
            for o in outcomes
        },
    }
    print(json.dumps(report, indent=2) if args.json else render(outcomes, args.runs))
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
