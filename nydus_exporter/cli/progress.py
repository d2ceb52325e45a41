"""Draws export progress for the CLI: a live line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from nydus_exporter.pipeline.progress import ProgressEvent

MODES = ("auto", "tty", "plain", "quiet")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class ProgressPrinter:
    """Callable progress sink; ``mode`` is one of :data:`MODES`."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self._stream.isatty() else "plain"
        self._mode = mode
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._read: dict[tuple[str, int], int] = {}
        self._done = 0
        self._total: dict[str, int] = {}
        self._last_draw = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        if self._mode == "quiet":
            return
        with self._lock:
            key = (event.platform, event.layer)
            if event.kind in ("layer-start", "layer-bytes", "layer-done"):
                self._total[event.platform] = event.layers
            if event.kind == "layer-bytes":
                self._read[key] = event.bytes_in
            elif event.kind == "layer-done":
                self._read[key] = max(self._read.get(key, 0), event.bytes_in)
                self._done += 1
            if self._mode == "plain":
                self._plain(event)
            else:
                self._live(event)

    def close(self) -> None:
        if self._mode == "tty":
            self._stream.write("\n")
            self._stream.flush()

    def _where(self, event: ProgressEvent) -> str:
        platform = f"[{event.platform}] " if event.platform else ""
        if not event.layers:  # about the export, not a layer
            return platform.rstrip()
        return f"{platform}layer {event.layer + 1}/{event.layers}"

    def _line(self, event: ProgressEvent) -> str:
        """A "message" (warning) or "info" event as one line."""
        where = self._where(event)
        text = f"warning: {event.message}" if event.kind == "message" else event.message
        return f"{where}: {text}" if where else text

    def _plain(self, event: ProgressEvent) -> None:
        if event.kind == "layer-start":
            line = f"{self._where(event)}: packing {event.name}"
        elif event.kind == "layer-done":
            line = f"{self._where(event)}: done, {_mib(event.bytes_out)} blob"
        elif event.kind == "image-done":
            platform = f"[{event.platform}] " if event.platform else ""
            line = f"{platform}image: manifest {event.name}"
        elif event.kind in ("message", "info"):
            line = self._line(event)
        else:
            return
        self._stream.write(line + "\n")
        self._stream.flush()

    def _live(self, event: ProgressEvent) -> None:
        if event.kind in ("message", "info"):
            self._stream.write(f"\r\x1b[K{self._line(event)}\n")
        now = time.monotonic()
        if event.kind == "layer-bytes" and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        read = sum(self._read.values())
        elapsed = max(now - self._start, 1e-6)
        total = sum(self._total.values())
        line = f"layers {self._done}/{total}  read {_mib(read)}  {_mib(int(read / elapsed))}/s"
        self._stream.write(f"\r\x1b[K{line}")
        self._stream.flush()
