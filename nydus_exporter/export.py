"""Export a whole image as a Nydus image: the in-process pipeline the CLI and the daemon share.

Per platform: pack every layer into a Nydus blob (layers in parallel, bounded), merge the
per-layer bootstraps with overlay semantics, build the bootstrap layer, the config and the
manifest ([format §6]), then write everything into an OCI image layout. The top-level result is the
manifest (one platform) or an index (several platforms, or ``merge-manifest``).

Only this module knows both the format (rafs, pack) and the image shape (oci).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from nydus_exporter import __version__
from nydus_exporter.errors import ConfigError, ExporterError, FormatError, excerpt
from nydus_exporter.layer.directory import iter_directory
from nydus_exporter.nydus_image_reader import NydusImage, open_image
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.bootstrap_layer import write_bootstrap_layer
from nydus_exporter.oci.descriptor import Descriptor, ImageIndex, ImageManifest, canonical_json, sha256_digest
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.nydus_image import (
    build_merged_index,
    build_nydus_config,
    build_nydus_manifest,
    is_nydus_entry,
)
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import Reference, parse_reference
from nydus_exporter.pack import PackOptions, pack_entries, pack_layer
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.blob_reader import BlobReader, blob_result
from nydus_exporter.rafs.bootstrap_reader import Bootstrap, read_bootstrap
from nydus_exporter.rafs.chunkdict import ChunkDict
from nydus_exporter.rafs.merge import MergeLayer, merge_layers
from nydus_exporter.rafs.model import walk
from nydus_exporter.sources import Source, SourceImage, SourceLayer, open_source

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    from nydus_exporter.chunkstore import ChunkStore, StoreDict
    from nydus_exporter.registry.credentials import CredentialProvider
    from nydus_exporter.registry.sync import SyncRegistry

_TRUE = ("", "1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def chunk_dict_image_spec(value: str) -> str:
    """``chunk-dict=`` as nydusify spells it (``bootstrap:registry:REF``), as a reference, or
    as an image spec (``docker://REF``, ``oci:DIR[:TAG]``) -> an image spec."""
    text = value.strip().removeprefix("bootstrap:registry:")
    if not text:
        raise ConfigError("chunk-dict needs an image reference")
    if text.startswith(("docker://", "oci:")):
        return text
    parse_reference(text)  # validates
    return f"docker://{text}"


def parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{key}={excerpt(value)} is not a boolean")


@dataclass(frozen=True)
class ExportOptions:
    """What ``--output type=nydus,...`` says ([contract §5.4])."""

    names: tuple[str, ...] = ()
    push: bool = True
    oci_layout: Path | None = None
    oci_mediatypes: bool = False
    merge_manifest: bool = False
    merge_manifest_mode: str = "artifact"  # "artifact" (alias "nydus-config") | "legacy"
    merge_manifest_source: str = "registry"  # "registry" (the tag's current image) | "build" (the source)
    insecure: bool = False  # registry.insecure: plain HTTP or unverified TLS for the named registries
    ca_file: Path | None = None
    chunk_dedup: bool = False  # layers reference chunks their lower layers stored ([format §4.2])
    chunk_dict: str | None = None  # a Nydus image whose chunks layers reference ([format §4.2])
    chunk_store: bool = False  # reference chunks the state dir's chunk store knows in the target
    platforms: tuple[Platform, ...] = ()
    pack: PackOptions = field(default_factory=PackOptions)
    parallel_layers: int = field(default_factory=lambda: os.cpu_count() or 1)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, str]) -> tuple[ExportOptions, list[str]]:
        """Validate exporter attrs; returns the options and warnings (unknown keys)."""
        warnings: list[str] = []
        kw: dict[str, object] = {}
        pack: dict[str, object] = {}
        annotations: dict[str, str] = {}
        for key, value in attrs.items():
            if key == "type":
                if value != "nydus":
                    raise ConfigError(f"type={excerpt(value)}: this exporter writes type=nydus")
            elif key == "name":
                names = tuple(n.strip() for n in value.split(",") if n.strip())
                for name in names:
                    parse_reference(name)
                kw["names"] = names
            elif key == "push":
                kw["push"] = parse_bool(key, value)
            elif key == "oci-layout":
                kw["oci_layout"] = Path(value)
            elif key == "oci-mediatypes":
                kw["oci_mediatypes"] = parse_bool(key, value)
            elif key == "merge-manifest":
                kw["merge_manifest"] = parse_bool(key, value)
            elif key == "merge-manifest-mode":
                mode = {"nydus-config": "artifact"}.get(value, value)
                if mode not in ("artifact", "legacy"):
                    raise ConfigError(f"merge-manifest-mode={excerpt(value)}: expected artifact or legacy")
                kw["merge_manifest_mode"] = mode
            elif key == "merge-manifest-source":
                if value not in ("registry", "build"):
                    raise ConfigError(f"merge-manifest-source={excerpt(value)}: expected registry or build")
                kw["merge_manifest_source"] = value
            elif key == "registry.insecure":
                kw["insecure"] = parse_bool(key, value)
            elif key == "chunk-dedup":
                kw["chunk_dedup"] = parse_bool(key, value)
            elif key == "chunk-store":
                kw["chunk_store"] = parse_bool(key, value)
            elif key in ("chunk-dict", "nydus-chunk-dict-image"):
                kw["chunk_dict"] = chunk_dict_image_spec(value)
            elif key == "registry.ca-file":
                kw["ca_file"] = Path(value)
            elif key == "platform":
                kw["platforms"] = tuple(Platform.parse(p) for p in value.split(",") if p.strip())
            elif key in ("compressor", "nydus-compressor", "compression"):
                if value == "nydus":
                    continue  # accepted for image-exporter symmetry
                if "compressor" in pack and pack["compressor"] != value:
                    raise ConfigError(
                        f"{key}={excerpt(value)} conflicts with compressor={excerpt(pack['compressor'])}"
                    )
                pack["compressor"] = value
            elif key in ("fs-version", "nydus-fs-version"):
                if value != "6":
                    raise ConfigError(f"{key}={excerpt(value)}: only RAFS v6 is supported")
            elif key == "chunk-size":
                try:
                    pack["chunk_size"] = int(value, 0)
                except ValueError:
                    raise ConfigError(f"chunk-size={excerpt(value)} is not a number") from None
            elif key == "digester":
                pack["digester"] = value
            elif key == "parallel-layers":
                try:
                    kw["parallel_layers"] = max(1, int(value))
                except ValueError:
                    raise ConfigError(f"parallel-layers={excerpt(value)} is not a number") from None
            elif key.startswith("annotation."):
                annotations[key.removeprefix("annotation.")] = value
            elif key in ("source-date-epoch", "standard-response-keys"):
                pass  # meaningful for registry pushes and the daemon; accepted here
            else:
                warnings.append(f"unknown exporter key {excerpt(key)} ignored")
        if annotations:
            kw["annotations"] = annotations
        options = cls(pack=PackOptions(**pack).validated(), **kw)  # type: ignore[arg-type]
        if not options.push and options.oci_layout is None:
            raise ConfigError("push=false needs oci-layout=DIR (where to write the image)")
        if options.push and not options.names:
            raise ConfigError("push=true needs name=REF (where to push the image)")
        return options, warnings


@dataclass(frozen=True)
class ProgressEvent:
    """What the pipeline reports while it runs (the CLI draws it, the daemon forwards it)."""

    kind: str  # "layer-start" | "layer-bytes" | "layer-done" | "image-done" | "message"
    platform: str = ""
    layer: int = -1  # index in the image, lowest first
    layers: int = 0  # layers in the image
    name: str = ""
    bytes_in: int = 0  # bytes of the source layer read so far (layer-bytes) or in all (layer-done)
    bytes_out: int = 0  # blob bytes written (layer-done)
    message: str = ""


Progress = Callable[[ProgressEvent], None]


class LayerHooks(Protocol):
    """Lets a caller supply converted layers and keep the ones it converts (the daemon's
    layer cache). Both are called from the pipeline's worker threads."""

    def converted(self, layer: SourceLayer) -> tuple[Path | None, BlobResult] | None:
        """A blob already converted from ``layer`` and its result: a file (moved into the
        output), or ``None`` for a blob that exists in the target repository."""
        ...

    def packed(self, layer: SourceLayer, blob: Path, result: BlobResult) -> None:
        """``layer`` was just converted into ``blob`` (inside the output: copy, do not move)."""
        ...


def _no_progress(event: ProgressEvent) -> None:
    pass


@dataclass
class Dictionary:
    """Chunks stored in blobs outside the image ([format §4.2]), with what the image needs of a blob it
    references: its layer descriptor, its blob.meta file, and where its bytes are."""

    chunks: ChunkDict = field(default_factory=ChunkDict)
    layers: dict[str, Descriptor] = field(default_factory=dict)  # blob id (digest hex) -> layer
    blob_metas: dict[str, bytes] = field(default_factory=dict)
    # blob id -> a stream of the blob, to copy it into the output; absent: the blob stays in
    # the target repository, where it was verified to exist (the chunk store's blobs)
    open_blob: dict[str, Callable[[], BinaryIO]] = field(default_factory=dict)
    # blob id -> the registry repository holding it (a chunk-dict image in a registry): a push
    # to the same registry mounts it instead of copying it through this machine
    mount_from: dict[str, Reference] = field(default_factory=dict)

    @classmethod
    def from_image(cls, image: NydusImage) -> Dictionary:
        """``chunk-dict=IMAGE``: every chunk of a Nydus image's merged bootstrap."""
        boot = read_bootstrap(image.bootstrap())
        layers = {d.digest.removeprefix("sha256:"): d for d in image.blob_layers}
        for blob in boot.blobs:
            if blob.blob_id not in layers:
                raise FormatError(
                    f"chunk dictionary {image.reference}: blob {blob.blob_id} is not one of its layers"
                )
        store = image.store

        def opener(digest: str) -> Callable[[], BinaryIO]:
            return lambda: store.open_blob(digest)

        opens = {hex_id: opener(desc.digest) for hex_id, desc in layers.items()}
        source: Reference | None = getattr(store, "reference", None)  # a RegistryStore's image
        mounts = {hex_id: source for hex_id in layers} if source is not None else {}
        return cls(ChunkDict.from_bootstrap(boot), layers, image.blob_metas(), opens, mounts)

    def extended(self, other: Dictionary) -> Dictionary:
        """This dictionary, then ``other`` for digests this one does not know."""
        chunks = self.chunks.copy()
        for blob in other.chunks.blobs:
            chunks.add_blob(blob, other.chunks.chunks_of(blob.blob_id))
        return Dictionary(
            chunks,
            {**other.layers, **self.layers},
            {**other.blob_metas, **self.blob_metas},
            {**other.open_blob, **self.open_blob},
            {**other.mount_from, **self.mount_from},
        )


@dataclass(frozen=True)
class PlatformResult:
    platform: str
    manifest: Descriptor
    config: Descriptor
    bootstrap_layer: Descriptor
    blob_layers: tuple[Descriptor, ...]
    dedup: DedupStats = field(default_factory=lambda: DedupStats())


@dataclass
class DedupStats:
    """Chunk references of an image's layers and where their bytes are ([format §4.2])."""

    chunks: int = 0  # chunk references of all files (a hardlinked file counts once)
    stored: int = 0  # chunks the layers stored themselves
    in_layer: int = 0  # references to a chunk stored earlier in the same layer
    from_lower_layers: int = 0  # references to a chunk a lower layer of the image stored
    from_chunk_dict: int = 0  # references to a chunk of the chunk dictionary image
    bytes_not_stored: int = 0  # compressed bytes all those references did not store again

    def add_layer(self, blob: BlobResult, boot: Bootstrap, image_blobs: set[str]) -> None:
        """Count ``blob``'s references; ``boot`` is its parsed (not yet merged) bootstrap."""
        own_index = boot.own_blob_index
        seen_inodes: set[int] = set()
        own_refs = 0
        for _path, node in walk(boot.root):
            if not node.inode.chunks or id(node.inode) in seen_inodes:
                continue
            seen_inodes.add(id(node.inode))
            for chunk in node.inode.chunks:
                self.chunks += 1
                if chunk.blob_index == own_index:
                    own_refs += 1
                    continue
                self.bytes_not_stored += chunk.compressed_size
                if boot.blobs[chunk.blob_index].blob_id in image_blobs:
                    self.from_lower_layers += 1
                else:
                    self.from_chunk_dict += 1
        self.stored += blob.chunk_count
        self.in_layer += own_refs - blob.chunk_count


@dataclass(frozen=True)
class ExportResult:
    descriptor: Descriptor  # the root: manifest, or index
    images: tuple[PlatformResult, ...]
    names: tuple[str, ...]
    oci_layout: Path | None
    warnings: tuple[str, ...] = ()
    compressor: str = "zstd"
    oci_manifests: Mapping[str, str] = field(default_factory=dict)  # merge-manifest: platform -> digest
    remote_blobs: tuple[str, ...] = ()  # blob layers left in the target repository (chunk store)
    packed: tuple[str, ...] = ()  # digests of the layer blobs this export converted

    def metadata(self) -> dict[str, str]:
        """Response keys as BuildKit's image exporter (and our nydus.* extensions) set them."""
        desc = json.dumps(self.descriptor.to_json(), separators=(",", ":")).encode()
        out = {
            "containerimage.digest": self.descriptor.digest,
            "containerimage.descriptor": base64.b64encode(desc).decode(),
            "nydus.manifest.digests": json.dumps({r.platform: r.manifest.digest for r in self.images}),
            "nydus.bootstrap.digests": json.dumps(
                {r.platform: r.bootstrap_layer.digest for r in self.images}
            ),
            "nydus.fs-version": "6",
            "nydus.compressor": self.compressor,
            "nydus.dedup": json.dumps({r.platform: dataclasses.asdict(r.dedup) for r in self.images}),
        }
        if self.oci_manifests:
            out["nydus.oci.manifest.digests"] = json.dumps(dict(self.oci_manifests))
        if self.names:
            out["image.name"] = ",".join(self.names)
        if len(self.images) == 1 and mt.is_manifest(self.descriptor.media_type):
            out["containerimage.config.digest"] = self.images[0].config.digest
        if self.oci_layout is not None:
            out["nydus.oci-layout.path"] = str(self.oci_layout)
        return out


def export(
    source_spec: str,
    options: ExportOptions,
    *,
    config: Path | None = None,
    whiteouts: str = "oci",
    progress: Progress = _no_progress,
    workdir: Path | None = None,
    credential_provider: CredentialProvider | None = None,
    state_dir: Path | None = None,
) -> ExportResult:
    """Run the whole pipeline: resolve the source, convert, write the OCI layout and/or push.

    ``state_dir`` holds the chunk store (``chunk-store=true``; default: the XDG state dir).
    """
    base = workdir or Path(tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix="nydus-export-", dir=base))
    try:
        with contextlib.ExitStack() as stack:
            registry = None
            if options.push or source_spec.startswith("docker://"):
                from nydus_exporter.registry.sync import SyncRegistry

                registry = stack.enter_context(
                    SyncRegistry(
                        insecure_hosts=_insecure_hosts(source_spec, options),
                        ca_file=options.ca_file,
                        credential_provider=credential_provider,
                    )
                )
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
                _StoreSession.open(options, registry, state_dir, stack, progress)
                if options.chunk_store
                else None
            )
            loader = _chunk_dict_loader(options, stack, store) if options.chunk_dict or store else None
            result = export_source(
                source,
                options,
                workdir=tmp,
                progress=progress,
                registry=registry,
                chunk_dicts=loader,
                hooks=store,
                on_pushed=store.record if store is not None else None,
            )
            return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _chunk_dict_loader(
    options: ExportOptions, stack: contextlib.ExitStack, store: _StoreSession | None
) -> Callable[[Platform | None], Dictionary]:
    """The outside chunks each image may reference: the chunk store's (one dictionary for
    every platform) and the ``chunk-dict`` image's (opened once per platform: its own image
    for that platform when it has one, else its only or host image; closed with ``stack``)."""
    from nydus_exporter.registry_store import RegistryOptions

    where = RegistryOptions(insecure=options.insecure, ca_file=options.ca_file)
    loaded: dict[str, Dictionary] = {}

    def load(platform: Platform | None) -> Dictionary:
        key = str(platform)
        if key not in loaded:
            found = store.dictionary() if store is not None else Dictionary()
            if options.chunk_dict is not None:
                try:
                    image = open_image(options.chunk_dict, platform, registry=where)
                except ConfigError:
                    image = open_image(options.chunk_dict, None, registry=where)  # one platform only
                stack.callback(image.close)
                found = Dictionary.from_image(image).extended(found)
            loaded[key] = found
        return loaded[key]

    return load


class _StoreSession:
    """The chunk store as one export uses it: the dictionary of the target repository (blobs
    verified there first), and recording what was pushed."""

    def __init__(
        self,
        store: ChunkStore,
        location: str,
        options: ExportOptions,
        verify: Callable[[str, int], bool],
        progress: Progress,
        read_at: Callable[[str, int, int], bytes] | None = None,
    ) -> None:
        self._progress = progress
        self._read_at = read_at
        self._layers: list[tuple[str, str]] = []
        self._store = store
        self._location = location
        self._options = options
        self._verify = verify
        self._dictionary: Dictionary | None = None

    @classmethod
    def open(
        cls,
        options: ExportOptions,
        registry: SyncRegistry | None,
        state_dir: Path | None,
        stack: contextlib.ExitStack,
        progress: Progress,
    ) -> _StoreSession:
        from nydus_exporter.chunkstore import ChunkStore, default_state_dir

        if not options.push or registry is None:
            raise ConfigError("chunk-store=true needs push=true: it remembers what a repository holds")
        ref = parse_reference(options.names[0])
        store = stack.enter_context(ChunkStore.open(state_dir or default_state_dir()))

        def verify(digest: str, size: int) -> bool:
            return registry.blob_exists(ref, digest) == size

        def read_at(digest: str, offset: int, length: int) -> bytes:
            return registry.read_blob_range(ref, digest, offset, length)

        return cls(store, f"{ref.api_host}/{ref.repository}", options, verify, progress, read_at)

    def dictionary(self) -> Dictionary:
        if self._dictionary is None:
            pack = self._options.pack
            try:
                found = self._store.chunk_dict(
                    self._location,
                    chunk_size=pack.chunk_size,
                    digester=pack.digester,
                    compressor=pack.compressor,
                    verify=self._verify,
                )
            except ExporterError as exc:  # a registry or store problem: convert without the store
                self._progress(ProgressEvent("message", message=f"chunk store not used: {exc}"))
                self._dictionary = Dictionary()
                return self._dictionary
            self._dictionary = store_dictionary(found)
        return self._dictionary

    # -- LayerHooks: the layer conversion cache ------------------------------------------------

    def _fingerprint(self) -> str:
        pack = self._options.pack
        return f"{__version__}/{pack.chunk_size}/{pack.compressor}/{pack.digester}"

    def converted(self, layer: SourceLayer) -> tuple[Path | None, BlobResult] | None:
        """A conversion of this source layer the target repository already holds."""
        if not layer.name.startswith("sha256:"):
            return None
        found = self._store.find_layer(self._location, layer.name, self._fingerprint())
        if found is None:
            return None
        digest, size = found
        try:
            if not self._verify(digest, size):
                self._store.forget_blob(self._location, digest)
                return None
            assert self._read_at is not None
            read_at = self._read_at
            reader = BlobReader(lambda offset, length: read_at(digest, offset, length), size)
            return None, blob_result(reader, digest)
        except ExporterError as exc:
            self._progress(ProgressEvent("message", message=f"layer cache not used for {layer.name}: {exc}"))
            return None

    def packed(self, layer: SourceLayer, blob: Path, result: BlobResult) -> None:
        if layer.name.startswith("sha256:") and len(read_bootstrap(result.bootstrap).blobs) <= 1:
            self._layers.append((layer.name, result.digest))  # recorded once pushed

    def record(self, packed: Sequence[BlobResult]) -> None:
        """Remember the chunks of the blobs just pushed (their own chunks only), and which
        source layers they are conversions of."""
        pack = self._options.pack
        for source, digest in self._layers:
            self._store.record_layer(self._location, source, self._fingerprint(), digest)
        record_packed(self._store, self._location, pack, packed)


def store_dictionary(found: StoreDict) -> Dictionary:
    """The chunk store's verified blobs of a repository as a :class:`Dictionary` (the blobs
    stay in the repository: nothing to copy)."""
    blobs = found.blobs.values()
    layers = {
        b.digest.removeprefix("sha256:"): Descriptor(mt.MEDIA_TYPE_NYDUS_BLOB, b.digest, b.size)
        for b in blobs
    }
    metas = {b.digest.removeprefix("sha256:"): b.blob_meta for b in blobs if b.blob_meta is not None}
    return Dictionary(found.chunks, layers, metas)


def record_packed(store: ChunkStore, location: str, pack: PackOptions, packed: Sequence[BlobResult]) -> None:
    """Record in ``store`` the chunks each pushed blob stored itself, at ``location``."""
    for blob in packed:
        if blob.blob_info is None:
            continue
        store.record_blob(
            location,
            blob.digest,
            blob.size,
            blob.blob_info,
            read_bootstrap(blob.bootstrap).own_chunks(),
            blob.blob_meta,
            chunk_size=pack.chunk_size,
            digester=pack.digester,
            compressor=pack.compressor,
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
    progress: Progress = _no_progress,
    registry: SyncRegistry | None = None,
    hooks: LayerHooks | None = None,
    chunk_dicts: Callable[[Platform | None], Dictionary] | None = None,
    on_pushed: Callable[[Sequence[BlobResult]], None] | None = None,
) -> ExportResult:
    if options.oci_layout is None and not options.push:
        raise ConfigError("no output: give oci-layout=DIR or push=true")
    if options.push and registry is None:
        raise ConfigError("push=true needs a registry client")
    out = OciLayout.create(options.oci_layout or workdir / "push-layout")
    converter = _Converter(out, options, workdir, progress, hooks, chunk_dicts)
    results = [converter.convert(image) for image in source.images]
    refs = [parse_reference(name).with_default_tag() for name in options.names]
    existing = None
    if options.merge_manifest:
        if options.push and options.merge_manifest_source == "registry":
            assert registry is not None
            current = registry.get_manifest(refs[0])  # the image under the tag now (None: no tag yet)
            existing = current.raw if current is not None else None
        else:
            existing = _source_top(out, source, push=options.push)
    root = _root_descriptor(out, existing, results, options)
    if options.oci_layout is not None:
        for tag in _tags(options.names) or [None]:
            out.add_manifest(root, tag=tag)
    if options.push:
        assert registry is not None
        from nydus_exporter.push import push_image

        stats = push_image(
            registry,
            out,
            root,
            refs,
            on_blob=lambda digest, outcome: progress(
                ProgressEvent("message", message=f"{digest}: {outcome}")
            ),
            remote=converter.remote_blobs,
            mountable=converter.mountable,
        )
        if on_pushed is not None:
            on_pushed(converter.packed)
        progress(
            ProgressEvent(
                "message",
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
        oci_manifests=_oci_manifests(out, root) if options.merge_manifest else {},
        remote_blobs=tuple(sorted(converter.remote_blobs)),
        packed=tuple(blob.digest for blob in converter.packed),
    )


def _oci_manifests(out: OciLayout, root: Descriptor) -> dict[str, str]:
    """platform -> digest of the plain (non-Nydus) manifests a merged index keeps."""
    index = ImageIndex.parse(out.read_blob(root.digest))
    return {
        str(entry.platform): entry.digest
        for entry in index.manifests
        if entry.platform is not None and not is_nydus_entry(entry)
    }


def _tags(names: Sequence[str]) -> list[str | None]:
    tags: list[str | None] = []
    for name in names:
        ref = parse_reference(name)
        tags.append(ref.tag or "latest")
    return tags


class _Converter:
    """Converts the images of one export; identical source layers are packed once."""

    def __init__(
        self,
        out: OciLayout,
        options: ExportOptions,
        workdir: Path,
        progress: Progress,
        hooks: LayerHooks | None = None,
        chunk_dicts: Callable[[Platform | None], Dictionary] | None = None,
    ) -> None:
        self._out = out
        self._hooks = hooks
        self._chunk_dicts = chunk_dicts
        self.remote_blobs: set[str] = set()  # dictionary blobs left in the target repository
        # dictionary blobs to mount from another repository of the target registry when
        # pushing: digest -> (repository, copy it into the output instead)
        self.mountable: dict[str, tuple[str, Callable[[], None]]] = {}
        self.packed: list[BlobResult] = []  # every layer blob this export packed
        self._options = options
        self._workdir = workdir
        self._progress = progress
        self._packed: dict[str, BlobResult] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def convert(self, image: SourceImage) -> PlatformResult:
        platform = image.platform or Platform.of_config(image.config)
        label = str(platform) if platform else ""
        n = len(image.layers)
        dict_image = self._chunk_dicts(platform) if self._chunk_dicts is not None else None
        base = dict_image.chunks if dict_image is not None else None
        if self._options.chunk_dedup:
            # Each layer references the chunks its lower layers stored ([format §4.2]): one at a time.
            chunk_dict = base.copy() if base is not None else ChunkDict()
            blobs = []
            for i, layer in enumerate(image.layers):
                blob = self._pack_layer(layer, i, n, label, chunk_dict)
                chunk_dict.add_layer(read_bootstrap(blob.bootstrap), blob.blob_info)
                blobs.append(blob)
        else:  # layers in parallel, all against the same (read-only) dictionary, if any
            with ThreadPoolExecutor(max_workers=max(1, min(self._options.parallel_layers, n or 1))) as pool:
                futures = [
                    pool.submit(self._pack_layer, layer, i, n, label, base)
                    for i, layer in enumerate(image.layers)
                ]
                blobs = [f.result() for f in futures]

        # Each per-layer bootstrap is parsed once: counted here, then handed to the merge.
        layer_boots = [read_bootstrap(b.bootstrap) for b in blobs]
        dedup = DedupStats()
        image_blobs = {b.digest.removeprefix("sha256:") for b in blobs}
        for blob, layer_boot in zip(blobs, layer_boots, strict=True):
            dedup.add_layer(blob, layer_boot, image_blobs)
        # Directory sources already turned overlayfs whiteouts into OCI ones (layer/directory.py).
        merged = merge_layers(
            [
                MergeLayer(b.bootstrap, b.digest.removeprefix("sha256:"), parsed=layer_boot)
                for b, layer_boot in zip(blobs, layer_boots, strict=True)
            ]
        )
        blob_metas = []
        seen = set()
        for blob in blobs:
            hex_id = blob.digest.removeprefix("sha256:")
            if blob.blob_meta is not None and hex_id in merged.blob_ids and hex_id not in seen:
                seen.add(hex_id)
                blob_metas.append((hex_id, blob.blob_meta))
        # Dictionary-only blobs become extra blob layers after the image's own ([format §6.3]), copied
        # into the output so the image is complete.
        extra_layers = []
        for hex_id in merged.blob_ids:
            if hex_id in seen or any(b.digest.removeprefix("sha256:") == hex_id for b in blobs):
                continue
            assert dict_image is not None, "a blob outside the image needs a chunk dictionary"
            desc = dict_image.layers[hex_id]
            opener = dict_image.open_blob.get(hex_id)
            source = dict_image.mount_from.get(hex_id)
            if opener is None:
                self.remote_blobs.add(desc.digest)  # verified in the target repository
            elif source is not None and self._pushes_to(source):
                self.mountable[desc.digest] = (source.repository, self._fetcher(desc.digest, opener))
            elif not self._out.has_blob(desc.digest):
                self._fetcher(desc.digest, opener)()
            extra_layers.append(Descriptor(mt.MEDIA_TYPE_NYDUS_BLOB, desc.digest, desc.size))
            if hex_id in dict_image.blob_metas:
                blob_metas.append((hex_id, dict_image.blob_metas[hex_id]))
        oci = self._options.oci_mediatypes
        with self._out.blob_writer() as sink:
            boot = write_bootstrap_layer(sink, merged.bootstrap, blob_metas)
        bootstrap_desc = boot.descriptor(oci=oci)

        config_raw = build_nydus_config(
            image.config, [b.digest for b in blobs] + [d.digest for d in extra_layers], boot.diff_id
        )
        config_type = (
            mt.MEDIA_TYPE_NYDUS_CONFIG
            if self._options.merge_manifest and self._options.merge_manifest_mode == "artifact"
            else mt.config_media_type(oci=oci)
        )
        config_desc = Descriptor(config_type, self._out.write_blob(config_raw), len(config_raw))
        blob_descs = [Descriptor(mt.MEDIA_TYPE_NYDUS_BLOB, b.digest, b.size) for b in blobs] + extra_layers
        manifest_raw = build_nydus_manifest(
            config=config_desc,
            blob_layers=blob_descs,
            bootstrap_layer=bootstrap_desc,
            oci=oci,
            annotations=self._options.annotations or None,
        )
        manifest_desc = Descriptor(
            mt.manifest_media_type(oci=oci), self._out.write_blob(manifest_raw), len(manifest_raw),
            platform=platform,
        )  # fmt: skip
        self._progress(ProgressEvent("image-done", platform=label, layers=n, name=manifest_desc.digest))
        return PlatformResult(label, manifest_desc, config_desc, bootstrap_desc, tuple(blob_descs), dedup)

    def _pushes_to(self, source: Reference) -> bool:
        """Whether this export pushes to the registry ``source`` is in (so it can mount)."""
        return self._options.push and any(
            parse_reference(name).api_host == source.api_host for name in self._options.names
        )

    def _fetcher(self, digest: str, opener: Callable[[], BinaryIO]) -> Callable[[], None]:
        def fetch() -> None:
            if not self._out.has_blob(digest):
                with opener() as src, self._out.blob_writer(digest) as sink:
                    shutil.copyfileobj(src, sink, 1 << 20)

        return fetch

    def _pack_layer(
        self, layer: SourceLayer, index: int, total: int, label: str, chunk_dict: ChunkDict | None = None
    ) -> BlobResult:
        # A layer packed against a chunk dictionary depends on its lower layers: it is neither
        # shared between images nor taken from (or given to) the caller's layer cache.
        key = layer.name if layer.name.startswith("sha256:") and chunk_dict is None else None
        independent = not self._options.chunk_dedup and self._options.chunk_dict is None
        hooks = self._hooks if independent else None
        if key is not None:
            with self._lock:
                cached = self._packed.get(key)
            if cached is not None:
                self._progress(ProgressEvent("layer-done", label, index, total, layer.name, 0, cached.size))
                return cached
        if hooks is not None:
            hit = hooks.converted(layer)
            if hit is not None:
                blob, result = hit
                if blob is None:
                    self.remote_blobs.add(result.digest)
                else:
                    self._out.import_blob_file(blob, result.digest)
                self._progress(
                    ProgressEvent(
                        "layer-done", label, index, total, layer.name, 0, result.size, message="cached"
                    )
                )
                return result
        self._progress(ProgressEvent("layer-start", label, index, total, layer.name))
        with self._lock:
            self._counter += 1
            path = self._workdir / f"layer-{self._counter}.blob"
        counted = [0]

        def report(n: int) -> None:
            counted[0] += n
            self._progress(ProgressEvent("layer-bytes", label, index, total, layer.name, counted[0]))

        warn: Callable[[str], None] = lambda msg: self._progress(  # noqa: E731
            ProgressEvent("message", label, index, total, layer.name, message=msg)
        )
        with open(path, "wb", buffering=1 << 20) as f:
            if layer.directory is not None:
                entries = iter_directory(layer.directory, whiteouts=layer.whiteouts, on_warning=warn)
                result = pack_entries(
                    entries, f.write, self._options.pack, on_warning=warn, chunk_dict=chunk_dict
                )
            else:
                assert layer.open is not None
                with layer.open() as stream:
                    counting = cast(BinaryIO, _Counting(stream, report))
                    result = pack_layer(
                        counting, f.write, self._options.pack, on_warning=warn, chunk_dict=chunk_dict
                    )
        self._out.import_blob_file(path, result.digest)
        if hooks is not None:
            hooks.packed(layer, self._out.blob_path(result.digest), result)
        if key is not None:
            with self._lock:
                self._packed[key] = result
        self._progress(ProgressEvent("layer-done", label, index, total, layer.name, counted[0], result.size))
        with self._lock:
            self.packed.append(result)
        return result


class _Counting:
    """A read-through wrapper that reports consumed bytes (for progress) every few MiB."""

    _EVERY = 8 << 20

    def __init__(self, stream: BinaryIO, report: Callable[[int], None]) -> None:
        self._stream = stream
        self._report = report
        self._pending = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._count(len(data))
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        n = int(self._stream.readinto(b))  # type: ignore[attr-defined]
        self._count(n)
        return n

    def _count(self, n: int) -> None:
        self._pending += n
        if self._pending >= self._EVERY or n == 0:
            if self._pending:
                self._report(self._pending)
            self._pending = 0


def nydus_manifests(out: OciLayout, root: Descriptor) -> list[Descriptor]:
    """The per-platform Nydus manifests of a (not merged) export result's root."""
    if mt.is_manifest(root.media_type):
        return [root]
    return list(ImageIndex.parse(out.read_blob(root.digest)).manifests)


def merged_index(
    out: OciLayout, existing: bytes | None, manifests: Sequence[Descriptor], options: ExportOptions
) -> Descriptor:
    """The index that keeps ``existing`` (index or manifest, or nothing) and adds or replaces
    the Nydus ``manifests`` (each with its platform), written into ``out``."""
    for manifest in manifests:
        if manifest.platform is None:
            raise ConfigError(f"merge-manifest needs a platform for Nydus manifest {manifest.digest}")
        existing = build_merged_index(
            existing=existing,
            nydus_manifest=replace(manifest, platform=None),
            platform=manifest.platform,
            mode=options.merge_manifest_mode,  # type: ignore[arg-type]
            oci=options.oci_mediatypes,
        )
    assert existing is not None
    index = ImageIndex.parse(existing)
    return Descriptor(index.media_type, out.write_blob(existing), len(existing))


def _root_descriptor(
    out: OciLayout, existing: bytes | None, results: Sequence[PlatformResult], options: ExportOptions
) -> Descriptor:
    """The manifest (single platform) or an index of the Nydus manifests (merged or not)."""
    if options.merge_manifest:
        return merged_index(out, existing, [r.manifest for r in results], options)
    if len(results) == 1:
        return results[0].manifest
    index_raw = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": mt.index_media_type(oci=options.oci_mediatypes),
            "manifests": [r.manifest.to_json() for r in results],
        }
    )
    return Descriptor(
        mt.index_media_type(oci=options.oci_mediatypes), out.write_blob(index_raw), len(index_raw)
    )


def _source_top(out: OciLayout, source: Source, *, push: bool) -> bytes | None:
    """The source image (index or manifest) a merged index keeps, with its content copied into
    ``out`` so the result is complete (merge-manifest-source=build, or a local layout)."""
    if source.store is None:
        return None
    for image in source.images:
        if image.manifest is None or image.manifest_descriptor is None:
            continue
        manifest = ImageManifest.parse(image.manifest)
        for desc in (manifest.config, *manifest.layers):
            if not out.has_blob(desc.digest):
                with source.store.open_blob(desc.digest) as f, out.blob_writer(desc.digest) as sink:
                    shutil.copyfileobj(f, sink, 1 << 20)
        if not out.has_blob(image.manifest_descriptor.digest):
            out.write_blob(image.manifest)
    if source.index is not None:
        if not out.has_blob(sha256_digest(source.index)):
            out.write_blob(source.index)
        return source.index
    return source.images[0].manifest
