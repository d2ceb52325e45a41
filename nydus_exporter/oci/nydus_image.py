"""The OCI shape of a Nydus image ([format §6]): config, manifest, merged index, and detection.

What nydusify / nydus-snapshotter produce and what consumers check ([format §6.1-§6.4]):

* manifest ``layers`` = one Nydus blob layer per source layer (mediaType
  ``application/vnd.oci.image.layer.nydus.blob.v1`` even in Docker manifests, annotation
  ``containerd.io/snapshot/nydus-blob: "true"``), then the bootstrap layer (tar+gzip, Docker or
  OCI type matching the manifest, annotations ``nydus-bootstrap: "true"`` and
  ``nydus-fs-version: "6"``);
* config: ``rootfs.diff_ids`` = blob digests (a blob is its own diff id) + the sha256 of the
  uncompressed bootstrap tar; one history entry "Nydus Converter / Nydus Bootstrap Layer"
  appended; nothing else changed;
* merged index: the original manifests stay, the Nydus manifest is added for its platform,
  marked with ``artifactType`` (current tools) or ``platform.os.features`` (legacy).

Builders return bytes from :func:`~nydus_exporter.oci.descriptor.canonical_json`; callers wrap
them in a :class:`~nydus_exporter.oci.descriptor.Blob` and ship exactly those bytes.
Malformed input raises :class:`~nydus_exporter.errors.FormatError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    canonical_json,
    document_media_type,
    parse_json_object,
    sha256_digest,
    sorted_str_map,
    validate_digest,
    verify_content,
)
from nydus_exporter.oci.platform import Platform

MergeMode = Literal["artifact", "legacy"]

# [format §6.3]: appended to the source history (no "created": the converter does not set one).
BOOTSTRAP_HISTORY_ENTRY: Mapping[str, str] = {
    "created_by": "Nydus Converter",
    "comment": "Nydus Bootstrap Layer",
}
_TRUE = "true"
_MAX_INDEX_DEPTH = 2  # an index may point at an index; deeper nesting is not an image we read


# --- config -----------------------------------------------------------------------------------


def build_nydus_config(
    source_config: bytes,
    blob_digests: Sequence[str],
    bootstrap_diff_id: str,
    *,
    source_date_epoch: int | None = None,
) -> bytes:
    """The Nydus image config derived from ``source_config`` ([format §6.3]).

    Only ``rootfs.diff_ids`` (= ``blob_digests`` + ``bootstrap_diff_id``) and ``history``
    (+ the Nydus entry) change; every other key keeps its value and its position. The result
    is re-serialised canonically, so it is not byte-identical to the source even where the
    values are (whitespace, escapes, float spelling of exotic numbers).

    ``source_date_epoch`` (BuildKit's ``SOURCE_DATE_EPOCH``) does what BuildKit's image
    exporter does with it: ``created`` becomes the epoch, and every history entry without a
    time or with a time after it gets the epoch, the Nydus entry included.
    """
    config = parse_json_object(source_config, "source image config")
    diff_ids = [validate_digest(d, "blob digest") for d in blob_digests]
    diff_ids.append(validate_digest(bootstrap_diff_id, "bootstrap diff id"))
    rootfs = config.get("rootfs", {})
    if not isinstance(rootfs, dict):
        raise FormatError("source image config 'rootfs' must be a JSON object")
    new_rootfs: dict[str, Any] = {} if "type" in rootfs else {"type": "layers"}
    new_rootfs.update(rootfs)
    new_rootfs["diff_ids"] = diff_ids
    config["rootfs"] = new_rootfs
    history = config.get("history", [])
    if not isinstance(history, list):
        raise FormatError("source image config 'history' must be a list")
    config["history"] = [*history, dict(BOOTSTRAP_HISTORY_ENTRY)]
    if source_date_epoch is not None:
        _clamp_times(config, source_date_epoch)
    return canonical_json(config)


def _clamp_times(config: dict[str, Any], epoch: int) -> None:
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config["created"] = stamp
    for entry in config["history"]:
        if not isinstance(entry, dict):
            raise FormatError("source image config 'history' entries must be JSON objects")
        created = _parse_time(entry.get("created"))
        if created is None or created > epoch:
            entry["created"] = stamp


def _parse_time(value: object) -> float | None:
    """An RFC 3339 time as seconds since the epoch; ``None`` when absent or unreadable."""
    if not isinstance(value, str):
        return None
    # Go writes up to nanoseconds; Python reads up to microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("z", "Z")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# --- manifest ---------------------------------------------------------------------------------


def nydus_blob_layer(descriptor: Descriptor) -> Descriptor:
    """``descriptor`` as a Nydus blob layer: blob media type, ``nydus-blob: "true"``.

    The converter-internal ``containerd.io/uncompressed`` annotation is dropped ([format §6.2]).
    """
    if mt.is_tar_layer(descriptor.media_type):
        raise FormatError(
            f"layer {descriptor.digest} is a tar layer ({descriptor.media_type}), not a Nydus blob"
        )
    annotations = _without_internal(descriptor.annotations)
    annotations[mt.ANNOTATION_NYDUS_BLOB] = _TRUE
    return Descriptor(
        mt.MEDIA_TYPE_NYDUS_BLOB, descriptor.digest, descriptor.size, annotations, urls=descriptor.urls
    )


def nydus_bootstrap_layer(descriptor: Descriptor, *, oci: bool) -> Descriptor:
    """``descriptor`` as the bootstrap layer of an OCI or Docker manifest ([format §6.1, §6.2])."""
    if mt.layer_compression(descriptor.media_type) != "gzip":
        raise FormatError(
            f"bootstrap layer {descriptor.digest} must be a tar+gzip layer, got {descriptor.media_type}"
        )
    annotations = _without_internal(descriptor.annotations)
    annotations[mt.ANNOTATION_NYDUS_BOOTSTRAP] = _TRUE
    annotations.setdefault(mt.ANNOTATION_NYDUS_FS_VERSION, mt.NYDUS_FS_VERSION)
    return Descriptor(mt.gzip_layer_media_type(oci=oci), descriptor.digest, descriptor.size, annotations)


def build_nydus_manifest(
    *,
    config: Descriptor,
    blob_layers: Sequence[Descriptor],
    bootstrap_layer: Descriptor,
    oci: bool,
    annotations: Mapping[str, str] | None = None,
    subject: Descriptor | None = None,
) -> bytes:
    """The Nydus image manifest: blob layers in source layer order, then the bootstrap layer.

    ``oci`` selects the OCI manifest media type (else Docker schema2, the BuildKit fork's
    default); the bootstrap layer's media type follows it, Nydus blob layers never do.
    ``config`` is used as given (its media type is the caller's choice: the source's, or
    ``application/vnd.nydus.image.config.v1+json`` for a "nydus-config" merged index).
    ``subject`` (referrers) needs ``oci``.
    """
    if not mt.is_config(config.media_type):
        raise FormatError(f"config descriptor has media type {config.media_type!r}, not an image config")
    if subject is not None and not oci:
        raise ConfigError("a manifest subject (referrer) needs OCI media types")
    layers = [nydus_blob_layer(d).to_json() for d in blob_layers]
    layers.append(nydus_bootstrap_layer(bootstrap_layer, oci=oci).to_json())
    # Go struct field order of specs-go/v1/manifest.go (Docker schema2 is a prefix of it).
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.manifest_media_type(oci=oci),
        "config": Descriptor(config.media_type, config.digest, config.size).to_json(),
        "layers": layers,
    }
    if subject is not None:
        manifest["subject"] = subject.to_json()
    if annotations:
        manifest["annotations"] = sorted_str_map(annotations)
    return canonical_json(manifest)


def _without_internal(annotations: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (annotations or {}).items() if k != mt.ANNOTATION_UNCOMPRESSED}


# --- merged index -----------------------------------------------------------------------------


def build_merged_index(
    *,
    existing: bytes | None,
    nydus_manifest: Descriptor,
    platform: Platform,
    mode: MergeMode = "artifact",
    oci: bool,
    existing_platform: Platform | None = None,
) -> bytes:
    """An index holding ``existing``'s manifests plus the Nydus manifest for ``platform``.

    ``existing`` is the index (or single manifest) currently under the target name, or
    ``None``. Kept: every entry except a Nydus entry (``artifactType`` or ``os.features``
    marker) of the same platform and an entry with the Nydus manifest's own digest; the index
    annotations. A single ``existing`` manifest becomes an entry for ``existing_platform``
    (default ``platform``: the caller's plain image of the same build) unless it is itself a
    Nydus manifest of that platform. The Nydus entry is appended *last*: clients that do not
    know the markers take the first platform match, which must stay the original image.

    ``mode="artifact"`` marks the entry with ``artifactType`` (nydus >= 2.3.5);
    ``mode="legacy"`` adds ``nydus.remoteimage.v1`` to ``platform.os.features`` (rejected by
    ECR, [pitfalls §4]).

    Index media type: OCI image index, except a Docker manifest list when ``oci`` is false,
    ``mode`` is legacy and ``existing`` is absent or Docker-typed. ``artifactType`` only exists
    in OCI indexes, and an OCI index may list Docker manifests, so artifact mode is always OCI.
    """
    if mode not in ("artifact", "legacy"):
        raise ConfigError(f"unknown merge mode {mode!r}: expected 'artifact' or 'legacy'")
    if not mt.is_manifest(nydus_manifest.media_type):
        raise FormatError(f"Nydus manifest descriptor has media type {nydus_manifest.media_type!r}")
    entries: list[dict[str, Any]] = []
    index_annotations: Mapping[str, str] | None = None
    existing_type: str | None = None
    if existing is not None:
        obj = parse_json_object(existing, "existing image")
        existing_type = document_media_type(obj, "existing image")
        if mt.is_index(existing_type):
            entries, index_annotations = _kept_index_entries(obj, nydus_manifest, platform)
        elif mt.is_manifest(existing_type):
            entries = _kept_single_manifest(
                existing, existing_type, nydus_manifest, platform, existing_platform, mode
            )
        else:
            raise FormatError(f"existing image has media type {existing_type!r}, not a manifest or index")

    entry = _nydus_entry(nydus_manifest, platform, mode)
    entries.append(entry.to_json())

    docker_list = not oci and mode == "legacy" and (existing_type is None or mt.is_docker(existing_type))
    index: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.index_media_type(oci=not docker_list),
        "manifests": entries,
    }
    if index_annotations:
        index["annotations"] = dict(index_annotations)
    return canonical_json(index)


def is_nydus_entry(descriptor: Descriptor) -> bool:
    """An index entry marked as a Nydus manifest (``artifactType`` or legacy ``os.features``)."""
    if descriptor.artifact_type == mt.ARTIFACT_TYPE_NYDUS_MANIFEST:
        return True
    features = descriptor.platform.os_features if descriptor.platform else None
    return bool(features) and mt.NYDUS_OS_FEATURE in (features or ())


def _kept_index_entries(
    obj: Mapping[str, Any], nydus_manifest: Descriptor, platform: Platform
) -> tuple[list[dict[str, Any]], Mapping[str, str] | None]:
    manifests = obj.get("manifests")
    if not isinstance(manifests, list):
        raise FormatError("existing index has no 'manifests' list")
    kept: list[dict[str, Any]] = []
    for raw_entry in manifests:
        entry = Descriptor.from_json(raw_entry)
        if entry.digest == nydus_manifest.digest:
            continue  # re-export of the same Nydus manifest: it is re-added below
        if is_nydus_entry(entry) and entry.platform is not None and entry.platform.matches(platform):
            continue  # an older Nydus build of this platform: replaced
        # Keep the entry's JSON object as it was (unknown fields such as "data" survive).
        kept.append(dict(raw_entry))
    annotations = obj.get("annotations")
    if annotations is not None and not isinstance(annotations, Mapping):
        raise FormatError("existing index annotations must be a JSON object")
    return kept, None if annotations is None else sorted_str_map(annotations)


def _kept_single_manifest(
    raw: bytes,
    media_type: str,
    nydus_manifest: Descriptor,
    platform: Platform,
    existing_platform: Platform | None,
    mode: MergeMode,
) -> list[dict[str, Any]]:
    entry_platform = existing_platform or platform
    digest = sha256_digest(raw)
    if digest == nydus_manifest.digest:
        return []
    if not is_nydus_manifest(raw):
        return [Descriptor(media_type, digest, len(raw), platform=entry_platform).to_json()]
    if entry_platform.matches(platform):
        return []  # a plain (unmerged) Nydus image of this platform is superseded
    # A Nydus image of another platform stays, marked so that plain clients skip it.
    return [_nydus_entry(Descriptor(media_type, digest, len(raw)), entry_platform, mode).to_json()]


def _nydus_entry(manifest: Descriptor, platform: Platform, mode: MergeMode) -> Descriptor:
    """The index entry of a Nydus manifest, marked per ``mode`` ([format §6.1])."""
    if mode == "artifact":
        return Descriptor(
            manifest.media_type,
            manifest.digest,
            manifest.size,
            manifest.annotations,
            platform=platform,
            artifact_type=mt.ARTIFACT_TYPE_NYDUS_MANIFEST,
        )
    return Descriptor(
        manifest.media_type,
        manifest.digest,
        manifest.size,
        manifest.annotations,
        platform=platform.with_os_features([mt.NYDUS_OS_FEATURE]),
    )


# --- detection (readers) ----------------------------------------------------------------------


def is_nydus_manifest(raw: bytes) -> bool:
    """Whether ``raw`` is an image manifest whose last layer carries ``nydus-bootstrap`` ([format §6.4]).

    A document that is not a manifest at all is not a Nydus manifest (``False``); a manifest
    that does not parse raises :class:`FormatError`.
    """
    obj = parse_json_object(raw, "image manifest")
    if not mt.is_manifest(document_media_type(obj, "image manifest")):
        return False
    layers = ImageManifest.parse(raw).layers
    return bool(layers) and layers[-1].annotation(mt.ANNOTATION_NYDUS_BOOTSTRAP) == _TRUE


def split_nydus_layers(manifest: bytes) -> tuple[list[Descriptor], Descriptor]:
    """``(blob layers, bootstrap layer)`` of a Nydus manifest; :class:`FormatError` if the
    image is not Nydus (no bootstrap last, or a layer that is not a Nydus blob)."""
    parsed = ImageManifest.parse(manifest)
    if not parsed.layers:
        raise FormatError("not a Nydus image: the manifest has no layers")
    *blobs, bootstrap = parsed.layers
    if bootstrap.annotation(mt.ANNOTATION_NYDUS_BOOTSTRAP) != _TRUE:
        raise FormatError(
            f"not a Nydus image: last layer {bootstrap.digest} has no "
            f"{mt.ANNOTATION_NYDUS_BOOTSTRAP} annotation"
        )
    if not mt.is_tar_layer(bootstrap.media_type):
        raise FormatError(
            f"Nydus bootstrap layer {bootstrap.digest} has non-tar media type {bootstrap.media_type}"
        )
    for layer in blobs:
        if not (mt.is_nydus_blob(layer.media_type) or layer.annotation(mt.ANNOTATION_NYDUS_BLOB) == _TRUE):
            raise FormatError(
                f"not a Nydus image: layer {layer.digest} ({layer.media_type}) is not a Nydus blob"
            )
    return blobs, bootstrap


FetchManifest = Callable[[Descriptor], bytes]


def resolve_nydus_manifest(data: bytes, fetch: FetchManifest, platform: Platform) -> tuple[Descriptor, bytes]:
    """The Nydus manifest for ``platform`` reachable from ``data`` and its verified bytes.

    ``data`` is a manifest (then it must be Nydus itself) or an index. In an index, entries of
    the platform marked as Nydus ([format §6.4] index detection) are tried first, then the other
    entries of the platform (a plain Nydus image pushed as a list). ``fetch`` returns the
    bytes of a descriptor; they are checked against its digest and size.
    """
    found = _resolve(data, fetch, platform, depth=0)
    if found is None:
        raise FormatError(
            f"not a Nydus image: no {platform} manifest whose last layer carries "
            f"{mt.ANNOTATION_NYDUS_BOOTSTRAP}"
        )
    return found


def find_nydus_manifest(data: bytes, fetch: FetchManifest, platform: Platform) -> Descriptor:
    """The descriptor part of :func:`resolve_nydus_manifest`."""
    return resolve_nydus_manifest(data, fetch, platform)[0]


def _resolve(
    data: bytes, fetch: FetchManifest, platform: Platform, depth: int
) -> tuple[Descriptor, bytes] | None:
    obj = parse_json_object(data, "image manifest or index")
    media_type = document_media_type(obj, "image manifest or index")
    if mt.is_manifest(media_type):
        if is_nydus_manifest(data):
            return Descriptor(media_type, sha256_digest(data), len(data)), data
        return None
    if not mt.is_index(media_type):
        raise FormatError(f"expected an image manifest or index, got mediaType {media_type!r}")
    if depth >= _MAX_INDEX_DEPTH:
        raise FormatError("image indexes nested too deep")
    entries = [
        m for m in ImageIndex.parse(data).manifests if m.platform is not None and m.platform.matches(platform)
    ]
    entries.sort(key=lambda d: not is_nydus_entry(d))  # stable: marked entries first
    for entry in entries:
        if not (mt.is_manifest(entry.media_type) or mt.is_index(entry.media_type)):
            continue
        content = fetch(entry)
        verify_content(content, entry)
        found = _resolve(content, fetch, platform, depth + 1)
        if found is not None:
            # Report the entry as the index lists it (its platform, artifactType), the
            # document's own type when it is the manifest itself.
            return (entry if found[0].digest == entry.digest else found[0]), found[1]
    return None
