"""Open a Nydus image for reading: what the pipeline (``chunk-dict=IMAGE``) and the tools read
of an image an export produced, wherever it is (:mod:`.repository`).

:func:`open_image` picks the platform ([format §6.4]: a manifest whose last layer carries
``nydus-bootstrap``; in an index, entries marked Nydus first), reads and checks the manifest
and the config against their descriptors, and splits the layers into blob layers and the
bootstrap layer. The bootstrap layer (merged bootstrap + ``*.blob.meta`` files, [format §6.3]) is read
on first use, hashing both its compressed and uncompressed bytes on the way. Every problem
raises :class:`~nydus_exporter.errors.FormatError` (bad content) or
:class:`~nydus_exporter.errors.ConfigError` (bad argument) naming it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.image.repository import (
    ImageRepository,
    LayoutRepository,
    SpooledRepository,
    open_repository,
)
from nydus_exporter.layer.compression import open_layer_stream
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.bootstrap_layer import read_bootstrap_layer
from nydus_exporter.oci.descriptor import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    parse_json_object,
    verify_content,
)
from nydus_exporter.oci.nydus_image import (
    is_nydus_entry,
    is_nydus_manifest,
    resolve_nydus_manifest,
    split_nydus_layers,
)
from nydus_exporter.oci.platform import Platform
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import Bootstrap
from nydus_exporter.rafs.chunkinfo import ChunkInfo
from nydus_exporter.rafs.model import Inode

if TYPE_CHECKING:
    from nydus_exporter.image.registry import RegistryOptions

_READ_SIZE = 1 << 20
_MAX_DOCUMENT = 64 << 20  # manifests, configs and indexes are small


def host_platform_of() -> Platform:
    return Platform.host()


@dataclass
class BootstrapLayerContents:
    """What the bootstrap layer holds, with the digests of its two forms."""

    bootstrap: bytes  # image/image.boot: the merged bootstrap
    blob_metas: dict[str, bytes]  # blob hex -> image/<hex>.blob.meta
    digest: str  # sha256 of the stored (gzip) bytes
    size: int  # stored bytes
    diff_id: str  # sha256 of the uncompressed tar


@dataclass
class NydusImage:
    """One platform's Nydus image, opened through an :class:`ImageRepository`."""

    repository: ImageRepository
    reference: str
    platform: Platform | None
    manifest_descriptor: Descriptor  # as the index (or index.json) lists it
    manifest: ImageManifest
    config_raw: bytes
    config: dict[str, Any]
    blob_layers: list[Descriptor]
    bootstrap_layer: Descriptor
    _bootstrap: BootstrapLayerContents | None = field(default=None, repr=False)

    # -- bootstrap layer --------------------------------------------------------------------

    def bootstrap_layer_contents(self) -> BootstrapLayerContents:
        """The bootstrap layer read once: merged bootstrap, blob.meta files and digests."""
        if self._bootstrap is None:
            self._bootstrap = read_bootstrap_layer_contents(self.repository, self.bootstrap_layer)
        return self._bootstrap

    def bootstrap(self) -> bytes:
        """The merged bootstrap (``image/image.boot``)."""
        return self.bootstrap_layer_contents().bootstrap

    def blob_metas(self) -> dict[str, bytes]:
        """``{blob hex: blob.meta bytes}`` of the bootstrap layer ([format §3.10])."""
        return self.bootstrap_layer_contents().blob_metas

    # -- blobs ------------------------------------------------------------------------------

    def blob_layer(self, blob_id: str) -> Descriptor:
        """The blob layer whose digest hex is ``blob_id`` (a merged blob table id, [format §5.3])."""
        for layer in self.blob_layers:
            if layer.hex == blob_id:
                return layer
        raise FormatError(f"the bootstrap names blob {blob_id}, which is not a layer of the image")

    def blob_size(self, layer: Descriptor) -> int:
        return self.repository.blob_size(layer.digest)

    def open_blob(self, layer: Descriptor) -> BinaryIO:
        """The blob's bytes as a stream (the caller closes it)."""
        return self.repository.open_blob(layer.digest)

    def blob_reader(self, layer: Descriptor) -> BlobReader:
        """Random access to a blob layer's ToC, ci, chunks and embedded bootstrap."""
        size = self.repository.blob_size(layer.digest)
        digest = layer.digest
        repo = self.repository

        def read_at(offset: int, length: int) -> bytes:
            return repo.read_at(digest, offset, length)

        return BlobReader(read_at, size)

    def spool_if_remote(self, directory: Path | None = None) -> None:
        """Read blobs at random from local copies (:class:`SpooledRepository`) unless the repository
        is an OCI layout already (for tools that read every blob whole)."""
        if not isinstance(self.repository, LayoutRepository | SpooledRepository):
            self.repository = SpooledRepository(self.repository, directory)

    def close(self) -> None:
        self.repository.close()

    def __enter__(self) -> NydusImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HashingReader(io.RawIOBase):
    """Read-through stream that hashes and counts what passes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(b))
        n = len(data)
        if n:
            memoryview(b)[:n] = data
            self.hash.update(data)
            self.size += n
        return n

    def drain(self) -> None:
        while self.read(_READ_SIZE):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def read_bootstrap_layer_contents(repo: ImageRepository, layer: Descriptor) -> BootstrapLayerContents:
    """Read the bootstrap layer once, hashing the stored bytes (layer digest) and the
    uncompressed tar (diff_id) while :func:`read_bootstrap_layer` parses it."""
    with repo.open_blob(layer.digest) as raw:
        stored = _HashingReader(raw)
        plain = _HashingReader(open_layer_stream(cast(BinaryIO, io.BufferedReader(stored, _READ_SIZE))))
        bootstrap, metas = read_bootstrap_layer(cast(BinaryIO, io.BufferedReader(plain, _READ_SIZE)))
        plain.drain()
        stored.drain()
    return BootstrapLayerContents(bootstrap, metas, stored.digest, stored.size, plain.digest)


def _fetch(repo: ImageRepository) -> Callable[[Descriptor], bytes]:
    def fetch(desc: Descriptor) -> bytes:
        return repo.read_blob(desc.digest)

    return fetch


def _platform_of_config(config: dict[str, Any]) -> Platform | None:
    os_name, arch = config.get("os"), config.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    variant = config.get("variant")
    return Platform(os_name, arch, variant if isinstance(variant, str) and variant else None)


def _index_platforms(index: ImageIndex) -> list[Platform]:
    """Distinct platforms of the index entries that may be Nydus images (marked first)."""
    seen: list[Platform] = []
    entries = sorted(index.manifests, key=lambda d: not is_nydus_entry(d))
    for entry in entries:
        plat = entry.platform
        if plat is None or plat.os == "unknown":  # attestation manifests
            continue
        if not any(plat.matches(p) for p in seen):
            seen.append(Platform(plat.os, plat.architecture, plat.variant, plat.os_version))
    return seen


def _select_from_index(
    repo: ImageRepository, data: bytes, platform: Platform | None
) -> tuple[Descriptor, bytes, Platform]:
    fetch = _fetch(repo)
    if platform is not None:
        desc, raw = resolve_nydus_manifest(data, fetch, platform)
        return desc, raw, platform
    candidates: list[tuple[Descriptor, bytes, Platform]] = []
    for plat in _index_platforms(ImageIndex.parse(data)):
        try:
            desc, raw = resolve_nydus_manifest(data, fetch, plat)
        except FormatError:
            continue
        candidates.append((desc, raw, plat))
    if not candidates:
        raise FormatError(
            f"{repo.name}: not a Nydus image (no manifest whose last layer is a Nydus bootstrap)"
        )
    if len(candidates) == 1:
        return candidates[0]
    host = host_platform_of()
    for candidate in candidates:
        if candidate[2].matches(host):
            return candidate
    names = ", ".join(str(c[2]) for c in candidates)
    raise ConfigError(f"{repo.name} holds Nydus images for {names}: choose one with --platform")


def open_image(
    spec: str, platform: Platform | str | None = None, *, registry: RegistryOptions | None = None
) -> NydusImage:
    """Open the Nydus image ``spec`` (``oci:DIR[:TAG]`` or ``docker://REF``) for ``platform``.

    Without a platform: the only Nydus image, else the host's. The manifest and the config
    are checked against their descriptors (digest and size); the caller closes the result.
    ``registry``: how to reach a ``docker://`` image (insecure, CA file, credentials).
    """
    repo, tag = open_repository(spec, registry)
    return open_image_in(repo, spec, tag, platform)


def open_image_in(
    repo: ImageRepository, spec: str, tag: str | None = None, platform: Platform | str | None = None
) -> NydusImage:
    """Like :func:`open_image` over an already open ``repository`` (e.g. wrapped in a
    :class:`CountingRepository`); ``spec`` only names the image in messages. The repository is closed
    on failure, else by the image."""
    try:
        if isinstance(platform, str):
            platform = Platform.parse(platform)
        return _open(repo, spec, tag, platform)
    except BaseException:
        repo.close()
        raise


def _open(repo: ImageRepository, spec: str, tag: str | None, platform: Platform | None) -> NydusImage:
    top = repo.resolve(tag)
    if not (mt.is_manifest(top.media_type) or mt.is_index(top.media_type)):
        raise FormatError(f"{spec}: the tag points at {top.media_type}, not a manifest or index")
    data = repo.read_blob(top.digest)
    try:
        verify_content(data, top)
    except FormatError as exc:
        raise FormatError(f"{spec}: the manifest or index does not match its descriptor: {exc}") from None
    if mt.is_manifest(top.media_type):
        if not is_nydus_manifest(data):
            raise FormatError(
                f"{spec}: not a Nydus image (the last layer has no {mt.ANNOTATION_NYDUS_BOOTSTRAP})"
            )
        manifest_desc, manifest_raw = top, data
    else:
        manifest_desc, manifest_raw, platform = _select_from_index(repo, data, platform)
    manifest = ImageManifest.parse(manifest_raw)
    config_raw = repo.read_blob(manifest.config.digest)
    try:
        verify_content(config_raw, manifest.config)
    except FormatError as exc:
        raise FormatError(f"{spec}: the config does not match its descriptor: {exc}") from None
    config = parse_json_object(config_raw, f"config {manifest.config.digest}")
    image_platform = manifest_desc.platform or _platform_of_config(config)
    if platform is not None and image_platform is not None and not image_platform.matches(platform):
        raise ConfigError(f"{spec} is a {image_platform} image, not {platform}")
    blobs, bootstrap_layer = split_nydus_layers(manifest_raw)
    return NydusImage(
        repository=repo,
        reference=spec,
        platform=image_platform or platform,
        manifest_descriptor=manifest_desc,
        manifest=manifest,
        config_raw=config_raw,
        config=config,
        blob_layers=list(blobs),
        bootstrap_layer=bootstrap_layer,
    )


class FileContent:
    """Reads regular files of a merged bootstrap chunk by chunk from the image's blobs.

    Chunks are located through each blob's own ci array (what nydusd uses, [format §7.1]) at the ci
    index the bootstrap records; a chunk whose sizes disagree with the bootstrap's chunk table
    entry raises :class:`FormatError`. One chunk (<= the chunk size) is in memory at a time.
    """

    def __init__(self, image: NydusImage, bootstrap: Bootstrap) -> None:
        self._image = image
        self._bootstrap = bootstrap
        self._readers: dict[int, tuple[BlobReader, list[ChunkInfo]]] = {}

    def _blob(self, blob_index: int) -> tuple[BlobReader, list[ChunkInfo]]:
        found = self._readers.get(blob_index)
        if found is None:
            if blob_index >= len(self._bootstrap.blobs):
                raise FormatError(f"chunk names blob {blob_index} of {len(self._bootstrap.blobs)}")
            layer = self._image.blob_layer(self._bootstrap.blobs[blob_index].blob_id)
            reader = self._image.blob_reader(layer)
            found = (reader, reader.chunk_infos())
            self._readers[blob_index] = found
        return found

    def iter_file(self, inode: Inode) -> Iterator[bytes]:
        """The content of a regular file, one chunk at a time."""
        left = inode.size
        for ref in inode.chunks:
            if left <= 0:
                break
            reader, infos = self._blob(ref.blob_index)
            if ref.index >= len(infos):
                raise FormatError(
                    f"chunk (blob {ref.blob_index}, ci {ref.index}) is beyond the blob's {len(infos)} chunks"
                )
            info = infos[ref.index]
            if info.uncompressed_size != ref.uncompressed_size:
                raise FormatError(
                    f"chunk (blob {ref.blob_index}, ci {ref.index}) has {info.uncompressed_size} bytes in "
                    f"the blob but {ref.uncompressed_size} in the bootstrap"
                )
            data = reader.read_chunk(info)
            piece = data[: min(len(data), left)]
            left -= len(piece)
            yield piece
        if left:
            raise FormatError(f"file chunks hold {inode.size - left} of its {inode.size} bytes")

    def sha256(self, inode: Inode) -> str:
        h = hashlib.sha256()
        for piece in self.iter_file(inode):
            h.update(piece)
        return h.hexdigest()
