"""Converting the images of one export: layers into blobs, merged into one bootstrap, the image written."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from nydus_exporter.layer.directory import iter_directory
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.bootstrap_layer import write_bootstrap_layer
from nydus_exporter.oci.descriptor import Descriptor
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.nydus_image import (
    build_nydus_config,
    build_nydus_manifest,
)
from nydus_exporter.oci.platform import Platform
from nydus_exporter.oci.reference import Reference, parse_reference
from nydus_exporter.pipeline.external import ExternalBlobs
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.pipeline.pack import pack_entries, pack_layer
from nydus_exporter.pipeline.progress import Progress, ProgressEvent
from nydus_exporter.pipeline.result import DedupStats, PlatformResult
from nydus_exporter.pipeline.sources import SourceImage, SourceLayer
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.chunkdict import ChunkDict
from nydus_exporter.rafs.merge import MergeLayer, merge_layers
from nydus_exporter.rafs.model import ChunkRef

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    pass


class LayerHooks(Protocol):
    """Lets a caller supply converted layers and keep the ones it converts (the daemon's
    layer cache). Both are called from the pipeline's worker threads."""

    def converted(self, layer: SourceLayer) -> tuple[Path | None, BlobResult] | None:
        """A blob already converted from ``layer`` and its result: a file (moved into the
        output), or ``None`` for a blob that exists in the target repository."""
        ...

    def packed(self, layer: SourceLayer, blob: Path, result: BlobResult) -> None:
        """``layer`` was just converted into ``blob`` (inside the output: copy, do not move)."""
        ...


class Converter:
    """Converts the images of one export; identical source layers are packed once."""

    def __init__(
        self,
        out: OciLayout,
        options: ExportOptions,
        workdir: Path,
        progress: Progress,
        hooks: LayerHooks | None = None,
        external_blobs: Callable[[Platform | None], ExternalBlobs] | None = None,
        on_blob: Callable[[str, int], None] | None = None,
    ) -> None:
        self._out = out
        # Told (digest, size) of each layer blob as soon as it is complete in ``out`` (push
        # while packing: :mod:`.early_push`); called from the pipeline's worker threads.
        self._on_blob = on_blob
        self._hooks = hooks
        self._external_blobs = external_blobs
        self.remote_blobs: set[str] = set()  # external blobs left in the target repository
        # external blobs to mount from another repository of the target registry when
        # pushing: digest -> (repository, copy it into the output instead)
        self.mountable: dict[str, tuple[str, Callable[[], None]]] = {}
        self.packed: list[BlobResult] = []  # every layer blob this export packed
        # digest -> the chunks a packed blob stored itself, taken from the bootstrap parsed for
        # the merge, so recording them in the chunk store does not parse it again
        self.own_chunks: dict[str, list[ChunkRef]] = {}
        self._options = options
        self._workdir = workdir
        self._progress = progress
        self._packed: dict[str, BlobResult] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def convert(self, image: SourceImage) -> PlatformResult:
        platform = image.platform or Platform.of_config(image.config)
        label = str(platform) if platform else ""
        n = len(image.layers)
        external = self._external_blobs(platform) if self._external_blobs is not None else None
        base = external.chunks if external is not None else None
        if self._options.chunk_dedup:
            # Each layer references the chunks its lower layers stored ([format §4.2]): one at a time.
            chunk_dict = base.copy() if base is not None else ChunkDict()
            blobs = []
            for i, layer in enumerate(image.layers):
                blob = self._pack_layer(layer, i, n, label, chunk_dict)
                chunk_dict.add_layer(read_bootstrap(blob.bootstrap), blob.blob_info)
                blobs.append(blob)
        else:  # layers in parallel, all against the same (read-only) chunk dictionary, if any
            with ThreadPoolExecutor(max_workers=max(1, min(self._options.parallel_layers, n or 1))) as pool:
                futures = [
                    pool.submit(self._pack_layer, layer, i, n, label, base)
                    for i, layer in enumerate(image.layers)
                ]
                blobs = [f.result() for f in futures]

        # Each per-layer bootstrap is parsed once: counted here, then handed to the merge.
        layer_boots = [read_bootstrap(b.bootstrap) for b in blobs]
        dedup = DedupStats()
        image_blobs = {b.digest.removeprefix("sha256:") for b in blobs}
        for blob, layer_boot in zip(blobs, layer_boots, strict=True):
            dedup.add_layer(blob, layer_boot, image_blobs)
            # taken before the merge takes the tree over
            self.own_chunks.setdefault(blob.digest, layer_boot.own_chunks())
        # Directory sources already turned overlayfs whiteouts into OCI ones (layer/directory.py).
        merged = merge_layers(
            [
                MergeLayer(b.bootstrap, b.digest.removeprefix("sha256:"), parsed=layer_boot)
                for b, layer_boot in zip(blobs, layer_boots, strict=True)
            ]
        )
        blob_metas = []
        seen = set()
        for blob in blobs:
            hex_id = blob.digest.removeprefix("sha256:")
            if blob.blob_meta is not None and hex_id in merged.blob_ids and hex_id not in seen:
                seen.add(hex_id)
                blob_metas.append((hex_id, blob.blob_meta))
        # Blobs only the external blobs hold become extra blob layers after the image's own
        # ([format §6.3]), copied into the output so the image is complete.
        extra_layers = []
        for hex_id in merged.blob_ids:
            if hex_id in seen or any(b.digest.removeprefix("sha256:") == hex_id for b in blobs):
                continue
            assert external is not None, "a blob outside the image needs external blobs"
            desc = external.layers[hex_id]
            opener = external.open_blob.get(hex_id)
            source = external.mount_from.get(hex_id)
            if opener is None:
                self.remote_blobs.add(desc.digest)  # verified in the target repository
            elif source is not None and self._pushes_to(source):
                self.mountable[desc.digest] = (source.repository, self._fetcher(desc.digest, opener))
            elif not self._out.has_blob(desc.digest):
                self._fetcher(desc.digest, opener)()
            extra_layers.append(Descriptor(mt.MEDIA_TYPE_NYDUS_BLOB, desc.digest, desc.size))
            if hex_id in external.blob_metas:
                blob_metas.append((hex_id, external.blob_metas[hex_id]))
        oci = self._options.oci_mediatypes
        with self._out.blob_writer() as sink:
            boot = write_bootstrap_layer(sink, merged.bootstrap, blob_metas)
        bootstrap_desc = boot.descriptor(oci=oci)

        config_raw = build_nydus_config(
            image.config,
            [b.digest for b in blobs] + [d.digest for d in extra_layers],
            boot.diff_id,
            source_date_epoch=self._options.source_date_epoch,
        )
        config_type = (
            mt.MEDIA_TYPE_NYDUS_CONFIG
            if self._options.merge_manifest and self._options.merge_manifest_mode == "artifact"
            else mt.config_media_type(oci=oci)
        )
        config_desc = Descriptor(config_type, self._out.write_blob(config_raw), len(config_raw))
        blob_descs = [Descriptor(mt.MEDIA_TYPE_NYDUS_BLOB, b.digest, b.size) for b in blobs] + extra_layers
        manifest_raw = build_nydus_manifest(
            config=config_desc,
            blob_layers=blob_descs,
            bootstrap_layer=bootstrap_desc,
            oci=oci,
            annotations=self._options.annotations.for_manifest(platform) or None,
        )
        manifest_desc = Descriptor(
            mt.manifest_media_type(oci=oci), self._out.write_blob(manifest_raw), len(manifest_raw),
            platform=platform,
            annotations=self._options.annotations.for_manifest_descriptor(platform) or None,
        )  # fmt: skip
        self._progress(ProgressEvent("image-done", platform=label, layers=n, name=manifest_desc.digest))
        return PlatformResult(label, manifest_desc, config_desc, bootstrap_desc, tuple(blob_descs), dedup)

    def _pushes_to(self, source: Reference) -> bool:
        """Whether this export pushes to the registry ``source`` is in (so it can mount)."""
        return self._options.push and any(
            parse_reference(name).api_host == source.api_host for name in self._options.names
        )

    def _fetcher(self, digest: str, opener: Callable[[], BinaryIO]) -> Callable[[], None]:
        def fetch() -> None:
            if not self._out.has_blob(digest):
                with opener() as src, self._out.blob_writer(digest) as sink:
                    shutil.copyfileobj(src, sink, 1 << 20)

        return fetch

    def _pack_layer(
        self, layer: SourceLayer, index: int, total: int, label: str, chunk_dict: ChunkDict | None = None
    ) -> BlobResult:
        # A layer packed against a chunk dictionary depends on its lower layers: it is neither
        # shared between images nor taken from (or given to) the caller's layer cache.
        key = layer.name if layer.name.startswith("sha256:") and chunk_dict is None else None
        independent = not self._options.chunk_dedup and self._options.chunk_dict is None
        hooks = self._hooks if independent else None
        if key is not None:
            with self._lock:
                cached = self._packed.get(key)
            if cached is not None:
                self._progress(ProgressEvent("layer-done", label, index, total, layer.name, 0, cached.size))
                return cached
        if hooks is not None:
            hit = hooks.converted(layer)
            if hit is not None:
                blob, result = hit
                if blob is None:
                    self.remote_blobs.add(result.digest)
                else:
                    self._out.import_blob_file(blob, result.digest)
                    if self._on_blob is not None:
                        self._on_blob(result.digest, result.size)
                self._progress(
                    ProgressEvent(
                        "layer-done", label, index, total, layer.name, 0, result.size, message="cached"
                    )
                )
                return result
        self._progress(ProgressEvent("layer-start", label, index, total, layer.name))
        with self._lock:
            self._counter += 1
            path = self._workdir / f"layer-{self._counter}.blob"
        counted = [0]

        def report(n: int) -> None:
            counted[0] += n
            self._progress(ProgressEvent("layer-bytes", label, index, total, layer.name, counted[0]))

        warn: Callable[[str], None] = lambda msg: self._progress(  # noqa: E731
            ProgressEvent("message", label, index, total, layer.name, message=msg)
        )
        with open(path, "wb", buffering=1 << 20) as f:
            if layer.directory is not None:
                entries = iter_directory(layer.directory, whiteouts=layer.whiteouts, on_warning=warn)
                result = pack_entries(
                    entries, f.write, self._options.pack, on_warning=warn, chunk_dict=chunk_dict
                )
            else:
                assert layer.open is not None
                with layer.open() as stream:
                    counting = cast(BinaryIO, _Counting(stream, report))
                    result = pack_layer(
                        counting, f.write, self._options.pack, on_warning=warn, chunk_dict=chunk_dict
                    )
        self._out.import_blob_file(path, result.digest)
        if self._on_blob is not None:
            self._on_blob(result.digest, result.size)
        if hooks is not None:
            hooks.packed(layer, self._out.blob_path(result.digest), result)
        if key is not None:
            with self._lock:
                self._packed[key] = result
        self._progress(ProgressEvent("layer-done", label, index, total, layer.name, counted[0], result.size))
        with self._lock:
            self.packed.append(result)
        return result


class _Counting:
    """A read-through wrapper that reports consumed bytes (for progress) every few MiB."""

    _EVERY = 8 << 20

    def __init__(self, stream: BinaryIO, report: Callable[[int], None]) -> None:
        self._stream = stream
        self._report = report
        self._pending = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._count(len(data))
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        n = int(self._stream.readinto(b))  # type: ignore[attr-defined]
        self._count(n)
        return n

    def _count(self, n: int) -> None:
        self._pending += n
        if self._pending >= self._EVERY or n == 0:
            if self._pending:
                self._report(self._pending)
            self._pending = 0
