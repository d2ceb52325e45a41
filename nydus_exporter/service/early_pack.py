"""Convert while receiving, in the conversion worker: pack a layer from its spool file while
the daemon is still writing it.

The daemon tells the worker about a layer (an :class:`EarlyLayer`) as soon as its first bytes
are spooled; the worker packs it in a thread, reading the spool file as it grows (a
:class:`GrowingFile` waits for more bytes until the announced size is in). Back-pressure is
the spool itself: the daemon never holds more than one gRPC message of a layer in memory, and
the packer holds at most its bounded in-flight chunks.

Nothing is trusted before the :class:`WorkerSpec` arrives: the daemon sends it only after
every layer's digest was checked (commit), and only layers it names are used. A layer whose
bytes turn out wrong fails the job, and the daemon kills the worker with it.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from nydus_exporter.pipeline.pack import pack_layer
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.service.worker_spec import EarlyLayer

_POLL_S = 0.002  # waiting for the daemon to spool more bytes
_READ = 1 << 20


class GrowingFile(io.RawIOBase):
    """Reads ``size`` bytes of a file another process is still appending to."""

    def __init__(self, path: Path, size: int) -> None:
        self._file = path.open("rb", buffering=0)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self._left)]
        while True:
            n = self._file.readinto(view)
            if n:
                self._left -= n
                return n
            time.sleep(_POLL_S)  # not written yet (a stalled client ends in the job's deadline)

    def close(self) -> None:
        self._file.close()
        super().close()


class EarlyPacks:
    """The layers packed (or being packed) before the spec came, by spool path."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="early-pack")
        self._packs: dict[str, Future[tuple[Path, BlobResult]]] = {}
        self._lock = threading.Lock()
        self._count = 0

    def start(self, layer: EarlyLayer) -> None:
        with self._lock:
            if layer.path in self._packs:
                return
            self._count += 1
            target = Path(layer.workdir) / f"early-{self._count}.blob"
            self._packs[layer.path] = self._pool.submit(_pack, layer, target)

    def take(self, path: str) -> tuple[Path, BlobResult] | None:
        """The blob and result of the layer spooled at ``path``, once packed (None: not started)."""
        with self._lock:
            future = self._packs.pop(path, None)
        return future.result() if future is not None else None


def _pack(layer: EarlyLayer, target: Path) -> tuple[Path, BlobResult]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        io.BufferedReader(GrowingFile(Path(layer.path), layer.size), _READ) as stream,
        target.open("wb", buffering=_READ) as out,
    ):
        result = pack_layer(stream, out.write, layer.pack)
    return target, result
