"""The persistent chunk store (``--state-dir``): chunks of blobs pushed by earlier builds, per
registry repository, for cross-build dedup. See :mod:`nydus_exporter.chunkstore.store`.

The store's names are loaded on first use: the CLI names :data:`DEFAULT_MAX_BLOBS` in its
help, and every command would otherwise pay for SQLite and the bootstrap reader at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

DEFAULT_MAX_BLOBS = 100_000  # blobs the store keeps (least recently used evicted beyond)

if TYPE_CHECKING:
    from nydus_exporter.chunkstore.store import (
        ChunkStore,
        GcReport,
        StoredBlob,
        StoredChunks,
        default_state_dir,
    )

__all__ = ["DEFAULT_MAX_BLOBS", "ChunkStore", "GcReport", "StoredBlob", "StoredChunks", "default_state_dir"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nydus_exporter.chunkstore import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
