"""OCI distribution client (aiohttp): push and pull blobs and manifests.

* :class:`RegistryClient` — the async client (one per process); :class:`SyncRegistry` — a
  blocking facade running it on a private loop thread;
* credentials: :class:`Credentials`, :class:`StaticCredentials`,
  :class:`DockerConfigCredentials`, :class:`CallbackCredentials`, :class:`ChainCredentials`;
* knobs: :class:`RetryPolicy`, :class:`Timeouts`, :class:`UploadParts`; results: :class:`PushResult`,
  :class:`ManifestResponse`, :class:`RegistryStats`.

Errors are the :class:`~nydus_exporter.errors.RegistryError` family of
:mod:`nydus_exporter.errors`. Modules: ``client`` (protocol steps), ``transport`` (HTTP,
TLS/scheme choice, auth handshake, redirects), ``auth`` (challenges, tokens; no I/O),
``credentials``, ``retry`` (the one retry layer), ``redact``, ``sync``.
"""

import typing

if typing.TYPE_CHECKING:
    from nydus_exporter.registry.auth import Challenge
    from nydus_exporter.registry.client import (
        BlobSource,
        BlobStream,
        ManifestResponse,
        PushResult,
        RegistryClient,
        UploadParts,
    )
    from nydus_exporter.registry.credentials import (
        CallbackCredentials,
        ChainCredentials,
        CredentialProvider,
        Credentials,
        CredentialStore,
        DockerConfigCredentials,
        StaticCredentials,
    )
    from nydus_exporter.registry.retry import RetryPolicy
    from nydus_exporter.registry.sync import SyncRegistry
    from nydus_exporter.registry.transport import RegistryStats, Timeouts

# The names above, imported on first use: importing a light submodule (``auth``,
# ``credentials``: what the gRPC client needs) must not import the aiohttp client, which costs
# every ``export --addr`` a tenth of a second before its first request.
_HOME = {
    "Challenge": "auth",
    **dict.fromkeys(
        ("BlobSource", "BlobStream", "ManifestResponse", "PushResult", "RegistryClient", "UploadParts"),
        "client",
    ),
    **dict.fromkeys(
        (
            "CallbackCredentials",
            "ChainCredentials",
            "CredentialProvider",
            "Credentials",
            "CredentialStore",
            "DockerConfigCredentials",
            "StaticCredentials",
        ),
        "credentials",
    ),
    "RetryPolicy": "retry",
    "SyncRegistry": "sync",
    "RegistryStats": "transport",
    "Timeouts": "transport",
}


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "BlobSource",
    "BlobStream",
    "CallbackCredentials",
    "ChainCredentials",
    "Challenge",
    "CredentialProvider",
    "CredentialStore",
    "Credentials",
    "DockerConfigCredentials",
    "ManifestResponse",
    "PushResult",
    "RegistryClient",
    "RegistryStats",
    "RetryPolicy",
    "StaticCredentials",
    "SyncRegistry",
    "Timeouts",
    "UploadParts",
]
