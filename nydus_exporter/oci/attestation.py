"""Attestation manifests: in-toto statements attached to an image index ([contract §5.7]).

The shape is what BuildKit's image exporter writes (v0.32, ``exporter/containerimage/writer.go``
``commitAttestationsManifest``), so that tools reading BuildKit images (``docker buildx
imagetools inspect --format '{{json .Provenance}}'``, cosign, scanners) read ours:

* one in-toto statement per attestation: ``_type`` ``https://in-toto.io/Statement/v1``,
  ``predicateType``, ``subject`` (the attestation's own subjects; a subject without a digest is
  the image itself: one ``pkg:docker/NAME@TAG?platform=...`` purl per image name, with the
  Nydus manifest's sha256 digest), ``predicate``;
* each statement is a layer of media type ``application/vnd.in-toto+json`` with the annotation
  ``in-toto.io/predicate-type``;
* one attestation manifest per platform (an image manifest whose config is an image config of
  platform unknown/unknown whose ``rootfs.diff_ids`` are the layers' digests);
* its index entry has platform unknown/unknown and the annotations
  ``vnd.docker.reference.type: attestation-manifest`` and ``vnd.docker.reference.digest`` (the
  manifest it describes).

Pure: builders return bytes from :func:`canonical_json` (same input, same bytes).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nydus_exporter.errors import FormatError, excerpt
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor, canonical_json, digest_hex
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import parse_reference

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"  # in-toto-golang's StatementInTotoV1
MEDIA_TYPE_IN_TOTO = "application/vnd.in-toto+json"
ANNOTATION_PREDICATE_TYPE = "in-toto.io/predicate-type"
ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"
ANNOTATION_REFERENCE_DIGEST = "vnd.docker.reference.digest"
REFERENCE_TYPE_ATTESTATION = "attestation-manifest"
UNKNOWN_PLATFORM = Platform(os="unknown", architecture="unknown")


@dataclass(frozen=True)
class Subject:
    """An in-toto subject. No ``digest``: the image itself (see the module docstring)."""

    name: str = ""
    digest: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attestation:
    """One attestation of one platform's build result, as the client sent it."""

    platform_id: str
    predicate_type: str
    predicate: bytes  # JSON
    subjects: tuple[Subject, ...] = ()
    inline_only: bool = False


def image_purl(name: str, platform: Platform) -> str:
    """BuildKit's ``purl.RefToPURL(TypeDocker, name, platform)``: ``pkg:docker/NS/NAME@TAG?platform=P``
    (the familiar name, namespace segments and name query-escaped, ``:latest`` by default,
    ``digest=`` first for a name with a digest)."""
    ref = parse_reference(name)
    familiar = ref.repository
    if ref.registry == "docker.io":
        familiar = familiar.removeprefix("library/")
    else:
        familiar = f"{ref.registry}/{familiar}"
    *namespace, base = familiar.split("/")
    path = "/".join(urllib.parse.quote_plus(part, safe="") for part in (*namespace, base))
    tag = ref.tag or ("" if ref.digest else "latest")
    qualifiers = []
    if ref.digest:
        qualifiers.append(f"digest={_path_escape(ref.digest)}")
    plat = platform.normalized()
    if plat.architecture == "arm64" and plat.variant == "v8":
        plat = Platform(plat.os, plat.architecture)  # containerd's Normalize drops arm64's v8
    qualifiers.append(f"platform={_path_escape(plat.format())}")
    version = f"@{_path_escape(tag)}" if tag else ""
    return f"pkg:docker/{path}{version}?{'&'.join(qualifiers)}"


def _path_escape(text: str) -> str:
    """Go's ``url.PathEscape`` (what packageurl-go uses for the version and qualifier values)."""
    return urllib.parse.quote(text, safe="$&+:=@")


def statement_subjects(
    subjects: Sequence[Subject], image_names: Sequence[str], platform: Platform, manifest: Descriptor
) -> list[dict[str, Any]]:
    """The statement's ``subject`` list, as BuildKit's ``makeInTotoStatement`` makes it: a subject
    with a digest stays; one without (the default, when there are none) becomes one subject per
    image name (its purl, then the subject's own name if it has one) with the manifest's digest."""
    own = {"sha256": digest_hex(manifest.digest)}
    out: list[dict[str, Any]] = []
    for subject in subjects or (Subject(),):
        if subject.digest:
            out.append({"name": subject.name or "_", "digest": dict(sorted(subject.digest.items()))})
            continue
        for name in image_names:
            out.append({"name": image_purl(name, platform), "digest": own})
            if subject.name and subject.name != "_":
                out.append({"name": subject.name, "digest": own})
    return out


def statement(
    attestation: Attestation, image_names: Sequence[str], platform: Platform, manifest: Descriptor
) -> bytes:
    """The in-toto statement of ``attestation`` about the image ``manifest``."""
    try:
        predicate = (
            json.loads(attestation.predicate, parse_constant=_no_constant) if attestation.predicate else None
        )
    except ValueError as exc:
        raise FormatError(
            f"attestation {excerpt(attestation.predicate_type)} of {excerpt(attestation.platform_id)}: "
            f"the predicate is not JSON ({exc})"
        ) from None
    body: dict[str, Any] = {
        "_type": STATEMENT_TYPE,
        "predicateType": attestation.predicate_type,
        "subject": statement_subjects(attestation.subjects, image_names, platform, manifest),
        "predicate": predicate,
    }
    return canonical_json(body)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class AttestationManifest:
    """The blobs of one platform's attestation manifest and its index entry."""

    layers: tuple[tuple[Descriptor, bytes], ...]  # (descriptor, statement)
    config: tuple[Descriptor, bytes]
    manifest: tuple[Descriptor, bytes]
    entry: Descriptor  # the index entry (platform unknown/unknown, reference annotations)

    def blobs(self) -> Iterable[bytes]:
        yield from (data for _, data in self.layers)
        yield self.config[1]
        yield self.manifest[1]


def attestation_manifest(
    statements: Sequence[tuple[str, bytes]], subject: Descriptor, *, oci: bool
) -> AttestationManifest:
    """The attestation manifest of ``statements`` (``(predicate type, statement)``) about the
    manifest ``subject``; Docker media types for manifest and config unless ``oci``."""
    layers = tuple(
        (Descriptor.of(data, MEDIA_TYPE_IN_TOTO, annotations={ANNOTATION_PREDICATE_TYPE: ptype}), data)
        for ptype, data in statements
    )
    config_raw = canonical_json(
        {
            **UNKNOWN_PLATFORM.to_json(),
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d.digest for d, _ in layers]},
        }
    )
    config = Descriptor.of(config_raw, mt.MEDIA_TYPE_IMAGE_CONFIG if oci else mt.MEDIA_TYPE_DOCKER_CONFIG)
    manifest_type = mt.manifest_media_type(oci=oci)
    manifest_raw = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.to_json(),
            "layers": [d.to_json() for d, _ in layers],
        }
    )
    manifest = Descriptor.of(manifest_raw, manifest_type)
    entry = Descriptor.of(
        manifest_raw,
        manifest_type,
        annotations={
            ANNOTATION_REFERENCE_TYPE: REFERENCE_TYPE_ATTESTATION,
            ANNOTATION_REFERENCE_DIGEST: subject.digest,
        },
        platform=UNKNOWN_PLATFORM,
    )
    return AttestationManifest(layers, (config, config_raw), (manifest, manifest_raw), entry)


def is_attestation_entry(entry: Mapping[str, Any] | Descriptor) -> bool:
    """An index entry of an attestation manifest (``vnd.docker.reference.type``)."""
    annotations = entry.annotations if isinstance(entry, Descriptor) else entry.get("annotations")
    return (
        isinstance(annotations, Mapping)
        and annotations.get(ANNOTATION_REFERENCE_TYPE) == REFERENCE_TYPE_ATTESTATION
    )


def reference_digest(entry: Mapping[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    value = annotations.get(ANNOTATION_REFERENCE_DIGEST)
    return value if isinstance(value, str) else None


def without_dangling(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``entries`` without the attestation manifests of manifests no longer listed (a merged
    index replaced the Nydus manifest they describe)."""
    listed = {e.get("digest") for e in entries if not is_attestation_entry(e)}
    return [e for e in entries if not is_attestation_entry(e) or reference_digest(e) in listed]
