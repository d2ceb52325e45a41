"""The daemon's lifespan: gRPC server, health, reflection, metrics endpoint, graceful stop.

:func:`serve` is an async context manager: it binds every listen address (unix sockets get
mode 0660; ``tcp://`` listeners use TLS when a certificate is configured, mutual TLS with a
client CA), serves ``nydus.exporter.v1.Exporter``, the standard ``grpc.health.v1.Health``
and server reflection, optionally an aiohttp endpoint with ``/metrics`` (Prometheus text)
and ``/healthz``, and runs the job janitor (TTL release) in its task group.

:meth:`RunningServer.shutdown` is the SIGTERM path: health turns NOT_SERVING, new RPCs are
refused, running exports get ``grace`` seconds to finish, then they are cancelled (their
worker processes killed, their files removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from nydus_exporter.api import SERVICE_NAME
from nydus_exporter.api import exporter_pb2_grpc as pb_grpc
from nydus_exporter.errors import ConfigError
from nydus_exporter.service.config import ServiceConfig, redacted
from nydus_exporter.service.jobs import JobRegistry
from nydus_exporter.service.metrics import CONTENT_TYPE, Metrics
from nydus_exporter.service.publish import Pusher
from nydus_exporter.service.runner import WorkerRunner
from nydus_exporter.service.servicer import ExporterServicer
from nydus_exporter.service.statelock import lock_state_dir

log = structlog.get_logger("nydus_exporter.service")

HEALTH_SERVICE = "grpc.health.v1.Health"


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """structlog for the daemon: JSON lines (or console lines) on ``stream`` (stderr) with the
    per-RPC context (job id, ...). Console lines are coloured only on a terminal: in a file or
    a journal the escape codes would be noise."""
    stream = stream or sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


@dataclass
class RunningServer:
    config: ServiceConfig
    jobs: JobRegistry
    metrics: Metrics
    server: grpc.aio.Server
    health: HealthServicer
    addresses: list[str] = field(default_factory=list)  # as bound (tcp port 0 resolved)
    http_address: str = ""
    serving: bool = True

    async def shutdown(self, grace: float | None = None) -> None:
        """Refuse new work, let running exports finish within ``grace``, cancel the rest."""
        if not self.serving:
            return
        self.serving = False
        grace = self.config.grace_period if grace is None else grace
        running = len(self.jobs.running())
        await self.health.enter_graceful_shutdown()
        stopping = asyncio.ensure_future(self.server.stop(grace))
        await asyncio.sleep(0)  # stop() refuses new RPCs before its first wait
        # Logged once new work is refused: a caller that sees it may rely on that.
        log.info("draining", running=running, grace=grace)
        await stopping
        log.info("stopped", cancelled=len(self.jobs.running()))


def _credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        cert, key = config.tls_cert.read_bytes(), config.tls_key.read_bytes()
        ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS material: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _bind(server: grpc.aio.Server, config: ServiceConfig) -> tuple[list[str], list[Path]]:
    addresses: list[str] = []
    sockets: list[Path] = []
    creds = _credentials(config)
    for address in config.listen_addresses:
        if address.startswith("unix://"):
            path = Path(address.removeprefix("unix://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()  # a stale socket of a previous run
            if server.add_insecure_port(f"unix://{path}") == 0:
                raise ConfigError(f"cannot listen on {address}")
            os.chmod(path, 0o660)
            sockets.append(path)
            addresses.append(f"unix://{path}")
        else:
            hostport = address.removeprefix("tcp://")
            host, _, _port = hostport.rpartition(":")
            port = (
                server.add_secure_port(hostport, creds)
                if creds is not None
                else server.add_insecure_port(hostport)
            )
            if port == 0:
                raise ConfigError(f"cannot listen on {address}")
            addresses.append(f"tcp://{host}:{port}")
    return addresses, sockets


async def _start_http(running: RunningServer, address: str) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=running.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        if running.serving:
            return web.Response(text="ok\n")
        return web.Response(text="draining\n", status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = address.removeprefix("http://").rpartition(":")
    site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {address} (metrics endpoint): {exc.strerror or exc}") from None
    bound = runner.addresses[0]
    running.http_address = f"{bound[0]}:{bound[1]}"
    return runner


@contextlib.asynccontextmanager
async def serve(
    config: ServiceConfig, *, runner: WorkerRunner | None = None, pusher: Pusher | None = None
) -> AsyncIterator[RunningServer]:
    """Run the daemon for the duration of the ``async with`` block."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    probe = config.state_dir / ".write-probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"state directory {config.state_dir} is not writable: {exc.strerror}") from None
    lock = lock_state_dir(config.state_dir)  # before JobRegistry clears the jobs directory
    log.info("configuration", **redacted(config))
    try:
        async with _serving(config, runner=runner, pusher=pusher) as running:
            yield running
    finally:
        os.close(lock)


@contextlib.asynccontextmanager
async def _serving(
    config: ServiceConfig, *, runner: WorkerRunner | None, pusher: Pusher | None
) -> AsyncIterator[RunningServer]:
    metrics = Metrics()
    jobs = JobRegistry(config, metrics, runner=runner, pusher=pusher)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_ExporterServicer_to_server(ExporterServicer(jobs), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    addresses, sockets = _bind(server, config)
    running = RunningServer(config, jobs, metrics, server, health, addresses)
    http: web.AppRunner | None = None
    await jobs.runner.start()
    await server.start()
    try:
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.http:
            http = await _start_http(running, config.http)
        log.info("serving", addresses=addresses, http=running.http_address or None)
        async with asyncio.TaskGroup() as tg:
            janitor = tg.create_task(jobs.janitor())
            try:
                yield running
            finally:
                await running.shutdown()
                janitor.cancel()
    finally:
        if running.serving:
            await server.stop(0)
        if http is not None:
            await http.cleanup()
        await jobs.runner.close()
        jobs.close()
        for path in sockets:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def run_until_signalled(config: ServiceConfig) -> int:
    """The ``serve`` command: serve until SIGTERM/SIGINT, then drain."""
    configure_logging(config.log_level, config.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serve(config) as running:
            await stop.wait()
            await running.shutdown()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
