"""The top of an export: the manifest, or an index of the Nydus manifests (merged with an existing image)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from nydus_exporter.errors import ConfigError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.attestation import (
    ANNOTATION_REFERENCE_DIGEST,
    Attestation,
    attestation_manifest,
    is_attestation_entry,
    reference_digest,
    statement,
    without_dangling,
)
from nydus_exporter.oci.descriptor import Descriptor, ImageIndex, ImageManifest, canonical_json, sha256_digest
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.nydus_image import (
    build_merged_index,
    is_nydus_entry,
)
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.pipeline.result import PlatformResult
from nydus_exporter.pipeline.sources import Source

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    pass


def oci_manifests(out: OciLayout, root: Descriptor) -> dict[str, str]:
    """platform -> digest of the plain (non-Nydus) manifests a merged index keeps."""
    index = ImageIndex.parse(out.read_blob(root.digest))
    return {
        str(entry.platform): entry.digest
        for entry in index.manifests
        if entry.platform is not None and not is_nydus_entry(entry)
    }


def tags_of(names: Sequence[str]) -> list[tuple[str, str]]:
    """The layout tag and full image name of each ``name=``: ``sample:1`` is tagged ``1`` and
    named ``docker.io/library/sample:1``, as containerd and BuildKit write OCI layouts (so that
    ``oci:DIR:1`` and ``oci:DIR:sample:1`` both find it)."""
    tags: list[tuple[str, str]] = []
    for name in names:
        ref = parse_reference(name)
        tags.append((ref.tag or "latest", str(ref if ref.tag or ref.digest else ref.with_tag("latest"))))
    return tags


def named_descriptor(descriptor: Descriptor, image_name: str | None) -> Descriptor:
    """``descriptor`` with the image name annotation containerd reads (none: as it is)."""
    if image_name is None:
        return descriptor
    annotations = {**(descriptor.annotations or {}), mt.ANNOTATION_IMAGE_NAME: image_name}
    return dataclasses.replace(descriptor, annotations=annotations)


def split_root(out: OciLayout, root: Descriptor) -> tuple[list[Descriptor], list[Descriptor]]:
    """(Nydus manifests, attestation manifest entries) of a (not merged) export result's root."""
    if mt.is_manifest(root.media_type):
        return [root], []
    entries = ImageIndex.parse(out.read_blob(root.digest)).manifests
    return (
        [e for e in entries if not is_attestation_entry(e)],
        [e for e in entries if is_attestation_entry(e)],
    )


def attached(
    attestations: Sequence[Sequence[Attestation]], options: ExportOptions
) -> tuple[list[tuple[Attestation, ...]], int]:
    """The attestations attached to the image, and how many inline-only ones are not: as in
    BuildKit's image exporter, inline-only attestations alone do not turn a single-platform
    image into an index (the root stays the manifest, which has no place for them); when the
    root is an index anyway (several platforms, merge-manifest, other attestations) they go in."""
    per_image = [tuple(atts) for atts in attestations]
    single = len(per_image) <= 1 and not options.merge_manifest
    if single and all(a.inline_only for atts in per_image for a in atts):
        return [() for _ in per_image], sum(len(atts) for atts in per_image)
    return per_image, 0


def attestation_entries(
    out: OciLayout,
    results: Sequence[PlatformResult],
    attestations: Sequence[Sequence[Attestation]],
    options: ExportOptions,
) -> list[Descriptor]:
    """One attestation manifest per platform with attestations (``attestations[i]`` are those
    of ``results[i]``), written into ``out``; their index entries, in platform order."""
    entries: list[Descriptor] = []
    for result, atts in zip(results, attestations, strict=False):
        if not atts:
            continue
        platform = result.manifest.platform or Platform.parse(result.platform)
        statements = [
            (a.predicate_type, statement(a, options.names, platform, result.manifest)) for a in atts
        ]
        made = attestation_manifest(statements, result.manifest, oci=options.oci_mediatypes)
        for data in made.blobs():
            out.write_blob(data)
        entries.append(made.entry)
    return entries


def merged_index(
    out: OciLayout,
    existing: bytes | None,
    manifests: Sequence[Descriptor],
    options: ExportOptions,
    attestations: Sequence[Descriptor] = (),
) -> Descriptor:
    """The index that keeps ``existing`` (index or manifest, or nothing) and adds or replaces
    the Nydus ``manifests`` (each with its platform), written into ``out``; the attestation
    manifest entries ``attestations`` go last, replacing the ones of the manifests they
    describe, and attestation manifests of manifests no longer listed are dropped."""
    for manifest in manifests:
        if manifest.platform is None:
            raise ConfigError(f"merge-manifest needs a platform for Nydus manifest {manifest.digest}")
        existing = build_merged_index(
            existing=existing,
            nydus_manifest=replace(manifest, platform=None),
            platform=manifest.platform,
            mode=options.merge_manifest_mode,
            oci=options.oci_mediatypes,
        )
    assert existing is not None
    existing = _with_index_annotations(_with_attestations(existing, attestations), options)
    index = ImageIndex.parse(existing)
    return _index_descriptor(index.media_type, out.write_blob(existing), len(existing), options)


def _with_index_annotations(raw: bytes, options: ExportOptions) -> bytes:
    """``annotation-index.*`` over the annotations the merged index keeps."""
    ours = options.annotations.index
    if not ours:
        return raw
    obj = json.loads(raw)
    obj["annotations"] = {**obj.get("annotations", {}), **ours}
    return canonical_json(obj)


def _index_descriptor(media_type: str, digest: str, size: int, options: ExportOptions) -> Descriptor:
    """The top index's descriptor, with ``annotation-index-descriptor.*`` (which an OCI layout's
    index.json keeps; a registry has no place for them)."""
    return Descriptor(media_type, digest, size, options.annotations.index_descriptor or None)


def _with_attestations(raw: bytes, attestations: Sequence[Descriptor]) -> bytes:
    obj = json.loads(raw)
    described = {a.annotation(ANNOTATION_REFERENCE_DIGEST) for a in attestations}
    entries = [
        e for e in obj["manifests"] if not (is_attestation_entry(e) and reference_digest(e) in described)
    ]
    entries = without_dangling([*entries, *(a.to_json() for a in attestations)])
    if entries == obj["manifests"]:
        return raw
    obj["manifests"] = entries
    return canonical_json(obj)


def root_descriptor(
    out: OciLayout,
    existing: bytes | None,
    results: Sequence[PlatformResult],
    options: ExportOptions,
    attestations: Sequence[Sequence[Attestation]] = (),
) -> Descriptor:
    """The manifest (single platform) or an index of the Nydus manifests (merged or not) and
    their attestation manifests; with attestations always an index, as BuildKit's image
    exporter makes it."""
    entries = attestation_entries(out, results, attestations, options)
    if options.merge_manifest:
        return merged_index(out, existing, [r.manifest for r in results], options, entries)
    if len(results) == 1 and not entries:
        return results[0].manifest
    index: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.index_media_type(oci=options.oci_mediatypes),
        "manifests": [r.manifest.to_json() for r in results] + [a.to_json() for a in entries],
    }
    if options.annotations.index:
        index["annotations"] = dict(options.annotations.index)
    index_raw = canonical_json(index)
    return _index_descriptor(
        mt.index_media_type(oci=options.oci_mediatypes), out.write_blob(index_raw), len(index_raw), options
    )


def source_top(out: OciLayout, source: Source, *, push: bool) -> bytes | None:
    """The source image (index or manifest) a merged index keeps, with its content copied into
    ``out`` so the result is complete (merge-manifest-source=build, or a local layout)."""
    if source.repository is None:
        return None
    for image in source.images:
        if image.manifest is None or image.manifest_descriptor is None:
            continue
        manifest = ImageManifest.parse(image.manifest)
        for desc in (manifest.config, *manifest.layers):
            if not out.has_blob(desc.digest):
                with source.repository.open_blob(desc.digest) as f, out.blob_writer(desc.digest) as sink:
                    shutil.copyfileobj(f, sink, 1 << 20)
        if not out.has_blob(image.manifest_descriptor.digest):
            out.write_blob(image.manifest)
    if source.index is not None:
        if not out.has_blob(sha256_digest(source.index)):
            out.write_blob(source.index)
        return source.index
    return source.images[0].manifest
