"""Counts for the one-line summary of the interop tests (printed by conftest.py):
``interop: N/M images pass rafs-check, P/M layers byte-identical, F/M mounted by rafs-mount``.
"""

from __future__ import annotations

from collections import defaultdict

# kind -> {case name: passed}
RESULTS: dict[str, dict[str, bool]] = defaultdict(dict)
# Further lines for the end of the run (e.g. the parity test's "parity: ..." line).
NOTES: list[str] = []

CHECKED = "images pass rafs-check"
IDENTICAL = "layers byte-identical"
MOUNTED = "mounted by rafs-mount"


def record(kind: str, name: str, passed: bool) -> None:
    RESULTS[kind][name] = passed


def note(text: str) -> None:
    NOTES.append(text)


def line() -> str | None:
    if not RESULTS:
        return None
    parts = []
    for kind in (CHECKED, IDENTICAL, MOUNTED):
        results = RESULTS.get(kind, {})
        parts.append(f"{sum(results.values())}/{len(results)} {kind}")
    return "interop: " + ", ".join(parts)
