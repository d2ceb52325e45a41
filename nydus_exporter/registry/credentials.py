"""Where registry credentials come from.

A :class:`CredentialStore` answers "which credentials for this registry host?" when a
registry challenges us (never before: anonymous access is tried first). Stores:

* :class:`StaticCredentials` — explicit ``{host: Credentials}`` given by the caller;
* :class:`DockerConfigCredentials` — ``$DOCKER_CONFIG/config.json`` or
  ``~/.docker/config.json`` with docker CLI precedence: ``credHelpers[host]``, else
  ``credsStore``, else ``auths`` (``auth`` = base64 ``user:password``, or ``username`` /
  ``password``, ``identitytoken``, ``registrytoken``). Helpers are run as
  ``docker-credential-<name> get`` with the server URL on stdin;
* :class:`CallbackCredentials` — an async ``credential_provider(host, challenge)`` hook, so a
  daemon can ask its own client;
* :class:`ChainCredentials` — the first store that answers wins.

Docker Hub is looked up under its legacy key ``https://index.docker.io/v1/`` as the docker CLI
does. :class:`Credentials` never shows a secret in its ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from nydus_exporter.errors import ConfigError
from nydus_exporter.registry.auth import Challenge, Credentials

__all__ = [
    "CallbackCredentials",
    "ChainCredentials",
    "CredentialProvider",
    "CredentialStore",
    "Credentials",
    "DockerConfigCredentials",
    "StaticCredentials",
    "docker_config_path",
]

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_TOKEN_USERNAME = "<token>"  # a helper's Username meaning "Secret is an identity token"
_HELPER_TIMEOUT = 30.0
_NOT_FOUND = "credentials not found"


class CredentialStore(Protocol):
    """Answers which credentials to use for ``host`` after it sent ``challenge``."""

    async def lookup(self, host: str, challenge: Challenge | None) -> Credentials | None: ...


CredentialProvider = Callable[[str, Challenge | None], Awaitable[Credentials | None]]


class StaticCredentials:
    """Explicit credentials per registry host (``"host[:port]"``, as in the image reference)."""

    def __init__(self, by_host: Mapping[str, Credentials]) -> None:
        self._by_host = {_normalize_host(h): c for h, c in by_host.items()}

    async def lookup(self, host: str, challenge: Challenge | None) -> Credentials | None:
        return self._by_host.get(_normalize_host(host))

    def __repr__(self) -> str:
        return f"StaticCredentials(hosts={sorted(self._by_host)!r})"


class CallbackCredentials:
    """Adapts an async ``credential_provider(host, challenge)`` hook to a store."""

    def __init__(self, provider: CredentialProvider) -> None:
        self._provider = provider

    async def lookup(self, host: str, challenge: Challenge | None) -> Credentials | None:
        return await self._provider(host, challenge)


class ChainCredentials:
    """Ask each store in turn; the first non-``None`` answer wins."""

    def __init__(self, *stores: CredentialStore) -> None:
        self._stores = stores

    async def lookup(self, host: str, challenge: Challenge | None) -> Credentials | None:
        for store in self._stores:
            found = await store.lookup(host, challenge)
            if found is not None:
                return found
        return None


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if env is None else env
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path.home() / ".docker" / "config.json"


class DockerConfigCredentials:
    """Credentials from a docker CLI ``config.json`` (read at each lookup; missing file = none)."""

    def __init__(self, path: Path | None = None, *, helper_timeout: float = _HELPER_TIMEOUT) -> None:
        self.path = path if path is not None else docker_config_path()
        self._helper_timeout = helper_timeout

    def __repr__(self) -> str:
        return f"DockerConfigCredentials({str(self.path)!r})"

    async def lookup(self, host: str, challenge: Challenge | None) -> Credentials | None:
        config = self._load()
        if config is None:
            return None
        host = _normalize_host(host)
        server = DOCKER_HUB_KEY if host in _DOCKER_HUB_HOSTS else host
        helpers = config.get("credHelpers")
        if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
            return await self._run_helper(helpers[host], server)
        store = config.get("credsStore")
        if isinstance(store, str) and store:
            found = await self._run_helper(store, server)
            if found is not None:
                return found
        return self._from_auths(config, host)

    def _load(self) -> dict[str, Any] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read docker config {self.path}: {exc.strerror}") from None
        try:
            config = json.loads(data)
        except ValueError:
            raise ConfigError(f"docker config {self.path} is not valid JSON") from None
        if not isinstance(config, dict):
            raise ConfigError(f"docker config {self.path} is not a JSON object")
        return config

    def _from_auths(self, config: Mapping[str, Any], host: str) -> Credentials | None:
        auths = config.get("auths")
        if not isinstance(auths, dict):
            return None
        # Keys may be a bare host or a URL (``https://host/v1/``); Docker Hub has aliases.
        for key, entry in auths.items():
            if isinstance(entry, dict) and _normalize_host(key) == host:
                return self._entry(key, entry)
        return None

    def _entry(self, key: str, entry: Mapping[str, Any]) -> Credentials | None:
        username = _str(entry.get("username"))
        password = _str(entry.get("password"))
        encoded = _str(entry.get("auth"))
        if encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise ConfigError(f"docker config {self.path}: auths[{key!r}].auth is not base64") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise ConfigError(f"docker config {self.path}: auths[{key!r}].auth is not 'user:password'")
        credentials = Credentials(
            username=username,
            password=password,
            identity_token=_str(entry.get("identitytoken")),
            registry_token=_str(entry.get("registrytoken")),
        )
        if not (credentials.password or credentials.identity_token or credentials.registry_token):
            return None
        return credentials

    async def _run_helper(self, name: str, server: str) -> Credentials | None:
        program = f"docker-credential-{name}"
        try:
            process = await asyncio.create_subprocess_exec(
                program,
                "get",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise ConfigError(f"credential helper {program} (from {self.path}) is not on PATH") from None
        try:
            async with asyncio.timeout(self._helper_timeout):
                out, _ = await process.communicate(server.encode())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ConfigError(
                f"credential helper {program} did not answer in {self._helper_timeout:g}s"
            ) from None
        if process.returncode != 0:
            if _NOT_FOUND in out.decode("utf-8", "replace").lower():
                return None
            # The helper's output is not shown: a broken helper might print secrets.
            raise ConfigError(f"credential helper {program} failed with exit status {process.returncode}")
        try:
            answer = json.loads(out)
        except ValueError:
            raise ConfigError(f"credential helper {program} did not print JSON") from None
        if not isinstance(answer, dict):
            raise ConfigError(f"credential helper {program} did not print a JSON object")
        username, secret = _str(answer.get("Username")), _str(answer.get("Secret"))
        if not secret:
            return None
        if username == _TOKEN_USERNAME:
            return Credentials(identity_token=secret)
        return Credentials(username=username, password=secret)


def _key_host(key: str) -> str:
    """``https://host/v1/`` -> ``host`` (docker CLI ``ConvertToHostname``)."""
    for scheme in ("http://", "https://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            break
    return key.split("/", 1)[0]


def _normalize_host(host: str) -> str:
    host = _key_host(host).lower()
    return "docker.io" if host in _DOCKER_HUB_HOSTS else host


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
