"""The daemon as a server: unix socket and TCP+TLS (mutual), health, reflection, metrics."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nydus_exporter.api import SERVICE_NAME
from nydus_exporter.client.exporter import ClientTLS, ExporterClient, RemoteExportError, open_channel
from nydus_exporter.service.errors import StateDirLockedError
from nydus_exporter.service.server import RunningServer, serve
from tests.service.conftest import config_for


async def test_unix_socket_is_group_only_and_health_is_serving(daemon: RunningServer) -> None:
    address = daemon.addresses[0]
    assert address.startswith("unix://")
    mode = (await asyncio.to_thread(Path(address.removeprefix("unix://")).stat)).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_exporter_and_describes_it(daemon: RunningServer) -> None:
    async with grpc.aio.insecure_channel(daemon.addresses[0]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
        ]
        replies = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert any(b"nydus/exporter/v1/exporter.proto" in f for f in files)


async def test_get_info_reports_limits(client: ExporterClient, daemon: RunningServer) -> None:
    info = await client.get_info()
    assert info.api_version == "nydus.exporter.v1"
    assert "zstd" in info.compressors and list(info.fs_versions) == ["6"]
    assert {"finalize", "layer.dedupe", "layer.by-reference"} <= set(info.capabilities)
    assert info.max_chunk_bytes == 1 << 20
    assert info.limits.max_concurrent_exports == 2
    config = daemon.config
    assert info.limits.max_metadata_bytes_per_job == config.max_metadata_bytes_per_job
    assert info.limits.max_attrs_bytes_per_instance == config.max_attrs_bytes_per_instance
    assert info.limits.header_timeout_seconds == int(config.header_timeout) > 0
    assert info.limits.max_streams_per_peer == config.max_streams_per_peer > 0
    assert info.limits.sparse_limit_bytes == config.sparse_limit > 0


async def test_metrics_and_healthz_endpoint(daemon: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{daemon.http_address}/healthz") as resp:
            assert resp.status == 200 and await resp.text() == "ok\n"
        async with session.get(f"http://{daemon.http_address}/metrics") as resp:
            text = await resp.text()
    for name in (
        "nydus_exporter_exports_in_flight",
        "nydus_exporter_bytes_in_total",
        "nydus_exporter_layer_cache_hits_total",
        "nydus_exporter_export_duration_seconds_bucket",
    ):
        assert name in text, name


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pki(root: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    out: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca=True)
    pem = serialization.Encoding.PEM
    out["ca"] = root / "ca.pem"
    out["ca"].write_bytes(ca.public_bytes(pem))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, key, (ca.subject, ca_key), san=who == "server")
        out[f"{who}_cert"] = root / f"{who}.pem"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(pem))
        out[f"{who}_key"] = root / f"{who}.key"
        out[f"{who}_key"].write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return out


async def test_tcp_with_mutual_tls(short_tmp: Path) -> None:
    pki = _write_pki(short_tmp)
    config = config_for(
        short_tmp,
        listen=("tcp://127.0.0.1:0",),
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
    )
    async with serve(config) as running:
        address = running.addresses[0]
        assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")
        channel = open_channel(address, tls=ClientTLS(pki["ca"], pki["client_cert"], pki["client_key"]))
        async with channel:
            info = await ExporterClient(channel).get_info()
            assert info.api_version == "nydus.exporter.v1"
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Without a client certificate the handshake fails; without TLS too.
        for tls in (ClientTLS(pki["ca"]), None):
            channel = open_channel(address, tls=tls)
            async with channel:
                with pytest.raises(RemoteExportError) as info_err:
                    await ExporterClient(channel).get_info()
                assert info_err.value.code == grpc.StatusCode.UNAVAILABLE


async def test_a_second_daemon_on_the_same_state_dir_is_refused(
    daemon: RunningServer, client: ExporterClient, short_tmp: Path
) -> None:
    """It would otherwise delete the first daemon's running jobs at start."""
    state = daemon.config.state_dir
    (state / "jobs" / "a-running-job").mkdir()
    with pytest.raises(StateDirLockedError) as info:
        async with serve(config_for(short_tmp, listen=(f"unix://{short_tmp / 'second.sock'}",))):
            pass
    assert str(state) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    assert (state / "jobs" / "a-running-job").is_dir()
    (state / "jobs" / "a-running-job").rmdir()
    # The CLI: exit status 1, one line naming the directory and the holder.
    done = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "nydus-exporter"), "serve", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"nydus-exporter: error: state directory {state} is in use by another daemon (pid {os.getpid()})"
    ]
    assert (await client.resolve({"push": "false", "oci-layout": str(short_tmp / "out")})).instance_id


def test_a_metrics_port_clash_is_one_line_and_console_logs_are_plain_off_a_tty(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "nydus-exporter"),
                "serve",
                "--state-dir",
                str(short_tmp / "state"),
                "--http",
                address,
                "--log-format",
                "console",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"nydus-exporter: error: cannot listen on {address} (metrics endpoint): ")
    assert not any("Traceback" in line for line in lines)
    assert "configuration" in done.stderr  # the console log line, written to a pipe ...
    assert "\x1b[" not in done.stderr  # ... without colour codes
    assert not (short_tmp / "state" / "exporter.sock").exists()
