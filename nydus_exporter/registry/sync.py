"""A blocking facade over :class:`RegistryClient` for code running in worker threads.

The export pipeline packs layers in threads; :class:`SyncRegistry` runs one
:class:`RegistryClient` on a private event loop in a daemon thread and exposes the same
operations as blocking calls, safe to use from any number of threads at once (they share the
client's connection pool, token cache and per-registry concurrency limit).

Code that runs *on* the private loop (coroutines of the client, callbacks, and finalizers the
garbage collector happens to run there) must never wait for the loop: :meth:`SyncRegistry.run`
refuses to be called there (it would wait forever for itself), and closers use
:meth:`SyncRegistry.submit`, which schedules without waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from nydus_exporter.oci.reference import Reference
from nydus_exporter.registry.client import BlobSource, ManifestResponse, PushResult, RegistryClient
from nydus_exporter.registry.transport import RegistryStats

__all__ = ["SyncRegistry"]

T = TypeVar("T")


class SyncRegistry:
    """``SyncRegistry(**RegistryClient kwargs)``; use as a context manager or call :meth:`close`."""

    def __init__(self, **client_options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="registry-client", daemon=True)
        self._thread.start()
        self._client = RegistryClient(**client_options)
        self._closed = False
        self._pending: set[Future[None]] = set()  # submitted clean-ups (kept referenced)

    def __enter__(self) -> SyncRegistry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def client(self) -> RegistryClient:
        """The async client (only to be awaited on this wrapper's loop, via :meth:`run`)."""
        return self._client

    @property
    def stats(self) -> RegistryStats:
        return self._client.stats

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private loop (to schedule callbacks that must run on the client's thread)."""
        return self._loop

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the private loop's thread (where waiting deadlocks)."""
        return threading.current_thread() is self._thread

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the private loop and wait for its result.

        Raises :class:`RuntimeError` when called on the loop's own thread: the loop cannot
        run the coroutine while it waits for it.
        """
        if self._closed:
            coroutine.close()
            raise RuntimeError("SyncRegistry is closed")
        if self.on_loop_thread():
            coroutine.close()
            raise RuntimeError(
                "SyncRegistry.run() called on the registry client's own loop thread: "
                "waiting there would deadlock (schedule with submit() instead)"
            )
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def submit(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Schedule ``coroutine`` on the private loop without waiting for it (any thread,
        the loop's own included). Its failure is dropped: for clean-ups only. A closed
        registry drops the coroutine."""
        if self._closed:
            coroutine.close()
            return
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closing
            coroutine.close()
            return
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def close(self) -> None:
        if self._closed:
            return
        if self.on_loop_thread():
            raise RuntimeError("SyncRegistry.close() called on its own loop thread: it would deadlock")
        self.run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # --- the client's operations, blocking ------------------------------------------------------

    def ping(self, registry: str) -> None:
        self.run(self._client.ping(registry))

    def blob_exists(self, ref: Reference, digest: str) -> int | None:
        return self.run(self._client.blob_exists(ref, digest))

    def mount_blob(self, ref: Reference, digest: str, from_repo: str) -> bool:
        return self.run(self._client.mount_blob(ref, digest, from_repo))

    def push_blob(
        self, ref: Reference, digest: str, size: int, source: BlobSource, *, mount_from: Sequence[str] = ()
    ) -> PushResult:
        return self.run(self._client.push_blob(ref, digest, size, source, mount_from=mount_from))

    def get_manifest(self, ref: Reference) -> ManifestResponse | None:
        return self.run(self._client.get_manifest(ref))

    def put_manifest(
        self, ref: Reference, raw: bytes, media_type: str, *, tags: Sequence[str] | None = None
    ) -> str:
        return self.run(self._client.put_manifest(ref, raw, media_type, tags=tags))

    def list_tags(self, ref: Reference) -> list[str]:
        return self.run(self._client.list_tags(ref))

    def read_blob_range(self, ref: Reference, digest: str, offset: int, length: int) -> bytes:
        return self.run(self._client.read_blob_range(ref, digest, offset, length))

    def fetch_blob(self, ref: Reference, digest: str, dest: Path) -> int:
        return self.run(self._client.fetch_blob(ref, digest, dest))
