"""Recording pushed blobs with the chunks the export already parsed for its merge stores the
same rows as recording them from each blob's bootstrap (the uncached path)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nydus_exporter.chunkstore import ChunkStore
from nydus_exporter.chunkstore.store import DB_NAME
from nydus_exporter.pipeline.chunk_store_session import record_packed
from nydus_exporter.pipeline.pack import PackOptions
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.merge import MergeLayer, merge_layers
from tests.chunkstore.test_store import LOC, pack


def dump(state: Path) -> list[tuple[object, ...]]:
    """Every row of every table of the store, in a stable order."""
    with sqlite3.connect(state / DB_NAME) as conn:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        return [(t, *row) for t in tables for row in sorted(conn.execute(f"SELECT * FROM {t}"), key=repr)]


def test_chunks_parsed_for_the_merge_record_the_same_rows(tmp_path: Path) -> None:
    blobs = [pack(seed)[0] for seed in (1, 2)]
    options = PackOptions(chunk_size=64 << 10, compressor="zstd", digester="blake3")
    # As the export does it: parsed once, own chunks taken, then the merge takes the trees over.
    parsed = [read_bootstrap(b.bootstrap) for b in blobs]
    own_chunks = {b.digest: boot.own_chunks() for b, boot in zip(blobs, parsed, strict=True)}
    merge_layers(
        [
            MergeLayer(b.bootstrap, b.digest.removeprefix("sha256:"), parsed=p)
            for b, p in zip(blobs, parsed, strict=True)
        ]
    )

    with ChunkStore.open(tmp_path / "cached") as store:
        record_packed(store, LOC, options, blobs, own_chunks)
    with ChunkStore.open(tmp_path / "uncached") as store:
        record_packed(store, LOC, options, blobs)

    cached, uncached = dump(tmp_path / "cached"), dump(tmp_path / "uncached")
    assert len(uncached) > len(blobs)  # the blobs and their chunks
    assert cached == uncached
