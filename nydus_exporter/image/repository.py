"""Where an image's content is: an OCI image layout or a registry repository.

``IMAGE`` is ``oci:DIR[:TAG]`` (an OCI image layout, :class:`LayoutRepository`) or
``docker://HOST/REPO[:TAG|@DIGEST]`` (a registry, :mod:`nydus_exporter.image.registry`). The
content lives behind the small :class:`ImageRepository` protocol, so the pipeline's sources and
the tools (``check`` / ``unpack`` / ``mount`` / ``cat``) do not care where it is: it resolves a
tag, reads small documents whole (verified against their digest), streams blobs and reads
byte ranges of them. Two wrappers: :class:`SpooledRepository` downloads a remote blob once when
it is read at random (for tools that read every byte, e.g. ``check``),
:class:`CountingRepository` counts what a tool read (``cat --stats``).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from nydus_exporter.errors import ConfigError, FormatError, RegistryNotFoundError
from nydus_exporter.oci.descriptor import (
    Descriptor,
)
from nydus_exporter.oci.layout import OciLayout, split_layout_spec

if TYPE_CHECKING:
    from nydus_exporter.image.registry import RegistryOptions

_READ_SIZE = 1 << 20
_MAX_DOCUMENT = 64 << 20  # manifests, configs and indexes are small


class ImageRepository(Protocol):
    """Where the content of an image lives (an OCI layout today, a registry later)."""

    @property
    def name(self) -> str:
        """How messages name the repository (``oci:/path``)."""
        ...

    def resolve(self, tag: str | None) -> Descriptor:
        """The descriptor a tag points at (``None``: the only image of the repository)."""
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
        """Release what the repository holds open."""
        ...


class LayoutRepository:
    """:class:`ImageRepository` over an OCI image layout directory. Blob files opened for
    :meth:`read_at` stay open (one descriptor per blob) until :meth:`close`."""

    def __init__(self, layout: OciLayout) -> None:
        self._layout = layout
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> LayoutRepository:
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
    """``oci:DIR[:TAG]`` -> ``("oci", DIR, TAG)``, TAG a tag or a name with a tag (``sample:1``);
    ``docker://REF`` -> ``("docker", REF, None)`` (the tag or digest stays in the reference);
    :class:`ConfigError` otherwise."""
    if spec.startswith("docker://"):
        ref = spec.removeprefix("docker://")
        if not ref:
            raise ConfigError(f"image {spec!r}: expected docker://HOST/REPO[:TAG|@DIGEST]")
        return "docker", ref, None
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest or scheme != "oci":
        raise ConfigError(f"image {spec!r}: expected oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
    path, tag = split_layout_spec(rest)  # a tag, or a name with a tag
    return scheme, str(path), tag


def open_repository(spec: str, registry: RegistryOptions | None = None) -> tuple[ImageRepository, str | None]:
    """The repository ``spec`` names and the tag inside it (``registry``: how to reach a
    ``docker://`` image; ignored for ``oci:``)."""
    scheme, path, tag = parse_image_spec(spec)
    if scheme == "docker":
        from nydus_exporter.image.registry import RegistryRepository  # aiohttp only when needed

        return RegistryRepository.open(path, registry), None
    return LayoutRepository.open(Path(path)), tag


class RepositoryWrapper:
    """An :class:`ImageRepository` that passes everything to ``inner``; wrappers override parts."""

    def __init__(self, inner: ImageRepository) -> None:
        self._inner = inner

    @property
    def inner(self) -> ImageRepository:
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


class SpooledRepository(RepositoryWrapper):
    """An :class:`ImageRepository` wrapper that downloads a blob whole, once, the first time it
    is read at random (:meth:`read_at` / :meth:`blob_size`), into a private temporary
    directory removed by :meth:`close`. For tools that read every byte of every blob
    (``check``: whole-blob digest, ToC sections, every chunk) from a remote repository, where one
    streaming GET per blob beats thousands of range requests. Streams and documents are
    passed through. The spooled bytes are what the repository served, unverified (the caller
    checks them, as it would on a local layout)."""

    def __init__(self, inner: ImageRepository, directory: Path | None = None) -> None:
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
class ReadStats:
    """What was read through a :class:`CountingRepository`."""

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
    def __init__(self, stream: BinaryIO, stats: ReadStats) -> None:
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


class CountingRepository(RepositoryWrapper):
    """An :class:`ImageRepository` wrapper counting what is read through it (:attr:`stats`)."""

    def __init__(self, inner: ImageRepository) -> None:
        super().__init__(inner)
        self.stats = ReadStats()
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
