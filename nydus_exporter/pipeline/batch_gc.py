"""Garbage-collector settings for a conversion (the CLI's pack and export, the daemon's
conversion workers).

A conversion allocates hundreds of thousands of small objects that live until it ends (tree
nodes, inodes, chunk references) and rarely form cycles. CPython's default first-generation
threshold (700 allocations) runs a collection that walks the young objects again and again,
and the older generations walk all of them: 5-10 % of a pack, more for a layer of 60k
files. Freezing what already exists (the modules' objects) and collecting less often keeps
the collector for what it is for. Not for the long-running daemon's own loop.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

FIRST_GENERATION_THRESHOLD = 20_000
OLDER_GENERATION_THRESHOLDS = (20, 20)


@contextmanager
def batch_gc() -> Iterator[None]:
    """Collect rarely inside the block; the previous settings come back after it (a caller
    that runs a conversion in-process, like the tests, keeps its own)."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(FIRST_GENERATION_THRESHOLD, *OLDER_GENERATION_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
