"""The chunk store as one export uses it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nydus_exporter import __version__
from nydus_exporter.errors import ConfigError, ExporterError
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.pipeline.external import ExternalBlobs, external_blobs_of_store
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.pipeline.pack import PackOptions
from nydus_exporter.pipeline.progress import Progress, ProgressEvent
from nydus_exporter.pipeline.sources import SourceLayer
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.blob_reader import BlobReader, blob_result
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.model import ChunkRef

if TYPE_CHECKING:  # the registry client (aiohttp) is imported only by exports that use it
    from nydus_exporter.chunkstore import ChunkStore
    from nydus_exporter.registry.sync import SyncRegistry


class ChunkStoreSession:
    """The chunk store as one export uses it: the external blobs of the target repository (blobs
    verified there first), and recording what was pushed."""

    def __init__(
        self,
        store: ChunkStore,
        location: str,
        options: ExportOptions,
        verify: Callable[[str, int], bool],
        progress: Progress,
        read_at: Callable[[str, int, int], bytes] | None = None,
    ) -> None:
        self._progress = progress
        self._read_at = read_at
        self._layers: list[tuple[str, str]] = []
        self._store = store
        self._location = location
        self._options = options
        self._verify = verify
        self._external: ExternalBlobs | None = None

    @classmethod
    def open(
        cls,
        options: ExportOptions,
        registry: SyncRegistry | None,
        state_dir: Path | None,
        stack: contextlib.ExitStack,
        progress: Progress,
    ) -> ChunkStoreSession:
        from nydus_exporter.chunkstore import ChunkStore, default_state_dir

        if not options.push or registry is None:
            raise ConfigError("chunk-store=true needs push=true: it remembers what a repository holds")
        ref = parse_reference(options.names[0])
        store = stack.enter_context(ChunkStore.open(state_dir or default_state_dir()))

        def verify(digest: str, size: int) -> bool:
            return registry.blob_exists(ref, digest) == size

        def read_at(digest: str, offset: int, length: int) -> bytes:
            return registry.read_blob_range(ref, digest, offset, length)

        return cls(store, f"{ref.api_host}/{ref.repository}", options, verify, progress, read_at)

    def external_blobs(self) -> ExternalBlobs:
        if self._external is None:
            pack = self._options.pack
            try:
                found = self._store.chunk_dict(
                    self._location,
                    chunk_size=pack.chunk_size,
                    digester=pack.digester,
                    compressor=pack.compressor,
                    verify=self._verify,
                )
            except ExporterError as exc:  # a registry or store problem: convert without the store
                self._progress(ProgressEvent("message", message=f"chunk store not used: {exc}"))
                self._external = ExternalBlobs()
                return self._external
            self._external = external_blobs_of_store(found)
        return self._external

    # -- LayerHooks: the layer conversion cache ------------------------------------------------

    def _fingerprint(self) -> str:
        pack = self._options.pack
        return f"{__version__}/{pack.chunk_size}/{pack.compressor}/{pack.digester}"

    def converted(self, layer: SourceLayer) -> tuple[Path | None, BlobResult] | None:
        """A conversion of this source layer the target repository already holds."""
        if not layer.name.startswith("sha256:"):
            return None
        found = self._store.find_layer(self._location, layer.name, self._fingerprint())
        if found is None:
            return None
        digest, size = found
        try:
            if not self._verify(digest, size):
                self._store.forget_blob(self._location, digest)
                return None
            assert self._read_at is not None
            read_at = self._read_at
            reader = BlobReader(lambda offset, length: read_at(digest, offset, length), size)
            return None, blob_result(reader, digest, native_id=False)
        except ExporterError as exc:
            self._progress(ProgressEvent("message", message=f"layer cache not used for {layer.name}: {exc}"))
            return None

    def packed(self, layer: SourceLayer, blob: Path, result: BlobResult) -> None:
        if layer.name.startswith("sha256:") and len(read_bootstrap(result.bootstrap).blobs) <= 1:
            self._layers.append((layer.name, result.digest))  # recorded once pushed

    def record(
        self, packed: Sequence[BlobResult], own_chunks: Mapping[str, Sequence[ChunkRef]] | None = None
    ) -> None:
        """Remember the chunks of the blobs just pushed (their own chunks only), and which
        source layers they are conversions of."""
        pack = self._options.pack
        for source, digest in self._layers:
            self._store.record_layer(self._location, source, self._fingerprint(), digest)
        record_packed(self._store, self._location, pack, packed, own_chunks)


def record_packed(
    store: ChunkStore,
    location: str,
    pack: PackOptions,
    packed: Sequence[BlobResult],
    own_chunks: Mapping[str, Sequence[ChunkRef]] | None = None,
) -> None:
    """Record in ``store`` the chunks each pushed blob stored itself, at ``location``
    (``own_chunks``: those already known by blob digest; the others are read from the blob's
    bootstrap)."""
    for blob in packed:
        if blob.blob_info is None:
            continue
        store.record_blob(
            location,
            blob.digest,
            blob.size,
            blob.blob_info,
            known
            if (known := (own_chunks or {}).get(blob.digest)) is not None
            else read_bootstrap(blob.bootstrap).own_chunks(),
            blob.blob_meta,
            digester=pack.digester,
            compressor=pack.compressor,
        )
