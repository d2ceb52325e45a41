"""Content descriptors, digests, raw blobs and the canonical JSON writer.

Rule "digest the bytes you ship": every digest-addressed document (manifest, config, index)
travels as a :class:`Blob` holding its exact bytes; the digest is computed once over those
bytes and nothing is re-serialised after hashing. JSON we produce comes from
:func:`canonical_json`, which is deterministic (same value -> same bytes) and mimics Go's
``json.Marshal`` of the image-spec structs, which is what registries and containerd see from
the real toolchain:

* no whitespace; object keys in *insertion order* — our builders insert them in the Go struct
  field order (``mediaType, digest, size, urls, annotations, platform, artifactType`` for a
  descriptor), while string maps such as ``annotations`` are sorted by key like Go maps;
* non-ASCII characters are written as UTF-8, and ``<``, ``>``, ``&``, U+2028 and U+2029 are
  escaped as ``\\u003c`` ... like Go's HTML-safe encoder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nydus_exporter.errors import FormatError
from nydus_exporter.oci.mediatypes import (
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
)
from nydus_exporter.oci.platform import Platform

# image-spec descriptor.md "Digests": registered algorithms and their encodings.
_DIGEST_RE = {
    "sha256": re.compile(r"^[a-f0-9]{64}$"),
    "sha512": re.compile(r"^[a-f0-9]{128}$"),
}
_GO_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def validate_digest(digest: object, what: str = "digest") -> str:
    """Return ``digest`` if it is ``sha256:<64 hex>`` or ``sha512:<128 hex>``, else raise
    :class:`FormatError` naming ``what``."""
    if not isinstance(digest, str):
        raise FormatError(f"{what} must be a string, got {type(digest).__name__}")
    algorithm, sep, encoded = digest.partition(":")
    pattern = _DIGEST_RE.get(algorithm)
    if not sep or pattern is None or not pattern.match(encoded):
        raise FormatError(f"{what} {digest!r} is not a valid sha256/sha512 digest")
    return digest


def digest_algorithm(digest: str) -> str:
    return validate_digest(digest).partition(":")[0]


def digest_hex(digest: str) -> str:
    """The encoded (hex) part of a validated digest."""
    return validate_digest(digest).partition(":")[2]


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def new_hasher(digest: str) -> hashlib._Hash:
    """A fresh hash object of the algorithm ``digest`` names (to verify a stream against it)."""
    return hashlib.new(digest_algorithm(digest))


def compute_digest(data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> str:
    if algorithm not in _DIGEST_RE:
        raise FormatError(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def canonical_json(value: object) -> bytes:
    """Serialise ``value`` deterministically (see the module docstring). NaN/Infinity and
    non-JSON types raise :class:`FormatError`."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        # These characters can only occur inside JSON strings, so escaping them textually is safe.
        text = _GO_ESCAPE_RE.sub(lambda m: _GO_HTML_ESCAPES[m.group()], text)
        return text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogates) is a ValueError
        raise FormatError(f"value cannot be written as JSON: {exc}") from exc


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse ``raw`` as a UTF-8 JSON object (key order kept); raise :class:`FormatError`."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def sorted_str_map(mapping: Mapping[str, str], what: str = "annotations") -> dict[str, str]:
    """A string->string map sorted by key (Go marshals maps sorted); validates the types."""
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise FormatError(f"{what} must map strings to strings, got {key!r}: {value!r}")
    return {key: mapping[key] for key in sorted(mapping)}


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An image-spec content descriptor. Validated on construction (:class:`FormatError`).

    ``annotations`` is stored as a sorted ``dict``; treat it as read-only (the dataclass is
    frozen, so a descriptor with annotations is not hashable).
    """

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = None
    urls: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.media_type, str) or not self.media_type:
            raise FormatError(f"descriptor mediaType must be a non-empty string, got {self.media_type!r}")
        validate_digest(self.digest, "descriptor digest")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise FormatError(f"descriptor size must be a non-negative integer, got {self.size!r}")
        if self.annotations is not None:
            object.__setattr__(self, "annotations", sorted_str_map(self.annotations) or None)
        artifact_type = self.artifact_type
        if artifact_type is not None and not (isinstance(artifact_type, str) and artifact_type):
            raise FormatError("descriptor artifactType must be a non-empty string")
        if self.urls is not None:
            if not all(isinstance(u, str) for u in self.urls):
                raise FormatError("descriptor urls must be strings")
            object.__setattr__(self, "urls", tuple(self.urls) or None)

    @classmethod
    def of(
        cls,
        data: bytes,
        media_type: str,
        *,
        annotations: Mapping[str, str] | None = None,
        platform: Platform | None = None,
        artifact_type: str | None = None,
    ) -> Descriptor:
        """The descriptor of ``data`` (sha256 over exactly these bytes)."""
        return cls(media_type, sha256_digest(data), len(data), annotations, platform, artifact_type)

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]

    def annotation(self, key: str) -> str | None:
        return None if self.annotations is None else self.annotations.get(key)

    def to_json(self) -> dict[str, object]:
        """JSON object in Go struct field order; empty optional fields omitted."""
        obj: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            obj["urls"] = list(self.urls)
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        if self.platform is not None:
            obj["platform"] = self.platform.to_json()
        if self.artifact_type:
            obj["artifactType"] = self.artifact_type
        return obj

    @classmethod
    def from_json(cls, obj: object) -> Descriptor:
        """Parse a descriptor object (unknown fields such as ``data`` are ignored)."""
        if not isinstance(obj, Mapping):
            raise FormatError(f"descriptor must be a JSON object, got {type(obj).__name__}")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise FormatError(f"descriptor {obj.get('digest')!r} has no mediaType")
        annotations = obj.get("annotations")
        if annotations is not None and not isinstance(annotations, Mapping):
            raise FormatError("descriptor annotations must be a JSON object")
        platform = obj.get("platform")
        artifact_type = obj.get("artifactType") or None
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise FormatError("descriptor artifactType must be a string")
        urls = obj.get("urls")
        if urls is not None and not isinstance(urls, list):
            raise FormatError("descriptor urls must be a list")
        return cls(
            media_type=media_type,
            digest=obj.get("digest", ""),  # both validated in __post_init__
            size=obj.get("size", -1),
            annotations=annotations,
            platform=None if platform is None else Platform.from_json(platform),
            artifact_type=artifact_type,
            urls=None if urls is None else tuple(urls),
        )


def verify_content(data: bytes, descriptor: Descriptor) -> None:
    """Raise :class:`FormatError` unless ``data`` has the descriptor's size and digest."""
    if len(data) != descriptor.size:
        raise FormatError(
            f"content of {descriptor.digest} has {len(data)} bytes, descriptor says {descriptor.size}"
        )
    actual = compute_digest(data, digest_algorithm(descriptor.digest))
    if actual != descriptor.digest:
        raise FormatError(f"content digest mismatch: expected {descriptor.digest}, got {actual}")


@dataclass(frozen=True, slots=True)
class Blob:
    """Content-addressed bytes with their media type — for JSON documents the raw form.

    The sha256 digest is computed once at construction over exactly ``data``.
    """

    data: bytes
    media_type: str
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "digest", sha256_digest(self.data))

    @classmethod
    def from_json(cls, value: object, media_type: str) -> Blob:
        """Serialise ``value`` once with :func:`canonical_json` and keep those bytes."""
        return cls(canonical_json(value), media_type)

    @property
    def size(self) -> int:
        return len(self.data)

    def parse(self) -> dict[str, Any]:
        """The JSON object in ``data`` (a fresh parse; never re-serialise it for shipping)."""
        return parse_json_object(self.data, f"{self.media_type} {self.digest}")

    def descriptor(
        self,
        *,
        annotations: Mapping[str, str] | None = None,
        platform: Platform | None = None,
        artifact_type: str | None = None,
        urls: Sequence[str] | None = None,
    ) -> Descriptor:
        return Descriptor(
            self.media_type,
            self.digest,
            self.size,
            annotations,
            platform,
            artifact_type,
            None if urls is None else tuple(urls),
        )


# A JSON document is just a Blob whose data is JSON; the alias names the intent at call sites.
RawJSON = Blob


def document_media_type(obj: Mapping[str, Any], what: str = "document") -> str:
    """The media type of a parsed manifest or index: its ``mediaType`` field, or — since OCI
    allows omitting it — inferred from the shape (``manifests`` -> index, ``config`` ->
    manifest). Also checks ``schemaVersion`` is 2."""
    if obj.get("schemaVersion") != 2:
        raise FormatError(f"{what} has schemaVersion {obj.get('schemaVersion')!r}, expected 2")
    media_type = obj.get("mediaType")
    if media_type is not None:
        if not isinstance(media_type, str) or not media_type:
            raise FormatError(f"{what} mediaType must be a non-empty string")
        return media_type
    if "manifests" in obj:
        return MEDIA_TYPE_IMAGE_INDEX
    if "config" in obj:
        return MEDIA_TYPE_IMAGE_MANIFEST
    raise FormatError(f"{what} is neither an image manifest nor an index (no mediaType, config or manifests)")


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """A parsed image manifest (OCI or Docker schema2) together with its raw bytes."""

    raw: Blob
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] | None = None
    subject: Descriptor | None = None

    @classmethod
    def parse(cls, raw: bytes) -> ImageManifest:
        obj = parse_json_object(raw, "image manifest")
        media_type = document_media_type(obj, "image manifest")
        if media_type not in (MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST):
            raise FormatError(f"expected an image manifest, got mediaType {media_type!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise FormatError("image manifest has no 'layers' list")
        annotations = obj.get("annotations")
        subject = obj.get("subject")
        return cls(
            raw=Blob(raw, media_type),
            config=Descriptor.from_json(obj.get("config")),
            layers=tuple(Descriptor.from_json(layer) for layer in layers),
            annotations=None if annotations is None else sorted_str_map(_mapping(annotations)),
            subject=None if subject is None else Descriptor.from_json(subject),
        )

    @property
    def media_type(self) -> str:
        return self.raw.media_type

    def descriptor(self, **kwargs: Any) -> Descriptor:
        return self.raw.descriptor(**kwargs)


@dataclass(frozen=True, slots=True)
class ImageIndex:
    """A parsed image index or Docker manifest list together with its raw bytes."""

    raw: Blob
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] | None = None

    @classmethod
    def parse(cls, raw: bytes) -> ImageIndex:
        obj = parse_json_object(raw, "image index")
        media_type = document_media_type(obj, "image index")
        if media_type not in (MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST):
            raise FormatError(f"expected an image index, got mediaType {media_type!r}")
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise FormatError("image index has no 'manifests' list")
        annotations = obj.get("annotations")
        return cls(
            raw=Blob(raw, media_type),
            manifests=tuple(Descriptor.from_json(m) for m in manifests),
            annotations=None if annotations is None else sorted_str_map(_mapping(annotations)),
        )

    @property
    def media_type(self) -> str:
        return self.raw.media_type


def _mapping(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise FormatError("annotations must be a JSON object")
    return value
