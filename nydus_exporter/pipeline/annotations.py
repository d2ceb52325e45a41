"""The ``annotation…`` exporter keys, in BuildKit's image exporter grammar ([contract §5.4]).

``annotation[-TYPE][[PLATFORM]].KEY=VALUE``, TYPE one of:

* none or ``manifest``: the image manifest of each platform (or of ``PLATFORM`` only);
* ``manifest-descriptor``: the manifest's entry in the index;
* ``index``: the top index (when the image is an index);
* ``index-descriptor``: the top index's entry in an OCI layout's ``index.json``.

A platform-qualified key wins over the unqualified one for its platform, as in BuildKit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from nydus_exporter.errors import ConfigError, excerpt
from nydus_exporter.oci.platform import Platform

MANIFEST = "manifest"
MANIFEST_DESCRIPTOR = "manifest-descriptor"
INDEX = "index"
INDEX_DESCRIPTOR = "index-descriptor"
TYPES = (MANIFEST, MANIFEST_DESCRIPTOR, INDEX, INDEX_DESCRIPTOR)

# The same shape BuildKit accepts: the type is lower case with dashes, the platform has no dots.
_KEY = re.compile(r"^annotation(?:-([a-z-]+))?(?:\[([A-Za-z0-9_/-]+)\])?\.(\S+)$")

PlatformKey = str  # "" (every platform) or ``os/architecture[/variant]``


@dataclass(frozen=True)
class AnnotationKey:
    type: str  # one of TYPES
    platform: PlatformKey
    key: str


def parse_annotation_key(given: str) -> AnnotationKey:
    """``annotation-manifest[linux/amd64].org.example`` -> its parts; raises ConfigError."""
    match = _KEY.match(given)
    if match is None:
        raise ConfigError(f"{excerpt(given)} is not an annotation key (annotation[-TYPE][[PLATFORM]].KEY)")
    kind, platform, key = match.group(1) or MANIFEST, match.group(2) or "", match.group(3)
    if kind not in TYPES:
        known = ", ".join(TYPES)
        raise ConfigError(f"{excerpt(given)}: unknown annotation type {excerpt(kind)} (one of {known})")
    if platform and kind in (INDEX, INDEX_DESCRIPTOR):
        raise ConfigError(f"{excerpt(given)}: index annotations apply to the whole image, not a platform")
    return AnnotationKey(kind, Platform.parse(platform).format() if platform else "", key)


def _frozen(groups: Mapping[PlatformKey, Mapping[str, str]]) -> dict[PlatformKey, dict[str, str]]:
    return {p: dict(values) for p, values in groups.items() if values}


@dataclass(frozen=True)
class ImageAnnotations:
    """Where each annotation key goes; empty maps: nothing to add."""

    index: Mapping[str, str] = field(default_factory=dict)
    index_descriptor: Mapping[str, str] = field(default_factory=dict)
    manifest: Mapping[PlatformKey, Mapping[str, str]] = field(default_factory=dict)
    manifest_descriptor: Mapping[PlatformKey, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, values: Mapping[str, str]) -> ImageAnnotations:
        """From ``{given key: value}`` of the annotation keys (parsed in key order, so that a
        platform-qualified key and the unqualified one may both be given)."""
        index: dict[str, str] = {}
        index_descriptor: dict[str, str] = {}
        manifest: dict[PlatformKey, dict[str, str]] = {}
        manifest_descriptor: dict[PlatformKey, dict[str, str]] = {}
        for given, value in values.items():
            parsed = parse_annotation_key(given)
            if parsed.type == INDEX:
                index[parsed.key] = value
            elif parsed.type == INDEX_DESCRIPTOR:
                index_descriptor[parsed.key] = value
            else:
                groups = manifest if parsed.type == MANIFEST else manifest_descriptor
                groups.setdefault(parsed.platform, {})[parsed.key] = value
        return cls(index, index_descriptor, _frozen(manifest), _frozen(manifest_descriptor))

    def __bool__(self) -> bool:
        return bool(self.index or self.index_descriptor or self.manifest or self.manifest_descriptor)

    def for_manifest(self, platform: Platform | None) -> dict[str, str]:
        """The annotations of ``platform``'s image manifest."""
        return _for_platform(self.manifest, platform)

    def for_manifest_descriptor(self, platform: Platform | None) -> dict[str, str]:
        """The annotations of ``platform``'s manifest entry in the index."""
        return _for_platform(self.manifest_descriptor, platform)


def _for_platform(
    groups: Mapping[PlatformKey, Mapping[str, str]], platform: Platform | None
) -> dict[str, str]:
    out = dict(groups.get("", {}))
    if platform is not None:
        out.update(groups.get(Platform(platform.os, platform.architecture, platform.variant).format(), {}))
    return out
