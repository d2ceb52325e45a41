"""The conversion of one job, in a worker process the daemon can kill.

Why a process: the pipeline's CPU work (tar parsing, compression, hashing) runs in threads,
and Python threads cannot be stopped. A job cancelled by its client (or by a deadline, or by
shutdown past the grace period) must stop within a second and leave no files behind, so the
daemon runs the pipeline in ``python -m nydus_exporter.service.worker`` in its own process
group, kills the group (SIGKILL) on cancellation and then deletes the job directory.

Protocol: the daemon writes one pickled :class:`WorkerSpec` on stdin (its typed
:class:`ExportOptions` as they were resolved: never parsed again) and keeps stdin open; the
worker writes JSON lines:  ``{"progress": {...ProgressEvent}}`` lines and ends with
``{"result": {...}}`` or ``{"error": {"type": ..., "message": ...}}`` on stdout. The worker
exits when stdin reaches end-of-file (the daemon went away), so it never outlives it.

The worker writes the image into a *staging* OCI layout inside the job directory; the daemon
publishes it (tags, push) afterwards, so nothing is tagged or pushed by a killed job.

Converted layers go to and come from the daemon's :class:`LayerCache` through the layer
hooks of ``export_source`` (see :class:`_CacheHooks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nydus_exporter.chunkstore import ChunkStore
from nydus_exporter.errors import ExporterError
from nydus_exporter.oci.platform import Platform
from nydus_exporter.pipeline.batch_gc import batch_gc
from nydus_exporter.pipeline.export import export_source
from nydus_exporter.pipeline.external import ExternalBlobs, external_blobs_of_store
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.pipeline.progress import ProgressEvent
from nydus_exporter.pipeline.sources import Source, SourceImage, SourceLayer, minimal_config
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.service.beneath import proc_path
from nydus_exporter.service.cache import LayerCache, load_result
from nydus_exporter.service.early_pack import EarlyPacks
from nydus_exporter.service.worker_spec import EarlyLayer, WorkerSpec


@dataclass
class _PrepackedLayer(SourceLayer):
    """A layer the cache already converted: its blob and the result the merge needs."""

    blob: Path | None = None
    result: BlobResult | None = None


@dataclass
class _CacheableLayer(SourceLayer):
    cache_key: str = ""
    spool: str = ""  # the file it was read from (the key of a layer packed while received)


class _CacheHooks:
    """export's LayerHooks over the daemon's layer cache (both directions) and the layers
    packed while they were received (:mod:`.early_pack`)."""

    def __init__(self, cache: LayerCache | None, early: EarlyPacks | None = None) -> None:
        self._cache = cache
        self._early = early

    def converted(self, layer: SourceLayer) -> tuple[Path, BlobResult] | None:
        if isinstance(layer, _PrepackedLayer):
            assert layer.blob is not None and layer.result is not None
            return layer.blob, layer.result
        if self._early is not None and isinstance(layer, _CacheableLayer):
            packed = self._early.take(layer.spool)
            if packed is not None:
                self.packed(layer, *packed)  # verified now: the spec comes after the digest check
                return packed
        return None

    def packed(self, layer: SourceLayer, blob: Path, result: BlobResult) -> None:
        # A conversion that references outside blobs (the chunk store's) is only right for
        # that repository: it never goes into the cache shared by every export.
        if len(read_bootstrap(result.bootstrap).blobs) > 1:
            return
        if self._cache is not None and isinstance(layer, _CacheableLayer) and layer.cache_key:
            self._cache.store(layer.cache_key, blob, result)


@contextlib.contextmanager
def _open_file(path: Path) -> Iterator[BinaryIO]:
    with path.open("rb") as f:
        yield f


def build_source(spec: WorkerSpec) -> Source:
    images = []
    for image in spec.images:
        platform = image.platform
        layers: list[SourceLayer] = []
        for layer in image.layers:
            path = Path(proc_path(layer.fd) if layer.fd >= 0 else layer.path)
            if layer.kind == "cached":
                result = load_result(path, layer.blob_digest)
                layers.append(_PrepackedLayer(layer.name, blob=path, result=result))
            elif layer.kind == "dir":
                layers.append(SourceLayer(layer.name, directory=path, whiteouts=layer.whiteouts))
            else:
                opener = (lambda p: lambda: _open_file(p))(path)
                layers.append(
                    _CacheableLayer(
                        layer.name,
                        open=opener,
                        size=path.stat().st_size,
                        cache_key=layer.cache_key,
                        spool=layer.path if layer.fd < 0 else "",
                    )
                )
        config = Path(image.config_path).read_bytes() if image.config_path else None
        if config is None:
            config = minimal_config(platform or Platform.host(), len(layers))
        images.append(SourceImage(platform, config, layers))
    for built, attestations in zip(images, spec.attestations, strict=False):
        built.attestations = tuple(a.load() for a in attestations)
    return Source(images)


class _Output:
    """JSON lines on stdout, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def send(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()


def _exit_when_stdin_closes() -> None:
    # The daemon holds our stdin open; EOF means it is gone: stop at once.
    while sys.stdin.buffer.read(1 << 16):
        pass
    os._exit(3)


def run(spec: WorkerSpec, out: _Output, early: EarlyPacks | None = None) -> None:
    cache = LayerCache(Path(spec.cache_dir)) if spec.cache_dir else None
    options = spec.options
    source = build_source(spec)

    def progress(event: ProgressEvent) -> None:
        out.send({"progress": dataclasses.asdict(event)})

    external = _chunk_store_blobs(spec, options) if spec.store_dir else None
    result = export_source(
        source,
        options,
        workdir=Path(spec.workdir),
        progress=progress,
        hooks=_CacheHooks(cache, early),
        external_blobs=(lambda _platform: external) if external is not None else None,
    )
    out.send(
        {
            "result": {
                "metadata": result.metadata(),
                "descriptor": result.descriptor.to_json(),
                "warnings": list(result.warnings),
                "remote_blobs": list(result.remote_blobs),
                "packed": list(result.packed),
            }
        }
    )


def _chunk_store_blobs(spec: WorkerSpec, options: ExportOptions) -> ExternalBlobs:
    """The chunks of the blobs the daemon verified in the target repository."""
    verified = set(spec.store_verified)
    with ChunkStore.open(Path(spec.store_dir)) as store:
        found = store.chunk_dict(
            spec.store_location,
            chunk_size=options.pack.chunk_size,
            digester=options.pack.digester,
            compressor=options.pack.compressor,
            verify=lambda digest, _size: digest in verified,
        )
    return external_blobs_of_store(found)


def main() -> int:
    out = _Output()
    early: EarlyPacks | None = None
    try:
        # Layers to pack while they are received may come first, then the spec.
        while True:
            message = pickle.load(sys.stdin.buffer)
            if isinstance(message, EarlyLayer):
                if early is None:
                    early = EarlyPacks(message.pack.threads)
                early.start(message)
                continue
            if not isinstance(message, WorkerSpec):
                return 2
            spec = message
            break
    except (EOFError, pickle.UnpicklingError, TypeError):
        return 2  # the daemon went away (or cancelled the job) before the spec
    threading.Thread(target=_exit_when_stdin_closes, name="stdin-watch", daemon=True).start()
    try:
        run(spec, out, early)
    except ExporterError as exc:
        out.send({"error": {"type": type(exc).__name__, "message": str(exc)}})
        return 1
    except OSError as exc:
        out.send({"error": {"type": "OSError", "errno": exc.errno or 0, "message": str(exc)}})
        return 1
    except Exception as exc:  # a bug: report it with its traceback tail (INTERNAL)
        tail = traceback.format_exc()[-4000:]
        out.send({"error": {"type": "Internal", "message": f"{type(exc).__name__}: {exc}", "trace": tail}})
        return 1
    return 0


if __name__ == "__main__":
    with batch_gc():  # one job (packing may start before its spec), then the process exits
        code = main()
    sys.stdout.flush()
    # Not sys.exit: the stdin watcher thread holds the stdin lock, and interpreter shutdown
    # would wait for it (and then abort). Everything worth keeping is flushed and closed.
    os._exit(code)
