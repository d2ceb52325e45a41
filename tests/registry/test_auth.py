"""Authentication against real registries: htpasswd basic auth and bearer tokens."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from nydus_exporter.errors import ConfigError, RegistryAuthError
from nydus_exporter.registry import (
    Challenge,
    Credentials,
    DockerConfigCredentials,
    StaticCredentials,
)
from tests.registry.util import blob_file, client, push_image, skopeo_inspect_raw
from tests.registry_fixtures import FaultProxy, RegistryServer


def _creds(server: RegistryServer, password: str | None = None) -> StaticCredentials:
    assert server.username and server.password
    return StaticCredentials({server.host: Credentials(server.username, password or server.password)})


async def test_basic_auth_push_and_pull(
    registry_basic: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    ref = registry_basic.ref(repo_name, "v1")
    async with client(credentials=_creds(registry_basic)) as c:
        await c.ping(registry_basic.host)
        digest, raw = await push_image(c, ref, tmp_path)
        got = await c.get_manifest(ref)
    assert got is not None and got.digest == digest
    creds = f"{registry_basic.username}:{registry_basic.password}"
    assert skopeo_inspect_raw(f"{registry_basic.host}/{repo_name}:v1", creds=creds) == raw


async def test_basic_auth_wrong_password(
    registry_basic: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    wrong = "not-the-Password-42"
    blob = blob_file(tmp_path, 1000)
    async with client(credentials=_creds(registry_basic, wrong)) as c:
        with pytest.raises(RegistryAuthError) as caught:
            await c.push_blob(registry_basic.ref(repo_name), blob.digest, blob.size, blob.path)
        assert c.stats.bytes_uploaded == 0
    message = str(caught.value)
    assert registry_basic.host in message
    assert "credentials were rejected" in message
    assert caught.value.status == 401 and not caught.value.temporary
    assert wrong not in message and wrong not in repr(caught.value)
    assert not registry_basic.stored_blob(blob.digest).exists()


async def test_anonymous_against_basic_auth(registry_basic: RegistryServer) -> None:
    async with client() as c:
        with pytest.raises(RegistryAuthError, match="requires authentication and no credentials were found"):
            await c.ping(registry_basic.host)


async def test_token_flow_caches_tokens_per_scope(
    registry_token: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    token_server = registry_token.token_server
    assert token_server is not None
    before = len(token_server.requests)
    ref = registry_token.ref(repo_name, "v1")
    async with client(credentials=_creds(registry_token)) as c:
        digest, raw = await push_image(c, ref, tmp_path)  # 2 blobs + manifest + tag
        for i in range(3):
            blob = blob_file(tmp_path, 100 + i)
            await c.push_blob(ref, blob.digest, blob.size, blob.path)
        asked = token_server.requests[before:]
        push_scope = f"repository:{repo_name}:pull,push"
        pull_scope = f"repository:{repo_name}:pull"
        # One token for the pull-only HEAD, one for pull+push; then the cache answers.
        assert sorted(scopes for _, _, scopes in asked) == sorted([(pull_scope,), (push_scope,)])
        assert all(grant == "basic" for _, grant, _ in asked)
        got = await c.get_manifest(ref)
        assert got is not None and got.raw == raw
        assert len(token_server.requests) - before == 2
        assert c.stats.token_requests == 2
        # Another repository needs its own token.
        await c.blob_exists(registry_token.ref(f"{repo_name}/other"), digest)
        assert len(token_server.requests) - before == 3


async def test_token_flow_with_identity_token(
    registry_token: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    token_server = registry_token.token_server
    assert token_server is not None
    before = len(token_server.requests)
    identity = StaticCredentials(
        {registry_token.host: Credentials(identity_token=token_server.identity_token)}
    )
    blob = blob_file(tmp_path, 4000)
    async with client(credentials=identity) as c:
        result = await c.push_blob(registry_token.ref(repo_name), blob.digest, blob.size, blob.path)
    assert result.outcome == "uploaded"
    assert {(method, grant) for method, grant, _ in token_server.requests[before:]} == {
        ("POST", "refresh_token")
    }
    assert registry_token.stored_blob(blob.digest).read_bytes() == blob.data


async def test_token_server_rejects_bad_password(registry_token: RegistryServer, repo_name: str) -> None:
    secret = "Wrong-token-Pw-77"
    async with client(credentials=_creds(registry_token, secret)) as c:
        with pytest.raises(RegistryAuthError, match="token server rejected the credentials") as caught:
            await c.blob_exists(registry_token.ref(repo_name), "sha256:" + "1" * 64)
    assert registry_token.host in str(caught.value)
    assert secret not in str(caught.value)


async def test_anonymous_token_cannot_push(
    registry_token: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 100)
    async with client() as c:
        with pytest.raises(RegistryAuthError):
            await c.push_blob(registry_token.ref(repo_name), blob.digest, blob.size, blob.path)


async def test_credential_provider_hook(
    registry_basic: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    asked: list[tuple[str, Challenge | None]] = []

    async def provider(host: str, challenge: Challenge | None) -> Credentials | None:
        asked.append((host, challenge))
        assert registry_basic.username and registry_basic.password
        return Credentials(registry_basic.username, registry_basic.password)

    blob = blob_file(tmp_path, 2000)
    async with client(credential_provider=provider) as c:
        for _ in range(2):
            await c.push_blob(registry_basic.ref(repo_name), blob.digest, blob.size, blob.path)
    assert len(asked) == 1  # asked once per host, on the first challenge
    host, challenge = asked[0]
    assert host == registry_basic.host
    assert challenge is not None and challenge.scheme == "basic" and challenge.realm == "basic-realm"


async def test_authorization_not_sent_to_redirected_storage(
    make_fault_proxy: Callable[[RegistryServer], FaultProxy],
    registry_basic: RegistryServer,
    repo_name: str,
    tmp_path: Path,
) -> None:
    proxy = make_fault_proxy(registry_basic)
    blob = blob_file(tmp_path, 100_000)
    ref = proxy.ref(repo_name)
    async with client(
        credentials=StaticCredentials({proxy.host: Credentials("tester", "s3cret-Basic-pw")})
    ) as c:
        await c.push_blob(ref, blob.digest, blob.size, blob.path)
        proxy.redirect_blobs = True
        async with c.open_blob(ref, blob.digest) as stream:
            assert b"".join([chunk async for chunk in stream]) == blob.data
        assert await c.read_blob_range(ref, blob.digest, 10, 20) == blob.data[10:30]
        assert len(proxy.storage_headers) == 2
        assert all("Authorization" not in headers for headers in proxy.storage_headers)
        # A storage failure is reported without the pre-signed URL's secret.
        proxy.storage_fail = 1
        with pytest.raises(RegistryAuthError) as caught:
            async with c.open_blob(ref, blob.digest) as stream:
                pass
    assert proxy.storage_secret not in str(caught.value)
    assert "localhost" in str(caught.value)


# --- docker config.json ------------------------------------------------------------------------


def _write_config(directory: Path, config: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


async def test_docker_config_auths(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"alice:pa:ss").decode()
    path = _write_config(
        tmp_path,
        {
            "auths": {
                "registry.example:5000": {"auth": encoded},
                "https://other.example/v1/": {"username": "bob", "password": "pw-bob"},
                "tok.example": {"identitytoken": "refresh-123"},
                "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:hubpw").decode()},
                "empty.example": {},
            }
        },
    )
    store = DockerConfigCredentials(path)
    assert await store.lookup("registry.example:5000", None) == Credentials("alice", "pa:ss")
    assert await store.lookup("other.example", None) == Credentials("bob", "pw-bob")
    assert await store.lookup("tok.example", None) == Credentials(identity_token="refresh-123")
    assert await store.lookup("registry-1.docker.io", None) == Credentials("hub", "hubpw")
    assert await store.lookup("docker.io", None) == Credentials("hub", "hubpw")
    assert await store.lookup("empty.example", None) is None
    assert await store.lookup("unknown.example", None) is None
    assert "pa:ss" not in repr(await store.lookup("registry.example:5000", None))


async def test_docker_config_from_env_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_config(tmp_path / "cfg", {"auths": {"h.example": {"username": "u", "password": "p"}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    assert await DockerConfigCredentials().lookup("h.example", None) == Credentials("u", "p")
    assert await DockerConfigCredentials(tmp_path / "none.json").lookup("h.example", None) is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"auths": {"h.example": {"auth": "!!!"}}}, "is not base64"),
        ({"auths": {"h.example": {"auth": base64.b64encode(b"nocolon").decode()}}}, "is not 'user:password'"),
        (
            {"credHelpers": {"h.example": "absent-helper"}},
            "docker-credential-absent-helper .* is not on PATH",
        ),
    ],
    ids=["bad-base64", "no-colon", "missing-helper"],
)
async def test_docker_config_errors(tmp_path: Path, config: dict[str, object], message: str) -> None:
    store = DockerConfigCredentials(_write_config(tmp_path, config))
    with pytest.raises(ConfigError, match=message):
        await store.lookup("h.example", None)


def _fake_helper(directory: Path, name: str, answers: dict[str, dict[str, str]]) -> None:
    """A ``docker-credential-<name>`` script answering ``get`` from a table (as the real ones do)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / f"docker-credential-{name}"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"answers = {json.dumps(answers)!r}\n"
        "answers = json.loads(answers)\n"
        "assert sys.argv[1:] == ['get'], sys.argv\n"
        "server = sys.stdin.read().strip()\n"
        "if server not in answers:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        "print(json.dumps(answers[server]))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


async def test_docker_config_cred_helpers_against_registry(
    registry_basic: RegistryServer, repo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry_basic.username and registry_basic.password
    bin_dir = tmp_path / "bin"
    _fake_helper(
        bin_dir,
        "test",
        {
            registry_basic.host: {
                "ServerURL": registry_basic.host,
                "Username": registry_basic.username,
                "Secret": registry_basic.password,
            },
            "tok.example": {"ServerURL": "tok.example", "Username": "<token>", "Secret": "refresh-xyz"},
        },
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = _write_config(
        tmp_path / "docker",
        {
            "credsStore": "test",
            "credHelpers": {registry_basic.host: "test"},
            "auths": {"fallback.example": {"username": "f", "password": "fpw"}},
        },
    )
    store = DockerConfigCredentials(config)
    assert await store.lookup("tok.example", None) == Credentials(identity_token="refresh-xyz")
    assert await store.lookup("fallback.example", None) == Credentials("f", "fpw")  # helper: not found
    blob = blob_file(tmp_path, 3000)
    async with client(credentials=store) as c:
        result = await c.push_blob(registry_basic.ref(repo_name), blob.digest, blob.size, blob.path)
    assert result.outcome == "uploaded"
    assert registry_basic.stored_blob(blob.digest).read_bytes() == blob.data
