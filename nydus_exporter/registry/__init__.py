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
