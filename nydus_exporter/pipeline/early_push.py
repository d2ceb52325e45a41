"""Push while packing: a layer blob uploads while it is being written.

Converting a layer and uploading it use different resources (CPU, network), so an export
that pushes streams each layer blob to the first reference's repository as the packer
writes it (:meth:`~nydus_exporter.registry.client.RegistryClient.push_growing_blob`), and
commits it once its digest is known. A stream that fails is not an export failure: the
finished blob is then uploaded the ordinary way (existence check, retries). A blob that
arrives finished (a layer cache hit) goes to a small pool of ordinary uploads.
:func:`push_image` then finds those blobs done and only adds what is left (the bootstrap
layer, the config, the manifests), tags last as always: a failed export leaves at most
untagged blobs in the repository, never a tag.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.reference import Reference

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that push
    from nydus_exporter.registry.client import PushResult
    from nydus_exporter.registry.growing import GrowingBlob
    from nydus_exporter.registry.sync import SyncRegistry

MAX_PARALLEL_UPLOADS = 4
# A stream holds one of the registry client's connections to the host for as long as its
# layer packs; at most this many at once leaves the others to the source's fetches and the
# ordinary uploads (layers past the limit upload when they are complete).
MAX_STREAMS = 2


class StreamedBlob:
    """One blob being uploaded while it is written; the writer ends it with :meth:`finish`
    (after its last byte is flushed) or :meth:`abandon`."""

    def __init__(self, growing: GrowingBlob, upload: Future[PushResult]) -> None:
        self._growing = growing
        self.upload = upload

    def finish(self, digest: str, size: int) -> None:
        self._growing.finish(digest, size)

    def abandon(self) -> None:
        self._growing.abandon()
        self.upload.add_done_callback(lambda _: self._growing.close())

    def settle(self) -> PushResult | None:
        """The stream's result, or ``None`` when it failed (the caller uploads the blob)."""
        try:
            return self.upload.result()
        except Exception:  # any failure: the ordinary upload decides
            return None
        finally:
            self._growing.close()


class EarlyPush:
    """Uploads blobs of ``layout`` to ``ref``'s repository as they are written (thread-safe)."""

    def __init__(self, registry: SyncRegistry, layout: OciLayout, ref: Reference) -> None:
        self._registry = registry
        self._layout = layout
        self._ref = ref
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL_UPLOADS, thread_name_prefix="early-push")
        self._uploads: dict[str, Future[PushResult]] = {}
        self._streams: list[StreamedBlob] = []
        self._running = 0  # streams whose upload has not ended
        self._lock = threading.Lock()

    @property
    def ref(self) -> Reference:
        return self._ref

    def blob_started(self, path: Path) -> StreamedBlob | None:
        """The blob file ``path`` was just created: start uploading it as it grows (``None``:
        :data:`MAX_STREAMS` are running, it uploads once complete)."""
        from nydus_exporter.registry.growing import GrowingBlob

        with self._lock:
            if self._running >= MAX_STREAMS:
                return None
            self._running += 1
        growing = GrowingBlob(path)
        try:
            stream = StreamedBlob(growing, self._registry.start_growing_push(self._ref, growing))
        except BaseException:
            growing.close()
            self._stream_ended()
            raise
        stream.upload.add_done_callback(lambda _: self._stream_ended())
        with self._lock:
            self._streams.append(stream)
        return stream

    def _stream_ended(self) -> None:
        with self._lock:
            self._running -= 1

    def blob_ready(self, digest: str, size: int, stream: StreamedBlob | None = None) -> None:
        """``digest`` is complete in the layout (``stream``: the upload it had while written)."""
        with self._lock:
            if digest in self._uploads:
                return  # the same blob twice: the first upload serves both
            self._uploads[digest] = self._pool.submit(self._push, digest, size, stream)

    def results(self) -> dict[str, PushResult]:
        """Wait for every upload started; raises the first upload's error."""
        with self._lock:
            uploads = dict(self._uploads)
        return {digest: future.result() for digest, future in uploads.items()}

    def close(self) -> None:
        """Stop: streams still open are abandoned, uploads not started are dropped, running
        ones finish (nothing is tagged)."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            if not stream.upload.done():
                stream.abandon()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for stream in streams:
            stream.settle()

    def _push(self, digest: str, size: int, stream: StreamedBlob | None) -> PushResult:
        if stream is not None:
            result = stream.settle()
            if result is not None and result.digest == digest and result.size == size:
                return result
        return self._registry.push_blob(self._ref, digest, size, self._layout.blob_path(digest))
