"""The conversion worker, seen from the daemon: start it, feed it its spec, read its progress
and its result, kill its process group when the job is cancelled.

Warm workers: starting a worker interpreter and importing the pipeline takes longer than
converting a small layer, so the runner keeps ``spares`` idle workers, started with the daemon,
each blocked on reading its spec. A job takes one (it is still a process of its own, in its own
process group: killing it cancels that job only) and a replacement is started in the
background when the job's worker has exited. A spec with inherited descriptors (layers sent
by reference) needs a worker started with them, so it gets a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nydus_exporter import errors as core_errors
from nydus_exporter.pipeline.progress import ProgressEvent
from nydus_exporter.service import errors as service_errors
from nydus_exporter.service.worker_spec import EarlyLayer, WorkerSpec


@dataclass
class Conversion:
    """What the worker produced in the staging layout."""

    metadata: dict[str, str]
    descriptor: dict[str, Any]
    warnings: tuple[str, ...]
    remote_blobs: tuple[str, ...] = ()  # layers left in the target repository (chunk store)
    packed: tuple[str, ...] = ()  # the layer blobs the worker converted (in the staging layout)


_ERROR_TYPES: dict[str, type[BaseException]] = {
    **{
        name: obj
        for name, obj in vars(core_errors).items()
        if isinstance(obj, type) and issubclass(obj, core_errors.ExporterError)
    },
    **{
        name: obj
        for name, obj in vars(service_errors).items()
        if isinstance(obj, type) and issubclass(obj, core_errors.ExporterError)
    },
}


class WorkerCrashedError(core_errors.ExporterError):
    """The worker process died or failed unexpectedly (a bug: INTERNAL)."""


class WorkerRunner:
    """Runs a :class:`WorkerSpec` in ``python -m nydus_exporter.service.worker``."""

    def __init__(self, python: str = sys.executable, *, spares: int = 0) -> None:
        self._python = python
        self._spares_wanted = spares
        self._spares: deque[asyncio.subprocess.Process] = deque()
        self._spawning: set[asyncio.Task[None]] = set()
        self._closed = False
        self.job_pids: set[int] = set()  # the workers converting a job right now

    @property
    def spare_pids(self) -> tuple[int, ...]:
        """The idle warm workers' process ids."""
        return tuple(proc.pid for proc in self._spares)

    async def start(self) -> None:
        """Start the warm workers (in the background: serving does not wait for them)."""
        for _ in range(self._spares_wanted):
            self._spawn_spare_later()

    async def settled(self) -> None:
        """Wait until no warm worker is being started."""
        while self._spawning:
            await asyncio.gather(*self._spawning, return_exceptions=True)

    async def close(self) -> None:
        """Stop the idle workers (running jobs are their callers' to stop)."""
        self._closed = True
        for task in self._spawning:
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        while self._spares:
            await _kill(self._spares.popleft())

    def _spawn_spare_later(self) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._add_spare())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _add_spare(self) -> None:
        try:
            proc = await self._spawn(())
        except OSError:
            return  # the next job starts a worker itself (and reports why it cannot)
        if self._closed:
            await _kill(proc)
            return
        self._spares.append(proc)

    async def _spawn(self, fds: tuple[int, ...]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "nydus_exporter.service.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed as a whole
            pass_fds=fds,
            limit=16 << 20,
        )

    async def _worker_for(self, spec: WorkerSpec) -> asyncio.subprocess.Process:
        if not spec.inherited_fds:
            while self._spares:
                proc = self._spares.popleft()
                if proc.returncode is None:
                    return proc
                self._spawn_spare_later()  # it died idle
        return await self._spawn(spec.inherited_fds)

    def early_worker(self) -> EarlyWorker | None:
        """An idle warm worker for a job that packs layers while it receives them (None: none
        is idle; the job then converts after receiving, as usual)."""
        while self._spares:
            proc = self._spares.popleft()
            if proc.returncode is None:
                self.job_pids.add(proc.pid)
                return EarlyWorker(self, proc)
            self._spawn_spare_later()  # it died idle
        return None

    async def _release(self, proc: asyncio.subprocess.Process) -> None:
        """The job's worker is done with: killed if still running, replaced."""
        self.job_pids.discard(proc.pid)
        if proc.returncode is None:
            await asyncio.shield(_kill(proc))
        # The replacement starts once the job's worker is gone, not beside it: starting an
        # interpreter competes for the CPUs the conversion needs.
        if len(self._spares) + len(self._spawning) < self._spares_wanted:
            self._spawn_spare_later()

    async def convert(
        self,
        spec: WorkerSpec,
        on_progress: Callable[[ProgressEvent], Awaitable[None]],
        early: EarlyWorker | None = None,
    ) -> Conversion:
        """Run ``spec``, in ``early``'s worker when given (which is then used up)."""
        if early is not None and spec.inherited_fds:
            await early.abandon()  # it cannot have the layers sent by reference
            early = None
        proc = early.proc if early is not None else await self._worker_for(spec)
        self.job_pids.add(proc.pid)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr_tail = bytearray()

        async def read_stderr() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(1 << 16):
                stderr_tail.extend(chunk)
                del stderr_tail[: max(0, len(stderr_tail) - 8192)]

        outcome: dict[str, Any] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(read_stderr())
                # A worker that died while idle: its missing outcome says so below.
                with contextlib.suppress(ConnectionError):
                    proc.stdin.write(spec.to_bytes())
                    await proc.stdin.drain()
                while line := await proc.stdout.readline():
                    message = json.loads(line)
                    if "progress" in message:
                        await on_progress(ProgressEvent(**message["progress"]))
                    else:
                        outcome = message
                proc.stdin.close()
                await proc.wait()
        finally:
            await self._release(proc)
        if outcome is not None and "result" in outcome:
            r = outcome["result"]
            return Conversion(
                dict(r["metadata"]),
                dict(r["descriptor"]),
                tuple(r.get("warnings", ())),
                tuple(r.get("remote_blobs", ())),
                tuple(r.get("packed", ())),
            )
        if outcome is not None and "error" in outcome:
            raise _rebuild_error(outcome["error"])
        tail = stderr_tail.decode(errors="replace").strip().splitlines()[-5:]
        raise WorkerCrashedError(
            f"conversion worker exited with status {proc.returncode}: {' | '.join(tail)}"
        )


class EarlyWorker:
    """A job's worker taken before its spec: told about layers as they start arriving
    (:class:`EarlyLayer`), then handed to :meth:`WorkerRunner.convert` or abandoned."""

    def __init__(self, runner: WorkerRunner, proc: asyncio.subprocess.Process) -> None:
        self._runner = runner
        self.proc = proc

    async def pack(self, layer: EarlyLayer) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(ConnectionError):  # a dead worker fails the job at convert
            self.proc.stdin.write(layer.to_bytes())
            await self.proc.stdin.drain()

    async def abandon(self) -> None:
        """The job ended before its conversion: kill the worker (it may be packing)."""
        await self._runner._release(self.proc)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the worker's process group and reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _rebuild_error(raw: Mapping[str, Any]) -> BaseException:
    kind, message = str(raw.get("type", "")), str(raw.get("message", ""))
    if kind == "OSError":
        return OSError(int(raw.get("errno", 0)), message)
    cls = _ERROR_TYPES.get(kind)
    if cls is None:
        return WorkerCrashedError(f"conversion failed: {message}")
    return cls(message)
