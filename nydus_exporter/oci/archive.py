"""Images that arrive as archives: an OCI layout tar or a ``docker save`` tar.

* :func:`open_oci_archive` — an OCI image layout packed in a tar (``buildctl --output
  type=oci,dest=-``, ``skopeo copy ... oci-archive:FILE``), read from a possibly
  non-seekable stream. Blobs go to ``workdir/blobs/<alg>/<hex>`` as they come, each verified
  against its name; ``oci-layout`` and ``index.json`` are kept byte for byte. The archive is
  never held in memory.
* :func:`open_docker_archive` — the ``docker save`` / ``skopeo ... docker-archive:`` format:
  ``manifest.json`` = ``[{"Config": ..., "RepoTags": [...], "Layers": [...]}]`` with either the
  legacy ``<id>/layer.tar`` + ``<id>.json`` files (duplicates as symlinks) or, since Docker 25,
  an OCI layout inside (``blobs/sha256/<hex>`` paths). The tar is extracted (regular files
  only; links are resolved inside the archive, never created on disk) into ``workdir``.

``workdir`` must be missing or empty; on failure everything written into it is removed.
Bad archives raise :class:`~nydus_exporter.errors.FormatError`.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nydus_exporter.errors import ConfigError, CorruptLayerError, FormatError
from nydus_exporter.layer.compression import open_layer_stream
from nydus_exporter.oci.descriptor import parse_json_object, sha256_digest, validate_digest
from nydus_exporter.oci.layout import INDEX_FILE, OCI_LAYOUT_FILE, OciLayout, atomic_write_file

DOCKER_MANIFEST_FILE = "manifest.json"
_BLOB_NAME = re.compile(r"^blobs/([a-z0-9]+)/([a-f0-9]+)$")
_HEX_NAME = re.compile(r"^([a-f0-9]{64})(?:\.json)?$")
_COPY_SIZE = 1 << 20
_MAX_JSON_SIZE = 64 << 20
_MAX_LINK_HOPS = 16


# --- OCI layout archives ----------------------------------------------------------------------


def open_oci_archive(stream: BinaryIO, workdir: Path) -> OciLayout:
    """Spool the OCI layout tar in ``stream`` into ``workdir`` and open it.

    Checks: every ``blobs/<alg>/<hex>`` has that digest, ``oci-layout`` and ``index.json``
    are present and valid, and every blob reachable from ``index.json`` (manifests, configs,
    layers) is in the archive.
    Other regular files (``manifest.json`` of combined archives) are ignored; links or
    devices under ``blobs/`` are refused.
    """
    with _fresh_workdir(Path(workdir)) as root:
        layout = OciLayout(root)
        with _tar_errors("OCI archive"):
            tar_stream = open_layer_stream(stream)
            with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
                for member in tar:
                    name = _member_name(member)
                    if name is None or member.isdir():
                        continue
                    blob = _BLOB_NAME.match(name)
                    if not member.isreg():
                        if blob or name in (OCI_LAYOUT_FILE, INDEX_FILE):
                            raise FormatError(f"OCI archive entry {name} is not a regular file")
                        continue
                    if name in (OCI_LAYOUT_FILE, INDEX_FILE):
                        atomic_write_file(root, name, _read_small(tar, member))
                    elif blob:
                        digest = validate_digest(
                            f"{blob.group(1)}:{blob.group(2)}", f"OCI archive entry {name}"
                        )
                        _spool_blob(layout, tar, member, digest)
            _drain(tar_stream)
        layout = OciLayout.open(root)
        missing = layout.missing_blobs()
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FormatError(f"OCI archive references {missing[0]}{more}, which is not in the archive")
        return layout


def _spool_blob(layout: OciLayout, tar: tarfile.TarFile, member: tarfile.TarInfo, digest: str) -> None:
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - regular members always have data
        raise FormatError(f"cannot read {member.name} from the archive")
    if layout.has_blob(digest):
        return  # listed twice: the same content by definition; tarfile skips the rest
    with layout.blob_writer(expected_digest=digest) as sink:
        while chunk := source.read(_COPY_SIZE):
            sink.write(chunk)
    if sink.size != member.size:  # pragma: no cover - tarfile raises on short data
        raise FormatError(f"{member.name} is truncated in the archive")


# --- docker save archives ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DockerArchiveImage:
    """One entry of a ``docker save`` ``manifest.json``."""

    config: bytes  # the config exactly as stored
    config_digest: str  # sha256 of ``config`` (the image id)
    layers: tuple[Path, ...]  # layer tar files (possibly compressed), base layer first
    repo_tags: tuple[str, ...]

    @property
    def diff_ids(self) -> list[str]:
        """``rootfs.diff_ids`` of the config (one per layer)."""
        rootfs = parse_json_object(self.config, "image config").get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            raise FormatError("image config has no rootfs.diff_ids list")
        return [validate_digest(d, "config diff_id") for d in diff_ids]


@dataclass(frozen=True, slots=True)
class DockerArchive:
    root: Path  # where the archive was extracted
    images: tuple[DockerArchiveImage, ...]


def open_docker_archive(path: Path, workdir: Path) -> DockerArchive:
    """Extract the ``docker save`` archive at ``path`` into ``workdir`` and read its images."""
    with _fresh_workdir(Path(workdir)) as root:
        links: dict[str, str] = {}
        files: set[str] = set()
        with _tar_errors("docker archive"), Path(path).open("rb") as raw:
            tar_stream = open_layer_stream(raw)
            with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
                for member in tar:
                    name = _member_name(member)
                    if name is None or member.isdir():
                        continue
                    if member.isreg():
                        _extract_file(tar, member, root / name)
                        files.add(name)
                        links.pop(name, None)
                    elif member.issym():
                        # A symlink target is relative to the link's directory.
                        links[name] = _normalize(posixpath.join(posixpath.dirname(name), member.linkname))
                        files.discard(name)
                    elif member.islnk():
                        links[name] = _normalize(member.linkname)  # hardlinks name the archive path
                        files.discard(name)
                    else:
                        raise FormatError(f"docker archive entry {name} has unsupported type {member.type!r}")
            _drain(tar_stream)

        def resolve(name: object, what: str) -> Path:
            if not isinstance(name, str) or not name:
                raise FormatError(f"docker archive {what} must be a path string, got {name!r}")
            current = _normalize(name)
            for _ in range(_MAX_LINK_HOPS):
                if current in files:
                    return root / current
                if current not in links:
                    raise FormatError(f"docker archive {what} {name!r} is not in the archive")
                current = links[current]
            raise FormatError(f"docker archive {what} {name!r}: too many levels of links")

        manifest_path = resolve(DOCKER_MANIFEST_FILE, "manifest")
        entries = _load_json(manifest_path, DOCKER_MANIFEST_FILE)
        if not isinstance(entries, list) or not entries:
            raise FormatError("docker archive manifest.json must be a non-empty list")
        images = tuple(_docker_image(entry, resolve) for entry in entries)
        return DockerArchive(root=root, images=images)


def _docker_image(entry: object, resolve: Callable[[object, str], Path]) -> DockerArchiveImage:
    if not isinstance(entry, dict):
        raise FormatError("docker archive manifest.json entries must be objects")
    config_name = entry.get("Config")
    config_path = resolve(config_name, "Config")
    with config_path.open("rb") as f:
        config = f.read(_MAX_JSON_SIZE + 1)
    if len(config) > _MAX_JSON_SIZE:
        raise FormatError(f"docker archive config {config_name} is too large")
    parse_json_object(config, f"docker archive config {config_name}")
    digest = sha256_digest(config)
    # Both layouts name the config after its digest (<hex>.json, blobs/sha256/<hex>): check it.
    named = _HEX_NAME.match(posixpath.basename(str(config_name)))
    if named and named.group(1) != digest.partition(":")[2]:
        raise FormatError(f"docker archive config {config_name} has digest {digest}")
    layers = entry.get("Layers")
    if not isinstance(layers, list):
        raise FormatError("docker archive manifest entry has no Layers list")
    repo_tags = entry.get("RepoTags") or []
    if not isinstance(repo_tags, list) or not all(isinstance(t, str) for t in repo_tags):
        raise FormatError("docker archive RepoTags must be a list of strings")
    return DockerArchiveImage(
        config=config,
        config_digest=digest,
        layers=tuple(resolve(layer, "layer") for layer in layers),
        repo_tags=tuple(repo_tags),
    )


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover
        raise FormatError(f"cannot read {member.name} from the archive")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        shutil.copyfileobj(source, out, _COPY_SIZE)


def _load_json(path: Path, what: str) -> Any:
    with path.open("rb") as f:
        data = f.read(_MAX_JSON_SIZE + 1)
    if len(data) > _MAX_JSON_SIZE:
        raise FormatError(f"{what} is too large")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from exc


# --- shared -----------------------------------------------------------------------------------


def _normalize(name: str) -> str:
    """An archive path relative to its root; :class:`FormatError` if it escapes the root."""
    if name.startswith("/"):
        raise FormatError(f"archive entry {name!r} has an absolute path")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise FormatError(f"archive path {name!r} escapes the archive root")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _member_name(member: tarfile.TarInfo) -> str | None:
    if member.name.startswith("/") or ".." in member.name.split("/"):
        raise FormatError(f"unsafe archive entry name {member.name!r}")
    name = _normalize(member.name)
    return name or None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > _MAX_JSON_SIZE:
        raise FormatError(f"archive entry {member.name} is too large ({member.size} bytes)")
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover
        raise FormatError(f"cannot read {member.name} from the archive")
    return source.read()


def _drain(stream: BinaryIO) -> None:
    """Read to the end: the writer of a pipe must not stall, a compressed trailer gets checked."""
    while stream.read(_COPY_SIZE):
        pass


@contextmanager
def _tar_errors(what: str) -> Iterator[None]:
    try:
        yield
    except CorruptLayerError as exc:
        raise FormatError(f"corrupt {what}: {exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise FormatError(f"{what} is not a valid tar: {exc}") from exc


@contextmanager
def _fresh_workdir(workdir: Path) -> Iterator[Path]:
    """``workdir`` (created if missing, must be empty); emptied again if the body fails."""
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(f"work directory {workdir} must be missing or empty")
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    except BaseException:
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for child in workdir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
