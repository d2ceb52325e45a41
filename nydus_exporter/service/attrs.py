"""Validate and normalise exporter attrs for ``Resolve`` ([contract §5.4]).

The rules are those of :meth:`ExportOptions.from_attrs` (which builds the options the pipeline
runs with) plus the daemon-level keys of [contract §5.4] that the pipeline does not know:

* every known key is checked here first, so a bad value fails with the key named
  (:class:`ConfigError` -> ``INVALID_ARGUMENT``);
* a valid value asking for something this daemon cannot do (``fs-version=5``, non-zero
  ``batch-size``, ``chunk-dict``, ...) raises :class:`PreconditionError`
  (``FAILED_PRECONDITION``);
* ``merge-manifest`` keeps the PR #2045 exporter's leniency: ``""``/``true`` mean true, any
  value that is not a boolean means false, with a warning;
* unknown keys are warnings, never errors.

The result carries the normalised attrs (defaults filled in, aliases resolved) and a
fingerprint of them, which is what idempotency keys are compared with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nydus_exporter.errors import ConfigError, excerpt
from nydus_exporter.export import ExportOptions, parse_bool
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.service.errors import PathNotAllowedError, PreconditionError

# Keys ExportOptions.from_attrs understands (after normalisation).
_PIPELINE_KEYS = frozenset(
    {
        "name",
        "push",
        "oci-layout",
        "oci-mediatypes",
        "chunk-dedup",
        "chunk-store",
        "merge-manifest",
        "merge-manifest-mode",
        "merge-manifest-source",
        "registry.insecure",
        "registry.ca-file",
        "platform",
        "compressor",
        "fs-version",
        "chunk-size",
        "digester",
        "parallel-layers",
    }
)
_ALIASES = {
    "nydus-compressor": "compressor",
    "compression": "compressor",
    "nydus-fs-version": "fs-version",
    "nydus-chunk-dict-image": "chunk-dict",
}
_MIN_CHUNK, _MAX_CHUNK = 0x1000, 0x1000000


@dataclass(frozen=True)
class ResolvedAttrs:
    """What Resolve hands back and what every later call of the instance runs with."""

    options: ExportOptions
    normalized: Mapping[str, str]
    pipeline_attrs: Mapping[str, str]  # the subset ExportOptions.from_attrs is given
    warnings: tuple[str, ...]
    platforms: tuple[Platform, ...]  # the `platform` selection (empty: every platform)
    standard_response_keys: bool
    display_name: str
    fingerprint: str

    @property
    def requires_finalize(self) -> bool:
        # Every export has a publish step (oci-layout tags, or a push): with defer_push it
        # waits for Finalize.
        return True


def _int(key: str, value: str) -> int:
    try:
        return int(value.strip(), 0)
    except ValueError:
        raise ConfigError(f"{key}={excerpt(value)} is not a number") from None


def _power_of_two_in_range(key: str, value: int) -> None:
    if value & (value - 1) or not _MIN_CHUNK <= value <= _MAX_CHUNK:
        raise ConfigError(f"{key}={value:#x} must be a power of two from {_MIN_CHUNK:#x} to {_MAX_CHUNK:#x}")


def resolve_attrs(
    attrs: Mapping[str, str],
    *,
    path_allowed: Callable[[Path], bool],
) -> ResolvedAttrs:
    """Validate ``attrs``; raises ConfigError / PreconditionError / PathNotAllowedError."""
    warnings: list[str] = []
    norm: dict[str, str] = {}

    def put(key: str, value: str, given_as: str) -> None:
        if key in norm and norm[key] != value:
            raise ConfigError(f"{given_as}={excerpt(value)} conflicts with {key}={excerpt(norm[key])}")
        norm[key] = value

    for raw_key, value in sorted(attrs.items()):
        key = _ALIASES.get(raw_key, raw_key)
        if raw_key != key:
            warnings.append(f"{raw_key} is an alias of {key}")
        if key == "type":
            if value != "nydus":
                raise ConfigError(f"type={excerpt(value)}: this exporter writes type=nydus")
        elif key == "name":
            names = [n.strip() for n in value.split(",") if n.strip()]
            for name in names:
                parse_reference(name)
            put(key, ",".join(names), raw_key)
        elif key in (
            "push",
            "oci-mediatypes",
            "chunk-dedup",
            "chunk-store",
            "with-referrer",
            "name-canonical",
            "push-by-digest",
            "standard-response-keys",
        ):
            put(key, str(parse_bool(key, value)).lower(), raw_key)
        elif key == "registry.insecure":
            # The fork and the image exporter: "" means true, otherwise ParseBool.
            put(key, str(parse_bool(key, value)).lower(), raw_key)
        elif key == "merge-manifest":
            try:
                flag = parse_bool(key, value)
            except ConfigError:
                flag = False
                warnings.append(
                    f"merge-manifest={excerpt(value)} is not a boolean: treated as false "
                    "(as the PR #2045 exporter did)"
                )
            put(key, str(flag).lower(), raw_key)
        elif key == "merge-manifest-source":
            if value not in ("registry", "build"):
                raise ConfigError(f"merge-manifest-source={excerpt(value)}: expected registry or build")
            put(key, value, raw_key)
        elif key == "merge-manifest-mode":
            mode = {"nydus-config": "artifact"}.get(value, value)
            if mode not in ("artifact", "legacy"):
                raise ConfigError(f"merge-manifest-mode={excerpt(value)}: expected legacy or nydus-config")
            put(key, mode, raw_key)
        elif key in ("oci-layout", "registry.ca-file"):
            path = Path(value)
            if not value or not path.is_absolute():
                raise ConfigError(f"{key}={excerpt(value)} must be an absolute path")
            if not path_allowed(path):
                raise PathNotAllowedError(
                    f"{key}={excerpt(value)} is not under an allowed root or the daemon's state directory"
                )
            put(key, value, raw_key)
        elif key == "platform":
            platforms = [Platform.parse(p) for p in value.split(",") if p.strip()]
            if not platforms:
                raise ConfigError(f"platform={excerpt(value)} names no platform")
            put(key, ",".join(str(p) for p in platforms), raw_key)
        elif key == "compressor":
            if value == "nydus" and raw_key == "compression":
                continue  # accepted for image-exporter symmetry ([contract §5.4])
            if value not in codecs.COMPRESSOR_NAMES:
                raise ConfigError(
                    f"{raw_key}={excerpt(value)}: expected one of {', '.join(codecs.COMPRESSOR_NAMES)}"
                )
            put(key, value, raw_key)
        elif key == "fs-version":
            if value == "5":
                raise PreconditionError(f"{raw_key}=5: only RAFS v6 is supported by this builder")
            if value != "6":
                raise ConfigError(f"{raw_key}={excerpt(value)}: expected 5 or 6")
            put(key, value, raw_key)
        elif key == "chunk-size":
            size = _int(key, value)
            _power_of_two_in_range(key, size)
            put(key, hex(size), raw_key)
        elif key == "batch-size":
            size = _int(key, value)
            if size != 0:
                _power_of_two_in_range(key, size)
                raise PreconditionError(
                    f"batch-size={value}: batched chunks are not supported by this builder"
                )
            put(key, "0", raw_key)
        elif key == "chunk-dict":
            parse_reference(value)
            raise PreconditionError(f"{raw_key}={excerpt(value)}: chunk dictionaries are not supported yet")
        elif key == "prefetch-patterns":
            patterns = [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
            for pattern in patterns:
                if not pattern.startswith("/"):
                    raise ConfigError(f"prefetch-patterns: {excerpt(pattern)} is not an absolute path")
            if patterns:
                raise PreconditionError("prefetch-patterns is not supported by this builder yet")
        elif key == "digester":
            if value not in codecs.DIGESTER_NAMES:
                raise ConfigError(
                    f"digester={excerpt(value)}: expected one of {', '.join(codecs.DIGESTER_NAMES)}"
                )
            put(key, value, raw_key)
        elif key == "parallel-layers":
            count = _int(key, value)
            if count < 1:
                raise ConfigError(f"parallel-layers={excerpt(value)} must be at least 1")
            put(key, str(count), raw_key)
        elif key == "source-date-epoch":
            epoch = _int(key, value) if value.strip() else 0
            if epoch < 0:
                raise ConfigError(f"source-date-epoch={excerpt(value)} must not be negative")
            put(key, str(epoch), raw_key)
        elif key.startswith("annotation.") or key.startswith("annotation-") or key.startswith("annotation["):
            if key.startswith("annotation.") and not key.removeprefix("annotation."):
                raise ConfigError(f"{excerpt(key)} names no annotation")
            put(key, value, raw_key)
        else:
            warnings.append(f"unknown exporter key {excerpt(raw_key)} ignored")

    defaults = {
        "push": "true",
        "oci-mediatypes": "false",
        "chunk-dedup": "false",
        "chunk-store": "false",
        "merge-manifest": "false",
        "merge-manifest-mode": "artifact",
        "merge-manifest-source": "registry",
        "fs-version": "6",
        "compressor": "zstd",
        "chunk-size": hex(layout.DEFAULT_CHUNK_SIZE),
        "digester": "blake3",
        "registry.insecure": "false",
        "standard-response-keys": "true",
    }
    for key, value in defaults.items():
        norm.setdefault(key, value)

    pipeline = {k: v for k, v in norm.items() if k in _PIPELINE_KEYS or k.startswith("annotation.")}
    options, pipeline_warnings = ExportOptions.from_attrs(pipeline)
    warnings.extend(pipeline_warnings)
    image_names = norm.get("name", "")
    if image_names:
        display = f"exporting to nydus image {image_names}"
    else:
        display = f"exporting to nydus image (oci-layout {norm.get('oci-layout', '?')})"
    fingerprint = hashlib.sha256(json.dumps(norm, sort_keys=True).encode()).hexdigest()
    return ResolvedAttrs(
        options=options,
        normalized=dict(norm),
        pipeline_attrs=pipeline,
        warnings=tuple(warnings),
        platforms=options.platforms,
        standard_response_keys=norm["standard-response-keys"] == "true",
        display_name=display,
        fingerprint=fingerprint,
    )


def filter_response(response: Mapping[str, str], *, standard_keys: bool) -> dict[str, str]:
    """``standard-response-keys=false`` keeps only the ``nydus.*`` keys ([contract §5.4])."""
    if standard_keys:
        return dict(response)
    return {k: v for k, v in response.items() if k.startswith("nydus.")}


def selected(platforms: Sequence[Platform], platform: Platform | None) -> bool:
    """Whether ``platform`` is converted under the ``platform=`` selection."""
    if not platforms:
        return True
    if platform is None:
        return False
    have = platform.normalized()
    return any(
        (p.normalized().os, p.normalized().architecture, p.normalized().variant)
        == (have.os, have.architecture, have.variant)
        for p in platforms
    )
