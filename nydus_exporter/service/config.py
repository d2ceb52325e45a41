"""Daemon configuration: a TOML file, then ``NYDUS_EXPORTER_*`` environment variables, then flags.

Later sources win: defaults < ``--config FILE`` (or ``NYDUS_EXPORTER_CONFIG``) < environment
< command-line flags. The resolved value is a frozen :class:`ServiceConfig`, built once by
the CLI and passed down (never a module global); :func:`redacted` is what gets logged.

TOML keys are the field names (``state_dir``, ``listen``, ``allowed_roots``, ...); the
environment variable of a field is ``NYDUS_EXPORTER_`` + its upper-cased name, and list
fields take a comma-separated value (``NYDUS_EXPORTER_LISTEN=unix:///run/x.sock,tcp://0.0.0.0:7070``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nydus_exporter.errors import ConfigError
from nydus_exporter.layer.entry import DEFAULT_SPARSE_LIMIT

ENV_PREFIX = "NYDUS_EXPORTER_"
DEFAULT_STATE_DIR = Path("/var/lib/nydus-exporter")
_SECRET_WORDS = ("password", "secret", "token")


def _cpus() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the daemon is told; see the module docstring for where values come from."""

    state_dir: Path = DEFAULT_STATE_DIR  # job spools, staging layouts, the layer cache
    # unix:///path (mode 0660) and/or tcp://HOST:PORT; empty: unix socket in state_dir
    listen: tuple[str, ...] = ()
    http: str = ""  # HOST:PORT of the /metrics and /healthz endpoint; empty: off
    tls_cert: Path | None = None  # server certificate (PEM) for tcp:// listeners
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: mutual TLS, clients must present a cert it signed
    max_concurrent_exports: int = field(default_factory=_cpus)
    job_deadline: float = 3600.0  # seconds a job may run (receive + convert + publish)
    job_ttl: float = 600.0  # seconds finished jobs and idle instances are kept
    grace_period: float = 30.0  # SIGTERM: seconds running exports may take to finish
    allowed_roots: tuple[Path, ...] = ()  # host paths a client may name (oci-layout, layer refs)
    use_docker_config: bool = False  # fall back to the daemon's own docker config for registries
    # The default of the chunk-store output key for exports through this daemon (a client's
    # chunk-store=true/false wins): the daemon's state dir is the chunk store's natural home.
    chunk_store: bool = False
    # sparse-limit of exports that name none, and the most one may ask for (bytes)
    sparse_limit: int = DEFAULT_SPARSE_LIMIT
    # Defaults of the registry.timeout / registry.retry-deadline / registry.tls-probe-timeout
    # output keys (seconds; None: the registry client's own: 30 s connect, 120 s read, 300 s
    # of retrying, 3 s for the HTTPS attempt before plain HTTP).
    registry_timeout: float | None = None
    registry_retry_deadline: float | None = None
    registry_tls_probe_timeout: float | None = None
    max_chunk_bytes: int = 1 << 20  # largest LayerData.data
    max_message_bytes: int = 16 << 20  # gRPC message limit both ways ([contract §5.6])
    # What a client can make the daemon hold in memory (service/budget.py) and how long and
    # how many streams it may keep open.
    max_metadata_bytes_per_job: int = 32 << 20  # metadata of one Export (header + chunks)
    max_metadata_bytes_total: int = 256 << 20  # metadata of every Export receiving at once
    max_attrs_bytes_per_instance: int = 1 << 20  # attrs of one Resolve (keys + values)
    max_attrs_bytes_total: int = 64 << 20  # attrs of every instance held (until TTL/Release)
    header_timeout: float = 30.0  # seconds an Export stream may take to send its header
    max_streams_per_peer: int = 64  # open Export streams of one client (peer host)
    log_level: str = "info"
    log_format: str = "json"  # json | console

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        return self.listen or (f"unix://{self.state_dir / 'exporter.sock'}",)

    def validated(self) -> ServiceConfig:
        if self.sparse_limit < 0:
            raise ConfigError("sparse_limit must not be negative")
        if not 4096 <= self.max_chunk_bytes <= self.max_message_bytes - 4096:
            raise ConfigError("max_chunk_bytes must be from 4096 to max_message_bytes - 4096")
        for count, name in (
            (self.max_concurrent_exports, "max_concurrent_exports"),
            (self.max_metadata_bytes_per_job, "max_metadata_bytes_per_job"),
            (self.max_metadata_bytes_total, "max_metadata_bytes_total"),
            (self.max_attrs_bytes_per_instance, "max_attrs_bytes_per_instance"),
            (self.max_attrs_bytes_total, "max_attrs_bytes_total"),
            (self.max_streams_per_peer, "max_streams_per_peer"),
        ):
            if count < 1:
                raise ConfigError(f"{name} must be at least 1")
        for value, name in (
            (self.job_deadline, "job_deadline"),
            (self.job_ttl, "job_ttl"),
            (self.grace_period, "grace_period"),
            (self.header_timeout, "header_timeout"),
            (1.0 if self.registry_timeout is None else self.registry_timeout, "registry_timeout"),
            (
                1.0 if self.registry_retry_deadline is None else self.registry_retry_deadline,
                "registry_retry_deadline",
            ),
            (
                1.0 if self.registry_tls_probe_timeout is None else self.registry_tls_probe_timeout,
                "registry_tls_probe_timeout",
            ),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be positive")
        for address in self.listen_addresses:
            if not address.startswith(("unix://", "tcp://")):
                raise ConfigError(f"listen address {address!r}: expected unix:///PATH or tcp://HOST:PORT")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.log_format not in ("json", "console"):
            raise ConfigError(f"log_format={self.log_format!r}: expected json or console")
        return self

    @property
    def roots(self) -> tuple[Path, ...]:
        """Where client-named host paths may be: the allowed roots and the state dir."""
        return (*self.allowed_roots, self.state_dir)

    def path_allowed(self, path: Path) -> bool:
        """Whether a client may name ``path``: under an allowed root or the state dir.

        Symlinks are resolved first, so a link cannot lead out of a root.
        """
        real = Path(os.path.realpath(path))
        roots = (*self.allowed_roots, self.state_dir)
        return any(real == r or real.is_relative_to(r) for r in (Path(os.path.realpath(x)) for x in roots))


def _items(value: object) -> list[str]:
    """A list setting: a comma-separated string (environment, flags) or a TOML array."""
    raw = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return [str(i).strip() for i in raw if str(i).strip()]


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _int(value: object) -> int:
    return int(str(value), 0) if isinstance(value, str) else int(value)  # type: ignore[call-overload]


# (does this converter take the field's type, as text?, the converter), first match wins.
_COERCIONS: tuple[tuple[Callable[[str], bool], Callable[[object], object]], ...] = (
    (lambda kind: kind in ("Path", "pathlib.Path"), lambda v: Path(str(v))),
    (lambda kind: "Path | None" in kind, lambda v: Path(str(v)) if v not in (None, "") else None),
    (lambda kind: kind.startswith("tuple[Path"), lambda v: tuple(Path(i) for i in _items(v))),
    (lambda kind: kind.startswith("tuple[str"), lambda v: tuple(_items(v))),
    (lambda kind: kind == "bool", _bool),
    (lambda kind: kind == "int", _int),
    (lambda kind: kind == "float", lambda v: float(v)),  # type: ignore[arg-type]
    (lambda kind: kind == "float | None", lambda v: float(v) if v not in (None, "") else None),  # type: ignore[arg-type]
)


def _coerce(name: str, kind: Any, value: object) -> object:
    """Turn a TOML/env/flag value into the field's type."""
    text_kind = str(kind)
    convert: Callable[[object], object] = str
    for takes, converter in _COERCIONS:
        if takes(text_kind):
            convert = converter
            break
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config {name}={value!r} is not a valid {text_kind}") from None


def load_config(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ServiceConfig:
    """Merge defaults, the TOML file, the environment and flag ``overrides`` (None = unset)."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(ServiceConfig)}
    values: dict[str, object] = {}
    if file is None and env.get(ENV_PREFIX + "CONFIG"):
        file = Path(env[ENV_PREFIX + "CONFIG"])
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"config file {file}: unknown key {key!r}")
            values[name] = _coerce(name, known[name].type, value)
    for name, f in known.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, f.type, raw)
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in known:
            raise ConfigError(f"unknown config option {name!r}")
        values[name] = _coerce(name, known[name].type, value)
    return ServiceConfig(**values).validated()  # type: ignore[arg-type]


def redacted(config: ServiceConfig) -> dict[str, object]:
    """The config as a loggable dict: paths as strings, anything secret-looking masked."""
    out: dict[str, object] = {}
    for name, value in dataclasses.asdict(config).items():
        if any(word in name for word in _SECRET_WORDS) and value:
            out[name] = "<redacted>"
        elif isinstance(value, tuple):
            out[name] = [str(v) for v in value]
        elif isinstance(value, Path):
            out[name] = str(value)
        else:
            out[name] = value
    out["listen"] = list(config.listen_addresses)
    return out
