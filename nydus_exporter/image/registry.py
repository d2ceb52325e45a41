"""An :class:`~nydus_exporter.image.reader.ImageRepository` over an OCI distribution registry.

``docker://HOST/REPO[:TAG|@DIGEST]`` images are read through one
:class:`~nydus_exporter.registry.SyncRegistry` (the async client on its private loop thread),
so the verification tools (``check``, ``unpack``, ``cat``) work on registries unchanged:

* :meth:`RegistryRepository.resolve` — ``GET /v2/<repo>/manifests/<tag|digest>``; the raw
  manifest is kept so that reading it again costs nothing;
* :meth:`RegistryRepository.read_blob` — small documents (configs, child manifests of an index),
  whole and verified against their digest. A digest listed by an index already read is a
  manifest (``/manifests/<digest>``); anything else is tried as a blob first;
* :meth:`RegistryRepository.open_blob` — a blocking stream of a blob: the async
  :class:`~nydus_exporter.registry.BlobStream` feeds a bounded queue on the client's loop
  (at most :data:`QUEUE_DEPTH` pieces of at most 1 MiB in memory); ``close()`` cancels the
  transfer. Like the OCI layout repository the stream is not verified (the readers hash what they
  read), unless ``verify=True``;
* :meth:`RegistryRepository.read_at` — one HTTP ``Range`` GET per call (what nydusd does for a
  chunk, [format §7.1]); :meth:`RegistryRepository.blob_size` — ``HEAD`` (cached).

A blob the registry does not have raises :class:`~nydus_exporter.errors.FormatError` naming
it, as a missing file of an OCI layout does; other registry failures are
:class:`~nydus_exporter.errors.RegistryError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from nydus_exporter.errors import ConfigError, FormatError, RegistryError, RegistryNotFoundError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor, ImageIndex
from nydus_exporter.oci.reference import Reference, parse_reference
from nydus_exporter.registry import CredentialStore, RegistryStats, RetryPolicy, SyncRegistry

__all__ = ["DOCKER_SCHEME", "QUEUE_DEPTH", "RegistryOptions", "RegistryRepository", "parse_docker_spec"]

DOCKER_SCHEME = "docker://"
QUEUE_DEPTH = 4  # pieces (<= 1 MiB each) buffered between the loop and a reading thread
MAX_DOCUMENT = 64 << 20  # manifests, configs and indexes are small


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach the registry of an image.

    ``insecure``: the image's registry host is reached over plain HTTP, or HTTPS without
    certificate checks (it goes into the client's ``insecure_hosts``; loopback hosts may use
    plain HTTP anyway). ``ca_file``: an extra trusted CA bundle (PEM). ``credentials``:
    default the docker CLI config (``$DOCKER_CONFIG``/``~/.docker/config.json``).
    """

    insecure: bool = False
    ca_file: Path | None = None
    credentials: CredentialStore | None = None
    retry: RetryPolicy | None = None


def parse_docker_spec(spec: str) -> Reference:
    """``docker://HOST/REPO[:TAG|@DIGEST]`` (or the reference alone) -> :class:`Reference`."""
    text = spec.removeprefix(DOCKER_SCHEME)
    if not text:
        raise ConfigError(f"image {spec!r}: expected docker://HOST/REPO[:TAG|@DIGEST]")
    try:
        return parse_reference(text)
    except FormatError as exc:  # a malformed digest
        raise ConfigError(f"image {spec!r}: {exc}") from None


class RegistryRepository:
    """:class:`~nydus_exporter.image.reader.ImageRepository` of one registry image.

    ``RegistryRepository(registry, ref)`` reads through a shared :class:`SyncRegistry`, which
    :meth:`close` leaves open; ``RegistryRepository(None, ref, options)`` makes (and owns) one
    from ``options``. Safe to use from several threads.
    """

    def __init__(
        self,
        registry: SyncRegistry | None,
        ref: Reference,
        options: RegistryOptions | None = None,
    ) -> None:
        self._ref = ref
        if registry is not None and options is not None:
            raise ConfigError("RegistryRepository: pass either a registry client or the options to make one")
        options = options or RegistryOptions()
        if registry is None:
            kwargs: dict[str, object] = {
                "credentials": options.credentials,
                "insecure_hosts": (ref.api_host,) if options.insecure else (),
                "ca_file": options.ca_file,
            }
            if options.retry is not None:
                kwargs["retry"] = options.retry
            registry = SyncRegistry(**kwargs)
            self._owned = True
        else:
            self._owned = False
        self._sync = registry
        self._lock = threading.Lock()
        self._manifests: dict[str, bytes] = {}  # digest -> raw manifest/index already fetched
        self._manifest_digests: set[str] = set()  # digests an index lists (manifests, not blobs)
        self._sizes: dict[str, int] = {}
        self._streams: set[_BlobPipe] = set()
        self._closed = False

    @classmethod
    def open(cls, spec: str, options: RegistryOptions | None = None) -> RegistryRepository:
        """The repository of ``docker://HOST/REPO[:TAG|@DIGEST]``."""
        return cls(None, parse_docker_spec(spec), options)

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{DOCKER_SCHEME}{self._ref}"

    @property
    def reference(self) -> Reference:
        return self._ref

    @property
    def registry(self) -> SyncRegistry:
        return self._sync

    @property
    def registry_stats(self) -> RegistryStats:
        """The client's counters: HTTP requests, blob body bytes downloaded, retries."""
        return self._sync.stats

    # -- manifests and documents --------------------------------------------------------------

    def resolve(self, tag: str | None) -> Descriptor:
        """The manifest or index the reference (or ``tag`` in its repository) names."""
        ref = self._ref if tag is None else self._ref.with_tag(tag)
        response = self._sync.get_manifest(ref)
        if response is None:
            raise RegistryNotFoundError(
                f"{ref.api_host}: no manifest tagged {ref.object!r} in {ref.repository}",
                status=404,
                method="GET",
            )
        self._remember(response.digest, response.raw, response.media_type)
        return Descriptor(response.media_type, response.digest, len(response.raw))

    def _remember(self, digest: str, raw: bytes, media_type: str) -> None:
        children: Iterable[Descriptor] = ()
        if mt.is_index(media_type):
            with contextlib.suppress(FormatError):  # reported by whoever parses it for real
                children = ImageIndex.parse(raw).manifests
        with self._lock:
            self._manifests[digest] = raw
            self._manifest_digests.update(d.digest for d in children)

    def read_blob(self, digest: str) -> bytes:
        """A manifest, index or config whole, verified against ``digest``."""
        with self._lock:
            cached = self._manifests.get(digest)
            is_manifest = digest in self._manifest_digests
        if cached is not None:
            return cached
        if not is_manifest:
            try:
                return self._sync.run(self._read_document(digest))
            except RegistryNotFoundError:
                pass  # not a blob: a manifest stored by digest (some registries only serve those)
        try:
            response = self._sync.get_manifest(self._ref.with_digest(digest))
        except RegistryNotFoundError:
            raise FormatError(f"blob {digest} not found in {self.name}") from None
        assert response is not None  # a digest reference never answers "no such tag"
        self._remember(digest, response.raw, response.media_type)
        return response.raw

    async def _read_document(self, digest: str) -> bytes:
        parts: list[bytes] = []
        size = 0
        async with self._sync.client.open_blob(self._ref, digest) as stream:
            if stream.size is not None and stream.size > MAX_DOCUMENT:
                raise FormatError(f"blob {digest} in {self.name} is larger than {MAX_DOCUMENT} bytes")
            try:
                async for piece in stream:
                    size += len(piece)
                    if size > MAX_DOCUMENT:
                        raise FormatError(f"blob {digest} in {self.name} is larger than {MAX_DOCUMENT} bytes")
                    parts.append(piece)
            except RegistryError as exc:
                if exc.temporary:
                    raise
                raise FormatError(f"blob {digest} in {self.name} does not match its digest") from None
        return b"".join(parts)

    # -- blobs --------------------------------------------------------------------------------

    def open_blob(self, digest: str, *, verify: bool = False) -> BinaryIO:
        """A blocking stream of the blob (the caller closes it; closing early stops the
        transfer). With ``verify``, a blob whose bytes do not match ``digest`` raises
        :class:`FormatError` at its end."""
        pipe = _BlobPipe(self, digest, verify)
        with self._lock:
            self._streams.add(pipe)
        return cast(BinaryIO, io.BufferedReader(pipe, 1 << 20))

    def _forget(self, pipe: _BlobPipe) -> None:
        with self._lock:
            self._streams.discard(pipe)

    def blob_size(self, digest: str) -> int:
        """The blob's size (``HEAD``), remembered."""
        with self._lock:
            size = self._sizes.get(digest)
        if size is None:
            size = self._sync.blob_exists(self._ref, digest)
            if size is None:
                raise FormatError(f"blob {digest} not found in {self.name}")
            with self._lock:
                self._sizes[digest] = size
        return size

    def read_at(self, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only at the blob's end): one ``Range`` GET."""
        size = self.blob_size(digest)
        if offset >= size or length <= 0:
            return b""
        length = min(length, size - offset)
        try:
            return self._sync.read_blob_range(self._ref, digest, offset, length)
        except RegistryNotFoundError:
            raise FormatError(f"blob {digest} not found in {self.name}") from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            streams = list(self._streams)
        for pipe in streams:
            pipe.close()
        if self._owned:
            self._sync.close()

    def __enter__(self) -> RegistryRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()  # the producer finished: no more pieces


class _BlobPipe(io.RawIOBase):
    """The bridge from a :class:`BlobStream` on the client's loop to a reading thread.

    A producer task copies the stream into an ``asyncio.Queue(QUEUE_DEPTH)`` — when the reader
    falls behind, the producer waits (nothing piles up, the loop stays free for other
    requests). The reader takes pieces with blocking ``run(queue.get())`` calls. Opening waits
    for the response headers, so a missing blob fails here, not at the first read.
    """

    def __init__(self, repo: RegistryRepository, digest: str, verify: bool) -> None:
        super().__init__()
        self._repo = repo
        self._sync = repo.registry
        self._digest = digest
        self._verify = verify
        self._piece = memoryview(b"")
        self._eof = False
        self._queue: asyncio.Queue[object] | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            self._sync.run(self._start())
        except RegistryNotFoundError:
            self._abandon()
            raise FormatError(f"blob {digest} not found in {repo.name}") from None
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Close a pipe whose opening failed (``_start`` cancelled the transfer already).

        The half-built object lives on in the traceback: left open, its finalizer would
        close it later, on whatever thread the garbage collector runs on.
        """
        self._task = None
        self.close()

    async def _start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_DEPTH)
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._pump(opened))
        try:
            await opened
        except BaseException:
            await self._cancel()
            raise

    async def _pump(self, opened: asyncio.Future[None]) -> None:
        queue = self._queue
        assert queue is not None
        try:
            async with self._sync.client.open_blob(self._repo.reference, self._digest) as stream:
                opened.set_result(None)
                pieces = cast(AsyncGenerator[bytes, None], stream.__aiter__())
                async with contextlib.aclosing(pieces):
                    try:
                        async for piece in pieces:
                            await queue.put(piece)
                    except RegistryError as exc:
                        # BlobStream raises a non-temporary error only for a digest mismatch,
                        # after the last byte: the bytes were all delivered.
                        if exc.temporary:
                            raise
                        if self._verify:
                            raise FormatError(
                                f"blob {self._digest} in {self._repo.name} does not match its digest"
                            ) from None
            await queue.put(_END)
        except asyncio.CancelledError:
            if not opened.done():
                opened.cancel()
            raise
        except Exception as exc:
            if not opened.done():
                opened.set_exception(exc)
                return
            await queue.put(exc)

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        queue = self._queue
        if queue is not None:
            # Wake a thread waiting in readinto (the stream may be closed from another one).
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(ValueError(f"blob stream {self._digest} was closed"))

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read of a closed blob stream")
        while not len(self._piece):
            if self._eof:
                return 0
            assert self._queue is not None
            item = self._sync.run(self._queue.get())
            if item is _END:
                self._eof = True
                return 0
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._piece = memoryview(cast(bytes, item))
        n = min(len(b), len(self._piece))
        memoryview(b)[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._task is not None and not self._eof:
                if self._sync.on_loop_thread():
                    # A finalizer (or a callback) on the client's loop: waiting for the loop
                    # there would block it forever. Schedule the cancellation instead.
                    self._sync.submit(self._cancel())
                else:
                    with contextlib.suppress(RuntimeError):  # the registry was closed already
                        self._sync.run(self._cancel())
        finally:
            self._piece = memoryview(b"")
            self._repo._forget(self)
            super().close()
