"""A blob file still being written, read as it grows: the body of an upload that starts
before the blob is complete (push while packing, :meth:`RegistryClient.push_growing_blob`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from nydus_exporter.errors import RegistryError

_POLL_MIN = 0.002  # seconds between looks at a file that has not grown
_POLL_MAX = 0.02


class GrowingBlob:
    """The reading side of a blob file its writer is still appending to (thread-safe).

    Opened by the writer's side right after it created the file: the descriptor stays valid
    when the file is renamed into the output afterwards. The writer calls :meth:`finish` once
    the last byte is in the file (its buffer flushed), or :meth:`abandon` when it fails.
    Bytes below the file's size are always complete (the kernel grows the size after the
    copy), so reading up to the size never sees a torn write.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._final: tuple[str, int] | None = None
        self._abandoned = False
        self._closed = False

    def finish(self, digest: str, size: int) -> None:
        with self._lock:
            self._final = (digest, size)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True

    @property
    def final(self) -> tuple[str, int] | None:
        """(digest, size) once the writer finished."""
        with self._lock:
            return self._final

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)

    async def chunks(self, read_size: int) -> AsyncIterator[bytes]:
        """The file's bytes in order, waiting for more until the writer finished; raises
        :class:`RegistryError` when the writer abandons the blob."""
        offset = 0
        pause = _POLL_MIN
        while True:
            with self._lock:
                final, abandoned = self._final, self._abandoned
            if abandoned:
                raise RegistryError("the blob being uploaded was abandoned by its writer", temporary=False)
            data = await asyncio.to_thread(os.pread, self._fd, read_size, offset)
            if data:
                offset += len(data)
                pause = _POLL_MIN
                yield data
                continue
            if final is not None:  # finished before this read: nothing more will come
                if offset != final[1]:
                    raise RegistryError(
                        f"blob {final[0]} has {offset} bytes in its file, not {final[1]}", temporary=False
                    )
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)
