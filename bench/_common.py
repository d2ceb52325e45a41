"""What the benchmarks share: the cached Debian rootfs layer, the peak-RSS launcher, results
and their formatting.

Imported as ``_common`` by the scripts beside it (``python bench/pack.py`` puts ``bench/`` on
``sys.path``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
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


def run_once(argv: list[str], stdout: int | IO[bytes]) -> tuple[float, int, int, str]:
    """Run ``argv`` as one isolated child; return (wall seconds, its peak RSS in KiB, exit
    code, stderr tail). Raises OSError when it cannot be started."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile(suffix=".json") as res:
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, res.name, *argv]
        subprocess.run(launcher, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, check=False)
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
