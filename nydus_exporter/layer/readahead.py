"""Read a stream ahead in a background thread, so decompression and hashing overlap parsing.

A layer stream is a chain (file -> digest check -> gzip/zstd decoder) whose work is done in C
with the GIL released. Pulling that chain from a second thread takes it off the tar
parser's critical path. At most ``depth`` blocks are buffered, so memory stays bounded; an
error in the chain is raised to the reader at the point where it happened in the stream.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from typing import BinaryIO, cast

BLOCK_SIZE = 1 << 20
DEPTH = 8
CLOSE_WAIT = 5.0  # seconds close() waits for the reading thread

_EOF = object()


class _ReadAheadRaw(io.RawIOBase):
    def __init__(self, source: BinaryIO, block_size: int, depth: int) -> None:
        self._source = source
        self._block_size = block_size
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._current = memoryview(b"")
        self._finished = False
        self._thread = threading.Thread(target=self._fill, name="layer-readahead", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                block = self._source.read(self._block_size)
                if not block:
                    break
                if not self._put(block):
                    return
        except BaseException as exc:  # handed to the reader, raised where the stream failed
            self._put(exc)
            return
        self._put(_EOF)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        while not len(self._current):
            if self._finished:
                return 0
            item = self._queue.get()
            if item is _EOF:
                self._finished = True
                return 0
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            self._current = memoryview(cast(bytes, item))
        n = min(len(out), len(self._current))
        out[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue) and wait for it a little.

        A thread stuck in a read of a silent pipe is left behind (it is a daemon thread and
        ends with its source): closing must never hang.
        """
        self._stop.set()
        deadline = time.monotonic() + CLOSE_WAIT
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.05)
        super().close()


def read_ahead(source: BinaryIO, *, block_size: int = BLOCK_SIZE, depth: int = DEPTH) -> BinaryIO:
    """A buffered stream over ``source`` filled by a background thread; close it when done."""
    return cast(BinaryIO, io.BufferedReader(_ReadAheadRaw(source, block_size, depth), block_size))
