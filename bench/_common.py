"""What the benchmarks share: the cached Debian rootfs layer, the peak-RSS launcher, results
and their formatting.

Imported as ``_common`` by the scripts beside it (``python bench/pack.py`` puts ``bench/`` on
``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
DEFAULT_CACHE = BENCH_DIR / ".cache"
SUITE = "bookworm"
CHUNK_SIZE = 1 << 20
MiB = 1 << 20


class BenchError(Exception):
    """A setup step failed; the message says what to do."""


# --------------------------------------------------------------------------------------------
# The cached Debian rootfs and its layer tar


def apt_mirror(suite: str = SUITE) -> str | None:
    """The first archive URI the apt sources use for ``suite`` (not -security/-updates)."""
    apt = Path("/etc/apt")
    candidates = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in candidates:
        for line in _read_lines(path):
            words = line.split()
            if words[:1] != ["deb"]:
                continue
            words = [w for w in words[1:] if not w.startswith("[") and not w.endswith("]")]
            if len(words) >= 2 and words[1] == suite:
                return words[0]
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        stanza: dict[str, str] = {}
        for line in [*_read_lines(path), ""]:
            if not line:
                if "deb" in stanza.get("types", "").split() and suite in stanza.get("suites", "").split():
                    uris = stanza.get("uris", "").split()
                    if uris and stanza.get("enabled", "yes").lower() != "no":
                        return uris[0]
                stanza = {}
                continue
            key, _, value = line.partition(":")
            stanza[key.strip().lower()] = value.strip()
    return None


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    # Comment lines vanish (they do not end a deb822 stanza); blank lines stay as "".
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if not line.lstrip().startswith("#")]


def ensure_rootfs(cache: Path, mirror: str | None) -> Path:
    rootfs = cache / "rootfs"
    if rootfs.is_dir():
        return rootfs
    if os.geteuid() != 0:
        raise BenchError("building the rootfs with debootstrap needs root")
    if shutil.which("debootstrap") is None:
        raise BenchError("debootstrap is not installed (run `make system-deps`)")
    mirror = mirror or apt_mirror()
    tmp = cache / "rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", SUITE, str(tmp), *([mirror] if mirror else [])]
    print(f"building the rootfs: {' '.join(argv)}", file=sys.stderr)
    res = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
        raise BenchError(f"debootstrap failed (exit {res.returncode}):\n{tail}")
    tmp.rename(rootfs)
    return rootfs


def ensure_layer(cache: Path, rootfs: Path) -> Path:
    layer = cache / "layer.tar"
    if layer.is_file():
        return layer
    tmp = cache / "layer.tar.tmp"
    argv = ["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "-cf", str(tmp), "."]
    print(f"building the layer: {' '.join(argv)}", file=sys.stderr)
    subprocess.run(argv, check=True)
    tmp.rename(layer)
    return layer


def layer_stats(layer: Path) -> dict[str, int]:
    entries = files = content = 0
    with tarfile.open(layer) as tf:
        for member in tf:
            entries += 1
            if member.isreg():
                files += 1
                content += member.size
    return {
        "tar_bytes": layer.stat().st_size,
        "entries": entries,
        "regular_files": files,
        "content_bytes": content,
    }


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Result:
    tool: str
    argv: list[str]
    wall_s: list[float] = field(default_factory=list)
    max_rss_kib: list[int] = field(default_factory=list)
    error: str | None = None
    output_bytes: int | None = None
    # Set when one run is several commands in a row (wall times add up, the RSS is their max).
    steps: list[list[str]] | None = None

    @property
    def median_wall_s(self) -> float | None:
        return statistics.median(self.wall_s) if self.wall_s else None

    @property
    def peak_rss_kib(self) -> int | None:
        return max(self.max_rss_kib) if self.max_rss_kib else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.steps is None:
            del data["steps"]
        data["median_wall_s"] = self.median_wall_s
        data["peak_rss_kib"] = self.peak_rss_kib
        return data


# Peak RSS is read with wait4(2) in a small launcher process, not in this one: on exec,
# Linux seeds the new program's ru_maxrss with the high-water RSS of the process image it
# replaces, and subprocess spawns with vfork, i.e. from THIS (large) process's memory. A fresh
# `python -I -S` launcher keeps that floor to a few MiB; `floor_kib` measures it with `true`.
_LAUNCHER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as exc:
    with open(out, "w") as f:
        json.dump({"error": f"cannot run {argv[0]}: {exc}"}, f)
    sys.exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as f:
    json.dump({"wall_s": wall, "max_rss_kib": usage.ru_maxrss, "exit": os.waitstatus_to_exitcode(status)}, f)
"""


def run_once(
    argv: list[str], stdout: int | IO[bytes], *, timeout: float | None = None
) -> tuple[float, int, int, str]:
    """Run ``argv`` as one isolated child; return (wall seconds, its peak RSS in KiB, exit
    code, stderr tail). Raises OSError when it cannot be started, or (with ``timeout``) when
    it has not finished after ``timeout`` seconds: then the launcher and the command, which
    run in a session of their own, are killed."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile(suffix=".json") as res:
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, res.name, *argv]
        if timeout is None:
            subprocess.run(launcher, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, check=False)
        else:
            _run_with_deadline(launcher, argv[0], stdout, err, timeout)
        err.seek(0)
        tail = "\n".join(err.read().decode(errors="replace").splitlines()[-10:])
        try:
            data = json.loads(Path(res.name).read_text() or "{}")
        except ValueError:
            data = {}
    if "error" in data:
        raise OSError(data["error"])
    if "exit" not in data:
        raise OSError(f"the measuring launcher failed: {tail}")
    return float(data["wall_s"]), int(data["max_rss_kib"]), int(data["exit"]), tail  # KiB on Linux


def _run_with_deadline(
    launcher: list[str], what: str, stdout: int | IO[bytes], err: IO[bytes], timeout: float
) -> None:
    # A session of its own: on timeout the whole group (launcher and the measured command it
    # spawned) is killed by its id, so nothing is left running.
    proc = subprocess.Popen(
        launcher, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise OSError(f"{what} did not finish within {timeout:.0f} s (killed)") from None
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def floor_kib() -> int:
    """The ru_maxrss that `true` reports through the launcher: readings at or below this are
    the launcher's own footprint, not the tool's."""
    return run_once(["true"], subprocess.DEVNULL)[1]


def remove_output(path: Path) -> None:
    """Remove a file or a whole directory tree, if present (every run starts from nothing)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def output_size(path: Path) -> int:
    """Bytes of a file, or of all the files under a directory."""
    if path.is_dir() and not path.is_symlink():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size if path.exists() else 0


def measure(tool: str, argv: list[str], runs: int, outputs: list[Path]) -> Result:
    """``runs`` runs of ``argv``; ``outputs`` (files or directories) are removed before each."""
    return measure_steps(tool, [argv], runs, outputs)


@dataclass
class Contender:
    """One side of a side-by-side measurement: :func:`measure_side_by_side`."""

    tool: str
    argv: list[str]
    outputs: list[Path]


def measure_side_by_side(contenders: list[Contender], runs: int) -> list[Result]:
    """``runs`` rounds, each running every contender once in turn (a contender that failed is
    left out of later rounds): a busy spell of the machine then costs each side alike, which
    ``runs`` runs of one tool followed by ``runs`` of the next does not."""
    results = [Result(tool=c.tool, argv=c.argv) for c in contenders]
    for _ in range(runs):
        for contender, result in zip(contenders, results, strict=True):
            if result.error is not None:
                continue
            one = measure(contender.tool, contender.argv, 1, contender.outputs)
            result.wall_s += one.wall_s
            result.max_rss_kib += one.max_rss_kib
            result.error, result.output_bytes = one.error, one.output_bytes
    return results


def measure_steps(
    tool: str, steps: list[list[str]], runs: int, outputs: list[Path], *, argv: list[str] | None = None
) -> Result:
    """Like :func:`measure`, but one run is ``steps`` run one after the other: its wall time is
    their sum and its peak RSS their max. ``argv`` is what the report shows (default: the
    only step)."""
    if argv is None and len(steps) != 1:
        raise ValueError("measure_steps: give argv= to describe several steps")
    result = Result(tool=tool, argv=argv if argv is not None else steps[0])
    if len(steps) > 1:
        result.steps = steps
    for _ in range(runs):
        for out in outputs:  # every run starts from nothing
            remove_output(out)
        wall_sum, rss_max = 0.0, 0
        for i, step in enumerate(steps, 1):
            which = f"step {i} ({' '.join(step)}): " if len(steps) > 1 else ""
            try:
                wall, rss, code, tail = run_once(step, subprocess.DEVNULL)
            except OSError as exc:
                result.error = f"{which}cannot run {step[0]}: {exc}"
                return result
            if code != 0:
                result.error = f"{which}exit {code}: {tail or '(no output)'}"
                return result
            wall_sum += wall
            rss_max = max(rss_max, rss)
        result.wall_s.append(wall_sum)
        result.max_rss_kib.append(rss_max)
    result.output_bytes = sum(output_size(p) for p in outputs) if outputs else None
    return result


def find_exporter(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    beside = Path(sys.executable).parent / "nydus-exporter"
    return beside if beside.exists() else PROJECT_ROOT / ".venv" / "bin" / "nydus-exporter"


def check_exporter(exporter: Path, command: str = "pack") -> str | None:
    """None if ``nydus-exporter COMMAND`` exists, else why not."""
    if not exporter.exists():
        return f"{exporter} not found: run `make venv` to install the nydus-exporter console script"
    res = subprocess.run([str(exporter), command, "--help"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-10:])
        return (
            f"`{exporter} {command} --help` failed (exit {res.returncode}); "
            f"is `{command}` implemented?\n{tail}"
        )
    return None


def missing_tools(names: Iterable[str]) -> list[str]:
    """The executables of ``names`` that are not on PATH."""
    return [name for name in names if shutil.which(name) is None]


# --------------------------------------------------------------------------------------------
# A local registry (Debian's docker-registry, i.e. distribution 2.8)

REGISTRY_BINARY = "docker-registry"
REGISTRY_START_TIMEOUT = 20.0
# Loopback requests never go through an http_proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the registry binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRegistry:
    """A running anonymous plain-HTTP ``docker-registry`` on 127.0.0.1 (``host`` is
    ``127.0.0.1:PORT``) with filesystem storage under ``directory``; :meth:`stop` kills it and
    removes ``directory``."""

    host: str
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.directory / "storage"

    @property
    def log_file(self) -> Path:
        return self.directory / "registry.log"

    def log_tail(self, lines: int = 15) -> str:
        return file_tail(self.log_file, lines)

    def stored_blobs(self) -> dict[str, int]:
        """digest -> size of every blob the registry has committed (manifests included: the
        filesystem driver stores them as blobs too), read from its storage, not over HTTP."""
        base = self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
        if not base.is_dir():
            return {}
        return {f"sha256:{data.parent.name}": data.stat().st_size for data in base.glob("*/*/data")}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_registry(parent: Path | None = None) -> LocalRegistry:
    """A fresh, empty registry in a new temporary directory (under ``parent`` if given).
    Raises BenchError when the binary is missing or the registry does not come up."""
    if shutil.which(REGISTRY_BINARY) is None:
        raise BenchError(f"{REGISTRY_BINARY} is not installed (run `make system-deps`)")
    directory = Path(tempfile.mkdtemp(prefix="registry-", dir=parent))
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "storage")},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    config_file = directory / "config.yml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    try:
        with (directory / "registry.log").open("wb") as log:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin"},
            )
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise BenchError(f"cannot start {REGISTRY_BINARY}: {exc}") from None
    registry = LocalRegistry(f"127.0.0.1:{port}", directory, process)
    try:
        _wait_until_up(registry)
    except BaseException:
        registry.stop()
        raise
    return registry


def _wait_until_up(registry: LocalRegistry) -> None:
    deadline = time.monotonic() + REGISTRY_START_TIMEOUT
    while True:
        if registry.process.poll() is not None:
            raise BenchError(f"{REGISTRY_BINARY} exited at start:\n{registry.log_tail()}")
        try:
            with _DIRECT.open(f"{registry.url}/v2/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (an auth challenge would be a 401)
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{REGISTRY_BINARY} did not answer on {registry.url} within "
                    f"{REGISTRY_START_TIMEOUT:.0f} s:\n{registry.log_tail()}"
                ) from None
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Reporting


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def fmt_kib(value: int | None, floor: int = 0) -> str:
    if value is None:
        return "-"
    if value <= floor * 1.05:
        return f"<= {floor / 1024:.1f} MiB"
    return f"{value / 1024:.1f} MiB"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# --------------------------------------------------------------------------------------------
# A local exporter daemon (`nydus-exporter serve`)

DAEMON_START_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 30.0  # after SIGTERM (the daemon drains running exports), then SIGKILL


@dataclass
class LocalDaemon:
    """A running ``nydus-exporter serve`` listening on the unix socket ``socket_path``, with its
    state (spools, staging layouts, layer cache) in ``state_dir``, its metrics endpoint on
    ``http_host`` and its log in ``log_file``; everything lives under ``directory``, which
    :meth:`stop` (SIGTERM, wait, SIGKILL only if it does not exit) removes."""

    directory: Path
    process: subprocess.Popen[bytes]
    http_host: str

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def socket_path(self) -> Path:
        return self.directory / "exporter.sock"

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_file(self) -> Path:
        return self.directory / "daemon.log"

    def log_tail(self, lines: int = 15) -> str:
        return file_tail(self.log_file, lines)

    def clear_layer_cache(self) -> int:
        """Delete every entry of the daemon's layer cache (``<state>/layer-cache``), so the next
        export converts every layer again; returns how many entries were removed. The
        directory itself stays: the daemon creates new entries in it."""
        cache = self.state_dir / "layer-cache"
        removed = 0
        for entry in cache.iterdir() if cache.is_dir() else ():
            remove_output(entry)
            removed += 1
        return removed

    def metrics(self) -> dict[str, float]:
        """The daemon's Prometheus samples (``name{labels}`` -> value) from ``/metrics``."""
        with _DIRECT.open(f"http://{self.http_host}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
        return samples

    def stop(self) -> None:
        """SIGTERM, wait for the drain, SIGKILL if it hangs; then remove ``directory``."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(DAEMON_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_daemon(
    exporter: Path,
    *,
    allowed_roots: Iterable[Path] = (),
    parent: Path | None = None,
    extra: Iterable[str] = (),
) -> LocalDaemon:
    """``nydus-exporter serve`` on a unix socket in a new temporary directory (under ``parent``
    if given; keep it short, a socket path has at most 107 bytes), clients may name paths under
    ``allowed_roots`` (e.g. ``oci-layout=``). Returns once the socket accepts connections;
    raises BenchError when it cannot start or does not come up."""
    directory = Path(tempfile.mkdtemp(prefix="daemon-", dir=parent))
    http_host = f"127.0.0.1:{free_port()}"
    daemon_argv = [
        str(exporter), "serve",
        "--state-dir", str(directory / "state"),
        "--listen", f"unix://{directory / 'exporter.sock'}",
        "--http", http_host,
        "--log-format", "json",
        *(arg for root in allowed_roots for arg in ("--allowed-root", str(root))),
        *extra,
    ]  # fmt: skip
    if len(str(directory / "exporter.sock").encode()) > 107:
        shutil.rmtree(directory, ignore_errors=True)
        raise BenchError(f"the socket path under {directory} is too long for a unix socket")
    try:
        with (directory / "daemon.log").open("wb") as log:
            process = subprocess.Popen(
                daemon_argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise BenchError(f"cannot start `{' '.join(daemon_argv)}`: {exc}") from None
    daemon = LocalDaemon(directory, process, http_host)
    try:
        _wait_for_socket(daemon, daemon_argv)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def _wait_for_socket(daemon: LocalDaemon, argv: list[str]) -> None:
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while True:
        if daemon.process.poll() is not None:
            raise BenchError(
                f"`{' '.join(argv)}` exited at start (exit {daemon.process.returncode}):\n{daemon.log_tail()}"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(daemon.socket_path))
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise BenchError(
                f"the daemon did not listen on {daemon.address} within {DAEMON_START_TIMEOUT:.0f} s:\n"
                f"{daemon.log_tail()}"
            )
        time.sleep(0.05)


def percentile(values: Iterable[float], pct: float) -> float | None:
    """The ``pct`` percentile (0-100) by linear interpolation between closest ranks (numpy's
    default); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def file_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def bench_parser(
    doc: str | None, *, runs_help: str = "runs per tool; the median is reported"
) -> argparse.ArgumentParser:
    """The options every benchmark takes: --runs, --json, --cache, --mirror, --exporter."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--runs", type=int, default=3, help=f"{runs_help} (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="cache directory (default bench/.cache)"
    )
    parser.add_argument("--mirror", help="Debian mirror for debootstrap (default: from the apt sources)")
    parser.add_argument("--exporter", type=Path, help="nydus-exporter executable (default: the venv's)")
    return parser


# --------------------------------------------------------------------------------------------
# OCI image layouts written with the standard library (image-spec image-layout.md)

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
FIXED_CREATED = "2024-06-01T00:00:00Z"  # fixed, so an image is the same on every machine
LAYOUT_GZIP_LEVEL = 6  # what `gzip` and BuildKit use by default


@dataclass(frozen=True)
class ImageLayer:
    """One layer of an image to write: its uncompressed tar and its history line."""

    tar: Path
    created_by: str


def oci_arch() -> str:
    """This machine's architecture as OCI spells it."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _layout_json(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


class _HashingSink:
    """A write-only file object that hashes and counts what it passes on to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()


def _gzip_blob(tar: Path, blobs: Path) -> tuple[dict[str, Any], str]:
    """Compress ``tar`` into ``blobs`` in chunks (never whole in memory); return the layer
    descriptor and the diff_id. mtime=0 and no file name: the same tar gives the same blob."""
    tmp = blobs / f".tmp-{uuid.uuid4().hex}"
    diff = hashlib.sha256()
    try:
        with open(tar, "rb") as src, open(tmp, "wb") as raw:
            sink = _HashingSink(raw)
            with gzip.GzipFile(filename="", mode="wb", compresslevel=LAYOUT_GZIP_LEVEL,
                               fileobj=sink, mtime=0) as gz:  # fmt: skip
                while chunk := src.read(MiB):
                    diff.update(chunk)
                    gz.write(chunk)
        digest = sink.sha256.hexdigest()
        tmp.rename(blobs / digest)
    finally:
        tmp.unlink(missing_ok=True)
    desc = {"mediaType": MEDIA_OCI_LAYER_GZIP, "digest": f"sha256:{digest}", "size": sink.size}
    return desc, f"sha256:{diff.hexdigest()}"


def write_oci_layout(
    root: Path,
    images: dict[str, list[ImageLayer]],
    *,
    env: Iterable[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    cmd: Iterable[str] = ("bash",),
) -> None:
    """One OCI image layout at ``root`` holding several single-platform images, tag -> layers
    (lowest first), with gzip layers in OCI media types. A tar used by several images is
    compressed once (the images share the blob). Built beside ``root``, then renamed into
    place, so a half-written layout is never left under that name."""
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        blobs = tmp / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        (tmp / "oci-layout").write_bytes(_layout_json({"imageLayoutVersion": "1.0.0"}))

        def add_json(media_type: str, obj: object) -> dict[str, Any]:
            data = _layout_json(obj)
            digest = hashlib.sha256(data).hexdigest()
            (blobs / digest).write_bytes(data)
            return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

        compressed: dict[Path, tuple[dict[str, Any], str]] = {}
        arch = oci_arch()
        entries = []
        for tag, layers in images.items():
            for layer in layers:
                if layer.tar not in compressed:
                    print(f"compressing {layer.tar}", file=sys.stderr)
                    compressed[layer.tar] = _gzip_blob(layer.tar, blobs)
            config = {
                "created": FIXED_CREATED,
                "architecture": arch,
                "os": "linux",
                "config": {"Env": list(env), "Cmd": list(cmd), "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": [compressed[la.tar][1] for la in layers]},
                "history": [{"created": FIXED_CREATED, "created_by": la.created_by} for la in layers],
            }
            manifest = {
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": add_json(MEDIA_OCI_CONFIG, config),
                "layers": [compressed[la.tar][0] for la in layers],
            }
            desc = add_json(MEDIA_OCI_MANIFEST, manifest)
            desc["platform"] = {"architecture": arch, "os": "linux"}
            desc["annotations"] = {OCI_REF_NAME: tag}
            entries.append(desc)
        index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries}
        (tmp / "index.json").write_bytes(_layout_json(index))
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
