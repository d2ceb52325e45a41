"""The registry client's pure parts: challenges, scopes, tokens, redaction, retry, ranges."""

from __future__ import annotations

import asyncio
import base64

import pytest
from yarl import URL

import nydus_exporter.registry as registry_pkg
from nydus_exporter.errors import (
    ExporterError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
)
from nydus_exporter.registry.auth import (
    Challenge,
    TokenCache,
    merge_scopes,
    parse_challenges,
    parse_token_response,
    token_request,
)
from nydus_exporter.registry.client import _parse_range
from nydus_exporter.registry.credentials import Credentials
from nydus_exporter.registry.redact import redact_text, redact_url
from nydus_exporter.registry.retry import RetryPolicy, with_retries
from nydus_exporter.registry.transport import is_loopback, status_error


def test_public_api_is_pinned() -> None:
    # dir(), not vars(): the names are imported on first use (registry/__init__.py)
    exported = {name for name in dir(registry_pkg) if not name.startswith("_") and name[0].isupper()}
    assert set(registry_pkg.__all__) == exported
    assert len(registry_pkg.__all__) == len(exported)


def test_error_tree() -> None:
    for kind in (RegistryAuthError, RegistryNotFoundError, RegistryUnavailableError):
        assert issubclass(kind, RegistryError)
    assert issubclass(RegistryError, ExporterError)


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:a/b:pull,push"',
            "bearer",
            {
                "realm": "https://auth.example/token",
                "service": "registry.example",
                "scope": "repository:a/b:pull,push",
            },
        ),
        ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
        (
            'BEARER Realm="r",Error="insufficient_scope"',
            "bearer",
            {"realm": "r", "error": "insufficient_scope"},
        ),
    ],
    ids=["bearer", "basic", "case"],
)
def test_parse_challenges(header: str, scheme: str, params: dict[str, str]) -> None:
    (challenge,) = parse_challenges([header])
    assert challenge.scheme == scheme
    assert dict(challenge.params) == params


def test_challenge_scopes_are_space_separated() -> None:
    (challenge,) = parse_challenges(['Bearer realm="r",scope="repository:a:pull repository:b:pull,push"'])
    assert challenge.scopes == ("repository:a:pull", "repository:b:pull,push")


def test_merge_scopes() -> None:
    merged = merge_scopes(
        ["repository:b:pull", "repository:a:push", "repository:a:pull", "repository:b:pull"]
    )
    assert merged == ("repository:a:pull,push", "repository:b:pull")
    assert merge_scopes(["registry:catalog:*"]) == ("registry:catalog:*",)


def test_token_request_forms() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.example/token", "service": "svc"})
    scopes = ("repository:a:pull,push",)
    anonymous = token_request(challenge, scopes, None)
    assert anonymous.method == "GET" and "Authorization" not in anonymous.headers
    assert anonymous.url.query.getall("scope") == ["repository:a:pull,push"]
    assert anonymous.url.query["service"] == "svc"
    basic = token_request(challenge, scopes, Credentials("u", "p"))
    assert basic.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert basic.url.query["account"] == "u"
    oauth = token_request(challenge, scopes, Credentials(identity_token="refresh"))
    assert oauth.method == "POST" and oauth.form is not None
    assert dict(oauth.form) == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh",
        "client_id": "nydus-exporter",
        "service": "svc",
        "scope": "repository:a:pull,push",
    }
    assert "refresh" not in repr(oauth) and "Basic" not in repr(basic)


def test_token_response_and_cache() -> None:
    token = parse_token_response(b'{"token": "abc", "expires_in": 300}', now=1000.0)
    assert token.token == "abc" and token.expires_at == pytest.approx(1000 + 270)
    short = parse_token_response(b'{"access_token": "x", "expires_in": 5}', now=0.0)
    assert short.expires_at == pytest.approx(54)  # lifetimes under 60 s count as 60 s
    for bad in (b"nope", b"[]", b'{"expires_in": 3}'):
        with pytest.raises(ValueError):
            parse_token_response(bad)
    cache = TokenCache()
    key = TokenCache.key(Challenge("bearer", {"realm": "r"}), ("repository:a:pull",), "u")
    cache.put(key, token)
    assert cache.get(key, now=1100.0) is token
    assert cache.get(key, now=1271.0) is None
    assert cache.get(key, now=1100.0) is None  # expired entries are dropped


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:pw@reg.example/v2/", "https://reg.example/v2/"),
        (
            "http://h/v2/r/blobs/uploads/abc?_state=SECRET&digest=sha256:00",
            "http://h/v2/r/blobs/uploads/abc?_state=REDACTED&digest=sha256:00",
        ),
        (
            "https://s3.example/b?X-Amz-Signature=SECRET&sig=SECRET",
            "https://s3.example/b?X-Amz-Signature=REDACTED&sig=REDACTED",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "SECRET" not in redact_url(URL(url))


def test_redact_text() -> None:
    text = "sent Authorization: Bearer eyJhbGciOi.eyJzdWIi.sig and Basic dTpw to https://u:p@h/"
    redacted = redact_text(text)
    assert "eyJ" not in redacted and "dTpw" not in redacted and "u:p@" not in redacted


def test_credentials_repr_hides_secrets() -> None:
    shown = repr(Credentials("alice", "pw1", identity_token="tok2", registry_token="tok3"))
    assert "alice" in shown
    assert not any(secret in shown for secret in ("pw1", "tok2", "tok3"))
    assert str(Credentials("bob", "pw4")).count("pw4") == 0


def test_status_error_mapping() -> None:
    body = b'{"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}'
    error = status_error("h:5000", "PUT", URL("http://h:5000/v2/x/manifests/t"), 403, body, {})
    assert isinstance(error, RegistryAuthError) and error.codes == ("DENIED",)
    assert str(error) == (
        "h:5000: PUT http://h:5000/v2/x/manifests/t failed: HTTP 403 "
        "(DENIED: requested access to the resource is denied)"
    )
    throttled = status_error("h", "GET", URL("http://h/v2/"), 429, b"", {"Retry-After": "7"})
    assert throttled.temporary and throttled.retry_after == 7.0
    assert not status_error("h", "GET", URL("http://h/v2/"), 400, b"", {}).temporary
    assert status_error("h", "GET", URL("http://h/v2/"), 502, b"<html>", {}).temporary


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("registry.example", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("value", "stored"), [(None, None), ("0-0", 0), ("0-99", 100), ("bytes=0-9", 10), ("junk", None)]
)
def test_parse_upload_range(value: str | None, stored: int | None) -> None:
    assert _parse_range(value) == stored


async def test_retry_policy_only_retries_temporary_errors() -> None:
    policy = RetryPolicy(attempts=4, backoff_base=0.0001, backoff_max=0.001)
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RegistryError("boom", status=503)
        return "ok"

    assert await with_retries(policy, flaky) == "ok" and len(calls) == 3

    async def permanent() -> None:
        calls.append(1)
        raise RegistryNotFoundError("gone", status=404)

    calls.clear()
    with pytest.raises(RegistryNotFoundError):
        await with_retries(policy, permanent)
    assert len(calls) == 1

    async def always() -> None:
        raise RegistryError("down", status=500)

    with pytest.raises(RegistryUnavailableError, match=r"^down \(gave up after 4 attempts\)$"):
        await with_retries(policy, always)


async def test_retry_after_beyond_deadline_gives_up_at_once() -> None:
    policy = RetryPolicy(attempts=10, deadline=1.0)

    async def throttled() -> None:
        raise RegistryError("slow down", status=429, retry_after=30.0)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RegistryUnavailableError, match="deadline"):
        await with_retries(policy, throttled)
    assert loop.time() - started < 0.5
