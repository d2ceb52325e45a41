#!/usr/bin/env python3
"""Benchmark: pushing a Nydus image to a registry, nydus-exporter's push against skopeo copy.

The 3-layer image that bench/export.py caches (bench/.cache/export/image, built on first use
exactly as that benchmark builds it) is converted once, not measured, with

    nydus-exporter export oci:IMAGE:bench --output type=nydus,push=false,oci-layout=NYDUS_DIR,
        oci-mediatypes=true,name=bench:nydus --progress quiet

into a local OCI layout (bench/.cache/work/push-nydus-oci, rewritten on every invocation, so
it always comes from the current code). Then, as the median of --runs runs, each on a fresh
and empty ``docker-registry`` (distribution 2.8, plain HTTP on 127.0.0.1, a random port,
filesystem storage in a temporary directory removed afterwards) so every blob is really
uploaded, it reports the wall time and peak RSS of:

* ours: ``python bench/_push_child.py NYDUS_DIR nydus 127.0.0.1:PORT/ours/bench:nydus``, a
  child that only calls ``nydus_exporter.pipeline.push.push_image(SyncRegistry(), layout, root,
  [ref])``: interpreter start + imports + the push, nothing of the conversion (the CLI has no
  "push a layout" command). It also reports the push alone, timed inside the child;
* ``skopeo copy --dest-tls-verify=false oci:NYDUS_DIR:nydus
  docker://127.0.0.1:PORT/skopeo/bench:nydus`` of the same layout.

The two tools alternate which goes first from one run to the next. After every run the
registry is checked independently of both clients: the manifest under the tag (fetched over
HTTP) must be the layout's manifest byte for byte (same digest: nothing was re-encoded), and
the registry's own storage must hold every blob the image reaches at its size; the bytes it
stores are the bytes uploaded. The report gives the ratio ours/skopeo (target <= 1.1x).

This is a benchmark, not a test: it fails (exit 1) with a clear message when a tool is
missing, when a push fails or when a registry does not end up with the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    LocalRegistry,
    MiB,
    Result,
    bench_parser,
    check_exporter,
    find_exporter,
    floor_kib,
    fmt_kib,
    fmt_ratio,
    fmt_s,
    missing_tools,
    ratio,
    remove_output,
    run_once,
    start_registry,
)
from export import TAG as SOURCE_TAG
from export import ensure_image

NYDUS_TAG = "nydus"
TARGET_OVER_SKOPEO = 1.1  # our push may take at most 10 % longer than skopeo's
TOOLS = ("skopeo", "docker-registry", "tar")
PUSH_TIMEOUT = 600.0  # seconds; a hung push is killed and reported, never waited for
CHILD = Path(__file__).resolve().parent / "_push_child.py"
OURS_REPO, SKOPEO_REPO = "ours/bench", "skopeo/bench"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[1::2]
# What building the source image or the conversion may raise (ValueError/KeyError: bad JSON).
SETUP_ERRORS = (BenchError, subprocess.CalledProcessError, OSError, ValueError, KeyError, tarfile.TarError)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


# --------------------------------------------------------------------------------------------
# The Nydus image to push


@dataclass(frozen=True)
class NydusImage:
    layout: Path
    root_digest: str
    root_media_type: str
    blobs: dict[str, int]  # digest -> size of everything the root reaches, manifests included
    export_s: float


def export_argv(exporter: Path, image: Path, out: Path) -> list[str]:
    output = f"type=nydus,push=false,oci-layout={out},oci-mediatypes=true,name=bench:{NYDUS_TAG}"
    return [str(exporter), "export", f"oci:{image}:{SOURCE_TAG}", "--output", output, "--progress", "quiet"]


def _read_json(layout: Path, digest: str) -> dict[str, Any]:
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    data: dict[str, Any] = json.loads(path.read_bytes())
    return data


def reachable_blobs(layout: Path, root: dict[str, Any]) -> dict[str, int]:
    """digest -> size of the root descriptor and all it reaches, read from the layout's JSON
    (not with the code under test)."""
    found: dict[str, int] = {}

    def visit(desc: dict[str, Any]) -> None:
        digest, size = str(desc["digest"]), int(desc["size"])
        found[digest] = size
        doc = _read_json(layout, digest)
        if desc.get("mediaType") in INDEX_TYPES:
            for child in doc.get("manifests", []):
                visit(child)
        else:
            for blob in (doc["config"], *doc.get("layers", [])):
                found[str(blob["digest"])] = int(blob["size"])

    visit(root)
    return found


def make_nydus_image(exporter: Path, image: Path, out: Path) -> NydusImage:
    """Convert the benchmark image once (not measured) and describe what a push must upload."""
    argv = export_argv(exporter, image, out)
    print(f"converting: {' '.join(argv)}", file=sys.stderr)
    start = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
        raise BenchError(f"the conversion failed (exit {res.returncode}):\n{tail}")
    index = json.loads((out / "index.json").read_text())
    tagged = [
        m for m in index.get("manifests", [])
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == NYDUS_TAG
    ]  # fmt: skip
    if len(tagged) != 1:
        raise BenchError(f"{out}/index.json has {len(tagged)} entries tagged {NYDUS_TAG!r}, expected 1")
    root = tagged[0]
    return NydusImage(out, str(root["digest"]), str(root["mediaType"]), reachable_blobs(out, root), elapsed)


# --------------------------------------------------------------------------------------------
# Measuring


def ours_argv(python: Path, image: NydusImage, host: str) -> list[str]:
    return [str(python), str(CHILD), str(image.layout), NYDUS_TAG, f"{host}/{OURS_REPO}:{NYDUS_TAG}"]


def skopeo_argv(image: NydusImage, host: str) -> list[str]:
    return [
        "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
        f"oci:{image.layout}:{NYDUS_TAG}", f"docker://{host}/{SKOPEO_REPO}:{NYDUS_TAG}",
    ]  # fmt: skip


@dataclass
class Tool:
    """One client under measurement: ``argv(host)`` pushes the image to ``repo`` on ``host``."""

    result: Result
    repo: str
    argv: Callable[[str], list[str]]
    uploaded_bytes: list[int] = field(default_factory=list)  # as stored by the registry
    child_reports: list[dict[str, Any]] = field(default_factory=list)  # ours only


def manifest_under_tag(registry: LocalRegistry, repo: str, tag: str) -> tuple[str, str]:
    """(sha256 digest of the bytes, media type) the registry serves for ``repo:tag``."""
    request = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": ", ".join(MANIFEST_TYPES)}
    )
    with _DIRECT.open(request, timeout=30) as response:
        body = response.read()
        media_type = response.headers.get("Content-Type", "")
    return f"sha256:{hashlib.sha256(body).hexdigest()}", media_type


def check_registry(registry: LocalRegistry, repo: str, image: NydusImage) -> str | None:
    """None if ``repo:nydus`` is the image with every blob stored at its size, else why not."""
    try:
        digest, media_type = manifest_under_tag(registry, repo, NYDUS_TAG)
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot read {repo}:{NYDUS_TAG} back from the registry: {exc}"
    if digest != image.root_digest:
        return f"{repo}:{NYDUS_TAG} is {digest} ({media_type}), not the layout's {image.root_digest}"
    stored = registry.stored_blobs()
    missing = [d for d in image.blobs if d not in stored]
    if missing:
        return f"the registry lacks {len(missing)} of the image's blobs, e.g. {missing[0]}"
    wrong = [d for d, size in image.blobs.items() if stored[d] != size]
    if wrong:
        return f"the registry stores {wrong[0]} with {stored[wrong[0]]} bytes, not {image.blobs[wrong[0]]}"
    return None


def measure_one(tool: Tool, image: NydusImage, scratch: Path) -> None:
    """One run of ``tool`` against a fresh, empty registry (torn down afterwards)."""
    result = tool.result
    try:
        registry = start_registry(scratch)
    except BenchError as exc:
        result.error = str(exc)
        return
    with registry, tempfile.TemporaryFile() as out:
        argv = tool.argv(registry.host)
        try:
            wall, rss, code, tail = run_once(argv, out, timeout=PUSH_TIMEOUT)
        except OSError as exc:
            result.error = f"cannot run {argv[0]}: {exc}"
            return
        if code != 0:
            log = registry.log_tail(5)
            result.error = f"exit {code}: {tail or '(no output)'}"
            if log:
                result.error += f"\nregistry log:\n{log}"
            return
        problem = check_registry(registry, tool.repo, image)
        if problem is not None:
            result.error = problem
            return
        result.wall_s.append(wall)
        result.max_rss_kib.append(rss)
        tool.uploaded_bytes.append(sum(registry.stored_blobs().values()))
        out.seek(0)
        stdout = out.read().decode(errors="replace").strip()
    if tool.repo == OURS_REPO:
        try:
            tool.child_reports.append(json.loads(stdout.splitlines()[-1]))
        except (ValueError, IndexError):
            result.error = f"the push child printed no JSON report: {stdout[-300:]!r}"


def measure_all(tools: list[Tool], image: NydusImage, runs: int, scratch: Path) -> None:
    for i in range(runs):
        # Alternate who goes first: neither tool always gets the warmer page cache.
        for tool in tools if i % 2 == 0 else tools[::-1]:
            if tool.result.error is None:
                print(f"run {i + 1}/{runs}: {tool.result.tool}", file=sys.stderr)
                measure_one(tool, image, scratch)
    for tool in tools:
        if tool.uploaded_bytes:
            tool.result.output_bytes = tool.uploaded_bytes[-1]


def python_for(exporter: Path) -> Path:
    """The interpreter of the exporter's environment (its console script's neighbour)."""
    beside = exporter.parent / "python"
    return beside if beside.exists() else Path(sys.executable)


def check_child(python: Path) -> str | None:
    res = subprocess.run(
        [str(python), "-c", "import nydus_exporter.pipeline.push, nydus_exporter.registry.sync"],
        capture_output=True, text=True, errors="replace", check=False,
    )  # fmt: skip
    if res.returncode != 0:
        return f"{python} cannot import nydus_exporter (run `make venv`): {res.stderr.strip()[-300:]}"
    return None


# --------------------------------------------------------------------------------------------
# Reporting


def render(report: dict[str, Any], results: list[Result]) -> str:
    image = report["image"]
    lines = [
        f"image: oci:{image['layout']}:{NYDUS_TAG}  {image['root_digest']}",
        f"  {image['blob_count']} blobs, {image['blob_bytes'] / MiB:.1f} MiB (manifest and config "
        f"included); converted in {fmt_s(image['export_s'])} (not measured)",
        f"{'tool':<28} {'median wall':>12} {'peak RSS':>12} {'uploaded':>12}  runs",
    ]
    for r in results:
        out = "-" if r.output_bytes is None else f"{r.output_bytes / MiB:.1f} MiB"
        wall, rss = fmt_s(r.median_wall_s), fmt_kib(r.peak_rss_kib, report["rss_floor_kib"])
        lines.append(f"{r.tool:<28} {wall:>12} {rss:>12} {out:>12}  {len(r.wall_s)}")
    over = report["ratios"]["ours_over_skopeo_wall"]
    verdict = "" if over is None else (" met" if over <= TARGET_OVER_SKOPEO else " NOT met")
    lines.append(
        f"ratios: ours/skopeo wall {fmt_ratio(over)} (target <= {TARGET_OVER_SKOPEO:.2f}x{verdict})"
        f"   peak RSS {fmt_ratio(report['ratios']['ours_over_skopeo_rss'])}"
    )
    ours = report["ours"]
    if ours["median_push_s"] is not None:
        alone = fmt_ratio(report["ratios"]["ours_push_alone_over_skopeo_wall"])
        push_s = fmt_s(ours["median_push_s"])
        lines.append(
            f"ours: the push alone (timed inside the child, no start-up/imports) {push_s},"
            f" {alone} of skopeo; the client uploaded {ours['uploaded_blobs']} blobs, "
            f"{ours['uploaded_bytes'] / MiB:.1f} MiB of blob bodies"
        )
    lines.append(f"{report['skopeo_version']}, {report['cpu_count']} CPUs")
    for r in results:
        if r.error:
            lines.append(f"ERROR {r.tool}: {r.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, runs_help="runs per tool; the median is reported")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    missing = missing_tools(TOOLS)
    if missing:
        print(f"bench: missing {', '.join(missing)} (run `make system-deps`)", file=sys.stderr)
        return 1
    exporter = find_exporter(args.exporter)
    python = python_for(exporter)
    problem = check_exporter(exporter, "export") or check_child(python)
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 1
    cache: Path = args.cache.resolve()
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "push-nydus-oci"
    try:
        source, _ = ensure_image(cache, args.mirror)
        remove_output(layout)  # a fresh conversion every time
        image = make_nydus_image(exporter, source, layout)
    except SETUP_ERRORS as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1

    ours = Tool(
        Result(tool="nydus-exporter push_image", argv=ours_argv(python, image, "127.0.0.1:PORT")),
        OURS_REPO, lambda host: ours_argv(python, image, host),
    )  # fmt: skip
    skopeo = Tool(
        Result(tool="skopeo copy", argv=skopeo_argv(image, "127.0.0.1:PORT")),
        SKOPEO_REPO, lambda host: skopeo_argv(image, host),
    )  # fmt: skip
    measure_all([ours, skopeo], image, args.runs, work)
    results = [ours.result, skopeo.result]

    def wall(r: Result) -> float | None:
        return None if r.error else r.median_wall_s

    def rss(r: Result) -> float | None:
        return None if r.error or r.peak_rss_kib is None else float(r.peak_rss_kib)

    last = ours.child_reports[-1] if ours.child_reports else {}
    push_s = [float(c["push_s"]) for c in ours.child_reports]
    median_push_s = statistics.median(push_s) if push_s and ours.result.error is None else None
    version = subprocess.run(["skopeo", "--version"], capture_output=True, text=True, check=False)
    report: dict[str, Any] = {
        "image": {
            "source": f"oci:{source}:{SOURCE_TAG}",
            "layout": str(layout),
            "root_digest": image.root_digest,
            "root_media_type": image.root_media_type,
            "blob_count": len(image.blobs),
            "blob_bytes": sum(image.blobs.values()),
            "export_s": image.export_s,
        },
        "results": [r.to_json() for r in results],
        "uploaded_bytes": {"ours": ours.uploaded_bytes, "skopeo": skopeo.uploaded_bytes},
        "ours": {
            "push_s": push_s,
            "median_push_s": median_push_s,
            "uploaded_blobs": last.get("uploaded"),
            "uploaded_bytes": last.get("uploaded_bytes"),
            "child_reports": ours.child_reports,
        },
        "ratios": {
            "ours_over_skopeo_wall": ratio(wall(ours.result), wall(skopeo.result)),
            "ours_over_skopeo_rss": ratio(rss(ours.result), rss(skopeo.result)),
            # The push alone (no interpreter start, no imports) against skopeo's whole process:
            # what a push costs inside `nydus-exporter export ... push=true`, which has paid
            # the start-up for the conversion already.
            "ours_push_alone_over_skopeo_wall": ratio(median_push_s, wall(skopeo.result)),
        },
        "target_ours_over_skopeo_wall": TARGET_OVER_SKOPEO,
        "rss_floor_kib": floor_kib(),
        "cpu_count": os.cpu_count(),
        "skopeo_version": version.stdout.strip() or "skopeo (version unknown)",
    }
    print(json.dumps(report, indent=2) if args.json else render(report, results))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
