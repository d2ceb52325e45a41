"""The conversion worker, seen from the daemon: start it, feed it its spec, read its progress
and its result, kill its process group when the job is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nydus_exporter import errors as core_errors
from nydus_exporter.pipeline.progress import ProgressEvent
from nydus_exporter.service import errors as service_errors
from nydus_exporter.service.worker_spec import WorkerSpec


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

    def __init__(self, python: str = sys.executable) -> None:
        self._python = python

    async def convert(
        self, spec: WorkerSpec, on_progress: Callable[[ProgressEvent], Awaitable[None]]
    ) -> Conversion:
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "nydus_exporter.service.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed as a whole
            pass_fds=spec.inherited_fds,
            limit=16 << 20,
        )
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
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())
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


def _rebuild_error(raw: Mapping[str, Any]) -> BaseException:
    kind, message = str(raw.get("type", "")), str(raw.get("message", ""))
    if kind == "OSError":
        return OSError(int(raw.get("errno", 0)), message)
    cls = _ERROR_TYPES.get(kind)
    if cls is None:
        return WorkerCrashedError(f"conversion failed: {message}")
    return cls(message)
