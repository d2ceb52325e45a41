"""The job registry: instances and jobs, idempotency, build slots, TTL release.

The worker process is run by :mod:`.runner`, the image published by :mod:`.publish`, the
client asked for registry credentials by :mod:`.auth_broker`; this module orders them.


* An **instance** is what ``Resolve`` allocates: validated attrs with an id. It expires after
  ``job_ttl`` without use.
* A **job** is one export. The Export stream that creates it owns its work (its tasks run in
  that stream's task group), so a client that cancels or disconnects stops the job at once:
  the worker process group is killed and the job directory deleted, and nothing was tagged
  or pushed (publishing happens only after a successful conversion, from a staging layout).
* **Idempotency:** an idempotency key seen before with the same normalised attrs returns the
  running or finished job (``resumed``); with different attrs it is ``ABORTED``. Failed and
  cancelled jobs do not hold their key.
* **Build slots:** at most ``max_concurrent_exports`` conversions run at once; a job waiting
  for one reports a "waiting for a build slot" progress row.
* **Finalize:** with ``defer_push`` the converted image waits in the job's staging layout
  until ``Finalize`` publishes it (``Release`` or the TTL drop it instead).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from nydus_exporter import errors as core_errors
from nydus_exporter.errors import excerpt
from nydus_exporter.oci.descriptor import Descriptor
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.pipeline.options import ExportOptions, options_for_worker
from nydus_exporter.pipeline.progress import ProgressEvent
from nydus_exporter.pipeline.result import filter_response
from nydus_exporter.service.attestations import SpooledAttestation
from nydus_exporter.service.attrs import ResolvedAttrs, resolve_attrs
from nydus_exporter.service.auth_broker import AuthBroker
from nydus_exporter.service.budget import Budget, JobBudget
from nydus_exporter.service.cache import LayerCache
from nydus_exporter.service.config import ServiceConfig
from nydus_exporter.service.destination import publish_layout
from nydus_exporter.service.errors import (
    IdempotencyConflictError,
    JobCancelledError,
    LimitExceededError,
    NotFoundError,
    PreconditionError,
    ProtocolError,
)
from nydus_exporter.service.events import (
    DescriptorValue,
    Emit,
    Event,
    JobResult,
    LogLine,
    ProgressRow,
    WarningEvent,
)
from nydus_exporter.service.metrics import Metrics, count_dedup
from nydus_exporter.service.publish import (
    Pusher,
    RegistryPusher,
    merges_live_tag,
    store_location,
    with_root,
)
from nydus_exporter.service.runner import Conversion, EarlyWorker, WorkerRunner
from nydus_exporter.service.worker_spec import WorkerImage, WorkerSpec

log = structlog.get_logger("nydus_exporter.service")

SLOT_ROW = "build slot"


class JobState(enum.Enum):
    RECEIVING = "receiving"
    WAITING = "waiting"  # for a build slot
    CONVERTING = "converting"
    CONVERTED = "converted"  # defer_push: waiting for Finalize
    PUBLISHING = "publishing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_FINISHED = (JobState.CONVERTED, JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Instance:
    instance_id: str
    attrs: ResolvedAttrs
    exporter_index: int
    buildkit_version: str
    last_used: float
    job_ids: set[str] = field(default_factory=set)
    attrs_bytes: int = 0  # what the attrs count against the daemon's attrs budget


@dataclass(eq=False)
class Job:
    job_id: str
    instance: Instance
    key: str
    defer_push: bool
    workdir: Path
    started: float
    state: JobState = JobState.RECEIVING
    finished: float | None = None
    conversion: Conversion | None = None
    result: JobResult | None = None  # what Export answered
    final: JobResult | None = None  # what Finalize answered
    error: BaseException | None = None
    finalize_token: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    work: asyncio.Task[Any] | None = None
    cancel_reason: str = ""
    publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _listeners: list[asyncio.Queue[Event | None]] = field(default_factory=list)

    @property
    def staging(self) -> Path:
        return self.workdir / "staging"

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self.done.is_set():
            queue.put_nowait(None)
        else:
            self._listeners.append(queue)
        return queue

    def broadcast(self, event: Event | None) -> None:
        """Copy an event to resumed observers; progress is dropped for a slow observer."""
        for queue in self._listeners:
            if event is None or not isinstance(event, ProgressRow) or queue.qsize() < 256:
                queue.put_nowait(event)
        if event is None:
            self._listeners.clear()

    def cancel(self, reason: str) -> bool:
        if self.work is None or self.work.done() or self.state in _FINISHED:
            return False
        self.cancel_reason = reason
        self.work.cancel()
        return True


_MAX_ROOT_CONTENT = 4 << 20  # a root manifest or index is a few KiB


def _staged_root(job: Job, digest: object) -> bytes:
    """The root's bytes from the job's staging layout (empty when they are not there)."""
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        return b""
    try:
        return OciLayout.open(job.staging).read_blob(digest, max_size=_MAX_ROOT_CONTENT)
    except (OSError, core_errors.ExporterError):
        return b""


def _descriptor_value(raw: Mapping[str, Any]) -> DescriptorValue:
    return DescriptorValue(
        media_type=str(raw.get("mediaType", "")),
        digest=str(raw.get("digest", "")),
        size=int(raw.get("size", 0)),
        annotations=dict(raw.get("annotations") or {}),
    )


# --- the registry -------------------------------------------------------------------------


class JobRegistry:
    """Every instance and job of one daemon. Used from the event loop only."""

    def __init__(
        self,
        config: ServiceConfig,
        metrics: Metrics,
        *,
        runner: WorkerRunner | None = None,
        pusher: Pusher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        # As many warm workers as can run at once (idle ones cost memory, not CPU).
        self.runner = runner or WorkerRunner(spares=config.max_concurrent_exports)
        self.pusher: Pusher = pusher or RegistryPusher(config)
        self._clock = clock
        self.instances: dict[str, Instance] = {}
        self.jobs: dict[str, Job] = {}
        self._by_key: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(config.max_concurrent_exports)
        self.jobs_dir = config.state_dir / "jobs"
        # Leftovers of a previous run (a crash) are garbage: no job survives a restart.
        shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cache = LayerCache(config.state_dir / "layer-cache")
        self.cache.clean_temporaries()
        self.metadata_held = Budget(
            config.max_metadata_bytes_total, "max_metadata_bytes_total", "export metadata bytes"
        )
        self.attrs_held = Budget(config.max_attrs_bytes_total, "max_attrs_bytes_total", "Resolve attrs bytes")

    def metadata_budget(self) -> JobBudget:
        """A new job's share of the metadata budget (its intake gives it back when it ends)."""
        return JobBudget(
            self.metadata_held,
            self.config.max_metadata_bytes_per_job,
            "max_metadata_bytes_per_job",
            "the export's metadata",
        )

    # --- instances ---------------------------------------------------------------------------

    def resolve(
        self, attrs: Mapping[str, str], *, exporter_index: int = 0, buildkit_version: str = ""
    ) -> Instance:
        size = sum(len(k) + len(v) for k, v in attrs.items())
        if size > self.config.max_attrs_bytes_per_instance:
            raise LimitExceededError(
                f"the attrs are {size} bytes, more than the "
                f"{self.config.max_attrs_bytes_per_instance} max_attrs_bytes_per_instance allows"
            )
        if self.config.chunk_store and "chunk-store" not in attrs:
            attrs = {**attrs, "chunk-store": "true"}  # the daemon's default; the client's key wins
        resolved = resolve_attrs(
            attrs, path_allowed=self.config.path_allowed, sparse_limit=self.config.sparse_limit
        )
        self.attrs_held.reserve(size)  # given back when the instance is released or expires
        instance = Instance(
            uuid.uuid4().hex, resolved, exporter_index, buildkit_version, self._clock(), attrs_bytes=size
        )
        self.instances[instance.instance_id] = instance
        return instance

    def _forget(self, instance: Instance) -> None:
        if self.instances.pop(instance.instance_id, None) is not None:
            self.attrs_held.release(instance.attrs_bytes)

    def instance(self, instance_id: str) -> Instance:
        instance = self.instances.get(instance_id)
        if instance is None:
            raise NotFoundError(
                f"unknown instance {excerpt(instance_id)} (call Resolve first; it may have expired)"
            )
        instance.last_used = self._clock()
        return instance

    # --- jobs --------------------------------------------------------------------------------

    def open(self, instance: Instance, *, key: str, defer_push: bool) -> tuple[Job, bool]:
        """A new job, or the job the idempotency ``key`` already names (``resumed``)."""
        if key:
            existing = self._by_key.get(key)
            if existing is not None and existing.state not in (JobState.FAILED, JobState.CANCELLED):
                if existing.instance.attrs.fingerprint != instance.attrs.fingerprint:
                    raise IdempotencyConflictError(
                        f"idempotency key {excerpt(key)} is in use by job"
                        f" {existing.job_id} with different attrs"
                    )
                return existing, True
        job_id = uuid.uuid4().hex
        workdir = self.jobs_dir / job_id
        workdir.mkdir(mode=0o700)
        job = Job(job_id, instance, key, defer_push, workdir, self._clock())
        self.jobs[job_id] = job
        instance.job_ids.add(job_id)
        if key:
            self._by_key[key] = job
        return job, False

    async def early_worker(self, job: Job, options: ExportOptions) -> EarlyWorker | None:
        """A build slot and an idle worker, to convert layers while they are received, if both
        are free right now, no other export is receiving or waiting for a slot, and the
        export's layers convert independently of each other (no chunk dictionary of any kind:
        those are known only at conversion). The caller hands it to :meth:`convert` or gives it
        back with :meth:`abandon_early`.

        Why no other export: a job converting while it receives holds its slot at the pace of
        its client; with other exports streaming at the same time that pace drops, and exports
        that have all their bytes would wait for the slot (measured: 8 concurrent exports went
        from 1.1x to 0.7x of the sequential throughput)."""
        independent = not options.chunk_dedup and options.chunk_dict is None
        if not independent or (options.chunk_store and options.push) or self._slots.locked():
            return None
        others = (JobState.RECEIVING, JobState.WAITING)
        if any(other is not job and other.state in others for other in self.jobs.values()):
            return None
        worker = self.runner.early_worker()
        if worker is not None:
            await self._slots.acquire()  # free (checked above): does not wait
        return worker

    async def abandon_early(self, worker: EarlyWorker) -> None:
        try:
            await worker.abandon()
        finally:
            self._slots.release()

    async def convert(
        self,
        job: Job,
        images: Sequence[WorkerImage],
        emit: Emit,
        broker: AuthBroker | None = None,
        early: EarlyWorker | None = None,
        attestations: tuple[tuple[SpooledAttestation, ...], ...] = (),
    ) -> Conversion:
        """Wait for a build slot, then run the worker; progress goes to ``emit``. With
        ``early`` (from :meth:`early_worker`), the slot is held and the worker started."""
        rows = _ProgressRows(emit, self.metrics)
        if early is not None:
            try:
                job.state = JobState.CONVERTING
                try:
                    spec = self._spec(job, images, {}, attestations)
                except BaseException:
                    await early.abandon()
                    raise
                began = self._clock()
                conversion = await self.runner.convert(spec, rows.on_progress, early)
                log.info("converted", job_id=job.job_id, seconds=round(self._clock() - began, 3))
                return conversion
            finally:
                self._slots.release()
        waited = self._slots.locked()
        if waited:
            job.state = JobState.WAITING
            self.metrics.waiting.inc()
            await emit(ProgressRow(SLOT_ROW, "waiting for a build slot", started=time.time()))
        try:
            async with self._slots:
                if waited:
                    self.metrics.waiting.dec()
                    waited = False
                    await emit(ProgressRow(SLOT_ROW, "waiting for a build slot", completed=time.time()))
                job.state = JobState.CONVERTING
                options = job.instance.attrs.options
                store: dict[str, Any] = {}
                if options.chunk_store and options.push and broker is not None:
                    store = await self._store_for_worker(options, broker)
                spec = self._spec(job, images, store, attestations)
                began = self._clock()
                conversion = await self.runner.convert(spec, rows.on_progress)
                log.info("converted", job_id=job.job_id, seconds=round(self._clock() - began, 3))
                return conversion
        finally:
            if waited:
                self.metrics.waiting.dec()

    def _spec(
        self,
        job: Job,
        images: Sequence[WorkerImage],
        store: dict[str, Any],
        attestations: tuple[tuple[SpooledAttestation, ...], ...] = (),
    ) -> WorkerSpec:
        options = job.instance.attrs.options
        return WorkerSpec(
            # The worker has no registry access: with merge-manifest against the live tag, the
            # pusher merges.
            options=options_for_worker(options, job.staging, merge_at_push=merges_live_tag(options)),
            staging=str(job.staging),
            workdir=str(job.workdir),
            cache_dir=str(self.cache.root),
            images=tuple(images),
            attestations=attestations,
            **store,
        )

    async def _store_for_worker(self, options: ExportOptions, broker: AuthBroker) -> dict[str, Any]:
        """The WorkerSpec fields of chunk-store=true: the store and the blobs verified in the
        target repository. A registry or store problem means converting without the store."""
        if not isinstance(self.pusher, RegistryPusher):
            return {}
        try:
            verified = await self.pusher.verified_store_blobs(options, broker.credential_provider)
        except core_errors.ExporterError as exc:
            log.warning("chunk store not used", error=str(exc))
            return {}
        return {
            "store_dir": str(self.config.state_dir),
            "store_location": store_location(options),
            "store_verified": verified,
        }

    def export_result(self, job: Job, conversion: Conversion, root_content: bytes | None = None) -> JobResult:
        """The Export result: final keys unless publishing is deferred to Finalize.
        ``root_content``: the root's bytes (default: read from the staging layout)."""
        attrs = job.instance.attrs
        response = dict(conversion.metadata)
        layout = attrs.options.oci_layout
        if layout is not None:
            response["nydus.oci-layout.path"] = str(layout)
        else:
            response.pop("nydus.oci-layout.path", None)
        response = filter_response(response, standard_keys=attrs.standard_response_keys)
        token = ""
        if job.defer_push:
            token = job.finalize_token = job.finalize_token or secrets.token_urlsafe(24)
        root = _descriptor_value(conversion.descriptor)
        if root_content is None:
            root_content = _staged_root(job, root.digest)
        return JobResult(response, root, token, conversion.warnings, root_content)

    async def publish(self, job: Job, broker: AuthBroker) -> JobResult:
        """Push (when asked) and write the oci-layout; once per job (Finalize is idempotent)."""
        async with job.publish_lock:
            if job.final is not None:
                return job.final
            if job.conversion is None or job.state not in (JobState.CONVERTED, JobState.CONVERTING):
                raise PreconditionError(f"job {job.job_id} has nothing to publish (state {job.state.value})")
            job.state = JobState.PUBLISHING
            options = job.instance.attrs.options
            root = Descriptor.from_json(job.conversion.descriptor)
            if options.push:
                if self.pusher is None:
                    raise PreconditionError(
                        "push=true needs the registry client, which this daemon does not have"
                    )
                pushed = await self.pusher(
                    layout=job.staging,
                    root=root,
                    options=options,
                    credential_provider=broker.credential_provider,
                    remote=job.conversion.remote_blobs,
                    packed=job.conversion.packed,
                )
                if pushed.digest != root.digest:
                    job.conversion = with_root(job.conversion, pushed)
            root_content = _staged_root(job, job.conversion.descriptor.get("digest", ""))
            if options.oci_layout is not None:  # moves the staged blobs
                await asyncio.to_thread(publish_layout, job.staging, options.oci_layout, self.config.roots)
            result = self.export_result(job, job.conversion, root_content)
            job.final = dataclasses.replace(result, finalize_token="")
            job.state = JobState.DONE
            job.finished = self._clock()
            shutil.rmtree(job.workdir, ignore_errors=True)
            return job.final

    def converted(self, job: Job, conversion: Conversion) -> None:
        count_dedup(self.metrics, conversion.metadata.get("nydus.dedup"))
        job.conversion = conversion
        job.state = JobState.CONVERTED

    def succeed(self, job: Job, result: JobResult) -> None:
        job.result = result
        job.finished = self._clock()
        self.metrics.exports.labels("success").inc()
        self.metrics.duration.observe(job.finished - job.started)
        job.broadcast(result)
        job.broadcast(None)
        job.done.set()

    def fail(self, job: Job, exc: BaseException, code: str) -> None:
        """Record a failure; kill nothing (the owner's task group already did) but the files."""
        cancelled = isinstance(exc, asyncio.CancelledError | JobCancelledError)
        job.state = JobState.CANCELLED if cancelled else JobState.FAILED
        job.error = exc
        job.finished = self._clock()
        shutil.rmtree(job.workdir, ignore_errors=True)
        self.metrics.exports.labels("cancelled" if cancelled else "failed").inc()
        self.metrics.exports_failed.labels(code).inc()
        job.broadcast(None)
        job.done.set()

    def by_token(self, instance_id: str, token: str) -> Job:
        instance = self.instance(instance_id)
        for job_id in instance.job_ids:
            job = self.jobs.get(job_id)
            if job is not None and token and job.finalize_token == token:
                return job
        raise NotFoundError(
            f"no export of instance {excerpt(instance_id)} has finalize token {excerpt(token)}"
        )

    # --- release, cancel, expiry -------------------------------------------------------------

    def cancel(self, *, instance_id: str = "", job_id: str = "", reason: str = "cancelled by Cancel") -> int:
        targets: list[Job] = []
        if job_id:
            job = self.jobs.get(job_id)
            if job is None:
                raise NotFoundError(f"unknown job {excerpt(job_id)}")
            targets.append(job)
        if instance_id:
            instance = self.instance(instance_id)
            targets.extend(j for i in instance.job_ids if (j := self.jobs.get(i)) is not None)
        if not job_id and not instance_id:
            raise ProtocolError("Cancel needs an instance_id or a job_id")
        return sum(1 for job in targets if job.cancel(reason))

    def release(self, instance_id: str) -> bool:
        instance = self.instances.get(instance_id)
        if instance is None:
            return False
        self._forget(instance)
        for job_id in instance.job_ids:
            job = self.jobs.get(job_id)
            if job is not None:
                self._drop(job, "released")
        return True

    def _drop(self, job: Job, reason: str) -> None:
        if not job.cancel(reason):
            shutil.rmtree(job.workdir, ignore_errors=True)
            self.jobs.pop(job.job_id, None)
            if job.key and self._by_key.get(job.key) is job:
                del self._by_key[job.key]

    def sweep(self) -> int:
        """Release what outlived ``job_ttl``: finished jobs, unfinalized ones, idle instances."""
        now = self._clock()
        ttl = self.config.job_ttl
        dropped = 0
        for job in list(self.jobs.values()):
            if job.state in _FINISHED and job.finished is not None and now - job.finished > ttl:
                self._drop(job, "expired")
                job.instance.job_ids.discard(job.job_id)
                dropped += 1
        for instance in list(self.instances.values()):
            running = any(
                (j := self.jobs.get(i)) is not None and j.state not in _FINISHED for i in instance.job_ids
            )
            if not running and not instance.job_ids and now - instance.last_used > ttl:
                self._forget(instance)
                dropped += 1
        return dropped

    async def janitor(self) -> None:
        """Sweep periodically; runs in the server lifespan's task group until cancelled."""
        interval = max(0.05, min(self.config.job_ttl / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            if count := self.sweep():
                log.info("released expired jobs and instances", count=count)

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state not in _FINISHED]

    def close(self) -> None:
        """After the server stopped: drop every job's files (the cache stays)."""
        for job in list(self.jobs.values()):
            shutil.rmtree(job.workdir, ignore_errors=True)
        self.jobs.clear()
        for instance in list(self.instances.values()):
            self._forget(instance)
        self._by_key.clear()


class _ProgressRows:
    """Turns pipeline :class:`ProgressEvent` values into BuildKit-style progress rows."""

    def __init__(self, emit: Emit, metrics: Metrics) -> None:
        self._emit = emit
        self._metrics = metrics
        self._started: dict[str, float] = {}

    async def on_progress(self, event: ProgressEvent) -> None:
        prefix = f"[{event.platform}] " if event.platform else ""
        now = time.time()
        if event.kind == "message":
            await self._emit(WarningEvent(short=f"{prefix}{event.message}"))
            return
        if event.kind == "info":  # not a warning: a line of the export's log
            await self._emit(LogLine(1, f"{prefix}{event.message}\n".encode()))
            return
        if event.kind == "image-done":
            row = f"{prefix}manifest"
            await self._emit(
                # The row id names the platform already; the action must not repeat it.
                ProgressRow(row, f"writing manifest {event.name}", started=now, completed=now)
            )
            return
        row = f"{prefix}layer {event.layer + 1}/{event.layers}"
        if event.kind == "layer-start":
            self._started[row] = now
            await self._emit(ProgressRow(row, f"converting {event.name}", started=now))
        elif event.kind == "layer-bytes":
            await self._emit(
                ProgressRow(
                    row,
                    f"converting {event.name}",
                    current=event.bytes_in,
                    started=self._started.get(row, now),
                )
            )
        elif event.kind == "layer-done":
            self._metrics.bytes_out.inc(event.bytes_out)
            action = f"{'cached' if event.message == 'cached' else 'converted'} {event.name}"
            await self._emit(
                ProgressRow(
                    row,
                    action,
                    current=event.bytes_in,
                    total=event.bytes_in,
                    started=self._started.pop(row, now),
                    completed=now,
                )
            )
