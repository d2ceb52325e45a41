"""Real-registry fixtures: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

Load with ``pytest_plugins = ["tests.registry_fixtures"]`` in a root-level conftest (or
import the fixtures). Each registry flavour is started once per session on a free port with
filesystem storage in a temporary directory, and killed at the end:

* ``registry``        — anonymous, plain HTTP;
* ``registry_basic``  — htpasswd basic auth (bcrypt hash made with the ``bcrypt`` package);
* ``registry_token``  — bearer-token auth; the token server is a small in-test aiohttp app
  issuing RS256 JWTs whose certificate is the registry's ``rootcertbundle``;
* ``registry_tls``    — HTTPS with a certificate from a CA made in the test (``.ca_file``);
* ``fault_proxy``     — an aiohttp proxy in front of ``registry`` that injects 5xx, 429 with
  Retry-After, dropped connections in the middle of upload bodies, and silence; it counts
  the blob upload bytes that pass through it. It is never the registry under test.

Tests use a fresh repository name per test (``repo_name``). Everything is skipped locally
when ``docker-registry`` is missing and fails in CI (``require``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import importlib.util
import itertools
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from nydus_exporter.oci.reference import Reference, parse_reference
from tests.conftest import require
from tests.helpers.waiting import wait_until

T = TypeVar("T")

REGISTRY_BINARY = "docker-registry"
TOKEN_SERVICE = "test-registry"
TOKEN_ISSUER = "test-token-issuer"
_START_TIMEOUT = 20.0
_START_ATTEMPTS = 5


# --- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class LoopThread:
    """An asyncio loop in a daemon thread, for in-test servers shared across tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _start_app(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host_port = runner.addresses[0]
    return runner, int(host_port[1])


# --- certificates and JWTs (cryptography) -----------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    ca_file: Path  # CA certificate (PEM): what clients trust
    cert_file: Path  # server certificate for 127.0.0.1 / localhost, signed by the CA
    key_file: Path


def make_tls_ca(directory: Path) -> TestCA:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nydus-exporter test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TestCA(ca_file, cert_file, key_file)


class JwtSigner:
    """RS256 signer with a self-signed certificate (the registry's ``rootcertbundle``).

    Tokens carry the certificate in the ``x5c`` header; distribution 2.8 verifies the chain
    against the root bundle and the claims ``iss``, ``aud``, ``exp``, ``nbf`` (token spec
    ``docs/spec/auth/jwt.md``: ``iss sub aud exp nbf iat jti access``).
    """

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_file = directory / "token-signer.pem"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


# --- the token server -------------------------------------------------------------------------


@dataclass
class TokenServer:
    """Issues registry tokens: GET with Basic auth (or anonymous) and OAuth2 POST forms.

    Authenticated users get every action they ask for; anonymous users get nothing.
    ``requests`` records ``(method, grant, scopes)`` of every token request.
    """

    signer: JwtSigner
    username: str
    password: str
    identity_token: str
    expires_in: int = 300
    requests: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    url: str = ""

    def _grant(self, scopes: list[str], authenticated: bool) -> list[dict[str, Any]]:
        if not authenticated:
            return []
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        return access

    def _token(self, subject: str, access: list[dict[str, Any]]) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return {"token": self.signer.sign(claims), "expires_in": self.expires_in}

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            form = await request.post()
            grant = str(form.get("grant_type", ""))
            scopes = str(form.get("scope", "")).split()
            self.requests.append(("POST", grant, tuple(scopes)))
            if grant == "refresh_token" and form.get("refresh_token") == self.identity_token:
                body = self._token(self.username, self._grant(scopes, True))
                return web.json_response({"access_token": body["token"], "expires_in": self.expires_in})
            if grant == "password" and (form.get("username"), form.get("password")) == (
                self.username,
                self.password,
            ):
                body = self._token(self.username, self._grant(scopes, True))
                return web.json_response({"access_token": body["token"], "expires_in": self.expires_in})
            return web.json_response({"error": "invalid_grant"}, status=401)
        scopes = request.query.getall("scope", [])
        self.requests.append(
            ("GET", "basic" if "Authorization" in request.headers else "anonymous", tuple(scopes))
        )
        header = request.headers.get("Authorization", "")
        if header:
            expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if header != expected:
                return web.json_response({"details": "bad credentials"}, status=401)
            return web.json_response(self._token(self.username, self._grant(scopes, True)))
        return web.json_response(self._token("", self._grant(scopes, False)))


# --- the registry process ---------------------------------------------------------------------


@dataclass
class RegistryServer:
    """A running ``docker-registry``. ``host`` is ``127.0.0.1:PORT``."""

    host: str
    url: str
    root: Path  # filesystem storage root
    process: subprocess.Popen[bytes]
    log_file: Path
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def ref(self, repository: str, tag: str | None = None) -> Reference:
        return parse_reference(f"{self.host}/{repository}" + (f":{tag}" if tag else ""))

    def stored_blob(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a committed blob (an independent check)."""
        hex_ = digest.partition(":")[2]
        return self.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_registry(
    directory: Path,
    *,
    auth: dict[str, Any] | None = None,
    tls: TestCA | None = None,
    extra_env: dict[str, str] | None = None,
) -> RegistryServer:
    require(
        shutil.which(REGISTRY_BINARY) is not None, "docker-registry is not installed (Debian docker-registry)"
    )
    directory.mkdir(parents=True, exist_ok=True)
    # The free port is found before the registry binds it: another process (a parallel test
    # worker) may take it in between. The registry then exits at once; try another port.
    for _ in range(_START_ATTEMPTS - 1):
        try:
            return _start_registry_once(directory, auth=auth, tls=tls, extra_env=extra_env)
        except _PortTaken:
            continue
    return _start_registry_once(directory, auth=auth, tls=tls, extra_env=extra_env)


class _PortTaken(RuntimeError):
    pass


def _start_registry_once(
    directory: Path,
    *,
    auth: dict[str, Any] | None,
    tls: TestCA | None,
    extra_env: dict[str, str] | None,
) -> RegistryServer:
    root = directory / "storage"
    port = free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex}
    if tls is not None:
        http["tls"] = {"certificate": str(tls.cert_file), "key": str(tls.key_file)}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth:
        config["auth"] = auth
    config_file = directory / "config.yml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log_file = directory / "registry.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", **(extra_env or {})},
        )
    scheme = "https" if tls else "http"
    server = RegistryServer(
        host=f"127.0.0.1:{port}",
        url=f"{scheme}://127.0.0.1:{port}",
        root=root,
        process=process,
        log_file=log_file,
        ca_file=tls.ca_file if tls else None,
    )
    context = ssl.create_default_context(cafile=str(tls.ca_file)) if tls else None

    def answers() -> bool:
        if process.poll() is not None:
            output = log_file.read_text(errors="replace")
            if "address already in use" in output:
                raise _PortTaken(f"port {port} was taken before docker-registry bound it")
            raise RuntimeError(f"docker-registry exited: {output[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=2, context=context):
                return True
        except urllib.error.HTTPError:
            return True  # 401: up, wants auth
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(answers, _START_TIMEOUT, what=f"docker-registry answers on {server.url}")
    except BaseException:
        server.stop()
        raise
    return server


# --- the fault-injecting proxy ----------------------------------------------------------------

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "host",
        "content-length",
    }
)
_UPLOAD_PATH = re.compile(r"^/v2/.+/blobs/uploads/")


class FaultProxy:
    """HTTP proxy to a registry with scripted faults. Configure, then point the client at ``host``.

    Faults apply to requests whose method is in ``methods`` (default: all) and are consumed in
    order: ``fail(n, status)`` answers the next n with ``status``; ``throttle(n, retry_after)``
    answers 429 with ``Retry-After``; ``drop_body_after(k, nth=1, forward=...)`` cuts the
    client connection after k body bytes of the nth PATCH/PUT upload request from now. With
    ``forward=False`` the registry never sees that request (a front-end that buffers request
    bodies, as nginx does by default); with ``forward=True`` it gets the first k bytes and then
    a reset. ``hang = True`` never answers. ``redirect_blobs = True`` answers blob GETs with a
    307 to a "storage back-end" on another origin (``localhost:<port>``, with a ``sig`` query
    secret) that records the headers it got in ``storage_headers`` and serves the blob;
    ``storage_fail`` makes it answer that many requests with 403.
    ``upload_bytes`` counts blob upload body bytes that reached the registry;
    ``log`` lists ``(method, path, status)``.
    """

    def __init__(self, loop_thread: LoopThread, upstream: RegistryServer) -> None:
        self._loop_thread = loop_thread
        self.upstream = upstream
        self.host = ""
        self.upload_bytes = 0
        self.log: list[tuple[str, str, int]] = []
        self.hang = False
        self.redirect_blobs = False
        self.storage_headers: list[dict[str, str]] = []
        self.storage_fail = 0
        self.storage_secret = "sig-" + uuid.uuid4().hex
        self._storage_runner: web.AppRunner | None = None
        self._storage_port = 0
        self._last_authorization: str | None = None
        self._faults: list[tuple[int, dict[str, str], frozenset[str] | None]] = []
        self._drop: tuple[int, int, bool] | None = None  # (bytes, countdown, forward)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._hung: set[asyncio.Future[None]] = set()

    def fail(self, n: int, status: int = 500, *, methods: tuple[str, ...] | None = None) -> None:
        body_methods = frozenset(methods) if methods else None
        self._faults.extend([(status, {}, body_methods)] * n)

    def throttle(self, n: int, retry_after: str, *, methods: tuple[str, ...] | None = None) -> None:
        body_methods = frozenset(methods) if methods else None
        self._faults.extend([(429, {"Retry-After": retry_after}, body_methods)] * n)

    def drop_body_after(self, nbytes: int, nth: int = 1, *, forward: bool = False) -> None:
        self._drop = (nbytes, nth, forward)

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner, port = await _start_app(app)
        self.host = f"127.0.0.1:{port}"
        storage = web.Application()
        storage.router.add_get("/storage/{digest}", self._storage)
        self._storage_runner, self._storage_port = await _start_app(storage)

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        self.storage_headers.append(dict(request.headers))
        if self.storage_fail > 0:
            self.storage_fail -= 1
            return web.Response(status=403, text="<Error>signature expired</Error>")
        assert self._session is not None
        upstream_headers = {k: v for k, v in request.headers.items() if k.lower() == "range"}
        if self._last_authorization:
            upstream_headers["Authorization"] = self._last_authorization  # the back-end's own trust
        repo = request.query["repo"]
        url = f"{self.upstream.url}/v2/{repo}/blobs/{request.match_info['digest']}"
        async with self._session.get(url, headers=upstream_headers) as upstream:
            body = await upstream.read()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-range",)}
            return web.Response(status=upstream.status, body=body, headers=headers)

    async def _stop(self) -> None:
        for future in self._hung:
            future.cancel()
        for runner in (self._runner, self._storage_runner):
            if runner is not None:
                await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start(self) -> FaultProxy:
        self._loop_thread.run(self._start())
        return self

    def stop(self) -> None:
        self._loop_thread.run(self._stop())

    def ref(self, repository: str, tag: str | None = None) -> Reference:
        return parse_reference(f"{self.host}/{repository}" + (f":{tag}" if tag else ""))

    async def _forward_truncated(self, request: web.Request, headers: dict[str, str], nbytes: int) -> None:
        """Send the upstream ``request`` with only its first ``nbytes`` body bytes, then end the
        stream. The bytes always arrive before the end of the stream (no reset can discard
        them), and the registry is done with the request, having kept what it got, once it
        closes its side: waiting for that is waiting for the condition, not for a guessed time."""
        upstream = urllib.parse.urlsplit(self.upstream.url)
        assert upstream.scheme == "http" and upstream.hostname, "truncated bodies are sent over plain HTTP"
        assert "Content-Length" in headers, "a truncated body needs a declared length"
        reader, writer = await asyncio.open_connection(upstream.hostname, upstream.port)
        try:
            head = [f"{request.method} {request.path_qs} HTTP/1.1"]
            head += [f"{key}: {value}" for key, value in headers.items()] + ["Connection: close", "", ""]
            writer.write("\r\n".join(head).encode("latin-1"))
            sent = 0
            while sent < nbytes:
                chunk = await request.content.read(min(64 << 10, nbytes - sent))
                if not chunk:
                    break
                writer.write(chunk)
                sent += len(chunk)
            self.upload_bytes += sent
            await writer.drain()
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 30)  # until the registry closes the connection
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.hang:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._hung.add(future)
            await future  # until the proxy stops
        for index, (status, headers, methods) in enumerate(self._faults):
            if methods is None or request.method in methods:
                del self._faults[index]
                await request.read()
                self.log.append((request.method, request.path, status))
                code = (
                    "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE" if status >= 500 else "UNSUPPORTED"
                )
                body = json.dumps({"errors": [{"code": code, "message": "injected fault"}]})
                return web.Response(
                    status=status, headers=headers, text=body, content_type="application/json"
                )
        if request.headers.get("Authorization"):
            self._last_authorization = request.headers["Authorization"]
        blob = re.match(r"^/v2/(.+)/blobs/(sha256:[a-f0-9]{64})$", request.path)
        if self.redirect_blobs and blob and request.method == "GET":
            # The upstream must agree the caller may read it before we redirect.
            location = (
                f"http://localhost:{self._storage_port}/storage/{blob.group(2)}"
                f"?repo={blob.group(1)}&sig={self.storage_secret}"
            )
            self.log.append((request.method, request.path, 307))
            return web.Response(status=307, headers={"Location": location})
        is_upload_body = request.method in ("PATCH", "PUT") and bool(_UPLOAD_PATH.match(request.path))
        drop_at: int | None = None
        if is_upload_body and self._drop is not None and request.can_read_body:
            nbytes, countdown, forward = self._drop
            if countdown > 1:
                self._drop = (nbytes, countdown - 1, forward)
            elif not forward:
                self._drop = None
                read = 0
                while read < nbytes:
                    chunk = await request.content.read(min(64 << 10, nbytes - read))
                    if not chunk:
                        break
                    read += len(chunk)
                self.log.append((request.method, request.path, -1))
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError
            else:
                drop_at, self._drop = nbytes, None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = self.host  # the registry builds Location URLs from it
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        if drop_at is not None:
            # Send the first bytes, then cut both connections (the registry sees a truncated
            # body, the client a reset), like a network failure in the middle of a chunk.
            await self._forward_truncated(request, headers, drop_at)
            self.log.append((request.method, request.path, -1))
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError

        async def forward_body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(64 << 10):
                if is_upload_body:
                    self.upload_bytes += len(chunk)
                yield chunk

        assert self._session is not None
        upstream_url = f"{self.upstream.url}{request.path_qs}"
        data = forward_body() if request.can_read_body else None
        async with self._session.request(
            request.method, upstream_url, headers=headers, data=data, allow_redirects=False
        ) as upstream:
            self.log.append((request.method, request.path, upstream.status))
            answer = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP or key.lower() == "content-length":
                    answer.headers.add(key, value)
            await answer.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 << 10):
                await answer.write(chunk)
            await answer.write_eof()
            return answer


# --- fixtures ---------------------------------------------------------------------------------


def _require_module(name: str, reason: str) -> None:
    require(importlib.util.find_spec(name) is not None, reason)


@pytest.fixture(scope="session")
def server_loop() -> Iterator[LoopThread]:
    """One loop thread for the in-test servers (token server, proxies)."""
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _require_module("bcrypt", "bcrypt (test extra) makes the htpasswd hash")
    import bcrypt

    directory = tmp_path_factory.mktemp("registry-basic")
    username, password = "tester", "s3cret-Basic-pw"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a")).decode()
    htpasswd = directory / "htpasswd"
    htpasswd.write_text(f"{username}:{hashed}\n")
    server = start_registry(directory, auth={"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}})
    server.username, server.password = username, password
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_token(
    tmp_path_factory: pytest.TempPathFactory, server_loop: LoopThread
) -> Iterator[RegistryServer]:
    _require_module("cryptography", "cryptography (test extra) signs the registry tokens")
    directory = tmp_path_factory.mktemp("registry-token")
    token_server = TokenServer(
        JwtSigner(directory),
        username="robot",
        password="t0ken-Pass-word",
        identity_token="refresh-" + uuid.uuid4().hex,
    )
    app = web.Application()
    app.router.add_route("*", "/token", token_server.handle)
    runner, port = server_loop.run(_start_app(app))
    token_server.url = f"http://127.0.0.1:{port}/token"
    try:
        server = start_registry(
            directory,
            auth={
                "token": {
                    "realm": token_server.url,
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": str(token_server.signer.cert_file),
                }
            },
        )
    except BaseException:
        server_loop.run(runner.cleanup())
        raise
    server.username, server.password = token_server.username, token_server.password
    server.token_server = token_server
    yield server
    server.stop()
    server_loop.run(runner.cleanup())


@pytest.fixture(scope="session")
def registry_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _require_module("cryptography", "cryptography (test extra) makes the test CA")
    directory = tmp_path_factory.mktemp("registry-tls")
    server = start_registry(directory, tls=make_tls_ca(directory / "pki"))
    yield server
    server.stop()


@pytest.fixture
def fault_proxy(registry: RegistryServer, server_loop: LoopThread) -> Iterator[FaultProxy]:
    proxy = FaultProxy(server_loop, registry).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def make_fault_proxy(server_loop: LoopThread) -> Iterator[Callable[[RegistryServer], FaultProxy]]:
    """``make_fault_proxy(upstream)``: a :class:`FaultProxy` in front of any registry fixture."""
    proxies: list[FaultProxy] = []

    def make(upstream: RegistryServer) -> FaultProxy:
        proxies.append(FaultProxy(server_loop, upstream).start())
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.stop()


_REPO_COUNTER = itertools.count()


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test (distribution path grammar)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60] or "test"
    return f"t/{stem}-{next(_REPO_COUNTER)}"


def run_async(coro: Callable[[], Awaitable[T]]) -> T:  # pragma: no cover - convenience for sync tests
    async def main() -> T:
        return await coro()

    return asyncio.run(main())


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
