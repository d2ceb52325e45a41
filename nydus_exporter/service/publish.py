"""Publishing a converted image from the job's staging layout: the push (merging into the
live tag for merge-manifest), the chunk store's record of it, the oci-layout."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol

from nydus_exporter.chunkstore import ChunkStore
from nydus_exporter.oci.descriptor import Descriptor
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.pipeline.chunk_store_session import record_packed
from nydus_exporter.pipeline.index import merged_index, split_root
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.pipeline.push import push_image
from nydus_exporter.pipeline.registry_limits import RegistryLimits, client_limits
from nydus_exporter.registry.auth import Challenge
from nydus_exporter.registry.credentials import Credentials, StaticCredentials
from nydus_exporter.registry.sync import SyncRegistry
from nydus_exporter.service.cache import load_result
from nydus_exporter.service.config import ServiceConfig
from nydus_exporter.service.runner import Conversion


class Pusher(Protocol):
    """Pushes a converted image from the staging layout (wired in once the pipeline can push).

    ``credential_provider`` is the registry client's hook; here it asks the export's client.
    """

    async def __call__(
        self,
        *,
        layout: Path,
        root: Descriptor,
        options: ExportOptions,
        credential_provider: Callable[[str, Challenge | None], Awaitable[Credentials | None]],
        remote: Collection[str] = (),
        packed: Sequence[str] = (),
    ) -> Descriptor:
        """Push; returns the root that was pushed (a merged index with merge-manifest).
        ``remote``: blob layers already in the target repository (chunk store); ``packed``:
        the blobs converted for this export, recorded in the chunk store once pushed."""
        ...


def merges_live_tag(options: ExportOptions) -> bool:
    """merge-manifest against the image currently under the (first) name: done at push time."""
    return options.push and options.merge_manifest and options.merge_manifest_source == "registry"


def with_root(conversion: Conversion, root: Descriptor) -> Conversion:
    """The conversion's response keys for another root (the merged index that was pushed)."""
    metadata = dict(conversion.metadata)
    raw = json.dumps(root.to_json(), separators=(",", ":")).encode()
    metadata["containerimage.digest"] = root.digest
    metadata["containerimage.descriptor"] = base64.b64encode(raw).decode()
    metadata.pop("containerimage.config.digest", None)  # the root is an index now
    return dataclasses.replace(conversion, metadata=metadata, descriptor=root.to_json())


class RegistryPusher:
    """The default :class:`Pusher`: ``push_image`` with the registry client, in a thread.

    Credentials come from the export's client through ``credential_provider`` (bridged from
    the registry client's private loop to the daemon's); the daemon's own docker config is
    consulted only when ``use_docker_config`` is set.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self._config = config

    async def __call__(
        self,
        *,
        layout: Path,
        root: Descriptor,
        options: ExportOptions,
        credential_provider: Callable[[str, Challenge | None], Awaitable[Credentials | None]],
        remote: Collection[str] = (),
        packed: Sequence[str] = (),
    ) -> Descriptor:
        registry = sync_registry(self._config, options, credential_provider, asyncio.get_running_loop())
        refs = [parse_reference(name).with_default_tag() for name in options.names]

        def push() -> Descriptor:
            with registry:
                staging = OciLayout.open(layout)
                pushed = root
                if merges_live_tag(options):
                    current = registry.get_manifest(refs[0])  # the image under the tag now
                    existing = current.raw if current is not None else None
                    manifests, attestations = split_root(staging, root)
                    pushed = merged_index(staging, existing, manifests, options, attestations)
                push_image(registry, staging, pushed, refs, remote=remote)
            if options.chunk_store:
                with ChunkStore.open(self._config.state_dir) as store:
                    results = [load_result(staging.blob_path(d), d) for d in packed]
                    record_packed(store, store_location(options), options.pack, results)
            return pushed

        return await asyncio.to_thread(push)

    async def verified_store_blobs(
        self,
        options: ExportOptions,
        credential_provider: Callable[[str, Challenge | None], Awaitable[Credentials | None]],
    ) -> tuple[str, ...]:
        """chunk-store=true: the store's blobs of the target repository that exist there (the
        others are forgotten), for the worker to reference."""
        registry = sync_registry(self._config, options, credential_provider, asyncio.get_running_loop())
        ref = parse_reference(options.names[0])

        def verify() -> tuple[str, ...]:
            with registry, ChunkStore.open(self._config.state_dir) as store:
                found = store.chunk_dict(
                    store_location(options),
                    chunk_size=options.pack.chunk_size,
                    digester=options.pack.digester,
                    compressor=options.pack.compressor,
                    verify=lambda digest, size: registry.blob_exists(ref, digest) == size,
                )
            return tuple(blob.digest for blob in found.blobs.values())

        return await asyncio.to_thread(verify)


def store_location(options: ExportOptions) -> str:
    ref = parse_reference(options.names[0])
    return f"{ref.api_host}/{ref.repository}"


def sync_registry(
    config: ServiceConfig,
    options: ExportOptions,
    credential_provider: Callable[[str, Challenge | None], Awaitable[Credentials | None]],
    loop: asyncio.AbstractEventLoop,
) -> SyncRegistry:
    """A registry client whose credentials come from the export's client (bridged from the
    client's private loop to ``loop``, where the broker lives); the daemon's own docker config
    only with ``use_docker_config``."""

    async def ask(host: str, challenge: Challenge | None) -> Credentials | None:
        return await credential_provider(host, challenge)

    async def bridge(host: str, challenge: Challenge | None) -> Credentials | None:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(ask(host, challenge), loop))

    refs = [parse_reference(name) for name in options.names]
    return SyncRegistry(
        credentials=None if config.use_docker_config else StaticCredentials({}),
        credential_provider=bridge,
        insecure_hosts=[ref.api_host for ref in refs] if options.insecure else [],
        ca_file=options.ca_file,
        **client_limits(
            options,
            RegistryLimits(
                config.registry_timeout, config.registry_retry_deadline, config.registry_tls_probe_timeout
            ),
        ),
    )
