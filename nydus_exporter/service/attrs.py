"""The daemon's view of an instance's output keys (``Resolve``, [contract §5.4]).

The keys are read once, by :func:`~nydus_exporter.pipeline.options.parse_output` with the
daemon's policies (refused and fixed keys, host paths under the allowed roots); this module
keeps the result with what Resolve answers beside it (display name, normalised keys, their
fingerprint for idempotency).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nydus_exporter.errors import excerpt
from nydus_exporter.layer.entry import DEFAULT_SPARSE_LIMIT
from nydus_exporter.oci.platform import Platform
from nydus_exporter.pipeline.options import ExportOptions, parse_output
from nydus_exporter.service.errors import PathNotAllowedError


@dataclass(frozen=True)
class ResolvedAttrs:
    """What Resolve hands back and what every later call of the instance runs with."""

    options: ExportOptions
    normalized: Mapping[str, str]
    warnings: tuple[str, ...]
    display_name: str
    fingerprint: str

    @property
    def platforms(self) -> tuple[Platform, ...]:
        return self.options.platforms  # the `platform` selection (empty: every platform)

    @property
    def standard_response_keys(self) -> bool:
        return self.options.standard_response_keys

    @property
    def requires_finalize(self) -> bool:
        # Every export has a publish step (oci-layout tags, or a push): with defer_push it
        # waits for Finalize.
        return True


def resolve_attrs(
    attrs: Mapping[str, str],
    *,
    path_allowed: Callable[[Path], bool],
    sparse_limit: int = DEFAULT_SPARSE_LIMIT,
) -> ResolvedAttrs:
    """Validate ``attrs``; raises ConfigError / UnsupportedError / PathNotAllowedError.

    ``sparse_limit`` is the daemon's: the default of ``sparse-limit`` and the most it may be.
    """

    def check_host_path(key: str, path: Path) -> None:
        if not path_allowed(path):
            raise PathNotAllowedError(
                f"{key}={excerpt(str(path))} is not under an allowed root or the daemon's state directory"
            )

    parsed = parse_output(
        attrs, daemon=True, check_host_path=check_host_path, caps={"sparse-limit": sparse_limit}
    )
    names = parsed.normalized.get("name", "")
    if names:
        display = f"exporting to nydus image {names}"
    else:
        display = f"exporting to nydus image (oci-layout {parsed.normalized.get('oci-layout', '?')})"
    return ResolvedAttrs(parsed.options, parsed.normalized, parsed.warnings, display, parsed.fingerprint)


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
