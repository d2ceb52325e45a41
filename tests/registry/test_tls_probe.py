"""The HTTPS attempt before plain HTTP (insecure and loopback hosts) gives up promptly on a
port that accepts a TLS hello and never answers it (issue 13), then the export goes over
plain HTTP. No timing is asserted: the front counts the TLS hellos it swallowed, and the
registry timeout is set far beyond the test's time limit, so only the probe's own short
handshake timeout lets the export finish."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from tests.helpers import tarbuild as tb
from tests.registry.util import skopeo_inspect_raw
from tests.registry_fixtures import LoopThread, RegistryServer

_TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello


class SilentTlsFront:
    """A TCP port in front of a plain-HTTP registry: connections that start with a TLS hello
    are accepted and never answered (until the client gives up); the others are forwarded."""

    def __init__(self, loop_thread: LoopThread, upstream: RegistryServer) -> None:
        self._loop_thread = loop_thread
        self._upstream_port = int(upstream.host.rpartition(":")[2])
        self.tls_hellos = 0
        self.plain_connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = ""

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.host = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [writer]
        try:
            first = await reader.read(1)
            if first and first[0] == _TLS_HANDSHAKE:
                self.tls_hellos += 1
                while await reader.read(64 << 10):  # never answer; wait for the client to hang up
                    pass
                return
            self.plain_connections += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
            writers.append(up_writer)
            up_writer.write(first)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            for each in writers:
                each.close()
                with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                    await each.wait_closed()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    def __enter__(self) -> SilentTlsFront:
        self._loop_thread.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop_thread.run(self._stop())


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(64 << 10):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write_eof()


@pytest.fixture
def silent_tls_front(registry: RegistryServer, server_loop: LoopThread) -> Iterator[SilentTlsFront]:
    with SilentTlsFront(server_loop, registry) as front:
        yield front


@pytest.mark.parametrize("insecure", [False, True], ids=["loopback", "insecure"])
def test_export_falls_back_to_plain_http_after_one_short_tls_probe(
    silent_tls_front: SilentTlsFront, registry: RegistryServer, repo_name: str, tmp_path: Path, insecure: bool
) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tb.tar_of(tb.dir("etc"), tb.file("etc/motd", b"hello\n")))
    name = f"{silent_tls_front.host}/{repo_name}:v1"
    parsed = parse_output(
        {
            "name": name,
            "registry.insecure": "true" if insecure else "false",
            "registry.timeout": "1h",  # beyond the test's time limit: only the probe's timeout helps
            "registry.tls-probe-timeout": "500ms",
        }
    )
    assert parsed.warnings == ()
    meta = export(f"tar:{layer}", parsed.options, workdir=tmp_path).metadata()
    assert silent_tls_front.tls_hellos == 1  # one probe for the host, then plain HTTP throughout
    assert silent_tls_front.plain_connections >= 1
    pushed = json.loads(skopeo_inspect_raw(f"{registry.host}/{repo_name}:v1"))  # the registry itself
    assert pushed["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    assert meta["image.name"] == name
