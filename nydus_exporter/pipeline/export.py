"""Export a whole image as a Nydus image: the in-process pipeline the CLI and the daemon share.

Per platform: pack every layer into a Nydus blob (layers in parallel, bounded), merge the
per-layer bootstraps with overlay semantics, build the bootstrap layer, the config and the
manifest ([format §6]), then write everything into an OCI image layout. The top-level result
is the manifest (one platform) or an index (several platforms, or ``merge-manifest``).

This module runs the steps; each concern has its module: :mod:`.options` (the output keys),
:mod:`.convert` (layers -> blobs -> one image), :mod:`.external` (chunks of blobs outside the
image), :mod:`.chunk_store_session` (the chunk store during one export), :mod:`.index` (the
manifest or index on top), :mod:`.result` (response keys), :mod:`.progress` (events).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nydus_exporter.errors import ConfigError
from nydus_exporter.image.reader import open_image
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.pipeline.chunk_store_session import ChunkStoreSession
from nydus_exporter.pipeline.convert import Converter, LayerHooks
from nydus_exporter.pipeline.external import ExternalBlobs
from nydus_exporter.pipeline.index import (
    attached,
    named_descriptor,
    oci_manifests,
    root_descriptor,
    source_top,
    tags_of,
)
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.pipeline.progress import Progress, ProgressEvent, no_progress
from nydus_exporter.pipeline.registry_limits import client_limits
from nydus_exporter.pipeline.result import ExportResult
from nydus_exporter.pipeline.sources import Source, open_source
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.model import ChunkRef

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    from nydus_exporter.registry.credentials import CredentialProvider
    from nydus_exporter.registry.sync import SyncRegistry


def export(
    source_spec: str,
    options: ExportOptions,
    *,
    config: Path | None = None,
    whiteouts: str = "oci",
    progress: Progress = no_progress,
    workdir: Path | None = None,
    credential_provider: CredentialProvider | None = None,
    state_dir: Path | None = None,
) -> ExportResult:
    """Run the whole pipeline: resolve the source, convert, write the OCI layout and/or push.

    ``state_dir`` holds the chunk store (``chunk-store=true``; default: the XDG state dir).
    """
    base = workdir or Path(tempfile.gettempdir())
    created = _first_missing(options.oci_layout) if options.oci_layout is not None else None
    tmp = Path(tempfile.mkdtemp(prefix="nydus-export-", dir=base))
    try:
        with contextlib.ExitStack() as stack:
            registry = None
            if options.push or source_spec.startswith("docker://"):
                registry = stack.enter_context(registry_for(source_spec, options, credential_provider))
            source = stack.enter_context(
                open_source(
                    source_spec,
                    workdir=tmp,
                    config=config,
                    whiteouts=whiteouts,
                    platforms=options.platforms or None,
                    registry=registry,
                )
            )
            store = (
                ChunkStoreSession.open(options, registry, state_dir, stack, progress)
                if options.chunk_store
                else None
            )
            loader = _external_blobs_loader(options, stack, store) if options.chunk_dict or store else None
            result = export_source(
                source,
                options,
                workdir=tmp,
                progress=progress,
                registry=registry,
                external_blobs=loader,
                hooks=store,
                on_pushed=store.record if store is not None else None,
            )
            return result
    except BaseException:
        if created is not None:
            # The output layout (and its missing parents) came from this failed export alone.
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None: it exists)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing = candidate
    return missing


def _external_blobs_loader(
    options: ExportOptions, stack: contextlib.ExitStack, store: ChunkStoreSession | None
) -> Callable[[Platform | None], ExternalBlobs]:
    """The outside chunks each image may reference: the chunk store's (one set for
    every platform) and the ``chunk-dict`` image's (opened once per platform: its own image
    for that platform when it has one, else its only or host image; closed with ``stack``)."""
    from nydus_exporter.image.registry import RegistryOptions

    limits = client_limits(options)
    where = RegistryOptions(
        insecure=options.insecure,
        ca_file=options.ca_file,
        retry=limits.get("retry"),
        timeouts=limits.get("timeouts"),
    )
    loaded: dict[str, ExternalBlobs] = {}

    def load(platform: Platform | None) -> ExternalBlobs:
        key = str(platform)
        if key not in loaded:
            found = store.external_blobs() if store is not None else ExternalBlobs()
            if options.chunk_dict is not None:
                try:
                    image = open_image(options.chunk_dict, platform, registry=where)
                except ConfigError:
                    image = open_image(options.chunk_dict, None, registry=where)  # one platform only
                stack.callback(image.close)
                found = ExternalBlobs.from_image(image).extended(found)
            loaded[key] = found
        return loaded[key]

    return load


def registry_for(
    source_spec: str, options: ExportOptions, credential_provider: CredentialProvider | None = None
) -> SyncRegistry:
    """The registry client of an export (its pushes and a ``docker://`` source), with the
    output keys' ``registry.*`` settings. Also what ``export --addr`` reads a ``docker://``
    source with, on the client's side."""
    from nydus_exporter.registry.sync import SyncRegistry

    return SyncRegistry(
        insecure_hosts=_insecure_hosts(source_spec, options),
        ca_file=options.ca_file,
        credential_provider=credential_provider,
        **client_limits(options),
    )


def _insecure_hosts(source_spec: str, options: ExportOptions) -> list[str]:
    """registry.insecure applies to the registries of the names (and of a docker:// source)."""
    if not options.insecure:
        return []
    hosts = [parse_reference(name).api_host for name in options.names]
    if source_spec.startswith("docker://"):
        hosts.append(parse_reference(source_spec.removeprefix("docker://")).api_host)
    return hosts


def export_source(
    source: Source,
    options: ExportOptions,
    *,
    workdir: Path,
    progress: Progress = no_progress,
    registry: SyncRegistry | None = None,
    hooks: LayerHooks | None = None,
    external_blobs: Callable[[Platform | None], ExternalBlobs] | None = None,
    on_pushed: Callable[[Sequence[BlobResult], Mapping[str, Sequence[ChunkRef]]], None] | None = None,
) -> ExportResult:
    """Convert ``source`` and write (and push) the result; each image's attestations are
    attached to its Nydus manifest ([contract §5.7])."""
    if options.oci_layout is None and not options.push:
        raise ConfigError("no output: give oci-layout=DIR or push=true")
    if options.push and registry is None:
        raise ConfigError("push=true needs a registry client")
    if options.oci_layout is not None:
        out = OciLayout.create(options.oci_layout)
    else:  # staging for the push only
        out = OciLayout.create(workdir / "push-layout", durable=False)
    refs = [parse_reference(name).with_default_tag() for name in options.names]
    with contextlib.ExitStack() as stack:
        early = None
        if options.push:
            assert registry is not None
            from nydus_exporter.pipeline.early_push import EarlyPush

            early = EarlyPush(registry, out, refs[0])  # layer blobs upload while the next ones convert
            stack.callback(early.close)
        on_blob = early.blob_ready if early is not None else None
        converter = Converter(out, options, workdir, progress, hooks, external_blobs, on_blob=on_blob)
        results = [converter.convert(image) for image in source.images]
        existing = None
        if options.merge_manifest:
            if options.push and options.merge_manifest_source == "registry":
                assert registry is not None
                current = registry.get_manifest(refs[0])  # the image under the tag now (None: no tag yet)
                existing = current.raw if current is not None else None
            else:
                existing = source_top(out, source, push=options.push)
        attestations, inline_only = attached([image.attestations for image in source.images], options)
        root = root_descriptor(out, existing, results, options, attestations)
        if options.oci_layout is not None:
            named: list[tuple[str | None, str | None]] = [*tags_of(options.names)] or [(None, None)]
            for tag, image_name in named:
                out.add_manifest(named_descriptor(root, image_name), tag=tag)
        if options.push:
            assert registry is not None
            from nydus_exporter.pipeline.push import push_image

            stats = push_image(
                registry,
                out,
                root,
                refs,
                on_blob=lambda digest, outcome: progress(
                    ProgressEvent("info", message=f"{digest}: {outcome}")
                ),
                remote=converter.remote_blobs,
                mountable=converter.mountable,
                pushed=early.results() if early is not None else None,
            )
            if on_pushed is not None:
                on_pushed(converter.packed, converter.own_chunks)
            progress(
                ProgressEvent(
                    "info",
                    message=f"pushed {stats.blobs} blobs ({stats.uploaded} uploaded, "
                    f"{stats.uploaded_bytes} bytes; {stats.mounted} mounted; {stats.existing} already there)",
                )
            )
        return ExportResult(
            root,
            tuple(results),
            options.names,
            options.oci_layout,
            compressor=options.pack.compressor,
            oci_manifests=oci_manifests(out, root) if options.merge_manifest else {},
            remote_blobs=tuple(sorted(converter.remote_blobs)),
            packed=tuple(blob.digest for blob in converter.packed),
            warnings=(
                (
                    f"{inline_only} inline-only attestation(s) not attached: a single-platform "
                    "image has no index for them (as with BuildKit's image exporter)",
                )
                if inline_only
                else ()
            ),
        )
