"""The output keys (``--output type=nydus,KEY=VALUE,...`` and the daemon's Resolve attrs).

One declarative table, :data:`KEYS`, says for every key its aliases, how its value is parsed,
its default, where it applies (``cli``, ``daemon`` or ``both``) and what the daemon does with
it (:class:`DaemonPolicy`). :func:`parse_output` reads a key/value mapping once, against that
table, into a frozen :class:`ExportOptions`; the CLI runs the pipeline with it, the daemon
keeps it for the instance and hands it (pickled, never re-parsed) to its worker.

Errors, one message per kind: a value that is not of the key's type or range is a
:class:`ConfigError` (``key='value' ...``); a valid value this builder cannot do (``fs-version=5``,
a non-zero ``batch-size``, a key the daemon refuses) is an :class:`UnsupportedError`.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nydus_exporter.errors import ConfigError, UnsupportedError, excerpt
from nydus_exporter.layer.entry import DEFAULT_SPARSE_LIMIT
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.pipeline.annotations import ImageAnnotations, parse_annotation_key
from nydus_exporter.pipeline.pack import PackOptions
from nydus_exporter.pipeline.sizes import parse_size
from nydus_exporter.rafs import codecs, layout

Scope = Literal["cli", "daemon", "both"]
MergeMode = Literal["artifact", "legacy"]
MergeSource = Literal["registry", "build"]


class DaemonPolicy(enum.Enum):
    """What the daemon does with a key its client gives."""

    ALLOWED = "allowed"  # as in-process
    REFUSED = "refused"  # a valid key the daemon cannot do: FAILED_PRECONDITION
    FIXED = "fixed"  # the daemon decides the value itself: the given one is ignored, with a warning
    CAPPED = "capped"  # the daemon's own value is the default and the most a client may ask for


@dataclass(frozen=True)
class ExportOptions:
    """What ``--output type=nydus,...`` says, parsed ([contract §5.4])."""

    names: tuple[str, ...] = ()
    push: bool = True
    oci_layout: Path | None = None
    oci_mediatypes: bool = False
    merge_manifest: bool = False
    merge_manifest_mode: MergeMode = "artifact"  # "nydus-config" is an alias of "artifact"
    merge_manifest_source: MergeSource = "registry"  # the tag's current image | the source
    insecure: bool = False  # registry.insecure: plain HTTP or unverified TLS for the named registries
    ca_file: Path | None = None
    # Registry limits (seconds; None: the daemon's configured value, else the client's default).
    registry_timeout: float | None = None  # connect and read stall timeout of one request
    registry_retry_deadline: float | None = None  # time retrying may take without progress
    registry_probe_timeout: float | None = None  # TLS handshake of the HTTPS-before-HTTP probe
    chunk_dedup: bool = False  # layers reference chunks their lower layers stored ([format §4.2])
    chunk_dict: str | None = None  # a Nydus image whose chunks layers reference ([format §4.2])
    chunk_store: bool = False  # reference chunks the state dir's chunk store knows in the target
    platforms: tuple[Platform, ...] = ()
    pack: PackOptions = field(default_factory=PackOptions)
    parallel_layers: int = field(default_factory=lambda: os.cpu_count() or 1)
    annotations: ImageAnnotations = field(default_factory=ImageAnnotations)  # annotation… keys
    source_date_epoch: int | None = None  # config `created` and history times (BuildKit's epoch)
    standard_response_keys: bool = True  # false: only the nydus.* response keys


@dataclass(frozen=True)
class ParsedOutput:
    """:func:`parse_output`'s answer: the options, the keys in their normal spelling (aliases
    resolved, defaults filled in: what Resolve answers, and what idempotency compares), and
    the warnings (unknown keys, aliases, lenient values)."""

    options: ExportOptions
    normalized: Mapping[str, str]
    warnings: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dict(self.normalized), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Key:
    """One output key. ``parse(value)`` returns the typed value (``None``: no effect) and
    raises :class:`ConfigError` naming the value; ``key`` is prefixed by the caller."""

    name: str
    target: str  # ExportOptions field, "pack.<field>" for PackOptions, "" for none
    parse: Callable[[str], Any]
    render: Callable[[Any], str] = str
    default: str | None = None  # normalised default (Resolve shows it); None: not shown
    aliases: tuple[str, ...] = ()
    scope: Scope = "both"
    daemon: DaemonPolicy = DaemonPolicy.ALLOWED
    host_path: bool = False  # a path on the daemon's host: absolute, under an allowed root
    readable_file: bool = False  # a file read later: refused now when it cannot be read
    lenient: bool = False  # a bad value is a warning and the default (the PR #2045 exporter)
    doc: str = ""


class _Bad(Exception):
    """A value that does not parse: ``detail`` follows ``key='value'`` in the message."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Unsupported(Exception):
    """A valid value this builder cannot do; the message is complete."""


_TRUE = ("", "1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Bad("is not a boolean")


def _render_bool(value: bool) -> str:
    return "true" if value else "false"


def _int(value: str) -> int:
    try:
        return int(value.strip(), 0)
    except ValueError:
        raise _Bad("is not a number") from None


def _one_of(*choices: str, aliases: Mapping[str, str] | None = None) -> Callable[[str], str]:
    aliases = aliases or {}
    expected = f"expected one of {', '.join((*choices, *aliases))}"

    def parse(value: str) -> str:
        value = aliases.get(value, value)
        if value not in choices:
            raise _Bad(expected)
        return value

    return parse


def _power_of_two_chunk(value: int) -> int:
    """A size in chunks' range (rafs/layout.py): a power of two from 4 KiB to 16 MiB."""
    if value & (value - 1) or not layout.MIN_CHUNK_SIZE <= value <= layout.MAX_CHUNK_SIZE:
        raise _Bad(f"must be a power of two from {layout.MIN_CHUNK_SIZE:#x} to {layout.MAX_CHUNK_SIZE:#x}")
    return value


def _chunk_size(value: str) -> int:
    return _power_of_two_chunk(_int(value))


def _batch_size(value: str) -> int:
    size = _int(value)
    if size != 0:
        _power_of_two_chunk(size)
        raise _Unsupported(f"batch-size={value}: batched chunks are not supported by this builder")
    return 0


def _names(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        parse_reference(name)  # raises ConfigError naming the reference
    return names


def _platforms(value: str) -> tuple[Platform, ...]:
    platforms = tuple(Platform.parse(p) for p in value.split(",") if p.strip())
    if not platforms:
        raise _Bad("names no platform")
    return platforms


def _fs_version(value: str) -> str:
    if value == "5":
        raise _Unsupported("fs-version=5: only RAFS v6 is supported by this builder")
    if value != "6":
        raise _Bad("expected 5 or 6")
    return value


def _compressor(value: str) -> str | None:
    if value == "nydus":
        return None  # compression=nydus: accepted for image-exporter symmetry ([contract §5.4])
    if value not in codecs.COMPRESSOR_NAMES:
        raise _Bad(f"expected one of {', '.join(codecs.COMPRESSOR_NAMES)}")
    return value


def chunk_dict_image_spec(value: str) -> str:
    """``chunk-dict=`` as nydusify spells it (``bootstrap:registry:REF``), as a reference, or
    as an image spec (``docker://REF``, ``oci:DIR[:TAG]``) -> an image spec."""
    text = value.strip().removeprefix("bootstrap:registry:")
    if not text:
        raise _Bad("needs an image reference")
    if text.startswith(("docker://", "oci:")):
        return text
    parse_reference(text)  # validates
    return f"docker://{text}"


def _prefetch_patterns(value: str) -> None:
    patterns = [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
    for pattern in patterns:
        if not pattern.startswith("/"):
            raise _Bad(f"{excerpt(pattern)} is not an absolute path")
    if patterns:
        raise _Unsupported("prefetch-patterns is not supported by this builder yet")


def _size(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise _Bad("is not a size (e.g. 16GiB)") from None


def _parallel(value: str) -> int:
    count = _int(value)
    if count < 1:
        raise _Bad("must be at least 1")
    return count


def _epoch(value: str) -> int | None:
    if not value.strip():
        return None  # BuildKit: an empty SOURCE_DATE_EPOCH means none
    epoch = _int(value)
    if epoch < 0:
        raise _Bad("must not be negative")
    return epoch


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float:
    """``30s``, ``2m``, ``1h``, ``500ms`` or plain seconds (``45``, ``2.5``); positive."""
    text = value.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h") if text.endswith(u)), "")
    try:
        seconds = float(text.removesuffix(unit)) * _DURATION_UNITS.get(unit, 1.0)
    except ValueError:
        raise _Bad("is not a duration (e.g. 30s, 2m, 45)") from None
    if not 0 < seconds < float("inf"):
        raise _Bad("must be a positive duration")
    return seconds


def parse_duration(text: str) -> float:
    """A duration as the ``registry.*`` keys take it (``30s``, ``2m``, ``45``); raises ValueError
    (so that argparse reports it as a bad flag value)."""
    try:
        return _duration(text)
    except _Bad as exc:
        raise ValueError(f"{excerpt(text)} {exc.detail}") from None


def _render_duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _not_yet(what: str) -> Callable[[str], bool]:
    """A boolean key of the image exporter this builder does not implement: ``false`` (its
    default) is accepted, ``true`` refused rather than silently ignored."""

    def parse(value: str) -> bool:
        if _bool(value):
            raise _Unsupported(f"{what} is not supported by this builder yet")
        return False

    return parse


def _type(value: str) -> None:
    if value != "nydus":
        raise _Bad("this exporter writes type=nydus")


def _path(value: str) -> Path:
    if not value:
        raise _Bad("is empty")
    return Path(value)


_B = DaemonPolicy
KEYS: tuple[Key, ...] = (
    Key("type", "", _type, doc="must be nydus"),
    Key("name", "names", _names, ",".join, doc="image references, comma separated"),
    Key("push", "push", _bool, _render_bool, "true"),
    Key("oci-layout", "oci_layout", _path, host_path=True, doc="write an OCI image layout there"),
    Key("oci-mediatypes", "oci_mediatypes", _bool, _render_bool, "false"),
    Key("merge-manifest", "merge_manifest", _bool, _render_bool, "false", lenient=True),
    Key(
        "merge-manifest-mode",
        "merge_manifest_mode",
        _one_of("artifact", "legacy", aliases={"nydus-config": "artifact"}),
        default="artifact",
    ),
    Key("merge-manifest-source", "merge_manifest_source", _one_of("registry", "build"), default="registry"),
    Key("registry.insecure", "insecure", _bool, _render_bool, "false"),
    Key("registry.ca-file", "ca_file", _path, host_path=True, readable_file=True),
    Key(
        "registry.timeout",
        "registry_timeout",
        _duration,
        _render_duration,
        doc="connect and read stall timeout",
    ),
    Key(
        "registry.retry-deadline",
        "registry_retry_deadline",
        _duration,
        _render_duration,
        doc="how long temporary registry failures are retried without progress",
    ),
    Key(
        "registry.tls-probe-timeout",
        "registry_probe_timeout",
        _duration,
        _render_duration,
        doc="connect/TLS handshake timeout of the HTTPS attempt before plain HTTP",
    ),
    Key("platform", "platforms", _platforms, lambda ps: ",".join(str(p) for p in ps)),
    Key(
        "compressor",
        "pack.compressor",
        _compressor,
        default="zstd",
        aliases=("nydus-compressor", "compression"),
    ),
    Key("fs-version", "", _fs_version, default="6", aliases=("nydus-fs-version",)),
    Key("chunk-size", "pack.chunk_size", _chunk_size, hex, hex(layout.DEFAULT_CHUNK_SIZE)),
    Key("batch-size", "", _batch_size, str),
    Key("digester", "pack.digester", _one_of(*codecs.DIGESTER_NAMES), default="blake3"),
    Key(
        "sparse-limit",
        "pack.sparse_limit",
        _size,
        str,
        str(DEFAULT_SPARSE_LIMIT),
        daemon=_B.CAPPED,
        doc="the most bytes a sparse file may declare",
    ),
    Key("threads", "pack.threads", _parallel, scope="cli", daemon=_B.FIXED, doc="compression threads"),
    Key("parallel-layers", "parallel_layers", _parallel),
    Key("chunk-dedup", "chunk_dedup", _bool, _render_bool, "false"),
    Key("chunk-store", "chunk_store", _bool, _render_bool, "false"),
    Key(
        "chunk-dict",
        "chunk_dict",
        chunk_dict_image_spec,
        aliases=("nydus-chunk-dict-image",),
        scope="cli",
        daemon=_B.REFUSED,
        doc="the daemon's workers have no registry access",
    ),
    Key("prefetch-patterns", "", _prefetch_patterns),
    Key("source-date-epoch", "source_date_epoch", _epoch, doc="clamps the config and history times"),
    Key("standard-response-keys", "standard_response_keys", _bool, _render_bool, "true"),
    Key("with-referrer", "", _not_yet("with-referrer=true (a subject for the Nydus manifest)"), _render_bool),
    Key("name-canonical", "", _not_yet("name-canonical=true (a name@digest for each name)"), _render_bool),
    Key("push-by-digest", "", _not_yet("push-by-digest=true (a push without tags)"), _render_bool),
)
ANNOTATION_PREFIXES = ("annotation.", "annotation-", "annotation[")

_BY_NAME = {key.name: key for key in KEYS}
_ALIASES = {alias: key.name for key in KEYS for alias in key.aliases}


def find_key(name: str) -> Key | None:
    """The key ``name`` or an alias of it means."""
    return _BY_NAME.get(_ALIASES.get(name, name))


def parse_output_text(text: str) -> dict[str, str]:
    """``k=v,k2="a,b"`` -> dict (CSV fields, as buildctl parses ``--output``)."""
    attrs: dict[str, str] = {}
    for row in csv.reader([text]):
        for item in row:
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--output field {excerpt(item)} is not key=value")
            attrs[key.strip()] = value
    return attrs


def parse_output(
    attrs: Mapping[str, str],
    *,
    daemon: bool = False,
    check_host_path: Callable[[str, Path], None] | None = None,
    caps: Mapping[str, int] | None = None,
) -> ParsedOutput:
    """Read ``attrs`` against :data:`KEYS`, in-process (``daemon=False``) or for the daemon
    (its policies apply; host paths must be absolute, and ``check_host_path(key, path)``
    raises for one the daemon does not allow; ``caps`` are the daemon's own values of its
    capped keys: their default and the most a client may ask for)."""
    reader = _Reader(daemon=daemon, check_host_path=check_host_path, caps=caps or {})
    for given, value in sorted(attrs.items()):
        reader.take(given, value)
    return reader.finish()


class _Reader:
    def __init__(
        self,
        *,
        daemon: bool,
        check_host_path: Callable[[str, Path], None] | None,
        caps: Mapping[str, int],
    ) -> None:
        self._daemon = daemon
        self._caps = caps if daemon else {}
        self._check_host_path_hook = check_host_path
        self.normalized: dict[str, str] = {}
        self.warnings: list[str] = []
        self._options: dict[str, Any] = {}
        self._pack: dict[str, Any] = {}
        self._annotations: dict[str, str] = {}

    def take(self, given: str, value: str) -> None:
        if given.startswith(ANNOTATION_PREFIXES):
            self._annotation(given, value)
            return
        key = find_key(given)
        if key is None:
            self.warnings.append(f"unknown exporter key {excerpt(given)} ignored")
            return
        if given != key.name:
            self.warnings.append(f"{given} is an alias of {key.name}")
        if self._daemon and key.daemon is DaemonPolicy.REFUSED:
            raise UnsupportedError(f"{given}={excerpt(value)}: not available over the daemon ({key.doc})")
        if not self._daemon and key.scope == "daemon":
            self.warnings.append(f"{given} applies to the daemon only: ignored")
            return
        if self._daemon and key.daemon is DaemonPolicy.FIXED:
            self.warnings.append(f"{given}={excerpt(value)} ignored: the daemon chooses {key.name} itself")
            return
        parsed = self._parse(key, given, value)
        if parsed is None:
            return
        if key.host_path and self._daemon:
            self._check_host_path(key, value)
        cap = self._caps.get(key.name)
        if cap is not None and parsed > cap:
            raise ConfigError(f"{given}={excerpt(value)} is above this daemon's limit ({cap} bytes)")
        if key.readable_file:
            _check_readable(given, value)
        self._put(key, key.render(parsed), given)
        self._set(key, parsed)

    def _set(self, key: Key, parsed: Any) -> None:
        if key.target.startswith("pack."):
            self._pack[key.target.removeprefix("pack.")] = parsed
        elif key.target:
            self._options[key.target] = parsed

    def _parse(self, key: Key, given: str, value: str) -> Any:
        try:
            return key.parse(value)
        except _Unsupported as exc:
            raise UnsupportedError(str(exc)) from None
        except _Bad as exc:
            if key.lenient:
                self.warnings.append(
                    f"{given}={excerpt(value)} {exc.detail}: treated as {key.default}"
                    " (as the PR #2045 exporter did)"
                )
                return key.parse(key.default or "")
            raise ConfigError(f"{given}={excerpt(value)} {exc.detail}") from None

    def _check_host_path(self, key: Key, value: str) -> None:
        if not Path(value).is_absolute():
            raise ConfigError(f"{key.name}={excerpt(value)} must be an absolute path")
        if self._check_host_path_hook is not None:
            self._check_host_path_hook(key.name, Path(value))

    def _annotation(self, given: str, value: str) -> None:
        parse_annotation_key(given)  # a key that cannot apply is refused here, at Resolve
        self._put_raw(given, value, given)
        self._annotations[given] = value

    def _put(self, key: Key, rendered: str, given: str) -> None:
        self._put_raw(key.name, rendered, given)

    def _put_raw(self, name: str, rendered: str, given: str) -> None:
        if name in self.normalized and self.normalized[name] != rendered:
            have = excerpt(self.normalized[name])
            raise ConfigError(f"{excerpt(given)}={excerpt(rendered)} conflicts with {name}={have}")
        self.normalized[name] = rendered

    def finish(self) -> ParsedOutput:
        for name, cap in self._caps.items():  # the daemon's value, unless the client asked less
            key = _BY_NAME[name]
            if name not in self.normalized:
                self.normalized[name] = key.render(cap)
                self._set(key, cap)
        for key in KEYS:
            if key.default is not None and (not self._daemon or key.daemon is DaemonPolicy.ALLOWED):
                self.normalized.setdefault(key.name, key.default)
        if self._annotations:
            self._options["annotations"] = ImageAnnotations.of(dict(sorted(self._annotations.items())))
        pack = PackOptions(**self._pack).validated()
        options = ExportOptions(pack=pack, **self._options)
        if not options.push and options.oci_layout is None:
            raise ConfigError("push=false needs oci-layout=DIR (where to write the image)")
        if options.push and not options.names:
            raise ConfigError("push=true needs name=REF (where to push the image)")
        return ParsedOutput(options, dict(self.normalized), tuple(self.warnings))


def _check_readable(given: str, value: str) -> None:
    """A file the export reads later (a CA bundle) is checked now, at parse time (the daemon's
    Resolve), rather than failing the export after its layers were converted. Over the
    daemon this runs after the allowed-roots check, so it tells nothing about other paths."""
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{given}={excerpt(value)} cannot be read: {exc.strerror or exc}") from None


def options_for_worker(options: ExportOptions, staging: Path, *, merge_at_push: bool) -> ExportOptions:
    """The options a daemon worker converts with: into the staging layout, no push (the daemon
    publishes), no merge when the merge is done against the live tag at push time."""
    return dataclasses.replace(
        options,
        push=False,
        oci_layout=staging,
        merge_manifest=options.merge_manifest and not merge_at_push,
    )
