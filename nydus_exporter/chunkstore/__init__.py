"""The persistent chunk store (``--state-dir``): chunks of blobs pushed by earlier builds, per
registry repository, for cross-build dedup. See :mod:`nydus_exporter.chunkstore.store`."""

from __future__ import annotations

from nydus_exporter.chunkstore.store import (
    DEFAULT_MAX_BLOBS,
    ChunkStore,
    GcReport,
    StoredBlob,
    StoredChunks,
    default_state_dir,
)

__all__ = ["DEFAULT_MAX_BLOBS", "ChunkStore", "GcReport", "StoredBlob", "StoredChunks", "default_state_dir"]
