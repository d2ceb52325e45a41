"""gRPC <-> domain translation for ``nydus.exporter.v1.Exporter``, and THE error mapping.

This is the only module that reads or builds protobuf messages of the contract; everything
below it (:mod:`jobs`, :mod:`intake`, :mod:`attrs`) works with plain values.
:func:`status_for` is the one place where an exception becomes a ``grpc.StatusCode``
([contract §5.3]).

Stream handlers write through one bounded queue drained by one writer task (gRPC allows
one outstanding write), and read through ``context.read()``; all tasks of a stream belong to
the stream's task group, so cancelling the RPC (client cancel or disconnect) cancels the job.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from nydus_exporter import __version__
from nydus_exporter.api import API_VERSION
from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.api import exporter_pb2_grpc as pb_grpc
from nydus_exporter.errors import (
    ConfigError,
    ExporterError,
    FormatError,
    InvalidLayerError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    UnsupportedError,
    excerpt,
    shorten,
)
from nydus_exporter.oci.platform import Platform
from nydus_exporter.rafs import codecs
from nydus_exporter.service.attestations import AttestationIntake, attestation_headers, unattached_warning
from nydus_exporter.service.auth_broker import AuthBroker
from nydus_exporter.service.errors import (
    IdempotencyConflictError,
    JobCancelledError,
    JobDeadlineError,
    LimitExceededError,
    NotFoundError,
    PathNotAllowedError,
    PreconditionError,
    ProtocolError,
)
from nydus_exporter.service.events import (
    Accepted,
    AuthAnswer,
    AuthChallenge,
    Event,
    JobResult,
    LayerWants,
    LogLine,
    ProgressRow,
    WarningEvent,
)
from nydus_exporter.service.intake import ExportIntake, LayerReference, LayerSpec
from nydus_exporter.service.jobs import Job, JobRegistry
from nydus_exporter.service.runner import EarlyWorker
from nydus_exporter.service.worker_spec import EarlyLayer

log = structlog.get_logger("nydus_exporter.service")

CAPABILITIES = (
    "finalize",
    "auth.authorize",
    "auth.credentials",
    "layer.by-reference",
    "layer.dedupe",
    "oci-layout",
)
BUILDER_FEATURES = ("tar2rafs", "blob-toc", "blob-inline-meta")
_END = object()
_MAX_STATUS_CHARS = 2000
_QUEUE = 256


# The status of each error class, first match wins ([contract §5.3]).
_STATUS_BY_CLASS: tuple[
    tuple[type[BaseException] | tuple[type[BaseException], ...], grpc.StatusCode], ...
] = (
    # The client's input: attrs, metadata, the stream, the layers (a digest mismatch too).
    (
        (ProtocolError, PathNotAllowedError, ConfigError, InvalidLayerError, FormatError),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ((PreconditionError, UnsupportedError), grpc.StatusCode.FAILED_PRECONDITION),
    (IdempotencyConflictError, grpc.StatusCode.ABORTED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    ((JobDeadlineError, TimeoutError), grpc.StatusCode.DEADLINE_EXCEEDED),
    ((JobCancelledError, asyncio.CancelledError), grpc.StatusCode.CANCELLED),
    (RegistryNotFoundError, grpc.StatusCode.NOT_FOUND),
    (RegistryUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """THE mapping from an error to a gRPC status ([contract §5.3]); the message is kept (bounded)."""
    message = str(exc) or type(exc).__name__
    code = _code_for(exc)
    if code is None:
        code = grpc.StatusCode.INTERNAL
        if not isinstance(exc, ExporterError):
            message = f"internal error: {type(exc).__name__}: {exc}"
    # Messages quote user values through errors.excerpt; this bounds what slipped through, so
    # a status never outgrows gRPC's metadata limit (the client would see RESOURCE_EXHAUSTED).
    return code, shorten(message, _MAX_STATUS_CHARS)


def _code_for(exc: BaseException) -> grpc.StatusCode | None:
    for classes, code in _STATUS_BY_CLASS:
        if isinstance(exc, classes):
            return code
    if isinstance(exc, RegistryAuthError):
        return grpc.StatusCode.PERMISSION_DENIED if exc.status == 403 else grpc.StatusCode.UNAUTHENTICATED
    if isinstance(exc, RegistryError):
        return grpc.StatusCode.UNAVAILABLE if exc.temporary else grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return None  # WorkerCrashedError, other ExporterErrors, bugs: INTERNAL


def peer_host(peer: str) -> str:
    """The client of ``context.peer()`` without its port: ``ipv4:10.0.0.7:51234`` ->
    ``ipv4:10.0.0.7``, ``ipv6:[::1]:5000`` -> ``ipv6:[::1]``; ``unix:...`` as it is."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in address:
        return f"{kind}:{address.rpartition(':')[0]}"
    return peer


def _first_error(exc: BaseException) -> BaseException:
    """The error to report from an exception group (task groups wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _raise_if_cancelled(context: grpc.aio.ServicerContext) -> None:
    """A cancelled call reads as end-of-stream first; the cancellation itself follows."""
    for _ in range(20):
        if context.cancelled():
            raise JobCancelledError("the client cancelled the export")
        await asyncio.sleep(0.005)


# --- domain -> protobuf -------------------------------------------------------------------


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def event_to_pb(event: Event) -> pb.ExportEvent:
    match event:
        case Accepted():
            out = pb.ExportEvent(accepted=pb.Accepted(job_id=event.job_id, resumed=event.resumed))
        case LayerWants():
            out = pb.ExportEvent(
                layer_wants=pb.LayerWants(platform_id=event.platform_id, indices=event.indices)
            )
        case ProgressRow():
            out = pb.ExportEvent(
                progress=pb.Progress(
                    id=event.id,
                    action=event.action,
                    current=event.current,
                    total=event.total,
                    started=_timestamp(event.started),
                    completed=_timestamp(event.completed),
                )
            )
        case LogLine():
            out = pb.ExportEvent(log=pb.Log(stream=event.stream, data=event.data))
        case WarningEvent():
            out = pb.ExportEvent(
                warning=pb.Warning(level=event.level, short=event.short, detail=event.detail, url=event.url)
            )
        case AuthChallenge():
            out = pb.ExportEvent(
                auth_request=pb.AuthRequest(
                    request_id=event.request_id,
                    host=event.host,
                    method=event.method,
                    url=event.url,
                    www_authenticate=event.www_authenticate,
                    repository=event.repository,
                    push=event.push,
                    scopes=event.scopes,
                )
            )
        case _:
            out = pb.ExportEvent(result=result_to_pb(event))
    return out


def result_to_pb(result: JobResult) -> pb.Result:
    root = result.root
    return pb.Result(
        response=dict(result.response),
        root_descriptor=pb.Descriptor(
            media_type=root.media_type, digest=root.digest, size=root.size, annotations=dict(root.annotations)
        ),
        finalize_token=result.finalize_token,
        warnings=result.warnings,
        root_content=result.root_content,
    )


# --- protobuf -> domain -------------------------------------------------------------------

_REFERENCE_KINDS: dict[int, Any] = {
    pb.LayerReference.KIND_TAR: "tar",
    pb.LayerReference.KIND_DIRECTORY_OCI: "dir-oci",
    pb.LayerReference.KIND_DIRECTORY_OVERLAYFS: "dir-overlayfs",
}


def layer_spec(info: pb.LayerInfo) -> LayerSpec:
    reference = None
    if info.HasField("reference"):
        from pathlib import Path

        kind = _REFERENCE_KINDS.get(info.reference.kind)
        if kind is None:
            raise ProtocolError(f"layer {info.index}: reference kind {info.reference.kind} is not supported")
        reference = LayerReference(Path(info.reference.path), kind)
    return LayerSpec(info.index, info.blob_digest, info.media_type, info.size, reference)


def platform_of(p: pb.Platform) -> Platform | None:
    if not p.os and not p.architecture:
        return None
    if not p.os or not p.architecture:
        raise ProtocolError(f"platform {excerpt(p.id)} needs both os and architecture (or neither)")
    return Platform(
        os=p.os,
        architecture=p.architecture,
        variant=p.variant or None,
        os_version=p.os_version or None,
        os_features=tuple(p.os_features) or None,
    )


def auth_answer(reply: pb.AuthReply) -> AuthAnswer:
    which = reply.WhichOneof("answer")
    if which == "authorization":
        return AuthAnswer(reply.request_id, authorization=reply.authorization)
    if which == "basic":
        return AuthAnswer(reply.request_id, username=reply.basic.username, secret=reply.basic.secret)
    return AuthAnswer(reply.request_id, error=reply.error or "no credentials")


# --- the servicer -------------------------------------------------------------------------


class ExporterServicer(pb_grpc.ExporterServicer):
    def __init__(self, jobs: JobRegistry) -> None:
        self._jobs = jobs
        self._config = jobs.config
        self._metrics = jobs.metrics
        self._open_streams: dict[str, int] = {}  # peer host -> open Export streams

    # --- unary ---------------------------------------------------------------------------------

    async def _unary(self, context: grpc.aio.ServicerContext, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            code, message = status_for(exc)
            await context.abort(code, message)

    async def GetInfo(
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInfoResponse:
        c = self._config
        return pb.GetInfoResponse(
            api_version=API_VERSION,
            daemon_version=__version__,
            nydus_image_version="",
            builder_features=BUILDER_FEATURES,
            fs_versions=["6"],
            compressors=codecs.COMPRESSOR_NAMES,
            digesters=codecs.DIGESTER_NAMES,
            capabilities=CAPABILITIES,
            max_chunk_bytes=c.max_chunk_bytes,
            limits=pb.Limits(
                max_concurrent_exports=c.max_concurrent_exports,
                job_deadline_seconds=int(c.job_deadline),
                job_ttl_seconds=int(c.job_ttl),
                max_message_bytes=c.max_message_bytes,
                max_metadata_bytes_per_job=c.max_metadata_bytes_per_job,
                max_attrs_bytes_per_instance=c.max_attrs_bytes_per_instance,
                header_timeout_seconds=int(c.header_timeout),
                max_streams_per_peer=c.max_streams_per_peer,
                sparse_limit_bytes=c.sparse_limit,
            ),
        )

    async def Resolve(
        self, request: pb.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveResponse:
        def call() -> pb.ResolveResponse:
            instance = self._jobs.resolve(
                dict(request.attrs),
                exporter_index=request.exporter_index,
                buildkit_version=request.buildkit_version,
            )
            attrs = instance.attrs
            log.info(
                "resolved",
                instance_id=instance.instance_id,
                image=attrs.normalized.get("name", ""),
                warnings=len(attrs.warnings),
            )
            return pb.ResolveResponse(
                instance_id=instance.instance_id,
                display_name=attrs.display_name,
                normalized_attrs=dict(attrs.normalized),
                warnings=attrs.warnings,
                requires_finalize=attrs.requires_finalize,
            )

        result: pb.ResolveResponse = await self._unary(context, call)
        return result

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseResponse:
        released = self._jobs.release(request.instance_id)
        log.info("released", instance_id=request.instance_id, held=released)
        return pb.ReleaseResponse(released=released)

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelResponse:
        def call() -> pb.CancelResponse:
            n = self._jobs.cancel(instance_id=request.instance_id, job_id=request.job_id)
            return pb.CancelResponse(cancelled=n)

        result: pb.CancelResponse = await self._unary(context, call)
        return result

    # --- streams -------------------------------------------------------------------------------

    async def _stream(
        self,
        context: grpc.aio.ServicerContext,
        session: Callable[[Callable[[Event], Awaitable[None]]], Awaitable[None]],
    ) -> None:
        """Run ``session`` with an event writer; map its error to the RPC status."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUE)
        failure: list[BaseException] = []

        async def emit(event: Event) -> None:
            await queue.put(event)

        async def writer() -> None:
            while (item := await queue.get()) is not _END:
                await context.write(event_to_pb(item))

        async def guarded() -> None:
            try:
                await session(emit)
            except asyncio.CancelledError:
                raise  # the RPC itself is cancelled: nothing more is written
            except BaseException as exc:  # reported as the status, after the queued events
                failure.append(_first_error(exc))
            await queue.put(_END)

        async with asyncio.TaskGroup() as tg:
            write = tg.create_task(writer())
            work = tg.create_task(guarded())
            # A job cancelled out of band (Cancel, Release) ends the stream too.
            work.add_done_callback(lambda t: write.cancel() if t.cancelled() else None)
        if work.cancelled():
            failure.append(JobCancelledError("export cancelled"))
        if failure:
            exc = failure[0]
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.error("internal error", error=message, exc_info=exc)
            await context.abort(code, message)

    # Stream handlers write with context.write() (allowed by grpc.aio) instead of yielding.
    async def Export(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        peer = peer_host(context.peer())
        limit = self._config.max_streams_per_peer
        if self._open_streams.get(peer, 0) >= limit:
            code, message = status_for(
                LimitExceededError(
                    f"{excerpt(peer)} has {limit} Export streams open, the most max_streams_per_peer allows"
                )
            )
            await context.abort(code, message)
        self._open_streams[peer] = self._open_streams.get(peer, 0) + 1
        self._metrics.in_flight.inc()
        try:
            await self._stream(context, lambda emit: self._export(context, emit))
        finally:
            self._metrics.in_flight.dec()
            self._open_streams[peer] -= 1
            if not self._open_streams[peer]:
                del self._open_streams[peer]

    async def _first_message(self, context: grpc.aio.ServicerContext, what: str) -> Any:
        """The stream's first message, within ``header_timeout``: a client that opens a stream
        and sends nothing must not hold it (and its place among the in-flight exports)."""
        timeout = self._config.header_timeout
        try:
            async with asyncio.timeout(timeout):
                return await context.read()
        except TimeoutError:
            raise JobDeadlineError(
                f"no {what} within {timeout:g} s of opening the stream (header_timeout)"
            ) from None

    async def _export(
        self, context: grpc.aio.ServicerContext, emit: Callable[[Event], Awaitable[None]]
    ) -> None:
        first = await self._first_message(context, "header")
        if first is grpc.aio.EOF:
            raise ProtocolError("the stream ended before the header")
        if first.WhichOneof("msg") != "header":
            raise ProtocolError(f"the first message is {first.WhichOneof('msg')}, expected header")
        header = first.header
        instance = self._jobs.instance(header.instance_id)
        key = header.idempotency_key or (
            f"{header.build_ref}/{instance.exporter_index}" if header.build_ref else ""
        )
        job, resumed = self._jobs.open(instance, key=key, defer_push=header.defer_push)
        structlog.contextvars.bind_contextvars(
            job_id=job.job_id,
            instance_id=instance.instance_id,
            image=instance.attrs.normalized.get("name", ""),
        )
        try:
            await emit(Accepted(job.job_id, resumed))
            if resumed:
                log.info("export resumed")
                await self._observe(job, emit)
                return
            await self._own(job, header, context, emit)
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "instance_id", "image")

    async def _observe(self, job: Job, emit: Callable[[Event], Awaitable[None]]) -> None:
        """A resumed stream: the job's events until it ends, then its result or error."""
        queue = job.subscribe()
        while (event := await queue.get()) is not None:
            if not isinstance(event, JobResult):
                await emit(event)
        if job.result is not None:
            await emit(job.result)
        elif job.error is not None:
            raise (
                job.error if isinstance(job.error, Exception) else JobCancelledError("the job was cancelled")
            )

    async def _own(
        self,
        job: Job,
        header: pb.ExportHeader,
        context: grpc.aio.ServicerContext,
        emit: Callable[[Event], Awaitable[None]],
    ) -> None:
        """The job's owner: receive, convert, publish; any failure removes the job's files."""
        job.work = asyncio.current_task()
        began = time.monotonic()

        async def emit_all(event: Event) -> None:
            await emit(event)
            job.broadcast(event)

        broker = AuthBroker(emit_all)
        log.info("export started", platforms=len(header.platforms), defer_push=header.defer_push)
        try:
            try:
                async with asyncio.timeout(self._config.job_deadline):
                    result = await self._receive_and_run(job, header, context, emit_all, broker)
            except TimeoutError:
                raise JobDeadlineError(
                    f"job {job.job_id} ran past the {self._config.job_deadline:g} s deadline"
                ) from None
        except asyncio.CancelledError:
            reason = job.cancel_reason
            self._jobs.fail(job, JobCancelledError(reason or "cancelled by the client"), "CANCELLED")
            log.info(
                "export cancelled", reason=reason or "client", seconds=round(time.monotonic() - began, 3)
            )
            if reason:
                raise JobCancelledError(f"export {reason}") from None
            raise
        except BaseException as exc:
            error = _first_error(exc)
            code, message = status_for(error)
            self._jobs.fail(job, error, code.name)
            log.info(
                "export failed", code=code.name, error=message, seconds=round(time.monotonic() - began, 3)
            )
            raise
        self._jobs.succeed(job, result)
        log.info("export finished", digest=result.root.digest, seconds=round(time.monotonic() - began, 3))
        await emit(result)

    async def _receive_and_run(
        self,
        job: Job,
        header: pb.ExportHeader,
        context: grpc.aio.ServicerContext,
        emit: Callable[[Event], Awaitable[None]],
        broker: AuthBroker,
    ) -> JobResult:
        attrs = job.instance.attrs
        unattached = unattached_warning(header, oci_mediatypes=attrs.options.oci_mediatypes)
        if unattached is not None:
            await emit(WarningEvent(short=unattached))
        attestations = AttestationIntake(
            job.workdir, attestation_headers(header), [p.id for p in header.platforms]
        )
        intake = ExportIntake(
            workdir=job.workdir,
            platforms=[(p.id, platform_of(p)) for p in header.platforms],
            metadata=dict(header.metadata),
            options=attrs.options,
            config=self._config,
            cache=self._jobs.cache,
            metadata_budget=self._jobs.metadata_budget(),
            on_bytes=self._metrics.bytes_in.inc,
        )
        # Convert while receiving: a worker (and a build slot) taken when the first layer
        # starts spooling, if free then, packs each layer as its bytes arrive.
        early: list[EarlyWorker] = []

        async def on_spool(path: Path, size: int) -> None:
            if not early:
                worker = await self._jobs.early_worker(job, attrs.options)
                if worker is None:
                    intake.on_spool = None  # none free now: convert after receiving
                    return
                early.append(worker)
            await early[0].pack(EarlyLayer(str(path), size, attrs.options.pack, str(job.workdir)))

        intake.on_spool = on_spool
        try:
            try:
                images = await self._receive(intake, attestations, context, emit, broker)
            finally:
                intake.close()
            attached = attestations.per_platform(intake.selected_ids) if unattached is None else ()
            self._metrics.cache_hits.inc(intake.cache_hits)
            self._metrics.cache_misses.inc(intake.cache_misses)
            async with asyncio.TaskGroup() as tg:
                # After commit the client only sends auth replies (or half-closes).
                replies = tg.create_task(self._read_replies(context, broker))
                try:
                    conversion = await self._jobs.convert(
                        job, images, emit, broker, early.pop() if early else None, attached
                    )
                    self._jobs.converted(job, conversion)
                    if job.defer_push:
                        result = self._jobs.export_result(job, conversion)
                    else:
                        result = await self._jobs.publish(job, broker)
                finally:
                    replies.cancel()
        finally:
            if early:  # the job ended before its conversion
                await asyncio.shield(self._jobs.abandon_early(early.pop()))
            intake.close_references()  # the worker read them; it is gone now
        return result

    async def _receive(
        self,
        intake: ExportIntake,
        attestations: AttestationIntake,
        context: grpc.aio.ServicerContext,
        emit: Callable[[Event], Awaitable[None]],
        broker: AuthBroker,
    ) -> Any:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                await _raise_if_cancelled(context)
                raise ProtocolError("the stream ended before commit")
            kind = message.WhichOneof("msg")
            if kind == "metadata_chunk":
                m = message.metadata_chunk
                intake.metadata_chunk(m.key, m.offset, m.data, m.last)
            elif kind == "attestation_chunk":
                a = message.attestation_chunk
                attestations.chunk(a.index, a.offset, a.data)
            elif kind == "platform_begin":
                begin = message.platform_begin
                wants = await intake.platform_begin(begin.platform_id, [layer_spec(i) for i in begin.layers])
                await emit(LayerWants(begin.platform_id, wants))
            elif kind == "layer_data":
                d = message.layer_data
                await intake.layer_data(d.platform_id, d.index, d.offset, d.data)
            elif kind == "layer_end":
                e = message.layer_end
                await intake.layer_end(e.platform_id, e.index, e.digest)
            elif kind == "platform_end":
                intake.platform_end(message.platform_end.platform_id)
            elif kind == "auth_reply":
                broker.answer(auth_answer(message.auth_reply))
            elif kind == "commit":
                return intake.commit()
            elif kind == "header":
                raise ProtocolError("a second header")
            else:
                raise ProtocolError("an empty ExportRequest (no message set)")

    async def _read_replies(self, context: grpc.aio.ServicerContext, broker: AuthBroker) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            which = message.WhichOneof("msg")
            if which != "auth_reply":
                raise ProtocolError(f"{which} after commit (only auth_reply may follow)")
            broker.answer(auth_answer(message.auth_reply))

    async def Finalize(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        await self._stream(context, lambda emit: self._finalize(context, emit))

    async def _finalize(
        self, context: grpc.aio.ServicerContext, emit: Callable[[Event], Awaitable[None]]
    ) -> None:
        first = await self._first_message(context, "start")
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "start":
            raise ProtocolError("the first Finalize message must be start")
        job = self._jobs.by_token(first.start.instance_id, first.start.finalize_token)
        broker = AuthBroker(emit)
        structlog.contextvars.bind_contextvars(job_id=job.job_id, instance_id=job.instance.instance_id)
        try:
            async with asyncio.TaskGroup() as tg:
                replies = tg.create_task(self._finalize_replies(context, broker))
                try:
                    result = await self._jobs.publish(job, broker)
                finally:
                    replies.cancel()
            log.info("export finalized", digest=result.root.digest)
            await emit(result)
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "instance_id")

    async def _finalize_replies(self, context: grpc.aio.ServicerContext, broker: AuthBroker) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            if message.WhichOneof("msg") != "auth_reply":
                raise ProtocolError("only auth_reply may follow the Finalize start")
            broker.answer(auth_answer(message.auth_reply))
