"""Registry authentication without I/O: challenges, scopes, token requests and the token cache.

The flow (docker distribution "token authentication specification", spec
``docs/spec/auth/token.md`` and ``oauth.md`` of distribution 2.8)::

    1. send the request anonymously, or with what we learnt from an earlier challenge;
    2. on 401, parse ``WWW-Authenticate``:
       2a. ``Basic``  -> resend with ``Authorization: Basic base64(user:password)``;
       2b. ``Bearer realm=…,service=…,scope=…`` -> ask the realm for a token covering our
           scopes plus the challenged scope:
             * ``GET realm?service=…&scope=…`` (with Basic credentials if we have them);
             * ``POST realm`` form ``grant_type=refresh_token`` when the credentials are an
               identity (refresh) token (OAuth2);
           then resend with ``Authorization: Bearer <token>``;
    3. a second 401 for the same request means the credentials are wrong: fail.

The I/O (sending the token request, asking the credential stores) lives in
:mod:`nydus_exporter.registry.transport`; this module builds the requests, parses the answers
and caches tokens per (realm, service, scopes, identity) until they expire.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.request import parse_http_list, parse_keqv_list

from yarl import URL

__all__ = [
    "BearerToken",
    "Challenge",
    "Credentials",
    "TokenCache",
    "TokenRequest",
    "basic_authorization",
    "merge_scopes",
    "parse_challenges",
    "parse_token_response",
    "repository_scope",
    "token_request",
]

CLIENT_ID = "nydus-exporter"
# distribution's token spec: a token without expires_in lives 60 s; docker treats shorter
# lifetimes as 60 s too.
_DEFAULT_TOKEN_LIFETIME = 60.0
_EXPIRY_MARGIN = 0.1  # refresh when less than 10% of the lifetime is left


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` lower-cased, parameter names lower-cased."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        """The challenged scopes (space-separated in the header, per the token spec)."""
        return tuple(self.params.get("scope", "").split())


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (one challenge per value, as registries send)."""
    challenges = []
    for value in headers:
        scheme, _, rest = value.strip().partition(" ")
        if not scheme:
            continue
        try:
            params = parse_keqv_list([p.strip() for p in parse_http_list(rest) if "=" in p])
        except ValueError:
            params = {}
        challenges.append(Challenge(scheme.lower(), {k.lower(): v for k, v in params.items()}))
    return challenges


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:<name>:<actions>`` (token spec resource scope)."""
    return f"repository:{repository}:{','.join(actions)}"


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Union of ``type:name:actions`` scopes, one per resource, sorted (a stable cache key)."""
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            continue
        merged.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    return tuple(f"{kind}:{name}:{','.join(sorted(acts))}" for (kind, name), acts in sorted(merged.items()))


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and one kind of secret. Secrets are hidden from ``repr``.

    ``identity_token`` is an OAuth2 refresh token (docker's ``identitytoken``); it is exchanged
    with the token server's POST form. ``registry_token`` is a bearer token used as is.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        secrets = [n for n in ("password", "identity_token", "registry_token") if getattr(self, n)]
        shown = ", ".join(f"{n}=<redacted>" for n in secrets)
        return f"Credentials(username={self.username!r}{', ' if shown else ''}{shown})"

    __str__ = __repr__


def basic_authorization(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What to send to the token realm. ``form`` set means POST (OAuth2), else GET."""

    method: str
    url: URL
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    form: Mapping[str, str] | None = field(default=None, repr=False)


def token_request(
    challenge: Challenge, scopes: Iterable[str], credentials: Credentials | None
) -> TokenRequest:
    """Build the token request for ``challenge`` covering ``scopes`` (step 2b)."""
    realm = URL(challenge.realm)
    scope_list = list(scopes)
    if credentials is not None and credentials.identity_token:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": credentials.identity_token,
            "client_id": CLIENT_ID,
        }
        if challenge.service:
            form["service"] = challenge.service
        if scope_list:
            form["scope"] = " ".join(scope_list)
        return TokenRequest("POST", realm, {}, form)
    query: list[tuple[str, str]] = []
    if challenge.service:
        query.append(("service", challenge.service))
    query.extend(("scope", s) for s in scope_list)
    headers: dict[str, str] = {}
    if credentials is not None and credentials.username and credentials.password:
        query.append(("account", credentials.username))
        headers["Authorization"] = basic_authorization(credentials)
    return TokenRequest("GET", realm.update_query(query), headers, None)


@dataclass(frozen=True, slots=True)
class BearerToken:
    token: str = field(repr=False)
    expires_at: float  # time.monotonic() value after which the token must not be used

    def valid(self, now: float) -> bool:
        return now < self.expires_at


def parse_token_response(body: bytes, *, now: float | None = None) -> BearerToken:
    """Parse a token server answer (``token`` or OAuth2 ``access_token``, ``expires_in``).

    Raises ``ValueError`` (with no secret in the message) when the body is unusable.
    """
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("token server answer is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("token server answer is not a JSON object")
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token server answer has no token")
    lifetime = data.get("expires_in")
    seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 0.0
    seconds = max(seconds, _DEFAULT_TOKEN_LIFETIME)
    start = time.monotonic() if now is None else now
    return BearerToken(token, start + seconds * (1 - _EXPIRY_MARGIN))


class TokenCache:
    """Bearer tokens per (realm, service, scopes, identity) until they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, tuple[str, ...], str], BearerToken] = {}

    @staticmethod
    def key(
        challenge: Challenge, scopes: tuple[str, ...], identity: str
    ) -> tuple[str, str, tuple[str, ...], str]:
        return (challenge.realm, challenge.service, scopes, identity)

    def get(
        self, key: tuple[str, str, tuple[str, ...], str], *, now: float | None = None
    ) -> BearerToken | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if not token.valid(time.monotonic() if now is None else now):
            del self._tokens[key]
            return None
        return token

    def put(self, key: tuple[str, str, tuple[str, ...], str], token: BearerToken) -> None:
        self._tokens[key] = token

    def discard(self, key: tuple[str, str, tuple[str, ...], str]) -> None:
        self._tokens.pop(key, None)
