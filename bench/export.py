#!/usr/bin/env python3
"""Benchmark: `nydus-exporter export` of a 3-layer image against skopeo and mkfs.erofs.

On the first run it builds, and caches under bench/.cache/export/, an OCI image layout
(gzip layers, OCI media types, tag ``bench``) of three layers:

1. the Debian bookworm minbase rootfs that bench/pack.py caches (bench/.cache/layer.tar,
   built the same way, with debootstrap, if missing),
2. a Python virtualenv at /opt/venv with a few pure-Python packages from the configured
   package index (requests, rich, pyyaml and their dependencies),
3. a small config layer: files under /etc/app, the whiteout of layer 1's /etc/motd and an
   opaque /etc/apt/apt.conf.d (so the export's overlay merge has work to do, [format §5]).

The layout is written with the standard library only and checked with
``skopeo inspect oci:DIR:bench``. It then reports, as the median of --runs runs, the wall
time and peak RSS of:

* ``nydus-exporter export oci:DIR:bench --output type=nydus,push=false,oci-layout=OUT,
  oci-mediatypes=true --progress quiet`` (OUT removed before each run),
* skopeo re-encoding every layer of the same image to gzip (decompress + recompress, the
  baseline for "rewrite every layer of an image"). skopeo 1.9 keeps gzip layers as they are
  when asked for gzip again, so this is ``skopeo copy --dest-decompress oci:DIR:bench
  dir:TMP`` then ``skopeo copy --dest-compress-format gzip dir:TMP oci:OUT2:bench``, summed;
  for comparison also ``skopeo copy --dest-compress-format zstd`` (a format change, re-encoded
  in one command) and ``skopeo copy --dest-compress --dest-compress-format gzip`` (which only
  copies the bytes),
* ``mkfs.erofs --chunksize=1048576 --blobdev=blob.img meta.img LAYERDIR`` once per layer
  tree (the trees are cached once; layer 1's is the rootfs the tar was made from), summed,

and the ratios export/skopeo-gzip (target <= 0.5x), export/skopeo-zstd and
export/sum-of-mkfs.erofs. Every output is removed before each run. Peak RSS is
read as in bench/pack.py (a launcher reaps each command with wait4(2)).

This is a benchmark, not a test: it fails (exit 1) with a clear message when a tool is
missing or when any measured command fails.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from _common import (
    CHUNK_SIZE,
    SUITE,
    BenchError,
    MiB,
    Result,
    bench_parser,
    check_exporter,
    ensure_layer,
    ensure_rootfs,
    find_exporter,
    floor_kib,
    fmt_kib,
    fmt_ratio,
    fmt_s,
    layer_stats,
    measure,
    measure_steps,
    missing_tools,
    output_size,
    ratio,
)

TAG = "bench"
VENV_PACKAGES = ("requests", "rich", "pyyaml")
TARGET_OVER_SKOPEO = 0.5  # the export should take at most half of skopeo's gzip re-encode
GZIP_LEVEL = 6  # what `gzip` and BuildKit use by default
IO_CHUNK = 1 << 20

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "2024-06-01T00:00:00Z"  # fixed, so the image is the same on every machine

# skopeo 1.9 (containers/image) re-encodes a layer only when the destination asks for a
# different compression format than the source's: `skopeo copy --dest-compress
# --dest-compress-format gzip oci:SRC oci:OUT` copies gzip layers byte for byte (same digests,
# a fraction of a second), and --dest-compress-level does not change that. So the gzip
# baseline is two copies: `--dest-decompress` into a dir: layout, then `--dest-compress-format
# gzip` back into an OCI layout (decompress + recompress every layer, as the export has to).
# The as-is copy and the zstd re-encode (a format change, so one command) are reported too.
# After the runs, the layer digests tell whether each variant really re-encoded.
TOOLS = ("skopeo", "mkfs.erofs", "tar")


# --------------------------------------------------------------------------------------------
# The cached image


@dataclass(frozen=True)
class LayerInput:
    """One layer of the benchmark image: its tar, the tree it was made from, how it was made."""

    name: str
    tar: Path
    tree: Path
    created_by: str


def _run(argv: Sequence[str], what: str) -> None:
    res = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", check=False)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {res.returncode}): {' '.join(argv)}\n{tail}")


def _tar_tree(tree: Path, tar: Path) -> None:
    """``tar`` the tree with numeric owners, as bench/pack.py tars the rootfs (temp + rename)."""
    tmp = tar.with_name(tar.name + ".tmp")
    try:
        _run(["tar", "-C", str(tree), "--numeric-owner", "--xattrs", "-cf", str(tmp), "."], "tar")
        tmp.rename(tar)
    finally:
        tmp.unlink(missing_ok=True)


def _unpack_tree(tar: Path, tree: Path) -> None:
    """The layer's tree from its tar (whiteout files stay plain files: mkfs.erofs just sees them)."""
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _run(["tar", "-C", str(tmp), "--numeric-owner", "--xattrs", "-xpf", str(tar)], "tar -x")
        tmp.rename(tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_venv_layer(base: Path) -> LayerInput:
    """Layer 2: ``python -m venv /opt/venv`` and ``pip install`` of VENV_PACKAGES."""
    tree, tar = base / "venv-tree", base / "venv.tar"
    created_by = f"python3 -m venv /opt/venv && /opt/venv/bin/pip install {' '.join(VENV_PACKAGES)}"
    layer = LayerInput("venv", tar, tree, created_by)
    if tar.is_file():
        if not tree.is_dir():
            _unpack_tree(tar, tree)
        return layer
    # The tar marks a finished build; a tree without it is a leftover. The venv is built in
    # place (its scripts embed their own path), then tarred.
    shutil.rmtree(tree, ignore_errors=True)
    venv = tree / "opt" / "venv"
    print(f"building the venv layer: {created_by} (in {tree})", file=sys.stderr)
    try:
        _run([sys.executable, "-m", "venv", str(venv)], "python -m venv")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir"]
        _run([*pip, *VENV_PACKAGES], "pip install")
        _tar_tree(tree, tar)
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    return layer


# Layer 3. (path, mode, content); content None = directory; paths are relative to the root.
_CONFIG_FILES: tuple[tuple[str, int, bytes | None], ...] = (
    ("etc", 0o755, None),
    ("etc/app", 0o755, None),
    ("etc/app/app.yaml", 0o644, b"server:\n  host: 0.0.0.0\n  port: 8080\nlog: /etc/app/logging.yaml\n"),
    ("etc/app/logging.yaml", 0o644, b"version: 1\nroot:\n  level: INFO\n  handlers: [console]\n"),
    ("etc/app/env", 0o644, b"APP_ENV=production\nAPP_CONFIG=/etc/app/app.yaml\n"),
    ("etc/app/conf.d", 0o755, None),
    ("etc/app/conf.d/10-defaults.conf", 0o644, b"timeout = 30\nretries = 3\n"),
    ("etc/app/conf.d/20-site.conf", 0o644, b"timeout = 60\n"),
    ("etc/app/secrets", 0o700, None),
    ("etc/app/secrets/token", 0o600, b"not-a-real-token\n"),
    # [format §5]: an OCI whiteout deletes layer 1's /etc/motd ...
    ("etc/.wh.motd", 0o644, b""),
    # ... and an opaque marker hides everything layer 1 has in /etc/apt/apt.conf.d.
    ("etc/apt", 0o755, None),
    ("etc/apt/apt.conf.d", 0o755, None),
    ("etc/apt/apt.conf.d/.wh..wh..opq", 0o644, b""),
    ("etc/apt/apt.conf.d/99app", 0o644, b'APT::Install-Recommends "false";\n'),
)


def ensure_config_layer(base: Path) -> LayerInput:
    """Layer 3: a few files under /etc/app, one whiteout and one opaque directory."""
    tree, tar = base / "config-tree", base / "config.tar"
    layer = LayerInput("config", tar, tree, "COPY app/ /etc/app/ && rm /etc/motd && reset apt.conf.d")
    if tar.is_file():
        if not tree.is_dir():
            _unpack_tree(tar, tree)
        return layer
    shutil.rmtree(tree, ignore_errors=True)
    try:
        tree.mkdir(parents=True)
        tree.chmod(0o755)
        for rel, mode, content in _CONFIG_FILES:
            path = tree / rel
            if content is None:
                path.mkdir()
            else:
                path.write_bytes(content)
            path.chmod(mode)
        _tar_tree(tree, tar)
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    return layer


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


class _LayoutWriter:
    """The few parts of an OCI image layout this benchmark needs (image-spec image-layout.md)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True)
        (root / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
        self._n = 0

    def _tmp(self) -> Path:
        self._n += 1
        return self.blobs / f".tmp-{self._n}"

    def add_bytes(self, media_type: str, data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def add_gzip_layer(self, tar: Path) -> tuple[dict[str, Any], str]:
        """Compress ``tar`` into a blob, in chunks; return its descriptor and its diff_id."""
        tmp = self._tmp()
        diff = hashlib.sha256()
        with open(tar, "rb") as src, open(tmp, "wb") as raw:
            out = _HashingWriter(raw)
            # mtime=0 and no file name: the same tar always gives the same blob.
            with gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=out, mtime=0) as gz:
                while chunk := src.read(IO_CHUNK):
                    diff.update(chunk)
                    gz.write(chunk)
        digest = out.sha256.hexdigest()
        tmp.rename(self.blobs / digest)
        desc = {"mediaType": MEDIA_LAYER_GZIP, "digest": f"sha256:{digest}", "size": out.size}
        return desc, f"sha256:{diff.hexdigest()}"

    def set_index(self, manifest: dict[str, Any], tag: str) -> None:
        entry = {**manifest, "annotations": {REF_NAME: tag}}
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry]}
        (self.root / "index.json").write_bytes(_json_bytes(index))


def write_image(root: Path, layers: Sequence[LayerInput]) -> None:
    """An OCI image layout at ``root`` (built beside it, then renamed into place)."""
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out = _LayoutWriter(tmp)
        descs, diff_ids = [], []
        for layer in layers:
            print(f"compressing layer {layer.name} ({layer.tar})", file=sys.stderr)
            desc, diff_id = out.add_gzip_layer(layer.tar)
            descs.append(desc)
            diff_ids.append(diff_id)
        arch = _oci_arch()
        config = {
            "created": CREATED,
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": [
                    "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "APP_CONFIG=/etc/app/app.yaml",
                ],
                "Cmd": ["/opt/venv/bin/python"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "created_by": layer.created_by} for layer in layers],
        }
        config_desc = out.add_bytes(MEDIA_CONFIG, _json_bytes(config))
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc, "layers": descs}
        manifest_desc = out.add_bytes(MEDIA_MANIFEST, _json_bytes(manifest))
        manifest_desc["platform"] = {"architecture": arch, "os": "linux"}
        out.set_index(manifest_desc, TAG)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def skopeo_inspect(image: Path) -> dict[str, Any]:
    """``skopeo inspect oci:DIR:bench``: proves the layout is readable by an independent client."""
    argv = ["skopeo", "inspect", f"oci:{image}:{TAG}"]
    res = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    if res.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed (exit {res.returncode}): {res.stderr.strip()}")
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def ensure_image(cache: Path, mirror: str | None) -> tuple[Path, list[LayerInput]]:
    """The cached image and its layers; each part is built only if missing."""
    base = cache / "export"
    base.mkdir(parents=True, exist_ok=True)
    rootfs = ensure_rootfs(cache, mirror)
    layers = [
        LayerInput("rootfs", ensure_layer(cache, rootfs), rootfs, f"debootstrap --variant=minbase {SUITE}"),
        ensure_venv_layer(base),
        ensure_config_layer(base),
    ]
    image = base / "image"
    stamp = base / "image-inputs.json"
    # The image is rebuilt when a layer tar changed (e.g. was deleted and built again).
    inputs = [{"tar": str(layer.tar), "size": layer.tar.stat().st_size,
               "mtime_ns": layer.tar.stat().st_mtime_ns} for layer in layers]  # fmt: skip
    current = stamp.read_text() if stamp.is_file() else None
    if not (image / "index.json").is_file() or current != json.dumps(inputs):
        shutil.rmtree(image, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        write_image(image, layers)
        stamp.write_text(json.dumps(inputs))
    skopeo_inspect(image)
    return image, layers


# --------------------------------------------------------------------------------------------
# The commands


def export_argv(exporter: Path, image: Path, out: Path) -> list[str]:
    output = f"type=nydus,push=false,oci-layout={out},oci-mediatypes=true"
    return [str(exporter), "export", f"oci:{image}:{TAG}", "--output", output, "--progress", "quiet"]


def skopeo_argv(source: str, dest: str, *flags: str) -> list[str]:
    return ["skopeo", "copy", "--quiet", *flags, source, dest]


def skopeo_gzip_steps(image: Path, scratch: Path, out: Path) -> list[list[str]]:
    """Decompress into ``dir:scratch``, then gzip into ``oci:out:bench`` (see the note above)."""
    return [
        skopeo_argv(f"oci:{image}:{TAG}", f"dir:{scratch}", "--dest-decompress"),
        skopeo_argv(f"dir:{scratch}", f"oci:{out}:{TAG}", "--dest-compress-format", "gzip"),
    ]


def mkfs_argv(tree: Path, meta: Path, blob: Path) -> list[str]:
    return ["mkfs.erofs", "--quiet", f"--chunksize={CHUNK_SIZE}", f"--blobdev={blob}", str(meta), str(tree)]


def _manifest_of(layout: Path) -> dict[str, Any] | None:
    """The single manifest an OCI layout's index.json points at (None if there is none)."""
    try:
        index = json.loads((layout / "index.json").read_text())
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest: dict[str, Any] = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return manifest


def _layer_digests(layout: Path) -> list[str]:
    manifest = _manifest_of(layout)
    return [str(layer.get("digest")) for layer in manifest.get("layers", [])] if manifest else []


# --------------------------------------------------------------------------------------------
# Reporting


def _wall(result: Result) -> float | None:
    """The median wall time, or None when the run failed (no ratio from a broken run)."""
    return None if result.error else result.median_wall_s


def render(report: dict[str, Any], results: list[Result]) -> str:
    image = report["image"]
    lines = [f"image: oci:{image['path']}:{TAG}  {image['blob_bytes'] / MiB:.1f} MiB of gzip layers"]
    for i, layer in enumerate(image["layers"], 1):
        lines.append(
            f"  layer {i} {layer['name']:<7} {layer['tar_bytes'] / MiB:7.1f} MiB tar -> "
            f"{layer['size'] / MiB:6.1f} MiB gzip, {layer['entries']} entries, {layer['regular_files']} files"
        )
    lines.append(f"{'tool':<30} {'median wall':>12} {'peak RSS':>12} {'output':>12}  runs")
    for r in results:
        out = "-" if r.output_bytes is None else f"{r.output_bytes / MiB:.1f} MiB"
        wall, rss = fmt_s(r.median_wall_s), fmt_kib(r.peak_rss_kib, report["rss_floor_kib"])
        lines.append(f"{r.tool:<30} {wall:>12} {rss:>12} {out:>12}  {len(r.wall_s)}")
    ratios = report["ratios"]
    over_skopeo = ratios["export_over_skopeo_gzip"]
    verdict = "" if over_skopeo is None else (" met" if over_skopeo <= TARGET_OVER_SKOPEO else " NOT met")
    lines.append(
        f"ratios: export/skopeo-gzip {fmt_ratio(over_skopeo)} (target <= {TARGET_OVER_SKOPEO:.2f}x{verdict})"
        f"   export/skopeo-zstd {fmt_ratio(ratios['export_over_skopeo_zstd'])}"
        f"   export/sum-mkfs.erofs {fmt_ratio(ratios['export_over_sum_mkfs_erofs'])}"
    )
    lines.append(
        f"export peak RSS {fmt_kib(report['export_peak_rss_kib'])}, "
        f"{report['export_layers'] or '-'} layers in the Nydus manifest, {report['cpu_count']} CPUs"
    )
    for note in report["notes"]:
        lines.append(f"note: {note}")
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
    cache: Path = args.cache.resolve()
    try:
        image, layers = ensure_image(cache, args.mirror)
    except (BenchError, subprocess.CalledProcessError, OSError, tarfile.TarError) as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1

    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    exporter = find_exporter(args.exporter)
    problem = check_exporter(exporter, "export")

    export_out = work / "export-oci"
    e_argv = export_argv(exporter, image, export_out)
    if problem is None:
        export = measure("nydus-exporter export", e_argv, args.runs, [export_out])
    else:
        export = Result(tool="nydus-exporter export", argv=e_argv, error=problem)
    src = f"oci:{image}:{TAG}"
    gzip_scratch, gzip_out = work / "skopeo-dir", work / "skopeo-gzip-oci"
    gzip_steps = skopeo_gzip_steps(image, gzip_scratch, gzip_out)
    skopeo_gzip = measure_steps(
        "skopeo gzip re-encode", gzip_steps, args.runs, [gzip_scratch, gzip_out],
        argv=[*gzip_steps[0], "&&", *gzip_steps[1]],
    )  # fmt: skip
    skopeo_gzip.output_bytes = output_size(gzip_out) if skopeo_gzip.error is None else None
    zstd_out, asis_out = work / "skopeo-zstd-oci", work / "skopeo-asis-oci"
    zstd_argv = skopeo_argv(src, f"oci:{zstd_out}:{TAG}", "--dest-compress-format", "zstd")
    skopeo_zstd = measure("skopeo zstd re-encode", zstd_argv, args.runs, [zstd_out])
    asis_argv = skopeo_argv(src, f"oci:{asis_out}:{TAG}", "--dest-compress", "--dest-compress-format", "gzip")
    skopeo_asis = measure("skopeo copy gzip (as is)", asis_argv, args.runs, [asis_out])

    steps, outputs = [], []
    for i, layer in enumerate(layers, 1):
        meta, blob = work / f"erofs{i}-meta.img", work / f"erofs{i}-blob.img"
        steps.append(mkfs_argv(layer.tree, meta, blob))
        outputs += [meta, blob]
    shown = mkfs_argv(Path("LAYERDIR"), Path("meta.img"), Path("blob.img"))
    mkfs = measure_steps(f"mkfs.erofs x{len(layers)} (sum)", steps, args.runs, outputs, argv=shown)
    results = [export, skopeo_gzip, skopeo_zstd, skopeo_asis, mkfs]

    notes = []
    source_digests = set(_layer_digests(image))
    for result, out in ((skopeo_gzip, gzip_out), (skopeo_zstd, zstd_out)):
        if result.error is None and set(_layer_digests(out)) & source_digests:
            result.error = f"some layers in {out} have the source's digests: skopeo did not re-encode them"
    if skopeo_asis.error is None and set(_layer_digests(asis_out)) == source_digests:
        notes.append(
            "`skopeo copy --dest-compress --dest-compress-format gzip` kept the gzip layers as they "
            "are (same digests): it measures a copy, not a re-encode"
        )
    export_manifest = _manifest_of(export_out) if export.error is None else None
    if export.error is None and export_manifest is None:
        export.error = f"no manifest in {export_out}/index.json"

    manifest = _manifest_of(image) or {}
    image_layers = []
    for layer, desc in zip(layers, manifest.get("layers", []), strict=False):
        image_layers.append({"name": layer.name, "tree": str(layer.tree), **desc, **layer_stats(layer.tar)})
    report: dict[str, Any] = {
        "image": {
            "path": str(image),
            "tag": TAG,
            "blob_bytes": sum(int(d["size"]) for d in image_layers),
            "layers": image_layers,
        },
        "results": [r.to_json() for r in results],
        "ratios": {
            "export_over_skopeo_gzip": ratio(_wall(export), _wall(skopeo_gzip)),
            "export_over_skopeo_zstd": ratio(_wall(export), _wall(skopeo_zstd)),
            "export_over_sum_mkfs_erofs": ratio(_wall(export), _wall(mkfs)),
        },
        "target_export_over_skopeo_gzip": TARGET_OVER_SKOPEO,
        "export_peak_rss_kib": export.peak_rss_kib,
        "export_layers": len(export_manifest.get("layers", [])) if export_manifest else None,
        "rss_floor_kib": floor_kib(),
        "cpu_count": os.cpu_count(),
        "notes": notes,
    }
    print(json.dumps(report, indent=2) if args.json else render(report, results))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
