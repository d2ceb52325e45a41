#!/usr/bin/env python3
"""Benchmark: metadata at scale and the tar data path, in process (no tools, no network).

Reports the median wall time of --runs runs of:

* merging 20 per-layer bootstraps of 10,000 one-chunk files each (``merge_layers``),
* writing and reading back a bootstrap of 100,000 inodes,
* walking a directory tree of 10,000 files (``iter_directory``),
* reading every byte of a 256 MiB tar of 1 MiB files through ``iter_entries``, next to a
  raw read of the same file (the ratio shows the cost of the tar parsing on the data path).

The tests check what these produce (tests/rafs/test_merge.py, test_bootstrap_roundtrip.py,
tests/layer/test_directory.py, test_tarstream.py); how long it takes is measured here.
"""

from __future__ import annotations

import argparse
import json
import stat
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nydus_exporter.layer.directory import iter_directory
from nydus_exporter.layer.tarstream import iter_entries
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.bootstrap import write_bootstrap
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.merge import MergeLayer, merge_layers
from nydus_exporter.rafs.model import BlobInfo, ChunkRef, Inode
from nydus_exporter.rafs.tree import TreeBuilder

FLAGS = layout.RAFS_COMPRESSION_ZSTD | layout.RAFS_HASH_BLAKE3 | layout.RAFS_ENCRYPTION_NONE
MiB = 1 << 20


def _bootstrap(layer: int, files: int, *, flat: bool = False) -> bytes:
    """A bootstrap of ``files`` one-chunk files (only metadata matters here)."""
    tree = TreeBuilder()
    for i in range(files):
        chunk = ChunkRef(i.to_bytes(4, "big") + bytes(28), 0, i, i * 64, 64, i * 4096, 100)
        if flat:
            path = b"/d%03d/f%d" % (i // 1000, i % 1000)
        elif i % 2:
            path = b"/d%02d/l%02d-f%05d" % (i % 40, layer, i)
        else:
            path = b"/shared/d%02d/f%05d" % (i % 40, i)
        tree.add(path, Inode(mode=stat.S_IFREG | 0o644, size=100, mtime=layer, chunks=[chunk]))
    blob = BlobInfo(
        blob_id=f"{layer:064x}",
        chunk_size=layout.DEFAULT_CHUNK_SIZE,
        chunk_count=files,
        uncompressed_size=files * 4096,
        features=layout.BLOB_FEATURE_INLINED_FS_META | layout.BLOB_FEATURE_INLINED_CHUNK_DIGEST,
    )
    return write_bootstrap(tree.root, [blob], chunk_size=layout.DEFAULT_CHUNK_SIZE, flags=FLAGS)


def _median(runs: int, setup: Callable[[], object], measured: Callable[[object], object]) -> float:
    times = []
    for _ in range(runs):
        prepared = setup()
        start = time.perf_counter()
        measured(prepared)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _read_all(path: Path, through_tar: bool) -> None:
    with path.open("rb") as f:
        if not through_tar:
            while f.read(16 * MiB):
                pass
            return
        for entry in iter_entries(f):
            if entry.data is not None:
                while entry.data.read(16 * MiB):
                    pass


def run(runs: int, scratch: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    layers = [MergeLayer(_bootstrap(i, 10_000), f"{i:064x}") for i in range(20)]
    results["merge 20 x 10k files"] = _median(runs, lambda: None, lambda _: merge_layers(layers))
    results["bootstrap 100k inodes: write + read"] = _median(
        runs, lambda: None, lambda _: read_bootstrap(_bootstrap(0, 100_000, flat=True))
    )
    tree = scratch / "tree"
    for d in range(100):
        sub = tree / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"file-{i:03d}").write_bytes(b"x" if i % 2 else b"")
    results["walk 10k files"] = _median(runs, lambda: None, lambda _: sum(1 for _ in iter_directory(tree)))
    layer = scratch / "layer.tar"
    payload = scratch / "payload"
    payload.write_bytes(bytes(range(256)) * (MiB // 256))
    with tarfile.open(layer, "w") as tar:
        for i in range(256):
            tar.add(payload, arcname=f"f{i}")
    results["read 256 MiB raw"] = _median(runs, lambda: None, lambda _: _read_all(layer, False))
    results["read 256 MiB through iter_entries"] = _median(
        runs, lambda: None, lambda _: _read_all(layer, True)
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs per case, median reported (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-metadata-") as scratch:
        results = run(args.runs, Path(scratch))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, seconds in results.items():
            print(f"{name:40s} {seconds:8.3f} s")
        ratio = results["read 256 MiB through iter_entries"] / results["read 256 MiB raw"]
        print(f"{'iter_entries / raw read':40s} {ratio:8.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
