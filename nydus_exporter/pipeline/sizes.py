"""Byte sizes as users write them: ``1048576``, ``0x100000``, ``1M``, ``1MiB``, ``64GiB``."""

from __future__ import annotations

import re

_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}  # binary: 1K = 1KiB = 1024
_SIZE = re.compile(r"\s*(0x[0-9a-fA-F]+|\d+)\s*(?:([kKmMgGtT])i?)?[bB]?\s*")


def parse_size(text: str) -> int:
    """Bytes of ``text``; ``ValueError`` naming it if it is not a size."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1), 0) << _UNITS[(match.group(2) or "").lower()]
