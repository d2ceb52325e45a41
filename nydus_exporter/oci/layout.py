"""The OCI image layout on disk (image-spec ``image-layout.md``): what skopeo ``oci:DIR:TAG``,
umoci and ``buildctl --output type=oci`` read and write::

    DIR/oci-layout          {"imageLayoutVersion":"1.0.0"}
    DIR/index.json          image index; tags are org.opencontainers.image.ref.name annotations
    DIR/blobs/<alg>/<hex>   content-addressed blobs

Every write is atomic: blobs are written to a temporary file inside ``blobs/<alg>`` (same
filesystem), fsync'd and renamed to their digest; ``index.json`` is replaced the same way
under an exclusive ``flock`` on the layout directory, so concurrent writers (threads or
processes) never lose each other's tags. A failed write leaves no temporary file behind.
Content problems (bad layout, missing blob, digest mismatch) raise
:class:`~nydus_exporter.errors.FormatError`; a bad tag raises
:class:`~nydus_exporter.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from nydus_exporter.errors import ConfigError, FormatError, naming
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import (
    Blob,
    Descriptor,
    ImageIndex,
    ImageManifest,
    canonical_json,
    digest_algorithm,
    parse_json_object,
    validate_digest,
)
from nydus_exporter.oci.reference import parse_reference

OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
IMAGE_LAYOUT_VERSION = "1.0.0"
_TMP_PREFIX = ".tmp-"
_COPY_SIZE = 1 << 20
_MAX_INDEX_SIZE = 64 << 20  # index.json / oci-layout are small; refuse to slurp a huge file
# image-layout.md: ref.name grammar of index.json tags.
_REF_NAME = re.compile(
    r"^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$"
)


def validate_tag(tag: str) -> str:
    """``tag`` if it fits the image-layout ``ref.name`` grammar, else :class:`ConfigError`."""
    if not _REF_NAME.match(tag):
        raise ConfigError(f"invalid OCI layout tag {tag!r}")
    return tag


class BlobSink:
    """Write end of :meth:`OciLayout.blob_writer`. ``digest``/``size`` are valid after close."""

    def __init__(self, file: BinaryIO, algorithm: str, directory: Path | None = None) -> None:
        self._file = file
        self._directory = directory  # named by write errors (disk full)
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self._size = 0
        self._digest: str | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._digest is not None:
            raise ValueError("write to a closed blob writer")
        try:
            self._file.write(data)
        except OSError as exc:
            raise exc if self._directory is None else naming(exc, self._directory) from exc
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def _close(self) -> str:
        self._digest = f"{self._algorithm}:{self._hash.hexdigest()}"
        return self._digest

    @property
    def digest(self) -> str:
        if self._digest is None:
            raise RuntimeError("the blob digest is known only after the writer is closed")
        return self._digest

    @property
    def size(self) -> int:
        if self._digest is None:
            raise RuntimeError("the blob size is final only after the writer is closed")
        return self._size


class OciLayout:
    """An OCI image layout directory. Construct with :meth:`open` or :meth:`create`."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self._root = root
        # fsync blobs and directories before they are named. A scratch layout (an export's
        # push staging) skips it: nothing reads it after a crash, and fsyncing a 100 MB blob
        # costs tens of milliseconds.
        self._durable = durable

    @property
    def root(self) -> Path:
        return self._root

    def _sync(self, fd: int) -> None:
        if self._durable:
            os.fsync(fd)

    def _sync_dir(self, directory: Path) -> None:
        if self._durable:
            _fsync_dir(directory)

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> OciLayout:
        """Open an existing layout; validates ``oci-layout`` and ``index.json``."""
        layout = cls(Path(path))
        layout._validate()
        return layout

    @classmethod
    def create(cls, path: Path, *, durable: bool = True) -> OciLayout:
        """Create an empty layout at ``path`` (and parents), or open the one already there.
        ``durable=False``: a scratch layout, written without fsync."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        layout = cls(root, durable=durable)
        with layout._locked():
            (root / BLOBS_DIR / "sha256").mkdir(parents=True, exist_ok=True)
            if not (root / OCI_LAYOUT_FILE).exists():
                atomic_write_file(
                    root, OCI_LAYOUT_FILE, canonical_json({"imageLayoutVersion": IMAGE_LAYOUT_VERSION})
                )
            if not (root / INDEX_FILE).exists():
                empty = {"schemaVersion": 2, "mediaType": mt.MEDIA_TYPE_IMAGE_INDEX, "manifests": []}
                atomic_write_file(root, INDEX_FILE, canonical_json(empty))
        layout._validate()
        return layout

    def _validate(self) -> None:
        if not self._root.is_dir():
            raise FormatError(f"OCI layout {self._root} is not a directory")
        marker = parse_json_object(self._read_small(OCI_LAYOUT_FILE), f"{self._root}/{OCI_LAYOUT_FILE}")
        version = marker.get("imageLayoutVersion")
        if version != IMAGE_LAYOUT_VERSION:
            raise FormatError(f"OCI layout {self._root} has imageLayoutVersion {version!r}, expected 1.0.0")
        self.index()

    def _read_small(self, name: str) -> bytes:
        path = self._root / name
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_INDEX_SIZE + 1)
        except FileNotFoundError:
            raise FormatError(f"OCI layout {self._root} has no {name}") from None
        if len(data) > _MAX_INDEX_SIZE:
            raise FormatError(f"{path} is larger than {_MAX_INDEX_SIZE} bytes")
        return data

    # --- blobs --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = validate_digest(digest).partition(":")
        return self._root / BLOBS_DIR / algorithm / encoded

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a blob for reading (the caller closes it)."""
        try:
            return self.blob_path(digest).open("rb")
        except FileNotFoundError:
            raise FormatError(f"blob {digest} not found in OCI layout {self._root}") from None

    def read_blob(self, digest: str, max_size: int = _MAX_INDEX_SIZE) -> bytes:
        """Read a small blob (manifest, config, index) whole and verify its digest."""
        with self.open_blob(digest) as f:
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise FormatError(f"blob {digest} is larger than {max_size} bytes")
        actual = f"{digest_algorithm(digest)}:{hashlib.new(digest_algorithm(digest), data).hexdigest()}"
        if actual != digest:
            raise FormatError(f"blob {digest} in OCI layout {self._root} has digest {actual}")
        return data

    def write_blob(self, data: bytes) -> str:
        """Store ``data`` under its sha256 digest (no-op when present); returns the digest."""
        with self.blob_writer() as sink:
            sink.write(data)
        return sink.digest

    def put(self, blob: Blob) -> Descriptor:
        """Store a :class:`Blob` (its exact bytes) and return its descriptor."""
        digest = self.write_blob(blob.data)
        if digest != blob.digest:  # pragma: no cover - both are sha256 over the same bytes
            raise FormatError(f"stored {digest}, expected {blob.digest}")
        return blob.descriptor()

    @contextlib.contextmanager
    def blob_writer(self, expected_digest: str | None = None) -> Iterator[BlobSink]:
        """Stream a blob in. On success it is renamed to its digest (verified against
        ``expected_digest`` when given, which also picks the algorithm); on any error the
        temporary file is removed."""
        algorithm = "sha256" if expected_digest is None else digest_algorithm(expected_digest)
        directory = self._root / BLOBS_DIR / algorithm
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)
        tmp = Path(tmp_name)
        try:
            f = os.fdopen(fd, "wb")
            try:
                sink = BlobSink(cast(BinaryIO, f), algorithm, directory)
                yield sink
                try:
                    f.flush()
                    self._sync(f.fileno())
                    f.close()
                except OSError as exc:
                    raise naming(exc, directory) from exc
            finally:
                with contextlib.suppress(OSError):
                    f.close()  # after a failed write: must not replace that error
            digest = sink._close()
            if expected_digest is not None and digest != expected_digest:
                raise FormatError(f"blob digest mismatch: expected {expected_digest}, got {digest}")
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; blobs are world-readable like skopeo's
            os.replace(tmp, directory / digest.partition(":")[2])
            self._sync_dir(directory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def import_blob_file(self, src: Path, digest: str, *, move: bool = True) -> None:
        """Put the finished file ``src`` in as blob ``digest``.

        ``move=True`` renames it in (same filesystem: atomic, not re-hashed — the caller
        computed the digest while writing it); across filesystems, or with ``move=False``, it
        is copied while hashing and the digest verified. ``src`` is gone afterwards iff
        ``move``.
        """
        validate_digest(digest)
        src = Path(src)
        target = self.blob_path(digest)
        if target.is_file():
            if move:
                src.unlink()
            return
        if move:
            target.parent.mkdir(parents=True, exist_ok=True)
            if self._durable:
                with src.open("rb") as f:
                    os.fsync(f.fileno())
            try:
                os.rename(src, target)
                self._sync_dir(target.parent)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        with src.open("rb") as f, self.blob_writer(expected_digest=digest) as sink:
            while chunk := f.read(_COPY_SIZE):
                sink.write(chunk)
        if move:
            src.unlink()

    # --- index --------------------------------------------------------------------------------

    def read_index(self) -> bytes:
        return self._read_small(INDEX_FILE)

    def index(self) -> ImageIndex:
        """The parsed ``index.json`` (``mediaType`` may be absent: image-spec allows it)."""
        return ImageIndex.parse(self.read_index())

    def missing_blobs(self) -> list[str]:
        """Digests reachable from ``index.json`` (through indexes and manifests: configs and
        layers) that are not in the layout. Descriptors with ``urls`` (foreign layers) and
        ``subject`` references are not expected to be present. Stored documents on the way
        are digest-verified."""
        missing: list[str] = []
        seen: set[str] = set()
        pending = list(self.index().manifests)
        while pending:
            descriptor = pending.pop()
            if descriptor.digest in seen or descriptor.urls:
                continue
            seen.add(descriptor.digest)
            if not self.has_blob(descriptor.digest):
                missing.append(descriptor.digest)
            elif mt.is_index(descriptor.media_type):
                pending.extend(ImageIndex.parse(self.read_blob(descriptor.digest)).manifests)
            elif mt.is_manifest(descriptor.media_type):
                manifest = ImageManifest.parse(self.read_blob(descriptor.digest))
                pending.extend([manifest.config, *manifest.layers])
        return missing

    def tags(self) -> list[str]:
        return [t for d in self.index().manifests if (t := d.annotation(mt.ANNOTATION_REF_NAME))]

    def add_manifest(self, descriptor: Descriptor, *, tag: str | None = None) -> None:
        """Reference a stored manifest or index from ``index.json``.

        With ``tag``, it becomes the entry's ``org.opencontainers.image.ref.name`` and replaces
        any older entry carrying the same tag; without, an identical untagged entry is not
        duplicated. The blob must already be in the layout with the descriptor's size.
        """
        if not (mt.is_manifest(descriptor.media_type) or mt.is_index(descriptor.media_type)):
            raise FormatError(f"index.json can only list manifests and indexes, not {descriptor.media_type}")
        if tag is not None:
            validate_tag(tag)
        path = self.blob_path(descriptor.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise FormatError(
                f"cannot tag {descriptor.digest}: blob not in OCI layout {self._root}"
            ) from None
        if size != descriptor.size:
            raise FormatError(
                f"descriptor of {descriptor.digest} says {descriptor.size} bytes, blob has {size}"
            )

        annotations = dict(descriptor.annotations or {})
        if tag is not None:
            annotations[mt.ANNOTATION_REF_NAME] = tag
        entry = Descriptor(
            descriptor.media_type,
            descriptor.digest,
            descriptor.size,
            annotations,
            descriptor.platform,
            descriptor.artifact_type,
            descriptor.urls,
        ).to_json()
        with self._locked():
            index = parse_json_object(self.read_index(), f"{self._root}/{INDEX_FILE}")
            manifests = index.get("manifests", [])
            if not isinstance(manifests, list):
                raise FormatError(f"{self._root}/{INDEX_FILE} has no 'manifests' list")
            kept = [m for m in manifests if not same_slot(m, entry, tag)]
            kept.append(entry)
            new_index: dict[str, Any] = {
                "schemaVersion": 2,
                "mediaType": index.get("mediaType", mt.MEDIA_TYPE_IMAGE_INDEX),
                "manifests": kept,
            }
            if "annotations" in index:
                new_index["annotations"] = index["annotations"]
            atomic_write_file(self._root, INDEX_FILE, canonical_json(new_index), durable=self._durable)

    def resolve(self, tag: str | None = None) -> Descriptor:
        """The entry ``tag`` names (the last one, if several), or the only entry.

        ``tag`` is what follows the directory in ``oci:DIR:REF``, and is matched as the tools
        that write layouts spell it (see :func:`_named_by`): a ``ref.name`` of ``1`` (ours,
        containerd's, BuildKit's) or of ``sample:1`` (skopeo's ``oci:DIR:sample:1``), and an
        ``io.containerd.image.name`` of ``docker.io/library/sample:1``. A miss lists what
        the layout holds.
        """
        entries = self.index().manifests
        if tag is None:
            if len(entries) != 1:
                raise FormatError(
                    f"OCI layout {self._root} has {len(entries)} entries: name one "
                    f"(oci:DIR:TAG){self._holding(entries)}"
                )
            return entries[0]
        matching = [d for d in entries if d.annotation(mt.ANNOTATION_REF_NAME) == tag]
        if not matching:
            matching = [d for d in entries if _named_by(d, tag)]
        if not matching:
            raise FormatError(
                f"no image tagged or named {tag!r} in OCI layout {self._root}{self._holding(entries)}"
            )
        return matching[-1]

    @staticmethod
    def _holding(entries: Sequence[Descriptor]) -> str:
        """``; its tags: 1 (docker.io/library/sample:1), latest`` (at most 20)."""
        names = []
        for entry in entries:
            tag = entry.annotation(mt.ANNOTATION_REF_NAME)
            image = entry.annotation(mt.ANNOTATION_IMAGE_NAME)
            if tag is not None:
                names.append(f"{tag} ({image})" if image and image != tag else tag)
        if not names:
            return "; it has no tagged images"
        more = f", ... ({len(names) - 20} more)" if len(names) > 20 else ""
        return f"; its tags: {', '.join(names[:20])}{more}"

    # --- helpers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive flock on the layout directory (released on close)."""
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def same_slot(existing: object, entry: Mapping[str, object], tag: str | None) -> bool:
    """Whether ``existing`` (an index.json entry) is replaced by ``entry``: the same tag, or
    both untagged with the same digest."""
    if not isinstance(existing, dict):
        return False
    annotations = existing.get("annotations")
    existing_tag = annotations.get(mt.ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
    if tag is not None:
        return bool(existing_tag == tag)
    return existing_tag is None and existing.get("digest") == entry["digest"]


def _named_by(entry: Descriptor, text: str) -> bool:
    """Whether ``text``, an image name with a tag (``sample:1``, ``reg.io/app:1``), names
    ``entry``: its ``io.containerd.image.name`` is that name (normalised, as containerd writes
    it), or it has none and its ``ref.name`` is the tag (our layouts before that annotation)."""
    try:
        ref = parse_reference(text)
    except ConfigError:
        return False
    if ref.tag is None or ref.digest is not None:
        return False
    image = entry.annotation(mt.ANNOTATION_IMAGE_NAME)
    if image is not None:
        return image in (text, str(ref))
    return entry.annotation(mt.ANNOTATION_REF_NAME) == ref.tag


def split_layout_spec(rest: str) -> tuple[Path, str | None]:
    """``DIR[:REF]`` (what follows ``oci:``) -> the layout directory and the reference in it.

    REF may be a tag (``1``) or a name with a tag (``sample:1``, ``localhost:5000/app:1``), and
    a directory name may contain ``:`` too: the directory is the longest prefix ending before a
    ``:`` that is an existing directory. When none is, the last ``:`` not followed by a ``/``
    starts the tag (so the error names the missing directory).
    """
    if Path(rest).is_dir():
        return Path(rest), None
    position = len(rest)
    while (position := rest.rfind(":", 0, position)) > 0:
        if Path(rest[:position]).is_dir():
            return Path(rest[:position]), rest[position + 1 :] or None
    path, colon, tag = rest.rpartition(":")
    if colon and path and tag and "/" not in tag:
        return Path(path), tag
    return Path(rest), None


def atomic_write_file(directory: Path, name: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``directory/name`` atomically: temp file in ``directory``, fsync, rename, fsync dir
    (no fsync when not ``durable``)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}{_TMP_PREFIX}", dir=directory)
    try:
        f = os.fdopen(fd, "wb")
        try:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            f.close()
        except OSError as exc:
            raise naming(exc, directory / name) from exc
        finally:
            with contextlib.suppress(OSError):
                f.close()  # after a failed write: must not replace that error
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, directory / name)
        if durable:
            _fsync_dir(directory)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
