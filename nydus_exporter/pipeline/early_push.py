"""Push while packing: a layer blob starts uploading as soon as it is in the output layout.

Converting a layer and uploading the one before use different resources (CPU, network), so an
export that pushes hands each blob the converter finishes to a small pool of uploads to the
first reference's repository, while the next layers convert. :func:`push_image` then finds
those blobs done and only adds what is left (the bootstrap layer, the config, the manifests),
tags last as always: a failed export leaves at most untagged blobs in the repository, never a
tag.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.reference import Reference

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that push
    from nydus_exporter.registry.client import PushResult
    from nydus_exporter.registry.sync import SyncRegistry

MAX_PARALLEL_UPLOADS = 4


class EarlyPush:
    """Uploads blobs of ``layout`` to ``ref``'s repository as they are announced (thread-safe)."""

    def __init__(self, registry: SyncRegistry, layout: OciLayout, ref: Reference) -> None:
        self._registry = registry
        self._layout = layout
        self._ref = ref
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL_UPLOADS, thread_name_prefix="early-push")
        self._uploads: dict[str, Future[PushResult]] = {}
        self._lock = threading.Lock()

    @property
    def ref(self) -> Reference:
        return self._ref

    def blob_ready(self, digest: str, size: int) -> None:
        """``digest`` is complete in the layout: start its upload (once)."""
        with self._lock:
            if digest in self._uploads:
                return
            self._uploads[digest] = self._pool.submit(
                self._registry.push_blob, self._ref, digest, size, self._layout.blob_path(digest)
            )

    def results(self) -> dict[str, PushResult]:
        """Wait for every upload started; raises the first upload's error."""
        with self._lock:
            uploads = dict(self._uploads)
        return {digest: future.result() for digest, future in uploads.items()}

    def close(self) -> None:
        """Stop: uploads not started are dropped, running ones finish (nothing is tagged)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
