"""The streaming client of ``nydus.exporter.v1.Exporter``: what the buildkitd shim does, in Python.

:class:`ExporterClient` drives the daemon exactly as the shim would ([contract §5.5]): Resolve,
then an Export stream (header, per platform ``platform_begin`` with the whole layer chain,
the layers the server wants as 1 MiB ``layer_data`` chunks with ``layer_end`` digests,
``platform_end``, ``commit``), then Finalize when the export was deferred. Layers are read
from a :class:`~nydus_exporter.pipeline.sources.Source` as they are stored (compressed bytes as in the
source) and streamed, never held in memory. Directory layers are sent by reference (the
daemon must share the filesystem and allow the path); tar files can be too.

Registry credentials stay here: an ``auth_request`` is answered from a
:class:`~nydus_exporter.registry.credentials.CredentialStore` (the client's docker config).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.api import exporter_pb2_grpc as pb_grpc
from nydus_exporter.errors import ConfigError
from nydus_exporter.oci.platform import Platform
from nydus_exporter.pipeline.sources import Source, SourceLayer
from nydus_exporter.registry.auth import parse_challenges
from nydus_exporter.registry.credentials import CredentialStore

CHUNK = 1 << 20  # [contract §5.6]: 1 MiB layer_data
INLINE_PREDICATES = 4 << 20  # the most attestation predicate bytes in the header ([contract §5.7])
MAX_MESSAGE = 16 << 20
_TOKEN_USERNAME = "<token>"

OnEvent = Callable[[pb.ExportEvent], None]


class RemoteExportError(Exception):
    """The daemon ended an RPC with an error status (code and message kept)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ClientTLS:
    ca: Path | None = None  # verify the server with this CA (default: system roots)
    cert: Path | None = None  # client certificate for mutual TLS
    key: Path | None = None
    server_name: str = ""  # override the name checked in the server's certificate


def open_channel(address: str, *, tls: ClientTLS | None = None) -> grpc.aio.Channel:
    """``unix:///path`` or ``tcp://host:port`` (TLS when ``tls`` is given)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    if address.startswith("unix://"):
        return grpc.aio.insecure_channel(address, options=options)
    if not address.startswith("tcp://"):
        raise ConfigError(f"--addr {address!r}: expected unix:///PATH or tcp://HOST:PORT")
    target = address.removeprefix("tcp://")
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes() if tls.ca else None,
            private_key=tls.key.read_bytes() if tls.key else None,
            certificate_chain=tls.cert.read_bytes() if tls.cert else None,
        )
    except OSError as exc:
        raise ConfigError(f"cannot read TLS material: {exc}") from None
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, creds, options=options)


@dataclass
class ExportOutcome:
    job_id: str
    resumed: bool
    result: pb.Result
    bytes_sent: int  # layer bytes streamed (0 when every layer was a cache hit)
    events: list[pb.ExportEvent]


def platform_id(platform: Platform | None, index: int, taken: set[str]) -> str:
    base = str(platform) if platform is not None else f"image-{index}"
    pid, n = base, 1
    while pid in taken:
        n += 1
        pid = f"{base}#{n}"
    taken.add(pid)
    return pid


def _platform_pb(pid: str, platform: Platform | None) -> pb.Platform:
    if platform is None:
        return pb.Platform(id=pid)
    return pb.Platform(
        id=pid,
        os=platform.os,
        architecture=platform.architecture,
        variant=platform.variant or "",
        os_version=platform.os_version or "",
        os_features=list(platform.os_features or ()),
    )


def _layer_digest(layer: SourceLayer) -> tuple[str, int]:
    """The digest and size of the bytes that will be sent (hashed when not known)."""
    if layer.name.startswith("sha256:") and layer.size is not None:
        return layer.name, layer.size
    assert layer.open is not None
    h, size = hashlib.sha256(), 0
    with layer.open() as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


class ExporterClient:
    def __init__(self, channel: grpc.aio.Channel, *, chunk_size: int = CHUNK) -> None:
        self.channel = channel
        self.stub = pb_grpc.ExporterStub(channel)
        self.chunk_size = chunk_size  # bytes of layer data per message

    async def get_info(self) -> pb.GetInfoResponse:
        response: pb.GetInfoResponse = await _call(self.stub.GetInfo(pb.GetInfoRequest()))
        return response

    async def resolve(self, attrs: Mapping[str, str], *, exporter_index: int = 0) -> pb.ResolveResponse:
        request = pb.ResolveRequest(
            attrs=dict(attrs), exporter_index=exporter_index, client_capabilities=["finalize"]
        )
        response: pb.ResolveResponse = await _call(self.stub.Resolve(request))
        return response

    async def release(self, instance_id: str) -> bool:
        response: pb.ReleaseResponse = await _call(
            self.stub.Release(pb.ReleaseRequest(instance_id=instance_id))
        )
        return response.released

    async def cancel(self, *, instance_id: str = "", job_id: str = "") -> int:
        response: pb.CancelResponse = await _call(
            self.stub.Cancel(pb.CancelRequest(instance_id=instance_id, job_id=job_id))
        )
        return response.cancelled

    async def export(
        self,
        source: Source,
        instance_id: str,
        *,
        idempotency_key: str = "",
        defer_push: bool = False,
        by_reference: bool = False,
        on_event: OnEvent | None = None,
        credentials: CredentialStore | None = None,
        metadata: Mapping[str, bytes] | None = None,
    ) -> ExportOutcome:
        """Stream ``source`` to the daemon; returns once the result arrived."""
        stream = _ExportStream(self.stub.Export(), source, on_event, credentials, self.chunk_size)
        peer = _PeerStatus(stream.call)
        header = pb.ExportHeader(
            instance_id=instance_id,
            idempotency_key=idempotency_key,
            defer_push=defer_push,
            metadata=stream.header_metadata(metadata),
            platforms=[_platform_pb(pid, img.platform) for pid, img in stream.platforms],
            attestation_contents=stream.attestation_contents(),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(stream.read_events())
                tg.create_task(stream.send_until_closed(header, by_reference=by_reference))
            await stream.call.done_writing()
        except BaseExceptionGroup as group:
            raise await peer.instead_of(_unwrap(group)) from None
        except grpc.aio.AioRpcError as exc:
            raise await peer.instead_of(RemoteExportError(exc.code(), exc.details() or "")) from None
        accepted = stream.accepted.result()
        return ExportOutcome(
            accepted.job_id, accepted.resumed, stream.result.result(), stream.sent, stream.events
        )

    async def finalize(
        self,
        instance_id: str,
        token: str,
        *,
        on_event: OnEvent | None = None,
        credentials: CredentialStore | None = None,
    ) -> pb.Result:
        call = self.stub.Finalize()
        try:
            await call.write(
                pb.FinalizeRequest(start=pb.FinalizeStart(instance_id=instance_id, finalize_token=token))
            )
            async for event in _events(call):
                kind = event.WhichOneof("ev")
                if kind == "auth_request":
                    reply = await answer_auth(event.auth_request, credentials)
                    await call.write(pb.FinalizeRequest(auth_reply=reply))
                elif kind == "result":
                    await call.done_writing()
                    final: pb.Result = event.result
                    return final
                if on_event is not None:
                    on_event(event)
        except grpc.aio.AioRpcError as exc:
            raise RemoteExportError(exc.code(), exc.details() or "") from None
        raise RemoteExportError(grpc.StatusCode.INTERNAL, "Finalize ended without a result")


async def _events(call: Any) -> Any:
    while True:
        event = await call.read()
        if event is grpc.aio.EOF:
            return
        yield event


async def _call(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except grpc.aio.AioRpcError as exc:
        raise RemoteExportError(exc.code(), exc.details() or "") from None


class _StreamClosed(Exception):
    """A write on an Export call the daemon has already ended."""


# What grpc.aio puts in place of a call's status when a write fails because the peer has ended
# the call (``_AioCall.set_internal_error``): a local artifact, not what the daemon said.
_LOCAL_WRITE_FAILURE = "Internal error from Core"
_PEER_STATUS_WAIT = 2.0  # seconds: the peer's status is already on its way when a write fails


class _PeerStatus:
    """The status the daemon ended a streaming call with, kept apart from grpc.aio's own.

    When the daemon ends a call (a Cancel, a failed job) while this side is writing, grpc.aio
    replaces the call's status with INTERNAL "Internal error from Core" for the failed write,
    before or after the daemon's status arrives: a race. Every status the call is given runs
    its done callbacks, so the first one that is not that artifact is the daemon's.
    """

    def __init__(self, call: Any) -> None:
        self.error: RemoteExportError | None = None
        self._arrived = asyncio.Event()
        call.add_done_callback(self._on_status)

    def _on_status(self, call: Any) -> None:
        if self._arrived.is_set():
            return
        code, details = _settled(call.code()), _settled(call.details())
        if code is None or (code == grpc.StatusCode.INTERNAL and details == _LOCAL_WRITE_FAILURE):
            return
        self.error = RemoteExportError(code, details or "")
        self._arrived.set()

    async def instead_of(self, error: BaseException) -> BaseException:
        """``error``, or the daemon's status when ``error`` is the local write failure."""
        if not (isinstance(error, RemoteExportError) and error.message == _LOCAL_WRITE_FAILURE):
            return error
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), _PEER_STATUS_WAIT)
        return self.error if self.error is not None and self.error.code != grpc.StatusCode.OK else error


def _settled(coro: Any) -> Any:
    """The value of a grpc.aio status accessor (``code()``, ``details()``) on a finished call:
    it returns without suspending, so it runs to completion here, inside a done callback."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    return None


class _ExportStream:
    """One Export call: the events read from it, and the requests sent on it (one writer at a
    time: auth replies interleave with layer data)."""

    def __init__(
        self,
        call: Any,
        source: Source,
        on_event: OnEvent | None,
        credentials: CredentialStore | None,
        chunk_size: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.call = call
        self._on_event = on_event
        self._credentials = credentials
        self._chunk_size = chunk_size
        self._write_lock = asyncio.Lock()
        taken: set[str] = set()
        self.platforms = [(platform_id(img.platform, i, taken), img) for i, img in enumerate(source.images)]
        self._wants: dict[str, asyncio.Future[tuple[int, ...]]] = {
            pid: loop.create_future() for pid, _ in self.platforms
        }
        self.accepted: asyncio.Future[pb.Accepted] = loop.create_future()
        self.result: asyncio.Future[pb.Result] = loop.create_future()
        self.events: list[pb.ExportEvent] = []
        self.sent = 0

    def header_metadata(self, metadata: Mapping[str, bytes] | None) -> dict[str, bytes]:
        out = dict(metadata or {})
        for pid, image in self.platforms:
            key = "containerimage.config" if len(self.platforms) == 1 else f"containerimage.config/{pid}"
            out[key] = image.config
        return out

    def attestation_contents(self) -> list[pb.Attestation]:
        """The images' attestations ([contract §5.7]): predicates over the chunk size follow the
        header as attestation_chunk messages (:meth:`send`)."""
        out, inline = [], 0
        for pid, image in self.platforms:
            for a in image.attestations:
                inlined = (
                    len(a.predicate) <= self._chunk_size and inline + len(a.predicate) <= INLINE_PREDICATES
                )
                inline += len(a.predicate) if inlined else 0
                out.append(
                    pb.Attestation(
                        platform_id=pid,
                        predicate_type=a.predicate_type,
                        subjects=[pb.AttestationSubject(name=s.name, digest=s.digest) for s in a.subjects],
                        inline_only=a.inline_only,
                        predicate=a.predicate if inlined else b"",
                        predicate_size=len(a.predicate),
                    )
                )
        return out

    async def _send_predicates(self, header: pb.ExportHeader) -> None:
        predicates = [a.predicate for _, image in self.platforms for a in image.attestations]
        for index, data in enumerate(predicates):
            if header.attestation_contents[index].predicate:
                continue  # in the header
            for offset in range(0, len(data), self._chunk_size):
                chunk = pb.AttestationChunk(
                    index=index, offset=offset, data=data[offset : offset + self._chunk_size]
                )
                await self.write(pb.ExportRequest(attestation_chunk=chunk))

    async def write(self, request: pb.ExportRequest) -> None:
        async with self._write_lock:
            try:
                await self.call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                # The daemon ended the call while this side was still writing (a Cancel, a
                # failed job): the status it sent, which the reader gets, says why.
                raise _StreamClosed from exc

    async def read_events(self) -> None:
        async for event in _events(self.call):
            self.events.append(event)
            kind = event.WhichOneof("ev")
            if kind == "accepted" and not self.accepted.done():
                self.accepted.set_result(event.accepted)
            elif kind == "layer_wants":
                future = self._wants.get(event.layer_wants.platform_id)
                if future is None or future.done():
                    raise RemoteExportError(grpc.StatusCode.INTERNAL, "unexpected layer_wants")
                future.set_result(tuple(event.layer_wants.indices))
            elif kind == "auth_request":
                reply = await answer_auth(event.auth_request, self._credentials)
                with contextlib.suppress(_StreamClosed):  # the status follows
                    await self.write(pb.ExportRequest(auth_reply=reply))
            elif kind == "result":
                self.result.set_result(event.result)
                return
            if self._on_event is not None:
                self._on_event(event)
        raise RemoteExportError(grpc.StatusCode.INTERNAL, "the stream ended without a result")

    async def send_until_closed(self, header: pb.ExportHeader, *, by_reference: bool) -> None:
        with contextlib.suppress(_StreamClosed):  # the reader gets the daemon's status
            await self.send(header, by_reference=by_reference)

    async def send(self, header: pb.ExportHeader, *, by_reference: bool) -> None:
        await self.write(pb.ExportRequest(header=header))
        await self._send_predicates(header)
        if (await self.accepted).resumed:
            return  # the server has (or is making) this export already
        for pid, image in self.platforms:
            infos, digests = [], []
            for index, layer in enumerate(image.layers):
                info, digest = await _layer_info(index, layer, by_reference=by_reference)
                infos.append(info)
                digests.append(digest)
            await self.write(pb.ExportRequest(platform_begin=pb.PlatformBegin(platform_id=pid, layers=infos)))
            for index in await self._wants[pid]:
                self.sent += await self._send_layer(pid, index, image.layers[index], digests[index])
            await self.write(pb.ExportRequest(platform_end=pb.PlatformEnd(platform_id=pid)))
        await self.write(pb.ExportRequest(commit=pb.Commit()))
        # The write side stays open until the result: auth replies may still be needed.

    async def _send_layer(self, pid: str, index: int, layer: SourceLayer, digest: str) -> int:
        assert layer.open is not None
        offset = 0
        with layer.open() as f:
            while chunk := await asyncio.to_thread(f.read, self._chunk_size):
                data = pb.LayerData(platform_id=pid, index=index, offset=offset, data=chunk)
                await self.write(pb.ExportRequest(layer_data=data))
                offset += len(chunk)
        await self.write(pb.ExportRequest(layer_end=pb.LayerEnd(platform_id=pid, index=index, digest=digest)))
        return offset


async def _layer_info(index: int, layer: SourceLayer, *, by_reference: bool) -> tuple[pb.LayerInfo, str]:
    """How ``platform_begin`` announces a layer: by reference (a directory; a tar file with
    ``by_reference``), or by digest and size (its bytes follow when wanted)."""
    info = pb.LayerInfo(index=index)
    if layer.directory is not None:
        kind = (
            pb.LayerReference.KIND_DIRECTORY_OVERLAYFS
            if layer.whiteouts == "overlayfs"
            else pb.LayerReference.KIND_DIRECTORY_OCI
        )
        info.reference.CopyFrom(pb.LayerReference(path=str(layer.directory), kind=kind))
        return info, ""
    if by_reference and not layer.name.startswith("sha256:"):
        info.reference.CopyFrom(pb.LayerReference(path=layer.name, kind=pb.LayerReference.KIND_TAR))
        return info, ""
    digest, size = await asyncio.to_thread(_layer_digest, layer)
    info.blob_digest, info.size = digest, size
    return info, digest


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, grpc.aio.AioRpcError):
        return RemoteExportError(exc.code(), exc.details() or "")
    return exc


async def answer_auth(request: pb.AuthRequest, store: CredentialStore | None) -> pb.AuthReply:
    """Look the host up in the client's own credentials (never the daemon's)."""
    if store is None:
        return pb.AuthReply(request_id=request.request_id, error="the client has no credential store")
    challenges = parse_challenges(list(request.www_authenticate))
    found = await store.lookup(request.host, challenges[0] if challenges else None)
    if found is None:
        return pb.AuthReply(request_id=request.request_id, error=f"no credentials for {request.host}")
    if found.registry_token:
        return pb.AuthReply(request_id=request.request_id, authorization=f"Bearer {found.registry_token}")
    if found.identity_token:
        basic = pb.BasicCredentials(username=_TOKEN_USERNAME, secret=found.identity_token)
    else:
        basic = pb.BasicCredentials(username=found.username, secret=found.password)
    return pb.AuthReply(request_id=request.request_id, basic=basic)
