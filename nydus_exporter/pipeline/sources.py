"""Where an export's layers come from: ``oci:``, ``oci-archive:``, ``docker-archive:``, ``tar:``, ``dir:``.

A source resolves to one :class:`SourceImage` per platform: the raw config, the layers lowest
first and, when the source is an image, its manifest (kept for ``merge-manifest``). Layers
are opened lazily and streamed; layers with a known digest are verified while they are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.image.repository import ImageRepository, LayoutRepository
from nydus_exporter.oci import mediatypes
from nydus_exporter.oci.attestation import Attestation
from nydus_exporter.oci.descriptor import Descriptor, ImageIndex, ImageManifest
from nydus_exporter.oci.layout import OciLayout, split_layout_spec
from nydus_exporter.oci.nydus_image import is_nydus_entry, is_nydus_manifest
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import parse_reference

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only for docker:// sources
    from nydus_exporter.registry.sync import SyncRegistry

OpenStream = Callable[[], contextlib.AbstractContextManager[BinaryIO]]

SCHEMES = ("oci", "oci-archive", "docker-archive", "docker", "tar", "dir")


@dataclass
class SourceLayer:
    """One layer: a (possibly compressed) tar stream, or a directory."""

    name: str  # for messages and progress: a digest or a path
    open: OpenStream | None = None
    directory: Path | None = None
    whiteouts: Literal["oci", "overlayfs"] = "oci"  # how a directory layer spells whiteouts
    size: int | None = None  # bytes of the stream, when known (progress)


@dataclass
class SourceImage:
    platform: Platform | None
    config: bytes
    layers: list[SourceLayer]
    manifest: bytes | None = None  # the source manifest, when the source is an image
    manifest_descriptor: Descriptor | None = None
    # attached to the Nydus manifest as attestation manifests ([contract §5.7])
    attestations: tuple[Attestation, ...] = ()


@dataclass
class Source:
    images: list[SourceImage]
    index: bytes | None = None  # the source index, when there was one
    repository: ImageRepository | None = None  # where the source's blobs live, when it is an image
    tags: list[str] = field(default_factory=list)


class _VerifyingReader(io.RawIOBase):
    """Reads a blob and checks its digest and size once the end is reached."""

    def __init__(self, stream: BinaryIO, digest: str, size: int | None, name: str) -> None:
        self._stream = stream
        self._digest = digest
        self._size = size
        self._name = name
        algorithm = digest.partition(":")[0]
        try:
            self._hash = hashlib.new(algorithm)
        except ValueError:
            raise FormatError(f"layer {name}: unsupported digest algorithm {algorithm!r}") from None
        self._read = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._stream.readinto(b)  # type: ignore[attr-defined]
        if not n:
            self._check()
            return 0
        view = memoryview(b)[:n]
        self._hash.update(view)
        self._read += n
        if self._size is not None and self._read > self._size:
            raise FormatError(f"layer {self._name} is longer than its descriptor's {self._size} bytes")
        return int(n)

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        if self._size is not None and self._read != self._size:
            raise FormatError(f"layer {self._name} has {self._read} bytes, its descriptor says {self._size}")
        actual = f"{self._digest.partition(':')[0]}:{self._hash.hexdigest()}"
        if actual != self._digest:
            raise FormatError(f"layer {self._name} does not match its digest (content is {actual})")

    def drain_and_check(self) -> None:
        """Read what the consumer left and verify (a layer is only trusted when fully read)."""
        while self.readinto(bytearray(1 << 20)):
            pass
        self._check()


@contextlib.contextmanager
def _open_verified(
    opener: Callable[[], BinaryIO], digest: str, size: int | None, name: str
) -> Iterator[BinaryIO]:
    with opener() as raw:
        verifying = _VerifyingReader(raw, digest, size, name)
        stream = io.BufferedReader(verifying, 1 << 20)
        yield stream
        verifying.drain_and_check()


def parse_source(spec: str) -> tuple[str, str]:
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ConfigError(f"unknown source {spec!r}: expected one of {', '.join(s + ':' for s in SCHEMES)}")
    return scheme, rest


@contextlib.contextmanager
def open_source(
    spec: str,
    *,
    workdir: Path,
    config: Path | None = None,
    whiteouts: str = "oci",
    platforms: Sequence[Platform] | None = None,
    registry: SyncRegistry | None = None,
) -> Iterator[Source]:
    """Resolve ``spec`` into images (one per selected platform), lowest layer first.

    ``docker://REF`` reads from a registry through ``registry``: layers stream from the
    registry into the builder, verified against their digests.
    """
    scheme, rest = parse_source(spec)
    if scheme == "oci":
        path, tag = split_layout_spec(rest)
        yield _from_repository(LayoutRepository(OciLayout.open(path)), tag, platforms)
    elif scheme == "docker":
        if registry is None:
            raise ConfigError("docker:// sources need a registry client")
        from nydus_exporter.image.registry import RegistryRepository

        ref = parse_reference(rest.removeprefix("//"))
        repo = RegistryRepository(registry, ref)
        try:
            yield _from_repository(repo, None, platforms)
        finally:
            repo.close()
    elif scheme == "oci-archive":
        from nydus_exporter.oci.archive import open_oci_archive

        spool = workdir / "oci-archive"
        if rest == "-":
            layout = open_oci_archive(sys.stdin.buffer, spool)
        else:
            with _open_file(Path(rest)) as f:
                layout = open_oci_archive(f, spool)
        yield _from_repository(LayoutRepository(layout), None, platforms)
    elif scheme == "docker-archive":
        yield _from_docker_archive(Path(rest), workdir / "docker-archive", platforms)
    elif scheme == "tar":
        paths = [Path(p) for p in rest.split(",") if p]
        if not paths:
            raise ConfigError("tar: needs at least one layer file")
        layers = [SourceLayer(str(p), open=_file_opener(p), size=_size_of(p)) for p in paths]
        yield Source([SourceImage(None, _config_for(config, len(layers)), layers)])
    else:  # dir
        directory = Path(rest)
        if not directory.is_dir():
            raise ConfigError(f"dir: {directory} is not a directory")
        if whiteouts not in ("oci", "overlayfs"):
            raise ConfigError(f"whiteouts must be oci or overlayfs, not {whiteouts!r}")
        layer = SourceLayer(
            str(directory), directory=directory, whiteouts="overlayfs" if whiteouts == "overlayfs" else "oci"
        )
        yield Source([SourceImage(None, _config_for(config, 1), [layer])])


def _open_file(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from None


def _file_opener(path: Path) -> OpenStream:
    return lambda: _open_file(path)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _config_for(config: Path | None, nlayers: int) -> bytes:
    """The image config of a ``tar:``/``dir:`` source: the given file, else a minimal one."""
    if config is not None:
        try:
            return config.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config {config}: {exc.strerror}") from None
    return minimal_config(Platform.host(), nlayers)


def minimal_config(plat: Platform, nlayers: int) -> bytes:
    """A config for layers that come without one (the exporter rewrites its diff_ids: they
    become the Nydus blob digests)."""
    minimal = {
        "architecture": plat.architecture,
        "os": plat.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created_by": "nydus-exporter: layer"} for _ in range(nlayers)],
    }
    return json.dumps(minimal, separators=(",", ":")).encode()


def _blob_opener(repo: ImageRepository, desc: Descriptor) -> OpenStream:
    return lambda: _open_verified(lambda: repo.open_blob(desc.digest), desc.digest, desc.size, desc.digest)


def _image_from_manifest(repo: ImageRepository, desc: Descriptor, platform: Platform | None) -> SourceImage:
    raw = repo.read_blob(desc.digest)
    if is_nydus_manifest(raw):
        raise ConfigError(
            f"{repo.name}: manifest {desc.digest} is already a Nydus image; convert its OCI image instead"
        )
    manifest = ImageManifest.parse(raw)
    config = repo.read_blob(manifest.config.digest)
    if platform is None:
        platform = Platform.of_config(config)
    layers = []
    for layer in manifest.layers:
        if not mediatypes.is_tar_layer(layer.media_type):
            raise FormatError(f"layer {layer.digest} has media type {layer.media_type}, not a tar layer")
        layers.append(SourceLayer(layer.digest, open=_blob_opener(repo, layer), size=layer.size))
    return SourceImage(platform, config, layers, manifest=raw, manifest_descriptor=desc)


def _from_repository(repo: ImageRepository, tag: str | None, platforms: Sequence[Platform] | None) -> Source:
    top = repo.resolve(tag)
    if mediatypes.is_manifest(top.media_type):
        image = _image_from_manifest(repo, top, top.platform)
        _check_platforms([image], platforms)
        return Source([image], repository=repo)
    index_raw = repo.read_blob(top.digest)
    index = ImageIndex.parse(index_raw)
    images = []
    nydus_entries = 0
    for entry in index.manifests:
        if not mediatypes.is_manifest(entry.media_type) or _is_attestation(entry):
            continue
        if is_nydus_entry(entry):
            # An index merged before (merge-manifest): its Nydus manifests were converted
            # from its OCI ones, which are converted again; the merge replaces the old entries.
            nydus_entries += 1
            continue
        if platforms and (entry.platform is None or not any(_matches(entry.platform, p) for p in platforms)):
            continue
        images.append(_image_from_manifest(repo, entry, entry.platform))
    if not images and nydus_entries:
        raise ConfigError(f"{repo.name}: the index holds only Nydus manifests: it is already a Nydus image")
    _check_platforms(images, platforms)
    return Source(images, index=index_raw, repository=repo)


def _is_attestation(entry: Descriptor) -> bool:
    # BuildKit stores provenance/SBOM manifests with platform unknown/unknown.
    return entry.platform is not None and entry.platform.os == "unknown"


def _matches(have: Platform, want: Platform) -> bool:
    a, b = have.normalized(), want.normalized()
    return (a.os, a.architecture, a.variant) == (b.os, b.architecture, b.variant)


def _check_platforms(images: Sequence[SourceImage], platforms: Sequence[Platform] | None) -> None:
    if not images:
        wanted = ", ".join(str(p) for p in platforms or [])
        raise ConfigError(f"the source has no image{' for ' + wanted if wanted else ''}")
    if platforms:
        for want in platforms:
            if not any(img.platform and _matches(img.platform, want) for img in images):
                raise ConfigError(f"the source has no image for platform {want}")


def _from_docker_archive(path: Path, workdir: Path, platforms: Sequence[Platform] | None) -> Source:
    from nydus_exporter.oci.archive import open_docker_archive

    archive = open_docker_archive(path, workdir)
    images = []
    for image in archive.images:
        layers = [
            SourceLayer(str(layer), open=_file_opener(Path(layer)), size=_size_of(Path(layer)))
            for layer in image.layers
        ]
        images.append(SourceImage(Platform.of_config(image.config), image.config, layers))
    _check_platforms(images, platforms)
    tags = [t for image in archive.images for t in image.repo_tags]
    return Source(images, tags=tags)
