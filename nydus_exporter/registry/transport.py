"""HTTP for the registry client: scheme and TLS choice, auth, redirects, errors, concurrency.

One :class:`Transport` owns one ``aiohttp.ClientSession`` (one per process or daemon) and, per
registry host:

* the base URL. ``https://`` always, except for *insecure* hosts and loopback hosts, where
  we first try HTTPS and fall back to plain HTTP when the host does not speak TLS (what
  BuildKit and dockerd do for insecure registries). For insecure hosts TLS certificates are
  not verified; for loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) they still are.
  That is stricter than dockerd, which treats loopback as fully insecure: plain HTTP on
  loopback cannot be intercepted off the machine, but a registry that does speak TLS should
  present a certificate we trust (``ca_file``) unless the caller says otherwise;
* the auth state: the last challenge, the credentials found for it, cached bearer tokens
  (see :mod:`nydus_exporter.registry.auth` for the flow);
* a semaphore bounding concurrent requests (``max_concurrency``, default 4).

Redirects (blob GETs to storage back-ends) are followed here, and ``Authorization`` is only
ever sent to the registry's own origin. Every failure becomes a
:class:`~nydus_exporter.errors.RegistryError` with a redacted URL; nothing here retries
(:mod:`nydus_exporter.registry.retry` is the one retry layer), except the single resend
after an auth challenge, which is part of the auth protocol.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from nydus_exporter.errors import (
    ConfigError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
)
from nydus_exporter.registry.auth import (
    BearerToken,
    Challenge,
    TokenCache,
    basic_authorization,
    merge_scopes,
    parse_challenges,
    parse_token_response,
    token_request,
)
from nydus_exporter.registry.credentials import Credentials, CredentialStore
from nydus_exporter.registry.redact import redact_text, redact_url

__all__ = ["Body", "RegistryStats", "Response", "Timeouts", "Transport", "is_loopback"]

Body = Callable[[], bytes | AsyncIterable[bytes]]  # called again for every (re)send
_MAX_ERROR_BODY = 64 << 10
_MAX_REDIRECTS = 10
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "nydus-exporter"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Stall timeouts of one request (seconds): connecting (TCP + TLS), and waiting for bytes.

    There is no total per-request timeout: a multi-GiB blob may take long, but it must keep
    moving. The retry policy's deadline bounds the time spent retrying. ``probe`` bounds
    connecting (TCP + TLS handshake) for the HTTPS attempt that precedes plain HTTP on
    insecure and loopback hosts: a plain-HTTP port that accepts and never answers a TLS hello
    would otherwise cost the whole connect timeout before the fallback.
    """

    connect: float = 30.0
    read: float = 120.0
    probe: float = 3.0


@dataclass(slots=True)
class RegistryStats:
    """Counters of one client (all registries). ``bytes_uploaded`` counts blob body bytes sent."""

    requests: int = 0
    token_requests: int = 0
    retries: int = 0
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    blobs_existing: int = 0
    blobs_mounted: int = 0


@dataclass(frozen=True, slots=True)
class Response:
    """A finished response whose body was read (bounded)."""

    status: int
    url: URL
    headers: CIMultiDictProxy[str]
    body: bytes = field(repr=False)

    def location(self) -> URL:
        """The ``Location`` header resolved against this response's URL."""
        location = self.headers.get("Location")
        if not location:
            raise RegistryError(
                f"{self.url.host}: {redact_url(self.url)} answered {self.status} without a Location header",
                status=self.status,
                url=redact_url(self.url),
            )
        return self.url.join(URL(location))


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1`` (``host`` may carry a ``:port``)."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class _HostState:
    semaphore: asyncio.Semaphore
    base: URL | None = None
    base_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    challenge: Challenge | None = None
    credentials: Credentials | None = None
    credentials_known: bool = False


class Transport:
    """See the module docstring. Use as an async context manager or call :meth:`close`."""

    def __init__(
        self,
        *,
        credentials: CredentialStore | None,
        insecure_hosts: Collection[str] = (),
        ca_file: Path | None = None,
        timeouts: Timeouts | None = None,
        max_concurrency: int = 4,
        stats: RegistryStats | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        self._credentials = credentials
        self._insecure = frozenset(h.lower() for h in insecure_hosts)
        # A CA bundle is loaded (and checked) now; the system's default context only when a
        # host first needs TLS, once per process: loading the system CA store costs ~0.1 s,
        # which an export to a plain-HTTP (loopback, insecure) registry never needs.
        self._ssl: ssl.SSLContext | None = None
        if ca_file is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA bundle {ca_file}: {exc}") from None
        self._timeouts = timeouts if timeouts is not None else Timeouts()
        self._max_concurrency = max_concurrency
        self.stats = stats if stats is not None else RegistryStats()
        self._hosts: dict[str, _HostState] = {}
        self._tokens = TokenCache()
        self._token_locks: dict[tuple[str, str, tuple[str, ...], str], asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self._timeouts.connect,
                    sock_connect=self._timeouts.connect,
                    sock_read=self._timeouts.read,
                ),
                headers={"User-Agent": _USER_AGENT},
                auto_decompress=False,  # blobs are opaque bytes; digests are over the wire form
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _state(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState(asyncio.Semaphore(self._max_concurrency))
        return state

    def _ssl_for(self, host: str) -> ssl.SSLContext | bool:
        if host.lower() in self._insecure:
            return False
        # True: aiohttp's own verifying context with the system's roots, made when it is
        # imported; making another costs as much as loading the roots again (~40 ms).
        return self._ssl if self._ssl is not None else True

    # --- scheme -------------------------------------------------------------------------------

    async def base_url(self, host: str) -> URL:
        """``https://host`` or, for insecure/loopback hosts without TLS, ``http://host``."""
        state = self._state(host)
        if state.base is not None:
            return state.base
        if not (host.lower() in self._insecure or is_loopback(host)):
            state.base = URL(f"https://{host}")
            return state.base
        async with state.base_lock:
            if state.base is None:
                state.base = await self._probe_scheme(host)
            return state.base

    async def _probe_scheme(self, host: str) -> URL:
        session = self._get_session()
        https = URL(f"https://{host}")
        # Only connecting is shortened: a registry that does speak TLS and is slow to answer
        # /v2/ is still waited for (falling back to HTTP would then fail anyway).
        probe_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._timeouts.probe,
            sock_connect=self._timeouts.probe,
            sock_read=self._timeouts.read,
        )
        try:
            async with state_slot(self._state(host)):
                self.stats.requests += 1
                async with session.get(
                    https / "v2" / "", ssl=self._ssl_for(host), allow_redirects=False, timeout=probe_timeout
                ) as r:
                    await r.read()
            return https
        except aiohttp.ClientConnectorCertificateError as exc:
            # It speaks TLS but we do not trust it: never downgrade that to plain HTTP.
            raise _connection_error("GET", https / "v2" / "", exc) from None
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass  # no TLS here: try plain HTTP below
        http = URL(f"http://{host}")
        try:
            async with state_slot(self._state(host)):
                self.stats.requests += 1
                async with session.get(http / "v2" / "", allow_redirects=False) as r:
                    await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _connection_error("GET", http / "v2" / "", exc) from None
        return http

    # --- requests -----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        host: str,
        url: URL,
        *,
        scopes: Collection[str] = (),
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
        ok: Collection[int] = (200,),
        max_body: int = _MAX_ERROR_BODY,
    ) -> Response:
        """Send one request (auth handshake and redirects included) and read the answer.

        A status outside ``ok`` raises the matching :class:`RegistryError`; a body larger
        than ``max_body`` raises too (manifests are small, blobs go through :meth:`stream`).
        """
        async with self._exchange(method, host, url, scopes=scopes, headers=headers, body=body) as response:
            if response.status not in ok:
                raise await _status_error(host, method, response)
            data = await _read_bounded(response, max_body, host, method)
            return Response(response.status, response.url, response.headers, data)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        host: str,
        url: URL,
        *,
        scopes: Collection[str] = (),
        headers: Mapping[str, str] | None = None,
        ok: Collection[int] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Like :meth:`request` but yields the open response for streaming its body."""
        async with self._exchange(method, host, url, scopes=scopes, headers=headers, body=None) as response:
            if response.status not in ok:
                raise await _status_error(host, method, response)
            yield response

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        host: str,
        url: URL,
        *,
        scopes: Collection[str],
        headers: Mapping[str, str] | None,
        body: Body | None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        state = self._state(host)
        base = await self.base_url(host)
        origin = base.origin()
        wanted = merge_scopes(scopes)
        authorization = await self._authorization(host, state, wanted)
        for auth_round in range(2):
            response = await self._send_following_redirects(
                method, host, url, origin, authorization, headers, body
            )
            if response.status != 401:
                try:
                    yield response
                finally:
                    response.release()
                return
            challenges = parse_challenges(response.headers.getall("WWW-Authenticate", []))
            response.release()
            if auth_round == 1 or not challenges:
                raise _auth_error(
                    host,
                    method,
                    url,
                    response.status,
                    "credentials were rejected" if authorization else "the registry requires authentication",
                )
            challenge = next((c for c in challenges if c.scheme == "bearer"), challenges[0])
            previous = authorization
            state.challenge = challenge
            authorization = await self._authorization(
                host, state, merge_scopes((*wanted, *challenge.scopes)), stale=previous
            )
            if authorization is None or authorization == previous:
                raise _auth_error(
                    host,
                    method,
                    url,
                    401,
                    "credentials were rejected"
                    if previous
                    else "the registry requires authentication and no credentials were found",
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_following_redirects(
        self,
        method: str,
        host: str,
        url: URL,
        origin: URL,
        authorization: str | None,
        headers: Mapping[str, str] | None,
        body: Body | None,
    ) -> aiohttp.ClientResponse:
        session = self._get_session()
        state = self._state(host)
        for _ in range(_MAX_REDIRECTS + 1):
            request_headers = dict(headers or {})
            # Authorization goes to the registry's own origin only: never to a storage
            # back-end a blob GET is redirected to (pre-signed URLs carry their own auth).
            if authorization and url.origin() == origin:
                request_headers["Authorization"] = authorization
            data = body() if body is not None else None
            try:
                async with state_slot(state):
                    self.stats.requests += 1
                    response = await session.request(
                        method,
                        url,
                        headers=request_headers,
                        data=data,
                        allow_redirects=False,
                        ssl=self._ssl_for(url.host_port_subcomponent or host)
                        if url.scheme == "https"
                        else False,
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _connection_error(method, url, exc) from None
            if response.status in _REDIRECT_STATUS and method in ("GET", "HEAD"):
                location = response.headers.get("Location")
                response.release()
                if not location:
                    raise RegistryError(
                        f"{host}: {method} {redact_url(url)} redirected without a Location",
                        status=response.status,
                        method=method,
                        url=redact_url(url),
                    )
                url = url.join(URL(location))
                continue
            return response
        raise RegistryError(
            f"{host}: {method} {redact_url(url)}: more than {_MAX_REDIRECTS} redirects",
            method=method,
            url=redact_url(url),
        )

    # --- auth ---------------------------------------------------------------------------------

    async def _credentials_for(self, host: str, state: _HostState) -> Credentials | None:
        if not state.credentials_known:
            if self._credentials is not None:
                state.credentials = await self._credentials.lookup(host, state.challenge)
            state.credentials_known = True
        return state.credentials

    async def _authorization(
        self, host: str, state: _HostState, scopes: tuple[str, ...], *, stale: str | None = None
    ) -> str | None:
        """The ``Authorization`` value for a request needing ``scopes`` (``None``: anonymous)."""
        challenge = state.challenge
        if challenge is None:
            return None
        credentials = await self._credentials_for(host, state)
        if challenge.scheme == "basic":
            if credentials is None or not credentials.password:
                return None
            return basic_authorization(credentials)
        if challenge.scheme != "bearer" or not challenge.realm:
            return None
        if credentials is not None and credentials.registry_token:
            return f"Bearer {credentials.registry_token}"
        identity = (credentials.username or "<token>") if credentials is not None else ""
        key = TokenCache.key(challenge, scopes, identity)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent uploads needing the same scopes share one token request
            token = self._tokens.get(key)
            if token is not None and stale is not None and f"Bearer {token.token}" == stale:
                self._tokens.discard(key)
                token = None
            if token is None:
                token = await self._fetch_token(host, challenge, scopes, credentials)
                self._tokens.put(key, token)
        return f"Bearer {token.token}"

    async def _fetch_token(
        self, host: str, challenge: Challenge, scopes: tuple[str, ...], credentials: Credentials | None
    ) -> BearerToken:
        request = token_request(challenge, scopes, credentials)
        session = self._get_session()
        realm_host = request.url.host_port_subcomponent or ""
        self.stats.token_requests += 1
        self.stats.requests += 1
        try:
            async with session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=dict(request.form) if request.form is not None else None,
                allow_redirects=True,
                ssl=self._ssl_for(realm_host) if request.url.scheme == "https" else False,
            ) as response:
                body = await _read_bounded(response, 1 << 20, host, request.method)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _connection_error(request.method, request.url, exc) from None
        if status in (401, 403):
            raise _auth_error(
                host,
                request.method,
                request.url,
                status,
                "the token server rejected the credentials"
                if credentials
                else "the token server refused anonymous access",
            )
        if status != 200:
            raise RegistryError(
                f"{host}: token server {request.method} {redact_url(request.url)} failed: HTTP {status}",
                status=status,
                method=request.method,
                url=redact_url(request.url),
            )
        try:
            return parse_token_response(body, now=time.monotonic())
        except ValueError as exc:
            raise RegistryError(
                f"{host}: token server {redact_url(request.url)}: {exc}",
                status=status,
                method=request.method,
                url=redact_url(request.url),
                temporary=False,
            ) from None


@asynccontextmanager
async def state_slot(state: _HostState) -> AsyncIterator[None]:
    """Hold one of the host's concurrency slots while sending a request."""
    async with state.semaphore:
        yield


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, host: str, method: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.content.iter_chunked(64 << 10):
            total += len(chunk)
            if total > limit:
                raise RegistryError(
                    f"{host}: {method} {redact_url(response.url)}: response larger than {limit} bytes",
                    status=response.status,
                    method=method,
                    url=redact_url(response.url),
                    temporary=False,
                )
            chunks.append(chunk)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise _connection_error(method, response.url, exc) from None
    return b"".join(chunks)


def _parse_codes(body: bytes) -> tuple[tuple[str, ...], str]:
    """OCI error codes and a short message from an error body (distribution spec)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        text = body[:200].decode("utf-8", "replace").strip()
        return (), redact_text(text)
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return (), ""
    codes, parts = [], []
    for item in errors:
        if not isinstance(item, dict):
            continue
        code = str(item.get("code", "")).upper()
        message = str(item.get("message", ""))
        if code:
            codes.append(code)
        parts.append(f"{code}: {message}" if message else code)
    return tuple(codes), redact_text("; ".join(parts))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _status_error(host: str, method: str, response: aiohttp.ClientResponse) -> RegistryError:
    try:
        body = await response.content.read(_MAX_ERROR_BODY)
    except (aiohttp.ClientError, OSError, TimeoutError):
        body = b""
    return status_error(host, method, response.url, response.status, body, response.headers)


def status_error(
    host: str, method: str, url: URL, status: int, body: bytes, headers: Mapping[str, str]
) -> RegistryError:
    """The :class:`RegistryError` subclass for an unexpected status, codes in the message."""
    codes, detail = _parse_codes(body)
    message = f"{host}: {method} {redact_url(url)} failed: HTTP {status}"
    if detail:
        message += f" ({detail})"
    kind: type[RegistryError] = RegistryError
    if status in (401, 403):
        kind = RegistryAuthError
    elif status == 404:
        kind = RegistryNotFoundError
    return kind(
        message,
        status=status,
        codes=codes,
        method=method,
        url=redact_url(url),
        retry_after=_retry_after(headers.get("Retry-After")) if status in (429, 503) else None,
    )


def _auth_error(host: str, method: str, url: URL, status: int, why: str) -> RegistryAuthError:
    return RegistryAuthError(
        f"{host}: {method} {redact_url(url)}: {why} (HTTP {status})",
        status=status,
        codes=("UNAUTHORIZED",),
        method=method,
        url=redact_url(url),
    )


def _connection_error(method: str, url: URL, exc: BaseException) -> RegistryError:
    host = url.host_port_subcomponent or ""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return RegistryError(
            f"{host}: {method} {redact_url(url)}: TLS certificate not trusted "
            "(give the registry's CA bundle, or mark the host insecure)",
            method=method,
            url=redact_url(url),
            temporary=False,
        )
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        what = "timed out"
    else:
        what = redact_text(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
    return RegistryError(
        f"{host}: {method} {redact_url(url)}: {what}", method=method, url=redact_url(url), temporary=True
    )
