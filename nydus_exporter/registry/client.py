"""The OCI distribution client: blobs and manifests over HTTP (distribution spec v1.1).

Methods are named after the protocol steps (``check_existing_blob`` = :meth:`blob_exists`,
``initiate_upload``, ``stream_blob``, ``commit_blob``, ``put_manifest``). Pushing a blob::

    1. HEAD  /v2/<repo>/blobs/<digest>                          exists (same size)? done
    2. POST  /v2/<repo>/blobs/uploads/?mount=<digest>&from=<r>  201: mounted, done (per source)
    3. POST  /v2/<repo>/blobs/uploads/                          202 + Location (upload session)
    4a. size <= uploads.threshold: PUT <location>&digest=<digest> with the whole body
    4b. otherwise: PATCH <location> one chunk at a time (Content-Range), each answer giving
        the next Location; after a failed chunk, GET <location> (upload status, ``Range:
        0-<last>``) and go on from the registry's offset rather than from zero;
        then PUT <location>&digest=<digest> with an empty body. (distribution 2.8 keeps
        the bytes of a truncated chunk but then refuses the status GET with
        BLOB_UPLOAD_INVALID and cancels the session; we open a new one and start over.
        Resuming works when the broken chunk never reached the registry, e.g. behind a
        front-end that buffers request bodies, as nginx does by default.)
    5. check the registry's Docker-Content-Digest against ours.

Bodies are streamed from a file or from an async iterator factory, never held whole. The
registry checks the digest of what it received (``DIGEST_INVALID``), so we do not hash twice.

Retries happen here and only here (:mod:`.retry`). Concurrent pushes of one digest to one
repository share a single upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiohttp
from yarl import URL

from nydus_exporter.errors import (
    ConfigError,
    FormatError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
)
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import compute_digest, digest_algorithm, new_hasher, validate_digest
from nydus_exporter.oci.reference import Reference
from nydus_exporter.registry.auth import repository_scope
from nydus_exporter.registry.credentials import (
    CallbackCredentials,
    ChainCredentials,
    CredentialProvider,
    CredentialStore,
    DockerConfigCredentials,
)
from nydus_exporter.registry.redact import redact_url
from nydus_exporter.registry.retry import Backoff, RetryPolicy, with_retries
from nydus_exporter.registry.transport import Body, RegistryStats, Response, Timeouts, Transport

__all__ = [
    "MANIFEST_ACCEPT",
    "BlobSource",
    "BlobStream",
    "ManifestResponse",
    "PushResult",
    "RegistryClient",
]

# Every manifest/index type we can read, for the Accept header of manifest GETs.
MANIFEST_ACCEPT = (
    mt.MEDIA_TYPE_IMAGE_MANIFEST,
    mt.MEDIA_TYPE_IMAGE_INDEX,
    mt.MEDIA_TYPE_DOCKER_MANIFEST,
    mt.MEDIA_TYPE_DOCKER_MANIFEST_LIST,
)
DEFAULT_RETRY = RetryPolicy()
DEFAULT_TIMEOUTS = Timeouts()
MAX_MANIFEST_SIZE = 4 << 20  # distribution's own limit for manifest bodies
_READ_SIZE = 1 << 20
_OCTET_STREAM = "application/octet-stream"
_RANGE = re.compile(r"^(?:bytes=)?0-(\d+)$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UPLOAD_GONE_CODES = frozenset({"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"})

BlobSource = Path | Callable[[], AsyncIterable[bytes]]
"""A file, or a zero-argument callable returning a fresh async iterable of the blob's bytes
(called again when an upload is retried or resumed; a resumed upload skips the bytes already
stored)."""


@dataclass(frozen=True, slots=True)
class UploadParts:
    """How a blob goes up: one PUT up to ``threshold`` bytes, above it PATCH requests of
    ``part_size`` bytes each (resumed from the registry's offset after a failed part)."""

    # Fewer, larger requests: a registry pays per request (it reloads the session and its hash
    # state), and a 100 MB blob in one PUT goes up ~15% faster than in 16 MiB parts. Bodies are
    # streamed from the file, so the sizes cost no memory.
    threshold: int = 128 << 20
    part_size: int = 128 << 20

    def __post_init__(self) -> None:
        if self.part_size < 1 or self.threshold < 0:
            raise ConfigError("upload part size must be positive and the threshold non-negative")


@dataclass(frozen=True, slots=True)
class PushResult:
    """What :meth:`RegistryClient.push_blob` did: the blob was already there, mounted or uploaded."""

    digest: str
    size: int
    outcome: Literal["exists", "mounted", "uploaded"]
    uploaded_bytes: int = 0  # body bytes sent, resends included


@dataclass(frozen=True, slots=True)
class ManifestResponse:
    """A manifest or index exactly as the registry served it."""

    raw: bytes = field(repr=False)
    media_type: str
    digest: str  # digest of ``raw`` (verified against the request/Docker-Content-Digest)


class BlobStream:
    """An open blob GET: iterate for the bytes; the digest is checked at the end of the stream."""

    def __init__(
        self, response: aiohttp.ClientResponse, digest: str, stats: RegistryStats, host: str
    ) -> None:
        self._response = response
        self._digest = digest
        self._hasher = new_hasher(digest)
        self._stats = stats
        self._host = host
        length = response.headers.get("Content-Length")
        self.size: int | None = int(length) if length and length.isdigit() else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_READ_SIZE):
                self._hasher.update(chunk)
                self._stats.bytes_downloaded += len(chunk)
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RegistryError(
                f"{self._host}: reading blob {self._digest} failed: {type(exc).__name__}",
                method="GET",
                url=redact_url(self._response.url),
                temporary=True,
            ) from None
        actual = f"{digest_algorithm(self._digest)}:{self._hasher.hexdigest()}"
        if actual != self._digest:
            raise RegistryError(
                f"{self._host}: blob {self._digest} served with digest {actual}",
                method="GET",
                url=redact_url(self._response.url),
                temporary=False,
            )


class RegistryClient:
    """Async OCI distribution client; one per process (it owns an ``aiohttp.ClientSession``).

    ``credentials``: where secrets come from; default: the docker CLI config
    (``$DOCKER_CONFIG``/``~/.docker/config.json``). ``credential_provider``: an async
    ``(host, challenge) -> Credentials | None`` hook asked before ``credentials``.
    ``insecure_hosts``: ``host[:port]`` names reached over plain HTTP, or HTTPS without
    certificate checks; loopback hosts may use plain HTTP too (see
    :mod:`.transport`). ``ca_file``: extra trusted CA bundle (PEM). Blobs larger than
    ``uploads.threshold`` are uploaded in ``uploads.part_size`` PATCH requests. ``max_concurrency``
    bounds concurrent requests per registry host.
    """

    def __init__(
        self,
        *,
        credentials: CredentialStore | None = None,
        credential_provider: CredentialProvider | None = None,
        insecure_hosts: Collection[str] = (),
        ca_file: Path | None = None,
        uploads: UploadParts = UploadParts(),
        max_concurrency: int = 4,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        store: CredentialStore = credentials if credentials is not None else DockerConfigCredentials()
        if credential_provider is not None:
            store = ChainCredentials(CallbackCredentials(credential_provider), store)
        self.stats = RegistryStats()
        self._transport = Transport(
            credentials=store,
            insecure_hosts=insecure_hosts,
            ca_file=ca_file,
            timeouts=timeouts,
            max_concurrency=max_concurrency,
            stats=self.stats,
        )
        self._retry = retry
        self._uploads = uploads
        self._inflight: dict[tuple[str, str, str], asyncio.Future[PushResult]] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    # --- helpers ------------------------------------------------------------------------------

    async def _url(self, ref: Reference, path: str) -> URL:
        base = await self._transport.base_url(ref.api_host)
        return base.with_path(f"/v2/{ref.repository}/{path}", encoded=False)

    def _count_retry(self, _: RegistryError) -> None:
        self.stats.retries += 1

    # --- ping ---------------------------------------------------------------------------------

    async def ping(self, registry: str) -> None:
        """``GET /v2/``: the registry answers and accepts our credentials (if it wants any)."""
        host = Reference(registry, "x").api_host

        async def attempt() -> None:
            base = await self._transport.base_url(host)
            await self._transport.request("GET", host, base.with_path("/v2/"), ok=(200,))

        await with_retries(self._retry, attempt, on_retry=self._count_retry)

    # --- blobs: push --------------------------------------------------------------------------

    async def blob_exists(self, ref: Reference, digest: str) -> int | None:
        """``HEAD`` the blob: its size if the repository has it, else ``None``."""
        validate_digest(digest)
        scopes = (repository_scope(ref.repository, "pull"),)

        async def attempt() -> int | None:
            url = await self._url(ref, f"blobs/{digest}")
            response = await self._transport.request("HEAD", ref.api_host, url, scopes=scopes, ok=(200, 404))
            if response.status == 404:
                return None
            length = response.headers.get("Content-Length", "")
            return int(length) if length.isdigit() else 0

        return await with_retries(self._retry, attempt, on_retry=self._count_retry)

    async def mount_blob(self, ref: Reference, digest: str, from_repo: str) -> bool:
        """Cross-repository mount of ``digest`` from ``from_repo`` (same registry): ``True`` if done."""
        validate_digest(digest)
        location = await with_retries(
            self._retry, lambda: self._initiate_upload(ref, digest, from_repo), on_retry=self._count_retry
        )
        if location is None:
            return True
        await self._cancel_upload(ref, location)
        return False

    async def push_blob(
        self,
        ref: Reference,
        digest: str,
        size: int,
        source: BlobSource,
        *,
        mount_from: Sequence[str] = (),
    ) -> PushResult:
        """Make ``ref``'s repository hold blob ``digest`` of ``size`` bytes read from ``source``.

        Skips the upload when the blob exists, tries a mount from each of ``mount_from``
        (repositories on the same registry), else uploads (monolithic up to
        ``uploads.threshold``, in parts above). Raises :class:`RegistryError` subclasses.
        """
        validate_digest(digest)
        if size < 0:
            raise ConfigError(f"blob {digest} size must not be negative")
        if isinstance(source, Path):
            actual = _file_size(source)
            if actual != size:
                raise ConfigError(
                    f"blob file {source} has {actual} bytes, not {size} as declared for {digest}"
                )
        key = (ref.api_host, ref.repository, digest)
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[PushResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._push_blob(ref, digest, size, source, mount_from)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # mark retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _push_blob(
        self, ref: Reference, digest: str, size: int, source: BlobSource, mount_from: Sequence[str]
    ) -> PushResult:
        existing = await self.blob_exists(ref, digest)
        if existing is not None and existing == size:
            self.stats.blobs_existing += 1
            return PushResult(digest, size, "exists")
        location: URL | None = None
        sources = [r for r in dict.fromkeys(mount_from) if r != ref.repository]
        for index, from_repo in enumerate(sources):

            async def mount(from_repo: str = from_repo) -> URL | None:
                return await self._initiate_upload(ref, digest, from_repo)

            try:
                location = await with_retries(self._retry, mount, on_retry=self._count_retry)
            except (RegistryAuthError, RegistryNotFoundError):
                # No pull access to the source (or no such repository): try the next one or
                # upload, as docker and go-containerregistry do.
                location = None
                continue
            if location is None:
                self.stats.blobs_mounted += 1
                return PushResult(digest, size, "mounted")
            if index < len(sources) - 1:
                # Not mountable from there: the registry opened an upload session instead.
                # Keep only the last such session (for the upload), drop the others.
                await self._cancel_upload(ref, location)
                location = None
        sent = _Counter(self.stats)
        if size <= self._uploads.threshold:
            await self._upload_monolithic(ref, digest, size, source, location, sent)
        else:
            await self._upload_chunked(ref, digest, size, source, location, sent)
        self.stats.blobs_uploaded += 1
        return PushResult(digest, size, "uploaded", sent.total)

    async def _initiate_upload(self, ref: Reference, digest: str | None, from_repo: str | None) -> URL | None:
        """``POST …/blobs/uploads/``: the upload Location, or ``None`` when a mount succeeded."""
        url = await self._url(ref, "blobs/uploads/")
        scopes = [repository_scope(ref.repository, "pull", "push")]
        if from_repo and digest:
            # Quay fails a "mount" without "from"; we always send both.
            url = url.with_query({"mount": digest, "from": from_repo})
            scopes.append(repository_scope(from_repo, "pull"))
        response = await self._transport.request("POST", ref.api_host, url, scopes=scopes, ok=(201, 202))
        if response.status == 201:
            if from_repo:
                _check_digest_header(ref, response, digest or "")
                return None
            raise RegistryError(
                f"{ref.api_host}: POST {redact_url(url)} answered 201 to an upload request",
                status=201,
                method="POST",
                url=redact_url(url),
                temporary=False,
            )
        return response.location()

    async def _cancel_upload(self, ref: Reference, location: URL) -> None:
        # Best effort: registries purge abandoned upload sessions themselves.
        with contextlib.suppress(RegistryError):
            await self._transport.request(
                "DELETE", ref.api_host, location, scopes=_push_scopes(ref), ok=(200, 202, 204, 404)
            )

    async def _upload_monolithic(
        self, ref: Reference, digest: str, size: int, source: BlobSource, location: URL | None, sent: _Counter
    ) -> None:
        first_location = location

        async def attempt() -> None:
            nonlocal first_location
            upload = first_location or await self._initiate_upload(ref, None, None)
            first_location = None  # a retry opens a new session: the old one may be broken
            assert upload is not None
            await self._commit(ref, digest, upload, source, 0, size, sent)

        await with_retries(self._retry, attempt, on_retry=self._count_retry)

    async def _upload_chunked(
        self, ref: Reference, digest: str, size: int, source: BlobSource, location: URL | None, sent: _Counter
    ) -> None:
        backoff = Backoff(self._retry)
        upload = location
        for restart in range(2):
            resumed = await self._send_chunks(ref, size, source, upload, sent, backoff)
            upload = resumed.location
            # Commit: an empty PUT with the digest. A lost answer is retried; if the session
            # is gone by then, the blob may already be committed: check before failing.
            while True:
                try:
                    await self._commit(ref, digest, upload, None, size, size, sent)
                    return
                except RegistryError as exc:
                    if exc.status == 404 and await self.blob_exists(ref, digest) == size:
                        return
                    if "DIGEST_INVALID" in exc.codes and resumed.resumed and restart == 0:
                        break  # a resume went wrong (see _parse_range): upload once more from zero
                    await backoff.wait(exc)
                    self.stats.retries += 1
            upload = None

    async def _send_chunks(
        self,
        ref: Reference,
        size: int,
        source: BlobSource,
        upload: URL | None,
        sent: _Counter,
        backoff: Backoff,
    ) -> _ChunkedUpload:
        """PATCH every chunk, resuming from the registry's offset after a failure (step 4b)."""
        offset = 0
        need_status = False
        resumed = False
        while True:
            try:
                if upload is None:
                    upload, offset, need_status = await self._initiate_upload(ref, None, None), 0, False
                    assert upload is not None
                if need_status:
                    upload, offset = await self._upload_status(ref, upload)
                    need_status, resumed = False, True
                if offset >= size:
                    return _ChunkedUpload(upload, resumed)
                end = min(offset + self._uploads.part_size, size)
                response = await self._transport.request(
                    "PATCH",
                    ref.api_host,
                    upload,
                    scopes=_push_scopes(ref),
                    headers={
                        "Content-Type": _OCTET_STREAM,
                        "Content-Range": f"{offset}-{end - 1}",
                        "Content-Length": str(end - offset),
                    },
                    body=_body(source, offset, end, sent),
                    ok=(202, 204),
                )
                upload = response.location()
                stored = _parse_range(response.headers.get("Range"))
                offset = stored if stored is not None else end
                backoff.progress()
            except RegistryError as exc:
                if exc.status == 416:
                    exc.temporary = True  # our offset and the registry's disagree: ask it
                if upload is not None and (exc.status == 404 or _UPLOAD_GONE_CODES.intersection(exc.codes)):
                    # The session is gone (expired, or cancelled by the registry after a
                    # broken chunk): open a new one.
                    exc.temporary = True
                    upload = None
                await backoff.wait(exc)
                self.stats.retries += 1
                need_status = upload is not None

    async def _upload_status(self, ref: Reference, upload: URL) -> tuple[URL, int]:
        """``GET <location>``: the session's current Location and the number of bytes stored."""
        response = await self._transport.request(
            "GET", ref.api_host, upload, scopes=_push_scopes(ref), ok=(204, 200)
        )
        stored = _parse_range(response.headers.get("Range"))
        location = response.location() if response.headers.get("Location") else upload
        return location, stored or 0

    async def _commit(
        self,
        ref: Reference,
        digest: str,
        upload: URL,
        source: BlobSource | None,
        start: int,
        end: int,
        sent: _Counter,
    ) -> None:
        """``PUT <location>&digest=…`` with the rest of the body (or none) and check the answer."""
        url = upload.update_query({"digest": digest})
        response = await self._transport.request(
            "PUT",
            ref.api_host,
            url,
            scopes=_push_scopes(ref),
            headers={"Content-Type": _OCTET_STREAM, "Content-Length": str(end - start)},
            body=_body(source, start, end, sent) if source is not None and end > start else None,
            ok=(201, 204),
        )
        _check_digest_header(ref, response, digest)

    # --- blobs: pull --------------------------------------------------------------------------

    @asynccontextmanager
    async def open_blob(self, ref: Reference, digest: str) -> AsyncIterator[BlobStream]:
        """Stream blob ``digest`` (``async for chunk in stream``); the digest is verified at the end."""
        validate_digest(digest)
        backoff = Backoff(self._retry)
        async with AsyncExitStack() as stack:
            while True:
                try:
                    url = await self._url(ref, f"blobs/{digest}")
                    response = await stack.enter_async_context(
                        self._transport.stream("GET", ref.api_host, url, scopes=_pull_scopes(ref))
                    )
                    break
                except RegistryError as exc:
                    await backoff.wait(exc)
                    self.stats.retries += 1
            yield BlobStream(response, digest, self.stats, ref.api_host)

    async def read_blob_range(self, ref: Reference, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes of blob ``digest`` from ``offset`` (an HTTP ``Range`` GET)."""
        validate_digest(digest)
        if offset < 0 or length < 0:
            raise ConfigError("blob range offset and length must not be negative")
        if length == 0:
            return b""

        async def attempt() -> bytes:
            url = await self._url(ref, f"blobs/{digest}")
            headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
            async with self._transport.stream(
                "GET", ref.api_host, url, scopes=_pull_scopes(ref), headers=headers, ok=(200, 206)
            ) as response:
                skip = offset
                if response.status == 206:
                    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                    skip = 0 if match is None else offset - int(match.group(1))
                    if skip < 0:
                        raise RegistryError(
                            f"{ref.api_host}: blob {digest}: the registry answered the wrong range",
                            status=206,
                            method="GET",
                            url=redact_url(url),
                            temporary=False,
                        )
                # A 200 means the registry ignored Range: skip to the offset ourselves.
                parts: list[bytes] = []
                got = 0
                try:
                    async for chunk in response.content.iter_chunked(_READ_SIZE):
                        self.stats.bytes_downloaded += len(chunk)
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        parts.append(chunk[: length - got])
                        got += len(parts[-1])
                        if got >= length:
                            break
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    raise RegistryError(
                        f"{ref.api_host}: reading blob {digest} failed: {type(exc).__name__}",
                        method="GET",
                        url=redact_url(url),
                        temporary=True,
                    ) from None
                if got < length:
                    raise RegistryError(
                        f"{ref.api_host}: blob {digest} has fewer than {offset + length} bytes",
                        status=response.status,
                        method="GET",
                        url=redact_url(url),
                        temporary=False,
                    )
                return b"".join(parts)

        return await with_retries(self._retry, attempt, on_retry=self._count_retry)

    async def fetch_blob(self, ref: Reference, digest: str, dest: Path) -> int:
        """Download blob ``digest`` to ``dest`` (atomically, digest verified); returns its size."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}-{id(self):x}")

        async def attempt() -> int:
            size = 0
            try:
                async with self.open_blob(ref, digest) as stream:
                    with tmp.open("wb") as out:
                        async for chunk in stream:
                            await asyncio.to_thread(out.write, chunk)
                            size += len(chunk)
                os.replace(tmp, dest)
                return size
            finally:
                tmp.unlink(missing_ok=True)

        return await with_retries(self._retry, attempt, on_retry=self._count_retry)

    # --- manifests ----------------------------------------------------------------------------

    async def get_manifest(self, ref: Reference) -> ManifestResponse | None:
        """The manifest or index ``ref`` names (its digest if pinned, else its tag).

        ``None`` when a *tag* does not exist; a missing digest raises
        :class:`RegistryNotFoundError`. The raw bytes are verified against the requested
        digest and against the registry's ``Docker-Content-Digest``.
        """
        target = ref.object

        async def attempt() -> ManifestResponse | None:
            url = await self._url(ref, f"manifests/{target}")
            response = await self._transport.request(
                "GET",
                ref.api_host,
                url,
                scopes=_pull_scopes(ref),
                headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
                ok=(200, 404) if ref.digest is None else (200,),
                max_body=MAX_MANIFEST_SIZE,
            )
            if response.status == 404:
                return None
            raw = response.body
            media_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
            if media_type not in MANIFEST_ACCEPT:
                media_type = _embedded_media_type(raw) or media_type
            expected = ref.digest or response.headers.get("Docker-Content-Digest")
            algorithm = "sha256"
            if expected:
                try:
                    algorithm = digest_algorithm(expected)
                except FormatError:
                    expected, algorithm = None, "sha256"
            digest = compute_digest(raw, algorithm)
            if expected and digest != expected:
                raise RegistryError(
                    f"{ref.api_host}: manifest {target} of {ref.repository} has digest {digest}, "
                    f"expected {expected}",
                    status=200,
                    method="GET",
                    url=redact_url(url),
                    temporary=False,
                )
            return ManifestResponse(raw, media_type, digest)

        return await with_retries(self._retry, attempt, on_retry=self._count_retry)

    async def put_manifest(
        self, ref: Reference, raw: bytes, media_type: str, *, tags: Sequence[str] | None = None
    ) -> str:
        """Upload ``raw`` by digest, then under each tag (default: ``ref.tag``); returns the digest.

        Tags go last so that a tag never points at a manifest that failed to upload.
        """
        digest = compute_digest(raw, "sha256")
        if tags is None:
            tags = (ref.tag,) if ref.tag else ()
        for tag in tags:
            ref.with_tag(tag)  # validates the tag (ConfigError)
        for target in (digest, *tags):

            async def attempt(target: str = target) -> None:
                url = await self._url(ref, f"manifests/{target}")
                response = await self._transport.request(
                    "PUT",
                    ref.api_host,
                    url,
                    scopes=_push_scopes(ref),
                    headers={"Content-Type": media_type},
                    body=lambda: raw,
                    ok=(200, 201, 202, 204),
                )
                _check_digest_header(ref, response, digest)

            await with_retries(self._retry, attempt, on_retry=self._count_retry)
        return digest

    async def list_tags(self, ref: Reference) -> list[str]:
        """All tags of ``ref``'s repository (``GET /v2/<repo>/tags/list``, pages followed)."""
        tags: list[str] = []
        url: URL | None = await self._url(ref, "tags/list")
        while url is not None:
            page_url = url

            async def attempt(page_url: URL = page_url) -> Response:
                return await self._transport.request(
                    "GET",
                    ref.api_host,
                    page_url,
                    scopes=_pull_scopes(ref),
                    ok=(200,),
                    max_body=MAX_MANIFEST_SIZE,
                )

            response = await with_retries(self._retry, attempt, on_retry=self._count_retry)
            try:
                listed = json.loads(response.body).get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(
                    f"{ref.api_host}: tag list of {ref.repository} is not valid JSON",
                    status=response.status,
                    method="GET",
                    url=redact_url(page_url),
                    temporary=False,
                ) from None
            tags.extend(t for t in listed if isinstance(t, str))
            url = _next_link(response)
        return tags


# --- module helpers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChunkedUpload:
    location: URL  # where to commit
    resumed: bool  # some chunk was resent after asking the registry for its offset


class _Counter:
    """Bytes sent for one push (resends included), mirrored into the client stats."""

    def __init__(self, stats: RegistryStats) -> None:
        self.total = 0
        self._stats = stats

    def add(self, n: int) -> None:
        self.total += n
        self._stats.bytes_uploaded += n


def _push_scopes(ref: Reference) -> tuple[str, ...]:
    return (repository_scope(ref.repository, "pull", "push"),)


def _pull_scopes(ref: Reference) -> tuple[str, ...]:
    return (repository_scope(ref.repository, "pull"),)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read blob file {path}: {exc.strerror}") from None


def _body(source: BlobSource | None, start: int, end: int, sent: _Counter) -> Body:
    """A body factory streaming bytes ``[start, end)`` of ``source`` (fresh on every call)."""

    def make() -> AsyncIterable[bytes]:
        if isinstance(source, Path):
            return _file_range(source, start, end, sent)
        assert source is not None
        return _iter_range(source(), start, end, sent)

    return make


async def _file_range(path: Path, start: int, end: int, sent: _Counter) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        position = start
        while position < end:
            chunk = await asyncio.to_thread(f.read, min(_READ_SIZE, end - position))
            if not chunk:
                raise ConfigError(f"blob file {path} shrank while uploading")
            position += len(chunk)
            sent.add(len(chunk))
            yield chunk


async def _iter_range(
    source: AsyncIterable[bytes], start: int, end: int, sent: _Counter
) -> AsyncIterator[bytes]:
    position = 0
    async for chunk in source:
        chunk_end = position + len(chunk)
        if chunk_end > start and position < end:
            piece = chunk[max(0, start - position) : end - position]
            sent.add(len(piece))
            yield bytes(piece)
        position = chunk_end
        if position >= end:
            return
    if position < end:
        raise ConfigError(f"blob source ended after {position} bytes, before the declared {end}")


def _parse_range(value: str | None) -> int | None:
    """Bytes stored according to an upload ``Range: 0-<last>`` header (``None`` if absent).

    distribution 2.8 answers ``0-0`` both for an empty session and for one holding one byte,
    and appends PATCH bodies whatever their Content-Range says. We read ``0-0`` as empty; if
    the registry did hold one byte, the commit fails with ``DIGEST_INVALID`` and the chunked
    upload starts over once from zero.
    """
    if not value:
        return None
    match = _RANGE.match(value.strip())
    if match is None:
        return None
    last = int(match.group(1))
    return 0 if last == 0 else last + 1


def _check_digest_header(ref: Reference, response: Response, digest: str) -> None:
    stored = response.headers.get("Docker-Content-Digest")
    if stored and stored != digest:
        raise RegistryError(
            f"{ref.api_host}: registry stored {stored} for {ref.repository}, expected {digest}",
            status=response.status,
            url=redact_url(response.url),
            temporary=False,
        )


def _embedded_media_type(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get("mediaType") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _next_link(response: Response) -> URL | None:
    link = response.headers.get("Link", "")
    match = re.match(r'^\s*<([^>]+)>\s*;\s*rel="?next"?', link)
    return response.url.join(URL(match.group(1))) if match else None
