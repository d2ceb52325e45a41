"""Open a Nydus image for reading: the verification tools' view of what an export produced.

``IMAGE`` is ``oci:DIR[:TAG]`` (an OCI image layout) or ``docker://HOST/REPO[:TAG|@DIGEST]``
(a registry, :mod:`nydus_exporter.registry_store`). The content lives behind the small
:class:`ImageStore` protocol, so ``check`` / ``unpack`` / ``mount`` / ``cat`` do not care
where it is: it resolves a tag, reads small documents whole (verified against their digest),
streams blobs and reads byte ranges of them. Two wrappers: :class:`SpooledStore` downloads a
remote blob once when it is read at random (for tools that read every byte, e.g. ``check``),
:class:`CountingStore` counts what a tool read (``cat --stats``).

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
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from nydus_exporter.errors import ConfigError, FormatError, RegistryNotFoundError
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
from nydus_exporter.oci.layout import OciLayout
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
    from nydus_exporter.registry_store import RegistryOptions

_READ_SIZE = 1 << 20
_MAX_DOCUMENT = 64 << 20  # manifests, configs and indexes are small


class ImageStore(Protocol):
    """Where the content of an image lives (an OCI layout today, a registry later)."""

    @property
    def name(self) -> str:
        """How messages name the store (``oci:/path``)."""
        ...

    def resolve(self, tag: str | None) -> Descriptor:
        """The descriptor a tag points at (``None``: the only image of the store)."""
        ...

    def read_blob(self, digest: str) -> bytes:
        """A small blob (manifest, config, index) whole, verified against ``digest``."""
        ...

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream of the blob's bytes (not verified; the caller closes it)."""
        ...

    def read_at(self, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the blob (fewer only at its end)."""
        ...

    def blob_size(self, digest: str) -> int:
        """The stored size of the blob in bytes."""
        ...

    def close(self) -> None:
        """Release what the store holds open."""
        ...


class OciLayoutStore:
    """:class:`ImageStore` over an OCI image layout directory. Blob files opened for
    :meth:`read_at` stay open (one descriptor per blob) until :meth:`close`."""

    def __init__(self, layout: OciLayout) -> None:
        self._layout = layout
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> OciLayoutStore:
        return cls(OciLayout.open(path))

    @property
    def layout(self) -> OciLayout:
        return self._layout

    @property
    def name(self) -> str:
        return f"oci:{self._layout.root}"

    def resolve(self, tag: str | None) -> Descriptor:
        return self._layout.resolve(tag)

    def read_blob(self, digest: str) -> bytes:
        return self._layout.read_blob(digest, _MAX_DOCUMENT)

    def open_blob(self, digest: str) -> BinaryIO:
        return self._layout.open_blob(digest)

    def _fd(self, digest: str) -> int:
        with self._lock:
            fd = self._fds.get(digest)
            if fd is None:
                try:
                    fd = os.open(self._layout.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise FormatError(f"blob {digest} not found in {self.name}") from None
                self._fds[digest] = fd
            return fd

    def read_at(self, digest: str, offset: int, length: int) -> bytes:
        return os.pread(self._fd(digest), length, offset)

    def blob_size(self, digest: str) -> int:
        try:
            return self._layout.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise FormatError(f"blob {digest} not found in {self.name}") from None

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def parse_image_spec(spec: str) -> tuple[str, str, str | None]:
    """``oci:DIR[:TAG]`` -> ``("oci", DIR, TAG)``; ``docker://REF`` -> ``("docker", REF, None)``
    (the tag or digest stays in the reference); :class:`ConfigError` otherwise."""
    if spec.startswith("docker://"):
        ref = spec.removeprefix("docker://")
        if not ref:
            raise ConfigError(f"image {spec!r}: expected docker://HOST/REPO[:TAG|@DIGEST]")
        return "docker", ref, None
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest or scheme != "oci":
        raise ConfigError(f"image {spec!r}: expected oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
    # A tag never contains '/'; a directory path may contain ':' only before it.
    path, colon, tag = rest.rpartition(":")
    if colon and path and "/" not in tag and tag:
        return scheme, path, tag
    return scheme, rest, None


def open_store(spec: str, registry: RegistryOptions | None = None) -> tuple[ImageStore, str | None]:
    """The store ``spec`` names and the tag inside it (``registry``: how to reach a
    ``docker://`` image; ignored for ``oci:``)."""
    scheme, path, tag = parse_image_spec(spec)
    if scheme == "docker":
        from nydus_exporter.registry_store import RegistryStore  # aiohttp only when needed

        return RegistryStore.open(path, registry), None
    directory = Path(path)
    if not directory.is_dir() and tag is not None and Path(f"{path}:{tag}").is_dir():
        directory, tag = Path(f"{path}:{tag}"), None  # a directory whose name has a ':'
    return OciLayoutStore.open(directory), tag


class StoreWrapper:
    """An :class:`ImageStore` that passes everything to ``inner``; wrappers override parts."""

    def __init__(self, inner: ImageStore) -> None:
        self._inner = inner

    @property
    def inner(self) -> ImageStore:
        return self._inner

    @property
    def name(self) -> str:
        return self._inner.name

    def resolve(self, tag: str | None) -> Descriptor:
        return self._inner.resolve(tag)

    def read_blob(self, digest: str) -> bytes:
        return self._inner.read_blob(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        return self._inner.open_blob(digest)

    def read_at(self, digest: str, offset: int, length: int) -> bytes:
        return self._inner.read_at(digest, offset, length)

    def blob_size(self, digest: str) -> int:
        return self._inner.blob_size(digest)

    def close(self) -> None:
        self._inner.close()


class SpooledStore(StoreWrapper):
    """An :class:`ImageStore` wrapper that downloads a blob whole, once, the first time it
    is read at random (:meth:`read_at` / :meth:`blob_size`), into a private temporary
    directory removed by :meth:`close`. For tools that read every byte of every blob
    (``check``: whole-blob digest, ToC sections, every chunk) from a remote store, where one
    streaming GET per blob beats thousands of range requests. Streams and documents are
    passed through. The spooled bytes are what the store served, unverified (the caller
    checks them, as it would on a local layout)."""

    def __init__(self, inner: ImageStore, directory: Path | None = None) -> None:
        super().__init__(inner)
        self._dir = Path(tempfile.mkdtemp(prefix="nydus-spool-", dir=directory))
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, digest: str) -> int:
        with self._lock:  # one download at a time is plenty for a checker
            fd = self._fds.get(digest)
            if fd is not None:
                return fd
            path = self._dir / digest.replace(":", "-").replace("/", "_")
            try:
                with self._inner.open_blob(digest) as src, path.open("wb") as out:
                    shutil.copyfileobj(src, out, _READ_SIZE)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except RegistryNotFoundError:
                raise FormatError(f"blob {digest} not found in {self.name}") from None
            finally:
                path.unlink(missing_ok=True)  # the open descriptor keeps the data
            self._fds[digest] = fd
            return fd

    def read_at(self, digest: str, offset: int, length: int) -> bytes:
        return os.pread(self._fd(digest), length, offset)

    def blob_size(self, digest: str) -> int:
        return os.fstat(self._fd(digest)).st_size

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        try:
            for fd in fds.values():
                os.close(fd)
            shutil.rmtree(self._dir, ignore_errors=True)
        finally:
            self._inner.close()


@dataclass
class StoreStats:
    """What was read through a :class:`CountingStore`."""

    documents: int = 0  # read_blob calls (manifests, indexes, configs)
    document_bytes: int = 0
    streams: int = 0  # open_blob calls
    stream_bytes: int = 0  # bytes read from those streams
    range_reads: int = 0  # read_at calls
    range_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.document_bytes + self.stream_bytes + self.range_bytes


class _CountingReader(io.RawIOBase):
    def __init__(self, stream: BinaryIO, stats: StoreStats) -> None:
        self._stream = stream
        self._stats = stats

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(b))
        n = len(data)
        memoryview(b)[:n] = data
        self._stats.stream_bytes += n
        return n

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()


class CountingStore(StoreWrapper):
    """An :class:`ImageStore` wrapper counting what is read through it (:attr:`stats`)."""

    def __init__(self, inner: ImageStore) -> None:
        super().__init__(inner)
        self.stats = StoreStats()
        self._lock = threading.Lock()

    def read_blob(self, digest: str) -> bytes:
        data = self._inner.read_blob(digest)
        with self._lock:
            self.stats.documents += 1
            self.stats.document_bytes += len(data)
        return data

    def open_blob(self, digest: str) -> BinaryIO:
        stream = self._inner.open_blob(digest)
        with self._lock:
            self.stats.streams += 1
        return cast(BinaryIO, io.BufferedReader(_CountingReader(stream, self.stats), _READ_SIZE))

    def read_at(self, digest: str, offset: int, length: int) -> bytes:
        data = self._inner.read_at(digest, offset, length)
        with self._lock:
            self.stats.range_reads += 1
            self.stats.range_bytes += len(data)
        return data


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
    """One platform's Nydus image, opened through an :class:`ImageStore`."""

    store: ImageStore
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
            self._bootstrap = read_bootstrap_layer_contents(self.store, self.bootstrap_layer)
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
        return self.store.blob_size(layer.digest)

    def open_blob(self, layer: Descriptor) -> BinaryIO:
        """The blob's bytes as a stream (the caller closes it)."""
        return self.store.open_blob(layer.digest)

    def blob_reader(self, layer: Descriptor) -> BlobReader:
        """Random access to a blob layer's ToC, ci, chunks and embedded bootstrap."""
        size = self.store.blob_size(layer.digest)
        digest = layer.digest
        store = self.store

        def read_at(offset: int, length: int) -> bytes:
            return store.read_at(digest, offset, length)

        return BlobReader(read_at, size)

    def spool_if_remote(self, directory: Path | None = None) -> None:
        """Read blobs at random from local copies (:class:`SpooledStore`) unless the store
        is an OCI layout already (for tools that read every blob whole)."""
        if not isinstance(self.store, OciLayoutStore | SpooledStore):
            self.store = SpooledStore(self.store, directory)

    def close(self) -> None:
        self.store.close()

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


def read_bootstrap_layer_contents(store: ImageStore, layer: Descriptor) -> BootstrapLayerContents:
    """Read the bootstrap layer once, hashing the stored bytes (layer digest) and the
    uncompressed tar (diff_id) while :func:`read_bootstrap_layer` parses it."""
    with store.open_blob(layer.digest) as raw:
        stored = _HashingReader(raw)
        plain = _HashingReader(open_layer_stream(cast(BinaryIO, io.BufferedReader(stored, _READ_SIZE))))
        bootstrap, metas = read_bootstrap_layer(cast(BinaryIO, io.BufferedReader(plain, _READ_SIZE)))
        plain.drain()
        stored.drain()
    return BootstrapLayerContents(bootstrap, metas, stored.digest, stored.size, plain.digest)


def _fetch(store: ImageStore) -> Callable[[Descriptor], bytes]:
    def fetch(desc: Descriptor) -> bytes:
        return store.read_blob(desc.digest)

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
    store: ImageStore, data: bytes, platform: Platform | None
) -> tuple[Descriptor, bytes, Platform]:
    fetch = _fetch(store)
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
            f"{store.name}: not a Nydus image (no manifest whose last layer is a Nydus bootstrap)"
        )
    if len(candidates) == 1:
        return candidates[0]
    host = host_platform_of()
    for candidate in candidates:
        if candidate[2].matches(host):
            return candidate
    names = ", ".join(str(c[2]) for c in candidates)
    raise ConfigError(f"{store.name} holds Nydus images for {names}: choose one with --platform")


def open_image(
    spec: str, platform: Platform | str | None = None, *, registry: RegistryOptions | None = None
) -> NydusImage:
    """Open the Nydus image ``spec`` (``oci:DIR[:TAG]`` or ``docker://REF``) for ``platform``.

    Without a platform: the only Nydus image, else the host's. The manifest and the config
    are checked against their descriptors (digest and size); the caller closes the result.
    ``registry``: how to reach a ``docker://`` image (insecure, CA file, credentials).
    """
    store, tag = open_store(spec, registry)
    return open_image_in(store, spec, tag, platform)


def open_image_in(
    store: ImageStore, spec: str, tag: str | None = None, platform: Platform | str | None = None
) -> NydusImage:
    """Like :func:`open_image` over an already open ``store`` (e.g. wrapped in a
    :class:`CountingStore`); ``spec`` only names the image in messages. The store is closed
    on failure, else by the image."""
    try:
        if isinstance(platform, str):
            platform = Platform.parse(platform)
        return _open(store, spec, tag, platform)
    except BaseException:
        store.close()
        raise


def _open(store: ImageStore, spec: str, tag: str | None, platform: Platform | None) -> NydusImage:
    top = store.resolve(tag)
    if not (mt.is_manifest(top.media_type) or mt.is_index(top.media_type)):
        raise FormatError(f"{spec}: the tag points at {top.media_type}, not a manifest or index")
    data = store.read_blob(top.digest)
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
        manifest_desc, manifest_raw, platform = _select_from_index(store, data, platform)
    manifest = ImageManifest.parse(manifest_raw)
    config_raw = store.read_blob(manifest.config.digest)
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
        store=store,
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
