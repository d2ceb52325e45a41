"""Malformed streams, cancellation mid-layer, disconnects, out-of-band Cancel, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.api import exporter_pb2_grpc as pb_grpc
from nydus_exporter.client.exporter import ExporterClient, RemoteExportError, open_channel
from nydus_exporter.pipeline.sources import open_source
from nydus_exporter.service.server import RunningServer
from tests.e2e.test_export import layer_meta_only, layer_top
from tests.helpers import tarbuild as tb
from tests.helpers.waiting import wait_until_async
from tests.service import streams as s

LAYER = layer_top()  # small layers: these tests are about the protocol
TOP = layer_meta_only()


async def _instance(client: ExporterClient, out: Path) -> str:
    return (await client.resolve({"push": "false", "oci-layout": str(out)})).instance_id


async def _export_ok(client: ExporterClient, image: Path, out: Path, workdir: Path) -> None:
    """A following export on the same daemon succeeds (a small single-layer one)."""
    resolved = await client.resolve({"push": "false", "oci-layout": str(out)})
    layer = workdir / "ok.tar"
    layer.write_bytes(TOP)
    with open_source(f"tar:{layer}", workdir=workdir) as src:
        outcome = await client.export(src, resolved.instance_id)
    assert outcome.result.response["containerimage.digest"].startswith("sha256:")


def _no_job_files(daemon: RunningServer) -> bool:
    return not any((daemon.config.state_dir / "jobs").iterdir())


def _spooling(state_dir: Path) -> bool:
    return any((state_dir / "jobs").rglob("*.layer"))


def _conversion_workers() -> list[int]:
    """The conversion worker processes this test process started (its in-process daemon's)."""
    found = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", "nydus_exporter.service.worker"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(pid) for pid in found.stdout.split()]


# Each case: the messages after a valid header (instance filled in), the status code and a
# part of the message that names the problem.
BAD_STREAMS: list[tuple[str, Callable[[str], list[pb.ExportRequest]], str]] = [
    (
        "no header first",
        lambda i: [s.begin("p", LAYER)],
        "the first message is platform_begin, expected header",
    ),
    ("second header", lambda i: [s.header(i), s.header(i)], "a second header"),
    ("unknown platform", lambda i: [s.header(i), s.begin("q", LAYER)], "unknown platform id 'q'"),
    (
        "indices out of order",
        lambda i: [
            s.header(i),
            pb.ExportRequest(
                platform_begin=pb.PlatformBegin(
                    platform_id="p", layers=[pb.LayerInfo(index=1, blob_digest=s.sha(LAYER))]
                )
            ),
        ],
        "has index 1",
    ),
    (
        "malformed digest",
        lambda i: [s.header(i), s.begin("p", LAYER, digests=["md5:abc"])],
        "malformed blob_digest",
    ),
    ("data before begin", lambda i: [s.header(i), s.data("p", 0, 0, LAYER[:10])], "was not asked for"),
    (
        "chunk over the limit",
        lambda i: [s.header(i), s.begin("p", LAYER), s.data("p", 0, 0, bytes((1 << 20) + 1))],
        "over the 1048576-byte limit",
    ),
    (
        "wrong offset",
        lambda i: [s.header(i), s.begin("p", LAYER), s.data("p", 0, 5, LAYER[:10])],
        "offset 5, expected 0",
    ),
    (
        "digest mismatch",
        lambda i: [
            s.header(i),
            s.begin("p", LAYER, digests=[s.sha(TOP)]),
            s.data("p", 0, 0, LAYER),
            s.end("p", 0, s.sha(TOP)),
        ],
        "does not match the bytes received",
    ),
    (
        "more than announced",
        lambda i: [s.header(i), s.begin("p", TOP), s.data("p", 0, 0, TOP + b"x")],
        "more bytes than the announced size",
    ),
    (
        "end without data",
        lambda i: [s.header(i), s.begin("p", LAYER), s.platform_end("p")],
        "wanted layers [0] were not sent",
    ),
    ("commit before end", lambda i: [s.header(i), s.begin("p", LAYER), s.commit()], "'p' was not ended"),
    (
        "auth reply nobody asked",
        lambda i: [s.header(i), pb.ExportRequest(auth_reply=pb.AuthReply(request_id="x"))],
        "auth_reply for unknown request_id 'x'",
    ),
    ("empty message", lambda i: [s.header(i), pb.ExportRequest()], "no message set"),
    ("stream ends early", lambda i: [s.header(i), s.begin("p", LAYER)], "the stream ended before commit"),
    (
        "config nested 200 000 deep",
        lambda i: [
            s.header(i, metadata={"containerimage.config": b"[" * 200_000 + b"]" * 200_000}),
            s.begin("p", TOP),
            s.data("p", 0, 0, TOP),
            s.end("p", 0, s.sha(TOP)),
            s.platform_end("p"),
            s.commit(),
        ],
        "nests deeper than 64 levels",
    ),
    (
        "1 MB platform id",
        lambda i: [s.header(i), s.begin("q" * 1_000_000, LAYER)],
        "unknown platform id 'qqqq",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [(b[1], b[2]) for b in BAD_STREAMS], ids=[b[0] for b in BAD_STREAMS]
)
async def test_malformed_stream_is_invalid_argument_and_the_daemon_goes_on(
    client: ExporterClient,
    daemon: RunningServer,
    image: Path,
    short_tmp: Path,
    build: Callable[[str], list[pb.ExportRequest]],
    message: str,
) -> None:
    instance = await _instance(client, short_tmp / "bad")
    call = client.stub.Export()
    for request in build(instance):
        await call.write(request)
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert message in (info.value.details() or "")
    await wait_until_async(lambda: _no_job_files(daemon), what="the job files are removed")
    assert not (short_tmp / "bad").exists()
    await _export_ok(client, image, short_tmp / "good", short_tmp)


async def test_unknown_instance_is_not_found(client: ExporterClient) -> None:
    call = client.stub.Export()
    await call.write(s.header("no-such-instance"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown instance 'no-such-instance'" in (info.value.details() or "")


async def test_cancel_mid_layer_leaves_no_files_and_no_tag(
    client: ExporterClient, daemon: RunningServer, image: Path, short_tmp: Path
) -> None:
    out = short_tmp / "out"
    instance = (
        await client.resolve({"push": "false", "oci-layout": str(out), "name": "x.io/a:1"})
    ).instance_id
    call = client.stub.Export()
    await call.write(s.header(instance))
    await s.read_until(call, "accepted")
    await call.write(s.begin("p", LAYER))
    await s.read_until(call, "layer_wants")
    await call.write(s.data("p", 0, 0, LAYER[: len(LAYER) // 2]))
    await wait_until_async(lambda: _spooling(daemon.config.state_dir), what="the daemon spools the layer")
    call.cancel()
    await wait_until_async(lambda: _no_job_files(daemon), what="the job directory is removed")
    assert not out.exists()
    job = next(iter(daemon.jobs.jobs.values()))
    assert job.state.value == "cancelled", repr(job.error)
    await _export_ok(client, image, short_tmp / "good", short_tmp)


async def test_client_disconnect_mid_stream(
    daemon: RunningServer, client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    instance = await _instance(client, short_tmp / "out")
    channel = open_channel(daemon.addresses[0])
    call = pb_grpc.ExporterStub(channel).Export()
    await call.write(s.header(instance))
    await call.write(s.begin("p", LAYER))
    await s.read_until(call, "layer_wants")
    await call.write(s.data("p", 0, 0, LAYER[:4096]))
    await wait_until_async(lambda: _spooling(daemon.config.state_dir), what="the daemon spools the layer")
    await channel.close(grace=None)  # the connection goes away without a word
    await wait_until_async(lambda: _no_job_files(daemon), what="the job directory is removed")
    # The stream's handler ends a moment after the job's cleanup (it also stops the job's
    # worker, which packed the layer while it was received).
    await wait_until_async(lambda: daemon.metrics.in_flight._value.get() == 0, what="no export in flight")
    await _export_ok(client, image, short_tmp / "good", short_tmp)


async def test_cancel_rpc_kills_a_running_conversion(
    client: ExporterClient, daemon: RunningServer, short_tmp: Path
) -> None:
    big = short_tmp / "big.tar"
    # Incompressible data takes the converter a while: long enough to cancel it mid-way.
    import tarfile

    with tarfile.open(big, "w") as tar:
        payload = short_tmp / "payload"
        payload.write_bytes(os.urandom(48 << 20))
        tar.add(payload, arcname="payload")
    payload.unlink()
    resolved = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})

    async def export() -> None:
        with open_source(f"tar:{big}", workdir=short_tmp) as src:
            await client.export(src, resolved.instance_id)

    task = asyncio.create_task(export())
    try:
        # A worker is converting (the layer packs while it is received, or after), and the client
        # has sent the whole layer: the Cancel stops a conversion, not an upload (that case is
        # test_cancel_rpc_while_the_client_is_still_sending_reports_cancelled).
        await wait_until_async(lambda: daemon.jobs.runner.job_pids, 30, what="a conversion worker runs")
        size = big.stat().st_size
        await wait_until_async(
            lambda: any(
                p.stat().st_size >= size for p in (daemon.config.state_dir / "jobs").rglob("*.layer")
            ),
            60,
            what="the daemon has received the whole layer",
        )
        assert await client.cancel(instance_id=resolved.instance_id) == 1
        with pytest.raises(RemoteExportError) as info:
            await task
    finally:
        task.cancel()
    assert info.value.code == grpc.StatusCode.CANCELLED
    await wait_until_async(lambda: _no_job_files(daemon), what="the job directory is removed")
    await daemon.jobs.runner.settled()
    # Only the idle warm workers are left: the job's worker is gone.
    assert set(_conversion_workers()) <= set(daemon.jobs.runner.spare_pids)
    assert not (short_tmp / "out").exists()


async def test_cancel_rpc_while_the_client_is_still_sending_reports_cancelled(
    daemon: RunningServer, client: ExporterClient, image: Path, short_tmp: Path
) -> None:
    """A Cancel that lands while the client is still writing layer data ends the client's export
    with CANCELLED (the daemon's status), not with the broken write gRPC reports underneath."""
    big = short_tmp / "big.tar"
    _incompressible_tar(big, 64 << 20)
    channel = open_channel(daemon.addresses[0])
    # Small messages keep the client writing for a while after the daemon starts spooling.
    sender = ExporterClient(channel, chunk_size=16 << 10)
    resolved = await sender.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})

    async def export() -> None:
        with open_source(f"tar:{big}", workdir=short_tmp) as src:
            await sender.export(src, resolved.instance_id)

    task = asyncio.create_task(export())
    try:
        await wait_until_async(
            lambda: any(p.stat().st_size > 0 for p in (daemon.config.state_dir / "jobs").rglob("*.layer")),
            60,
            what="the daemon spools the layer",
        )
        assert not task.done()
        assert await client.cancel(instance_id=resolved.instance_id) == 1
        with pytest.raises(RemoteExportError) as info:
            await task
    finally:
        task.cancel()
        await channel.close()
    assert info.value.code == grpc.StatusCode.CANCELLED, info.value
    await wait_until_async(lambda: _no_job_files(daemon), what="the job directory is removed")
    assert not (short_tmp / "out").exists()
    await _export_ok(client, image, short_tmp / "good", short_tmp)


def _incompressible_tar(path: Path, size: int) -> None:
    import tarfile

    payload = path.with_suffix(".payload")
    payload.write_bytes(os.urandom(size))
    with tarfile.open(path, "w") as tar:
        tar.add(payload, arcname="payload")
    payload.unlink()


async def test_a_job_runs_in_a_warm_worker_and_killing_it_fails_that_job_only(
    client: ExporterClient, daemon: RunningServer, image: Path, short_tmp: Path
) -> None:
    """Workers are started with the daemon (imports done before a job arrives); a job takes one
    and a replacement starts in the background. SIGKILL of a job's worker fails that job only."""
    runner = daemon.jobs.runner
    await runner.settled()
    warm = set(runner.spare_pids)
    assert len(warm) == daemon.config.max_concurrent_exports
    big = short_tmp / "big.tar"
    _incompressible_tar(big, 48 << 20)
    resolved = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})

    async def export() -> None:
        with open_source(f"tar:{big}", workdir=short_tmp) as src:
            await client.export(src, resolved.instance_id)

    task = asyncio.create_task(export())
    try:
        await wait_until_async(lambda: runner.job_pids, 20, what="converting")
        (pid,) = runner.job_pids
        assert pid in warm
        os.killpg(pid, signal.SIGKILL)
        with pytest.raises(RemoteExportError) as info:
            await task
    finally:
        task.cancel()
    assert info.value.code == grpc.StatusCode.INTERNAL
    await runner.settled()
    assert len(runner.spare_pids) == daemon.config.max_concurrent_exports  # replaced
    assert pid not in runner.spare_pids
    await _export_ok(client, image, short_tmp / "good", short_tmp)


def _start_daemon(root: Path, grace: float) -> tuple[subprocess.Popen[bytes], str]:
    socket = root / "d.sock"
    cmd = [
        sys.executable,
        "-m",
        "nydus_exporter.cli.daemon",
        "serve",
        "--state-dir",
        str(root / "dstate"),
        "--listen",
        f"unix://{socket}",
        "--allowed-root",
        str(root),
        "--grace-period",
        str(grace),
    ]
    with (root / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2]
        )
    return proc, f"unix://{socket}"


@pytest.mark.slow
async def test_sigterm_drains_an_export_in_flight(image: Path, short_tmp: Path) -> None:
    proc, address = _start_daemon(short_tmp, grace=20)
    try:
        await wait_until_async((short_tmp / "d.sock").exists, 30, what="the daemon listens")
        async with open_channel(address) as channel:
            client = ExporterClient(channel)
            instance = await _instance(client, short_tmp / "out")
            call = client.stub.Export()
            await call.write(s.header(instance))
            await call.write(s.begin("p", LAYER))
            await s.read_until(call, "layer_wants")
            await call.write(s.data("p", 0, 0, LAYER[:1000]))
            await wait_until_async(lambda: _spooling(short_tmp / "dstate"), what="the layer spools")
            proc.send_signal(signal.SIGTERM)
            log_file = short_tmp / "daemon.log"
            await wait_until_async(
                lambda: '"event": "draining"' in log_file.read_text(), what="the daemon drains"
            )
            assert proc.poll() is None  # draining, not gone
            # New work is refused while draining.
            with pytest.raises(RemoteExportError):
                await client.resolve({"push": "false", "oci-layout": str(short_tmp / "other")})
            await call.write(s.data("p", 0, 1000, LAYER[1000:]))
            await call.write(s.end("p", 0, s.sha(LAYER)))
            await call.write(s.platform_end("p"))
            await call.write(s.commit())
            result = await s.read_until(call, "result")
            await call.done_writing()
            assert result.result.response["containerimage.digest"].startswith("sha256:")
        assert proc.wait(30) == 0
        assert (short_tmp / "out" / "index.json").is_file()
        assert not (short_tmp / "d.sock").exists()
        log = (short_tmp / "daemon.log").read_text()
        assert '"event": "draining"' in log and '"running": 1' in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_sigterm_cancels_what_outlives_the_grace_period(short_tmp: Path) -> None:
    proc, address = _start_daemon(short_tmp, grace=0.5)
    try:
        await wait_until_async((short_tmp / "d.sock").exists, 30, what="the daemon listens")
        async with open_channel(address) as channel:
            client = ExporterClient(channel)
            instance = await _instance(client, short_tmp / "out")
            call = client.stub.Export()
            await call.write(s.header(instance))
            await call.write(s.begin("p", LAYER))
            await s.read_until(call, "layer_wants")
            await call.write(s.data("p", 0, 0, LAYER[:1000]))
            await wait_until_async(lambda: _spooling(short_tmp / "dstate"), what="the layer spools")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError):
                await s.read_until(call, "result")  # the client never finishes: cut off
        assert proc.wait(30) == 0  # the grace period is 0.5 s: it cancels, it does not wait for the client
        log = (short_tmp / "daemon.log").read_text()
        assert '"event": "draining"' in log and '"running": 1' in log  # it was in flight
        assert not list((short_tmp / "dstate" / "jobs").iterdir())
        assert not (short_tmp / "out").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_position(pid: int, path: Path) -> int | None:
    """Where process ``pid`` is reading ``path`` (its open descriptor's offset), if it has it open."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            if os.readlink(fd) == str(path):
                for line in (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().splitlines():
                    if line.startswith("pos:"):
                        return int(line.split()[1])
    except OSError:
        return None
    return None


async def test_a_layer_converts_while_it_is_received(
    client: ExporterClient, daemon: RunningServer, short_tmp: Path
) -> None:
    """Convert while receiving: the worker reads a layer's spool while the client is still
    sending it (the rest comes only after the worker has read the first half), and the image
    is the one the in-process export makes."""
    from tests.service.test_export import files_of, in_process

    layer = tb.tar_of(*(tb.file(f"f{i}", os.urandom(64 << 10)) for i in range(16)))
    half = len(layer) // 2
    instance = await _instance(client, short_tmp / "out")
    call = client.stub.Export()
    await call.write(s.header(instance))
    await call.write(s.begin("p", layer))
    await s.read_until(call, "layer_wants")
    await call.write(s.data("p", 0, 0, layer[:half]))
    spools = daemon.config.state_dir / "jobs"
    await wait_until_async(lambda: any(spools.rglob("*.layer")), 20, what="the layer is spooled")
    (spool,) = spools.rglob("*.layer")
    await wait_until_async(
        lambda: any(_read_position(pid, spool) == half for pid in daemon.jobs.runner.job_pids),
        20,
        what="the worker read the first half of the layer",
    )
    await call.write(s.data("p", 0, half, layer[half:]))
    await call.write(s.end("p", 0, s.sha(layer)))
    await call.write(s.platform_end("p"))
    await call.write(s.commit())
    await call.done_writing()
    result = await s.read_until(call, "result")
    tar = short_tmp / "layer.tar"
    tar.write_bytes(layer)
    local = in_process(f"tar:{tar}", short_tmp / "local")
    assert result.result.response["containerimage.digest"] == local["containerimage.digest"]
    assert files_of(short_tmp / "out") == files_of(short_tmp / "local")
