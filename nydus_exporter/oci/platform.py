"""OCI platform: ``os/architecture[/variant]`` parsing, normalisation and matching.

Normalisation follows containerd's ``platforms.Normalize`` (the rules clients use when they
pick a manifest out of an index): ``x86_64``/``x86-64`` are ``amd64``, ``aarch64`` is
``arm64``, ``arm64`` without a variant is ``arm64/v8``, ``arm`` without a variant is
``arm/v7``, and ``amd64/v1`` is plain ``amd64``. Matching compares the normalised
``os/architecture/variant`` (and ``os.version`` when both sides name one); ``os.features``
are not part of a platform's identity (legacy Nydus index entries add one, [format §6.1]).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from platform import machine as _host_machine

from nydus_exporter.errors import ConfigError, FormatError, excerpt

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
    "i686": "386",
}
# Variant implied by an alias (Debian's armhf is ARMv7, armel is ARMv6).
_ALIAS_VARIANT = {"armhf": "v7", "armel": "v6"}
_COMPONENT = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class Platform:
    """An image-spec ``platform`` object (``os.features`` is a tuple so the value is hashable)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64/v8`` -> Platform; raises :class:`ConfigError` (a user-given option)."""
        parts = text.strip().split("/")
        if not 2 <= len(parts) <= 3 or not all(_COMPONENT.match(p) for p in parts):
            raise ConfigError(f"invalid platform {excerpt(text)}: expected os/architecture[/variant]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    @classmethod
    def of_config(cls, config: bytes) -> Platform | None:
        """The platform an image config declares (``os``/``architecture``/``variant``), if any."""
        try:
            obj = json.loads(config)
            variant = obj.get("variant")
            return cls(str(obj["os"]), str(obj["architecture"]), str(variant) if variant else None)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine, in OCI spelling (``linux/amd64``...)."""
        machine = _host_machine().lower()
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
        return cls(os="linux", architecture=arch)

    def format(self) -> str:
        """``os/architecture[/variant]`` (the inverse of :meth:`parse`, not normalised)."""
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def __str__(self) -> str:
        return self.format()

    def normalized(self) -> Platform:
        """The canonical spelling of this platform (see the module docstring)."""
        os_name = self.os.lower()
        arch = self.architecture.lower()
        variant = (self.variant or "").lower() or _ALIAS_VARIANT.get(arch, "")
        arch = _ARCH_ALIASES.get(arch, arch)
        if arch == "arm64" and variant in ("", "8", "v8"):
            variant = "v8"
        elif arch == "arm" and variant in ("", "7", "v7"):
            variant = "v7"
        elif arch == "arm" and variant in ("5", "6", "8"):
            variant = "v" + variant
        elif arch == "amd64" and variant == "v1":
            variant = ""
        return Platform(
            os=os_name,
            architecture=arch,
            variant=variant or None,
            os_version=self.os_version,
            os_features=self.os_features,
        )

    def matches(self, other: Platform) -> bool:
        """Same normalised os/architecture/variant (and os.version when both have one)."""
        a, b = self.normalized(), other.normalized()
        if (a.os, a.architecture, a.variant) != (b.os, b.architecture, b.variant):
            return False
        return not (a.os_version and b.os_version and a.os_version != b.os_version)

    def with_os_features(self, features: Sequence[str]) -> Platform:
        """A copy with ``features`` added to ``os.features`` (kept in order, no duplicates)."""
        merged = list(self.os_features or ())
        merged.extend(f for f in features if f not in merged)
        return Platform(self.os, self.architecture, self.variant, self.os_version, tuple(merged))

    def to_json(self) -> dict[str, object]:
        """The image-spec JSON object, in Go struct field order (``specs-go/v1/descriptor.go``)."""
        obj: dict[str, object] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            obj["os.version"] = self.os_version
        if self.os_features:
            obj["os.features"] = list(self.os_features)
        if self.variant:
            obj["variant"] = self.variant
        return obj

    @classmethod
    def from_json(cls, obj: object) -> Platform:
        """Parse a ``platform`` object; raises :class:`FormatError` when it is malformed."""
        if not isinstance(obj, Mapping):
            raise FormatError(f"platform must be a JSON object, got {type(obj).__name__}")
        os_name, arch = obj.get("os"), obj.get("architecture")
        if not isinstance(os_name, str) or not os_name or not isinstance(arch, str) or not arch:
            raise FormatError("platform needs non-empty string fields 'os' and 'architecture'")
        variant = _optional_str(obj, "variant")
        os_version = _optional_str(obj, "os.version")
        features = obj.get("os.features")
        if features is not None and (
            not isinstance(features, list) or not all(isinstance(f, str) for f in features)
        ):
            raise FormatError("platform 'os.features' must be a list of strings")
        return cls(
            os=os_name,
            architecture=arch,
            variant=variant,
            os_version=os_version,
            os_features=tuple(features) if features else None,
        )


def _optional_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FormatError(f"platform {excerpt(key)} must be a string")
    return value
