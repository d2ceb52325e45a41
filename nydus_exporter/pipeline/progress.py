"""What the pipeline reports while it runs: the CLI draws it, the daemon forwards it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    pass


@dataclass(frozen=True)
class ProgressEvent:
    """What the pipeline reports while it runs (the CLI draws it, the daemon forwards it)."""

    # "layer-start" | "layer-bytes" | "layer-done" | "image-done" | "message" (a warning: what
    # was dropped or not used) | "info" (what was done, e.g. what a push uploaded)
    kind: str
    platform: str = ""
    layer: int = -1  # index in the image, lowest first
    layers: int = 0  # layers in the image
    name: str = ""
    bytes_in: int = 0  # bytes of the source layer read so far (layer-bytes) or in all (layer-done)
    bytes_out: int = 0  # blob bytes written (layer-done)
    message: str = ""


Progress = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    pass
