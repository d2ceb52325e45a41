"""Draws a daemon's export events for ``nydus-exporter export --addr`` (as the CLI does in-process).

Progress rows are printed when they start and when they complete (``plain``), or as one live
line (``tty``); warnings and logs always go to the stream, ``quiet`` prints nothing else.
"""

from __future__ import annotations

import sys
from typing import TextIO

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.cli.progress import MODES


class RemoteProgressPrinter:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
        self._stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self._stream.isatty() else "plain"
        self._mode = mode
        self._live = False

    def __call__(self, event: pb.ExportEvent) -> None:
        kind = event.WhichOneof("ev")
        if kind == "warning":
            self._line(f"warning: {event.warning.short}")
        elif kind == "log":
            self._line(event.log.data.decode(errors="replace").rstrip("\n"))
        elif kind == "progress" and self._mode != "quiet":
            row = event.progress
            if self._mode == "tty":
                done = " done" if row.HasField("completed") else ""
                self._stream.write(f"\r\x1b[K{row.id}: {row.action}{done}")
                self._stream.flush()
                self._live = True
            elif row.HasField("completed"):
                self._line(f"{row.id}: {row.action}: done")
            elif not row.current:
                self._line(f"{row.id}: {row.action}")

    def _line(self, text: str) -> None:
        if self._live:
            self._stream.write("\r\x1b[K")
            self._live = False
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._live:
            self._stream.write("\n")
            self._stream.flush()
            self._live = False
