#!/usr/bin/env python3
"""Benchmark: bytes uploaded by three versions of an image, with and without the chunk store.

On the first run it builds, and caches under bench/.cache/dedup/, one OCI image layout (gzip
layers, OCI media types, written with the standard library, checked with ``skopeo inspect``)
holding three tags:

* ``v1``: the Debian bookworm minbase rootfs that bench/pack.py caches (bench/.cache/layer.tar),
* ``v2``: v1 plus the layer ``apt-get install -y --no-install-recommends`` of APT_V2 makes, run
  in a copy of that rootfs with chroot (in a private mount namespace with /proc and /dev
  mounted, so nothing stays mounted) and diffed against the rootfs (deleted paths become OCI
  whiteouts),
* ``v3``: v1 plus the layer the same command makes with the package set APT_V3 (v2's plus a
  few more): a different top layer that shares most of its files with v2's.

Without a working apt (no network, no mirror), the two top layers are synthetic instead: the
host's Python standard library under /usr/local/lib, and for v3 the same with one file in ten
changed and a few added. The report says which was used.

Then, per scenario and as the median of --runs runs, each run on a fresh, empty
``docker-registry`` (plain HTTP on 127.0.0.1, a temporary directory), v1, v2 and v3 are pushed
in this order to one repository:

* store:    ``nydus-exporter export oci:IMAGE:vN --output type=nydus,name=HOST/dedup/app:vN,
  oci-mediatypes=true,chunk-store=true --state-dir STATE --progress quiet`` (a fresh STATE
  per run),
* no store: the same without ``chunk-store=true``,
* OCI gzip: ``skopeo copy --dest-tls-verify=false oci:IMAGE:vN docker://HOST/dedup/app-oci:vN``.

The bytes a push uploaded are the growth of the registry's own blob storage (the sizes of
docker/registry/v2/blobs/sha256/*/*/data, manifests included), whatever the client says. After
every push the manifest under the tag is read back over HTTP and each blob it names must be
stored. The report gives bytes per version and in total, the ratios store/no-store and
store/OCI, and the wall time of the third export against the first, with the store. Targets:
the store uploads >= 40 % fewer bytes than no store across the three versions, and its third
export takes <= 0.3x the time of its first.

This is a benchmark, not a test: it fails (exit 1) with a clear message when a tool is
missing or when a push fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    SUITE,
    BenchError,
    ImageLayer,
    LocalRegistry,
    MiB,
    bench_parser,
    check_exporter,
    ensure_layer,
    ensure_rootfs,
    find_exporter,
    fmt_ratio,
    fmt_s,
    layer_stats,
    missing_tools,
    ratio,
    run_once,
    start_registry,
    write_oci_layout,
)

VERSIONS = ("v1", "v2", "v3")
APT_V2 = ("ca-certificates", "curl", "python3")
APT_V3 = (*APT_V2, "python3-yaml", "jq")
TARGET_BYTES = 0.6  # the store uploads at most 60 % of what exports without it upload
TARGET_TIME = 0.3  # the third export (store) takes at most 0.3x the first
TOOLS = ("skopeo", "docker-registry", "tar", "chroot", "unshare", "mount")
APT_TIMEOUT = 1200.0  # seconds for one apt-get run in the chroot
PUSH_TIMEOUT = 1800.0  # seconds for one export or skopeo copy; a hung one is killed
REPO, OCI_REPO = "dedup/app", "dedup/app-oci"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
SETUP_ERRORS = (BenchError, subprocess.CalledProcessError, OSError, ValueError, KeyError, tarfile.TarError)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


# --------------------------------------------------------------------------------------------
# The top layers: apt-get in a chroot, diffed against the rootfs


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in this mount namespace (/proc/self/mountinfo)."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _remove_tree(root: Path) -> None:
    """rmtree, but never through a mount (it would delete the host's /dev or /proc)."""
    if not root.exists():
        return
    for point in sorted(_mounts_under(root), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    left = _mounts_under(root)
    if left:
        raise BenchError(f"{left[0]} is still mounted: unmount it, then remove {root}")
    shutil.rmtree(root)


def _run_apt(root: Path, packages: tuple[str, ...], log: Path) -> None:
    """``apt-get install`` of ``packages`` chrooted into ``root``. The mounts (/proc, /dev, the
    host's resolv.conf over the rootfs's) live in a private mount namespace (``unshare -m``):
    they go away with the process, even when it is killed."""
    env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"]
    env += [f"{k}={v}" for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy")]
    words = " ".join(shlex.quote(word) for word in env)
    apt = (
        "apt-get update -q && "
        f"apt-get install -y -q --no-install-recommends {' '.join(map(shlex.quote, packages))} && "
        "apt-get clean && rm -rf /var/lib/apt/lists/*"
    )
    resolv = (
        'mount --bind /etc/resolv.conf "$R/etc/resolv.conf" && '
        if (root / "etc/resolv.conf").is_file() and not (root / "etc/resolv.conf").is_symlink()
        else ""
    )
    script = (
        'mount --make-rprivate / && mount -t proc proc "$R/proc" && mount --bind /dev "$R/dev" && '
        f'{resolv}exec chroot "$R" /usr/bin/env -i {words} /bin/sh -c "$APT"'
    )
    argv = ["unshare", "--mount", "sh", "-c", script]
    print(f"in a chroot of {root}: {apt}", file=sys.stderr)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "R": str(root), "APT": apt},
            start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(APT_TIMEOUT)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        raise BenchError(f"apt-get in the chroot failed (exit {code}):\n{tail}")


def _differs(new: Path, st: os.stat_result, base: Path) -> bool:
    """Whether ``new`` is not what ``base`` was (a changed file is a new inode with a new
    mtime: dpkg writes files whole; the copy kept every mtime)."""
    try:
        old = os.lstat(base)
    except FileNotFoundError:
        return True
    if (st.st_mode, st.st_uid, st.st_gid) != (old.st_mode, old.st_uid, old.st_gid):
        return True
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(new) != os.readlink(base)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return st.st_rdev != old.st_rdev
    # Directories too: their mtime changes when an entry is added or removed.
    return (st.st_size, st.st_mtime_ns) != (old.st_size, old.st_mtime_ns)


def _walk(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(relative directory, its entries: directories, then files, each sorted) top-down."""
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        yield ("" if rel == "." else rel), [*dirs, *sorted(files)]


def write_diff_layer(base: Path, new: Path, out: Path) -> dict[str, int]:
    """The OCI layer that turns ``base`` into ``new``: added and changed entries (with their
    directories), and a whiteout ``.wh.NAME`` for each deleted one (image-spec layer.md)."""
    entries = _changed_entries(base, new)
    whiteouts = _deleted_entries(base, new)
    tmp = out.with_name(out.name + ".tmp")
    counts = {"entries": 0, "whiteouts": len(whiteouts)}
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for rel in sorted(entries | whiteouts, key=lambda p: p.split("/")):
                if rel in whiteouts:
                    info = tarfile.TarInfo(rel)
                    info.mode = 0o644
                    tf.addfile(info)
                    continue
                info = tf.gettarinfo(str(new / rel), arcname=rel)  # hardlinks: LNKTYPE after the first
                info.uname = info.gname = ""
                counts["entries"] += 1
                if info.isreg():
                    with open(new / rel, "rb") as f:
                        tf.addfile(info, f)
                else:
                    tf.addfile(info)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def _changed_entries(base: Path, new: Path) -> set[str]:
    """Entries of ``new`` that ``base`` lacks or has otherwise, with their directories."""
    entries: set[str] = set()
    for rel_dir, names in _walk(new):
        for name in names:
            rel = os.path.join(rel_dir, name)
            if _differs(new / rel, os.lstat(new / rel), base / rel):
                entries.add(rel)
    for rel in list(entries):  # each entry's directories, as tar writers do
        parent = os.path.dirname(rel)
        while parent and parent not in entries:
            entries.add(parent)
            parent = os.path.dirname(parent)
    return entries


def _deleted_entries(base: Path, new: Path) -> set[str]:
    """A whiteout name for each entry of ``base`` that ``new`` deleted (not inside it)."""
    whiteouts: set[str] = set()
    for dirpath, dirs, files in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        rel_dir = "" if rel_dir == "." else rel_dir
        if not os.path.isdir(new / rel_dir) or os.path.islink(new / rel_dir):
            dirs[:] = []
            continue
        for name in [*dirs, *files]:
            if not os.path.lexists(new / rel_dir / name):
                whiteouts.add(os.path.join(rel_dir, f".wh.{name}"))
        dirs[:] = [d for d in dirs if os.path.lexists(new / rel_dir / d)]
    return whiteouts


def build_apt_layer(rootfs: Path, packages: tuple[str, ...], out: Path, work: Path) -> dict[str, int]:
    """``apt-get install packages`` in a copy of ``rootfs``; the difference becomes ``out``."""
    tree = work / f"{out.stem}-root"
    _remove_tree(tree)
    try:
        subprocess.run(["cp", "-a", str(rootfs), str(tree)], check=True)
        _run_apt(tree, packages, work / f"{out.stem}-apt.log")
        if _mounts_under(tree):
            raise BenchError(f"{tree} still has mounts after apt-get")
        return write_diff_layer(rootfs, tree, out)
    finally:
        _remove_tree(tree)


def _synthetic_source() -> Path:
    found = sorted(p for p in Path("/usr/lib").glob("python3.*") if p.is_dir() and not p.is_symlink())
    if not found:
        raise BenchError("no /usr/lib/python3.* on this host for the synthetic layers")
    return found[-1]


def build_synthetic_layer(out: Path, *, upgraded: bool) -> dict[str, int]:
    """The host's Python standard library under /usr/local/lib/app; ``upgraded``: every tenth
    file gets a line more, and a few files are new (shares most content, a different layer)."""
    src = _synthetic_source()
    prefix = f"usr/local/lib/app/{src.name}"
    tmp = out.with_name(out.name + ".tmp")
    counts = {"entries": 0, "whiteouts": 0, "changed": 0, "added": 0}
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for part in ("usr/local/lib", "usr/local/lib/app"):
                info = tarfile.TarInfo(part)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            n = 0
            for rel_dir, names in _walk(src):
                for name in names:
                    path = src / rel_dir / name
                    arc = f"{prefix}/{rel_dir}/{name}" if rel_dir else f"{prefix}/{name}"
                    info = tf.gettarinfo(str(path), arcname=arc)
                    info.uname = info.gname = ""
                    counts["entries"] += 1
                    if not info.isreg():
                        tf.addfile(info)
                        continue
                    n += 1
                    if upgraded and n % 10 == 0 and info.size < 4 * MiB:
                        data = path.read_bytes() + b"\n# upgraded\n"
                        info.size = len(data)
                        counts["changed"] += 1
                        with tempfile.TemporaryFile() as f:
                            f.write(data)
                            f.seek(0)
                            tf.addfile(info, f)
                    else:
                        with open(path, "rb") as f:
                            tf.addfile(info, f)
            if upgraded:
                for i in range(5):
                    data = f"# new module {i}\n".encode() * 2000
                    info = tarfile.TarInfo(f"{prefix}/new_module_{i}.py")
                    info.size, info.mode = len(data), 0o644
                    with tempfile.TemporaryFile() as f:
                        f.write(data)
                        f.seek(0)
                        tf.addfile(info, f)
                    counts["added"] += 1
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


@dataclass(frozen=True)
class Inputs:
    """The cached image and how its top layers were made."""

    image: Path
    layers: dict[str, list[ImageLayer]]  # tag -> layers
    method: str  # "apt" | "synthetic"
    notes: list[str]


def ensure_top_layers(base: Path, rootfs: Path) -> tuple[dict[str, ImageLayer], dict[str, Any]]:
    """The v2 and v3 top layers, both with apt or both synthetic (build.json marks a finished
    build; without it both are made again)."""
    marker = base / "build.json"
    tars = {"v2": base / "top-v2.tar", "v3": base / "top-v3.tar"}
    if marker.is_file() and all(t.is_file() for t in tars.values()):
        info: dict[str, Any] = json.loads(marker.read_text())
    else:
        marker.unlink(missing_ok=True)
        for tar in tars.values():
            tar.unlink(missing_ok=True)
        info = {"method": "apt", "packages": {"v2": list(APT_V2), "v3": list(APT_V3)}, "counts": {}}
        try:
            for tag, packages in (("v2", APT_V2), ("v3", APT_V3)):
                info["counts"][tag] = build_apt_layer(rootfs, packages, tars[tag], base)
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"apt-get is not usable ({reason}); using synthetic top layers", file=sys.stderr)
            for tar in tars.values():
                tar.unlink(missing_ok=True)
            info = {
                "method": "synthetic",
                "reason": reason,
                "source": str(_synthetic_source()),
                "counts": {
                    "v2": build_synthetic_layer(tars["v2"], upgraded=False),
                    "v3": build_synthetic_layer(tars["v3"], upgraded=True),
                },
            }
        marker.write_text(json.dumps(info, indent=2))
    if info["method"] == "apt":
        made = {tag: f"apt-get install -y --no-install-recommends {' '.join(info['packages'][tag])}"
                for tag in tars}  # fmt: skip
    else:
        src = info["source"]
        copy = f"COPY {src} /usr/local/lib/app/"
        made = {"v2": f"{copy} (synthetic)", "v3": f"{copy}, 1 file in 10 changed, 5 added (synthetic)"}
    return {tag: ImageLayer(tars[tag], made[tag]) for tag in tars}, info


def skopeo_inspect(image: Path, tag: str) -> None:
    argv = ["skopeo", "inspect", f"oci:{image}:{tag}"]
    res = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    if res.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed (exit {res.returncode}): {res.stderr.strip()}")


def ensure_inputs(cache: Path, mirror: str | None) -> Inputs:
    base = cache / "dedup"
    base.mkdir(parents=True, exist_ok=True)
    rootfs = ensure_rootfs(cache, mirror)
    bottom = ImageLayer(ensure_layer(cache, rootfs), f"debootstrap --variant=minbase {SUITE}")
    tops, info = ensure_top_layers(base, rootfs)
    layers = {"v1": [bottom], "v2": [bottom, tops["v2"]], "v3": [bottom, tops["v3"]]}
    image, stamp = base / "image", base / "image-inputs.json"
    # Rebuilt when a layer tar changed (e.g. was deleted and built again).
    tars = [bottom.tar, tops["v2"].tar, tops["v3"].tar]
    inputs = json.dumps([[str(t), t.stat().st_size, t.stat().st_mtime_ns] for t in tars])
    if not (image / "index.json").is_file() or (stamp.read_text() if stamp.is_file() else None) != inputs:
        shutil.rmtree(image, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        write_oci_layout(image, layers)
        stamp.write_text(inputs)
    for tag in VERSIONS:
        skopeo_inspect(image, tag)
    notes = []
    if info["method"] == "synthetic":
        notes.append(
            f"apt-get was not usable ({info.get('reason')}): the top layers are SYNTHETIC "
            f"(the host's {info.get('source')}, changed for v3), not package installs; "
            f"delete {base}/build.json to try apt again"
        )
    return Inputs(image, layers, str(info["method"]), notes)


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Scenario:
    """One way of pushing v1, v2, v3 in order; per run, per version: bytes and seconds."""

    key: str
    title: str
    repo: str
    argv: Callable[[str, str, Path], list[str]]  # (registry host, tag, scratch dir) -> argv
    uploaded: list[list[int]] = field(default_factory=list)
    wall_s: list[list[float]] = field(default_factory=list)
    rss_kib: list[list[int]] = field(default_factory=list)
    dedup: list[dict[str, Any]] = field(default_factory=list)  # last run: nydus.dedup per version
    error: str | None = None

    def shown_argv(self) -> list[str]:
        return self.argv("HOST", "vN", Path("SCRATCH"))


def export_argv(exporter: Path, image: Path, *, store: bool) -> Callable[[str, str, Path], list[str]]:
    def argv(host: str, tag: str, scratch: Path) -> list[str]:
        output = f"type=nydus,name={host}/{REPO}:{tag},oci-mediatypes=true"
        extra = ["--metadata-file", str(scratch / f"meta-{tag}.json")]
        if store:
            output += ",chunk-store=true"
            extra = ["--state-dir", str(scratch / "state"), *extra]
        return [
            str(exporter),
            "export",
            f"oci:{image}:{tag}",
            "--output",
            output,
            "--progress",
            "quiet",
            *extra,
        ]

    return argv


def skopeo_argv(image: Path) -> Callable[[str, str, Path], list[str]]:
    def argv(host: str, tag: str, scratch: Path) -> list[str]:
        return ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{image}:{tag}",
                f"docker://{host}/{OCI_REPO}:{tag}"]  # fmt: skip

    return argv


def stored_bytes(registry: LocalRegistry) -> int:
    return sum(registry.stored_blobs().values())


def check_pushed(registry: LocalRegistry, repo: str, tag: str) -> str | None:
    """None if the manifest under ``repo:tag`` reads back and every blob it names is stored."""
    request = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": ", ".join(MANIFEST_TYPES)}
    )
    try:
        with _DIRECT.open(request, timeout=30) as response:
            manifest = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"cannot read {repo}:{tag} back from the registry: {exc}"
    stored = registry.stored_blobs()
    for desc in (manifest.get("config", {}), *manifest.get("layers", [])):
        if stored.get(str(desc.get("digest"))) != desc.get("size"):
            return f"{repo}:{tag}: blob {desc.get('digest')} is not stored at its size {desc.get('size')}"
    return None


def run_scenario(scenario: Scenario, scratch_parent: Path) -> None:
    """v1, v2, v3 in order into a fresh registry (and a fresh scratch dir, e.g. the state)."""
    registry = start_registry(scratch_parent)
    scratch = Path(tempfile.mkdtemp(prefix="dedup-", dir=scratch_parent))
    uploaded: list[int] = []
    walls: list[float] = []
    rsss: list[int] = []
    dedup: dict[str, dict[str, Any]] = {}
    try:
        for tag in VERSIONS:
            argv = scenario.argv(registry.host, tag, scratch)
            before = stored_bytes(registry)
            try:
                wall, rss, code, tail = run_once(argv, subprocess.DEVNULL, timeout=PUSH_TIMEOUT)
            except OSError as exc:
                scenario.error = f"{tag}: cannot run {argv[0]}: {exc}"
                return
            if code != 0:
                log = registry.log_tail(5)
                scenario.error = f"{tag}: exit {code}: {tail or '(no output)'}"
                scenario.error += f"\nregistry log:\n{log}" if log else ""
                return
            problem = check_pushed(registry, scenario.repo, tag)
            if problem is not None:
                scenario.error = problem
                return
            uploaded.append(stored_bytes(registry) - before)
            walls.append(wall)
            rsss.append(rss)
            meta = scratch / f"meta-{tag}.json"
            if meta.is_file():
                stats = json.loads(json.loads(meta.read_text()).get("nydus.dedup", "{}"))
                dedup[tag] = next(iter(stats.values()), {}) if stats else {}
    finally:
        registry.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    scenario.uploaded.append(uploaded)
    scenario.wall_s.append(walls)
    scenario.rss_kib.append(rsss)
    if dedup:
        scenario.dedup = [dedup[tag] for tag in VERSIONS]


def per_version_median(values: list[list[int]] | list[list[float]]) -> list[float]:
    return [statistics.median(run[i] for run in values) for i in range(len(VERSIONS))] if values else []


def summary(s: Scenario) -> dict[str, Any]:
    ok = s.error is None and bool(s.uploaded)
    totals = [sum(run) for run in s.uploaded] if ok else []
    thirds = [run[2] / run[0] for run in s.wall_s] if ok else []
    return {
        "title": s.title,
        "argv": s.shown_argv(),
        "uploaded_bytes": s.uploaded,
        "wall_s": s.wall_s,
        "max_rss_kib": s.rss_kib,
        "median_uploaded_bytes": per_version_median(s.uploaded) if ok else None,
        "median_total_bytes": statistics.median(totals) if totals else None,
        "median_wall_s": per_version_median(s.wall_s) if ok else None,
        "median_third_over_first_wall": statistics.median(thirds) if thirds else None,
        "dedup": dict(zip(VERSIONS, s.dedup, strict=False)),
        "error": s.error,
    }


# --------------------------------------------------------------------------------------------
# Reporting


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f} MiB"


def _verdict(value: float | None, target: float) -> str:
    return "" if value is None else (" met" if value <= target else " NOT met")


def render(report: dict[str, Any]) -> str:
    img = report["image"]
    lines = [f"image: oci:{img['path']}:v1|v2|v3  (top layers: {img['method']})"]
    for layer in img["layers"]:
        lines.append(
            f"  {layer['name']:<4} {layer['tar_bytes'] / MiB:7.1f} MiB tar -> "
            f"{layer['size'] / MiB:6.1f} MiB gzip, "
            f"{layer['entries']} entries  ({layer['created_by']})"
        )
    sc = report["scenarios"]
    order = ("oci", "no_store", "store")
    lines.append(f"{'bytes uploaded (median)':<26}" + "".join(f"{sc[k]['title']:>22}" for k in order))
    for i, tag in enumerate(VERSIONS):
        cells = [
            _mib(sc[k]["median_uploaded_bytes"][i] if sc[k]["median_uploaded_bytes"] else None) for k in order
        ]
        lines.append(f"  {tag:<24}" + "".join(f"{c:>22}" for c in cells))
    lines.append(f"  {'total':<24}" + "".join(f"{_mib(sc[k]['median_total_bytes']):>22}" for k in order))
    lines.append(f"{'wall time (median)':<26}" + "".join(f"{sc[k]['title']:>22}" for k in order))
    for i, tag in enumerate(VERSIONS):
        cells = [fmt_s(sc[k]["median_wall_s"][i] if sc[k]["median_wall_s"] else None) for k in order]
        lines.append(f"  {tag:<24}" + "".join(f"{c:>22}" for c in cells))
    r = report["ratios"]
    over = r["store_over_no_store_bytes"]
    lines.append(
        f"bytes: store/no-store {fmt_ratio(over)} "
        f"(target <= {TARGET_BYTES:.2f}x, i.e. >= 40 % fewer{_verdict(over, TARGET_BYTES)})"
        f"   store/OCI {fmt_ratio(r['store_over_oci_bytes'])}"
        f"   no-store/OCI {fmt_ratio(r['no_store_over_oci_bytes'])}"
    )
    lines.append(f"bytes of v2+v3 only: store/no-store {fmt_ratio(r['store_over_no_store_bytes_v2_v3'])}")
    lines.append(
        f"time: store export v3/v1 {fmt_ratio(r['store_third_over_first_wall'])} "
        f"(target <= {TARGET_TIME:.2f}x{_verdict(r['store_third_over_first_wall'], TARGET_TIME)})"
        f"   no-store export v3/v1 {fmt_ratio(r['no_store_third_over_first_wall'])}"
    )
    dedup = sc["store"]["dedup"]
    for tag in VERSIONS:
        d = dedup.get(tag)
        if d:
            lines.append(
                f"  store {tag}: {d.get('chunks')} chunk refs, {d.get('stored')} stored, "
                f"{d.get('from_chunk_dict')} from the store, "
                f"{_mib(d.get('bytes_not_stored'))} not stored again"
            )
    lines.append(
        f"{report['runs']} runs, each on a fresh registry (and state dir); {report['cpu_count']} CPUs"
    )
    for note in report["notes"]:
        lines.append(f"note: {note}")
    for k in order:
        if sc[k]["error"]:
            lines.append(f"ERROR {sc[k]['title']}: {sc[k]['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, runs_help="runs (each: fresh registries, fresh state dir)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    problem = _missing_setup(args)
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 1
    exporter = find_exporter(args.exporter)
    cache: Path = args.cache.resolve()
    try:
        inputs = ensure_inputs(cache, args.mirror)
    except SETUP_ERRORS as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)

    scenarios = [
        Scenario("store", "export + store", REPO, export_argv(exporter, inputs.image, store=True)),
        Scenario("no_store", "export, no store", REPO, export_argv(exporter, inputs.image, store=False)),
        Scenario("oci", "OCI gzip (skopeo)", OCI_REPO, skopeo_argv(inputs.image)),
    ]
    for i in range(args.runs):
        # Rotate who goes first: no scenario always gets the coldest page cache.
        for scenario in scenarios[i % 3 :] + scenarios[: i % 3]:
            if scenario.error is None:
                print(f"run {i + 1}/{args.runs}: {scenario.title}", file=sys.stderr)
                try:
                    run_scenario(scenario, work)
                except BenchError as exc:
                    scenario.error = str(exc)
    report = _report(inputs, scenarios, args.runs)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if any(s.error for s in scenarios) else 0


def _missing_setup(args: argparse.Namespace) -> str | None:
    missing = missing_tools(TOOLS)
    if missing:
        return f"missing {', '.join(missing)} (run `make system-deps`)"
    return check_exporter(find_exporter(args.exporter), "export")


def _report(inputs: Inputs, scenarios: list[Scenario], runs: int) -> dict[str, Any]:
    sums = {s.key: summary(s) for s in scenarios}

    def total(key: str) -> float | None:
        value = sums[key]["median_total_bytes"]
        return None if value is None else float(value)

    def later(key: str) -> float | None:
        runs = [r[1] + r[2] for r in next(s for s in scenarios if s.key == key).uploaded]
        return float(statistics.median(runs)) if runs and sums[key]["error"] is None else None

    notes = list(inputs.notes)
    for s in scenarios:
        if s.error is None and len({tuple(run) for run in s.uploaded}) > 1:
            notes.append(f"{s.title}: the bytes differed between runs (medians shown)")
    ratios = {
        "store_over_no_store_bytes": ratio(total("store"), total("no_store")),
        "store_over_oci_bytes": ratio(total("store"), total("oci")),
        "no_store_over_oci_bytes": ratio(total("no_store"), total("oci")),
        "store_over_no_store_bytes_v2_v3": ratio(later("store"), later("no_store")),
        "store_third_over_first_wall": sums["store"]["median_third_over_first_wall"],
        "no_store_third_over_first_wall": sums["no_store"]["median_third_over_first_wall"],
    }
    bytes_ratio, time_ratio = ratios["store_over_no_store_bytes"], ratios["store_third_over_first_wall"]
    return {
        "image": {"path": str(inputs.image), "method": inputs.method, "layers": _image_layers(inputs)},
        "scenarios": sums,
        "ratios": ratios,
        "targets": {
            "store_over_no_store_bytes": TARGET_BYTES,
            "store_third_over_first_wall": TARGET_TIME,
            "bytes_met": None if bytes_ratio is None else bytes_ratio <= TARGET_BYTES,
            "time_met": None if time_ratio is None else time_ratio <= TARGET_TIME,
        },
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "notes": notes,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _image_layers(inputs: Inputs) -> list[dict[str, Any]]:
    manifest = json.loads((inputs.image / "index.json").read_text())
    by_tar = {}
    for entry in manifest["manifests"]:
        digest = entry["digest"].removeprefix("sha256:")
        doc = json.loads((inputs.image / "blobs" / "sha256" / digest).read_text())
        tag = entry["annotations"]["org.opencontainers.image.ref.name"]
        for layer, desc in zip(inputs.layers[tag], doc["layers"], strict=True):
            by_tar[layer.tar] = (layer, desc)
    names = ("base", "v2", "v3")
    return [
        {"name": names[i], "created_by": la.created_by, **desc, **layer_stats(la.tar)}
        for i, (la, desc) in enumerate(by_tar.values())
    ]


if __name__ == "__main__":
    sys.exit(main())
