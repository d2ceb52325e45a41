"""The receiving half of an Export stream: platforms, layer chains, layer bytes, commit.

:class:`ExportIntake` is the stream protocol's state machine ([contract §5.3]),
fed with plain values by the servicer. It enforces the message order and limits, and every
violation raises :class:`ProtocolError` naming the problem (``INVALID_ARGUMENT``):

* ``platform_begin`` announces a platform of the header, once, with layers indexed 0..n-1;
  the answer is the layers still wanted: those not in the layer cache and not already
  wanted or received for another platform of this export (same blob digest);
* ``layer_data`` only for a wanted layer, one layer open at a time, ``offset`` equal to the
  bytes received so far, at most ``max_chunk_bytes`` per message, never past the announced
  size; bytes are spooled to the job directory (never held in memory) and hashed on the way;
* ``layer_end`` closes the open layer: its digest must match the bytes (and the announced
  ``blob_digest``);
* ``commit`` needs every platform begun and ended and every wanted layer received.

Layers sent by reference (a tar file or snapshot directory on the daemon's filesystem) are
accepted only under the configured allowed roots.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from nydus_exporter.errors import ConfigError, excerpt
from nydus_exporter.oci.platform import Platform
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.service.attrs import selected
from nydus_exporter.service.beneath import open_beneath
from nydus_exporter.service.budget import JobBudget
from nydus_exporter.service.cache import LayerCache, cache_key
from nydus_exporter.service.config import ServiceConfig
from nydus_exporter.service.errors import ProtocolError
from nydus_exporter.service.worker_spec import WorkerImage, WorkerLayer

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_METADATA_BYTES = 16 << 20  # one metadata value (an image config is a few KiB)
# An image config nests a few levels; a client's 200 000-deep one must be refused by us, not
# end in Python's recursion limit (json.loads recurses).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``raw`` (strings skipped)."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


@dataclass(frozen=True)
class LayerReference:
    path: Path
    kind: Literal["tar", "dir-oci", "dir-overlayfs"]


@dataclass(frozen=True)
class LayerSpec:
    """A ``LayerInfo`` as the intake needs it."""

    index: int
    blob_digest: str = ""
    media_type: str = ""
    size: int = 0
    reference: LayerReference | None = None


@dataclass
class _Spool:
    path: Path
    file: BinaryIO
    hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    received: int = 0


@dataclass
class _PlatformState:
    platform_id: str
    platform: Platform | None
    selected: bool
    layers: list[LayerSpec] = field(default_factory=list)
    wanted: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)
    sources: dict[int, WorkerLayer] = field(default_factory=dict)  # resolved at commit
    ended: bool = False


class ExportIntake:
    """One Export stream's receiving state. Not thread-safe: one stream, one task."""

    def __init__(
        self,
        *,
        workdir: Path,
        platforms: Sequence[tuple[str, Platform | None]],
        metadata: Mapping[str, bytes],
        options: ExportOptions,
        config: ServiceConfig,
        cache: LayerCache,
        metadata_budget: JobBudget,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> None:
        """``options``: the instance's (its platform selection and pack options); ``config``:
        the daemon's (its layer_data size limit and allowed roots)."""
        selection = options.platforms
        if not platforms:
            raise ProtocolError("header names no platform")
        self._workdir = workdir
        self._spool_dir = workdir / "spool"
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._platforms: dict[str, _PlatformState] = {}
        for pid, platform in platforms:
            if not pid:
                raise ProtocolError("a header platform has an empty id")
            if pid in self._platforms:
                raise ProtocolError(f"header names platform {excerpt(pid)} twice")
            self._platforms[pid] = _PlatformState(pid, platform, selected(selection, platform))
        if not any(p.selected for p in self._platforms.values()):
            names = ", ".join(str(p) for p in selection)
            raise ConfigError(f"platform={names}: the export has no such platform")
        # Metadata is the one client input held in memory (until commit writes the configs
        # out): its bytes count against the job's and the daemon's metadata budget.
        self._metadata_budget = metadata_budget
        metadata_budget.reserve(sum(len(k) + len(v) for k, v in metadata.items()))
        self._metadata: dict[str, bytearray] = {k: bytearray(v) for k, v in metadata.items()}
        self._metadata_done: set[str] = set(metadata)
        self._pack = options.pack
        self._cache = cache
        self._max_chunk = config.max_chunk_bytes
        self._roots = tuple(config.roots)
        # (platform id, layer index) -> descriptor of a layer sent by reference, opened (and
        # so checked) once at platform_begin; the worker reads it through the descriptor.
        self._references: dict[tuple[str, int], int] = {}
        self._on_bytes = on_bytes
        # on_spool(path, size): a layer of announced ``size`` started spooling to ``path``
        # (convert while receiving); set by the servicer.
        self.on_spool: Callable[[Path, int], Awaitable[None]] | None = None
        self._open: tuple[str, int] | None = None
        self._spool: _Spool | None = None
        # blob digest -> where its bytes are / will be: ("spool", path) once received,
        # ("pending", "") while wanted elsewhere, ("cached", key) for cache hits
        self._by_digest: dict[str, tuple[str, str]] = {}
        self._blob_digests: dict[str, str] = {}  # cached blob path -> its (verified) digest
        self._cached: dict[tuple[str, int], WorkerLayer] = {}
        self._spooled: dict[tuple[str, int], str] = {}
        self._links = 0
        self._spools = 0
        self._committed = False
        self.cache_hits = 0
        self.cache_misses = 0

    # --- metadata -------------------------------------------------------------------------

    def metadata_chunk(self, key: str, offset: int, data: bytes, last: bool) -> None:
        self._check_not_committed("metadata_chunk")
        if not key:
            raise ProtocolError("metadata_chunk has no key")
        if key in self._metadata_done:
            raise ProtocolError(f"metadata_chunk for {excerpt(key)} after its last chunk")
        buf = self._metadata.get(key)
        have = 0 if buf is None else len(buf)
        if offset != have:
            raise ProtocolError(f"metadata_chunk for {excerpt(key)} at offset {offset}, expected {have}")
        if have + len(data) > MAX_METADATA_BYTES:
            raise ProtocolError(f"metadata {excerpt(key)} is larger than {MAX_METADATA_BYTES} bytes")
        self._metadata_budget.reserve(len(data) + (len(key) if buf is None else 0))
        if buf is None:
            buf = self._metadata[key] = bytearray()
        buf += data
        if last:
            self._metadata_done.add(key)

    # --- platforms and layers -------------------------------------------------------------

    def _state(self, platform_id: str, what: str) -> _PlatformState:
        state = self._platforms.get(platform_id)
        if state is None:
            raise ProtocolError(f"{what}: unknown platform id {excerpt(platform_id)} (not in the header)")
        return state

    def _check_not_committed(self, what: str) -> None:
        if self._committed:
            raise ProtocolError(f"{what} after commit")

    async def platform_begin(self, platform_id: str, layers: Sequence[LayerSpec]) -> tuple[int, ...]:
        """Record the chain; returns the indices the client must send."""
        self._check_not_committed("platform_begin")
        state = self._state(platform_id, "platform_begin")
        if state.layers or state.ended:
            raise ProtocolError(f"platform_begin for {excerpt(platform_id)} twice")
        for position, layer in enumerate(layers):
            self._check_layer(platform_id, position, layer)
        state.layers = list(layers)
        if not state.selected:
            return ()
        for layer in layers:
            if layer.reference is None and await self._wanted(platform_id, layer):
                self.cache_misses += 1
                state.wanted.add(layer.index)
        return tuple(sorted(state.wanted))

    def _check_layer(self, platform_id: str, position: int, layer: LayerSpec) -> None:
        where = f"platform_begin {excerpt(platform_id)}: layer {position}"
        if layer.index != position:
            raise ProtocolError(
                f"{where} has index {layer.index} (indices must be 0..n-1, lowest layer first)"
            )
        if layer.blob_digest and not _DIGEST.match(layer.blob_digest):
            raise ProtocolError(
                f"{where} has a malformed blob_digest {excerpt(layer.blob_digest)} (expected sha256:<64 hex>)"
            )
        if layer.size < 0:
            raise ProtocolError(f"{where} has a negative size")
        if layer.reference is not None:
            self._check_reference(platform_id, layer)

    async def _wanted(self, platform_id: str, layer: LayerSpec) -> bool:
        """Whether the client must send the layer's bytes: not when the same blob comes in this
        export already, or the layer cache holds its conversion."""
        digest = layer.blob_digest
        known = self._by_digest.get(digest) if digest else None
        if known is not None:
            if known[0] == "cached":
                self._cached[(platform_id, layer.index)] = self._cached_layer(digest, known[1], layer)
            return False
        if digest:
            key = cache_key(digest, self._pack)
            target = self._spool_dir / f"{key}.cache"
            hit = await asyncio.to_thread(self._cache.checkout, key, target)
            if hit is not None:
                self.cache_hits += 1
                self._blob_digests[str(target)] = hit.result.digest
                self._by_digest[digest] = ("cached", str(target))
                self._cached[(platform_id, layer.index)] = self._cached_layer(digest, str(target), layer)
                return False
            self._by_digest[digest] = ("pending", "")
        return True

    def _new_spool(self) -> _Spool:
        """A new spool file for the next layer's bytes (closed in layer_end or close).

        Opened on the event loop, not in a thread: a task cancelled while a thread opened the
        file would drop the only reference to it, and close() could not close it."""
        path = self._spool_dir / f"{self._spools}.layer"
        self._spools += 1
        self._spool = _Spool(path, open(path, "wb"))  # noqa: SIM115 - closed in layer_end or close
        return self._spool

    def _cached_layer(self, digest: str, path: str, layer: LayerSpec) -> WorkerLayer:
        # Each occurrence gets its own link: the worker moves it into the staging layout.
        self._links += 1
        own = self._spool_dir / f"cached-{self._links}.blob"
        os.link(path, own)
        return WorkerLayer(
            "cached",
            str(own),
            digest,
            cache_key=cache_key(digest, self._pack),
            blob_digest=self._blob_digests[path],
        )

    def _check_reference(self, platform_id: str, layer: LayerSpec) -> None:
        """Open a layer sent by reference beneath the allowed roots (the check is the open)."""
        ref = layer.reference
        assert ref is not None
        where = f"platform_begin {excerpt(platform_id)}: layer {layer.index}"
        kind: Literal["file", "dir"] = "file" if ref.kind == "tar" else "dir"
        fd = open_beneath(self._roots, ref.path, kind, what=where)
        self._references[(platform_id, layer.index)] = fd

    async def layer_data(self, platform_id: str, index: int, offset: int, data: bytes) -> None:
        self._check_not_committed("layer_data")
        state = self._state(platform_id, "layer_data")
        where = f"layer_data {excerpt(platform_id)} layer {index}"
        if len(data) > self._max_chunk:
            raise ProtocolError(
                f"{where}: chunk of {len(data)} bytes is over the {self._max_chunk}-byte limit"
            )
        if index not in state.wanted:
            raise ProtocolError(f"{where}: the layer was not asked for (layer_wants) or is unknown")
        if index in state.received:
            raise ProtocolError(f"{where}: the layer was already ended")
        if self._open is not None and self._open != (platform_id, index):
            raise ProtocolError(
                f"{where}: layer {self._open[1]} of {excerpt(self._open[0])} is still open "
                "(send its layer_end first)"
            )
        announced = state.layers[index].size
        spool = self._spool
        if spool is None:
            spool = self._new_spool()
            self._open = (platform_id, index)
            if announced and self.on_spool is not None:
                await self.on_spool(spool.path, announced)
        if offset != spool.received:
            raise ProtocolError(f"{where}: offset {offset}, expected {spool.received}")
        if announced and spool.received + len(data) > announced:
            raise ProtocolError(f"{where}: more bytes than the announced size {announced}")
        await asyncio.to_thread(_write_and_hash, spool, data)
        spool.received += len(data)
        self._on_bytes(len(data))

    async def layer_end(self, platform_id: str, index: int, digest: str) -> None:
        self._check_not_committed("layer_end")
        state = self._state(platform_id, "layer_end")
        where = f"layer_end {excerpt(platform_id)} layer {index}"
        if index not in state.wanted or index in state.received:
            raise ProtocolError(f"{where}: the layer was not asked for, or was already ended")
        if self._open is None:
            # a wanted layer of zero bytes: no layer_data came
            self._new_spool()
            self._open = (platform_id, index)
        if self._open != (platform_id, index):
            raise ProtocolError(f"{where}: layer {self._open[1]} of {excerpt(self._open[0])} is the open one")
        spool = self._spool
        assert spool is not None
        await asyncio.to_thread(spool.file.close)
        self._spool, self._open = None, None
        actual = "sha256:" + spool.hash.hexdigest()
        layer = state.layers[index]
        if digest != actual:
            raise ProtocolError(
                f"{where}: digest {excerpt(digest)} does not match the bytes received ({actual})"
            )
        if layer.blob_digest and layer.blob_digest != actual:
            raise ProtocolError(
                f"{where}: bytes have digest {actual}, platform_begin announced {layer.blob_digest}"
            )
        if layer.size and spool.received != layer.size:
            raise ProtocolError(f"{where}: {spool.received} bytes received, announced {layer.size}")
        state.received.add(index)
        self._by_digest[actual] = ("spool", str(spool.path))
        self._spooled[(platform_id, index)] = str(spool.path)

    def platform_end(self, platform_id: str) -> None:
        self._check_not_committed("platform_end")
        state = self._state(platform_id, "platform_end")
        if state.ended:
            raise ProtocolError(f"platform_end for {excerpt(platform_id)} twice")
        missing = sorted(state.wanted - state.received)
        if missing:
            raise ProtocolError(f"platform_end {excerpt(platform_id)}: wanted layers {missing} were not sent")
        if self._open is not None and self._open[0] == platform_id:
            raise ProtocolError(f"platform_end {excerpt(platform_id)}: layer {self._open[1]} is still open")
        state.ended = True

    @property
    def selected_ids(self) -> list[str]:
        """The ids of the platforms converted, in the order of :meth:`commit`'s images."""
        return [pid for pid, state in self._platforms.items() if state.selected]

    def commit(self) -> tuple[WorkerImage, ...]:
        """Check completeness; returns the images the worker converts (selected platforms)."""
        self._check_not_committed("commit")
        for pid, state in self._platforms.items():
            if not state.ended:
                raise ProtocolError(
                    f"commit: platform {excerpt(pid)} was not ended (platform_begin/platform_end)"
                )
        unfinished = sorted(k for k in self._metadata if k not in self._metadata_done)
        if unfinished:
            raise ProtocolError(f"commit: metadata {unfinished} is missing its last chunk")
        self._committed = True
        images = []
        for pid, state in self._platforms.items():
            if not state.selected:
                continue
            layers = []
            for layer in state.layers:
                layers.append(self._source_of(pid, layer))
            config_path = self._config_file(pid, state)
            images.append(WorkerImage(state.platform, config_path, tuple(layers)))
        return tuple(images)

    def _source_of(self, platform_id: str, layer: LayerSpec) -> WorkerLayer:
        ref = layer.reference
        if ref is not None:
            fd = self._references[(platform_id, layer.index)]
            if ref.kind == "tar":
                return WorkerLayer("file", str(ref.path), str(ref.path), fd=fd)
            whiteouts: Literal["oci", "overlayfs"] = "overlayfs" if ref.kind == "dir-overlayfs" else "oci"
            return WorkerLayer("dir", str(ref.path), str(ref.path), whiteouts=whiteouts, fd=fd)
        cached = self._cached.get((platform_id, layer.index))
        if cached is not None:
            return cached
        digest = layer.blob_digest
        own = self._spooled.get((platform_id, layer.index))
        if own is not None:
            key = cache_key(digest, self._pack) if digest else ""
            return WorkerLayer("file", own, digest or f"{platform_id} layer {layer.index}", cache_key=key)
        if digest:
            kind, path = self._by_digest[digest]
            if kind == "cached":
                return WorkerLayer("cached", path, digest, cache_key=cache_key(digest, self._pack))
            if kind == "spool":
                return WorkerLayer("file", path, digest, cache_key=cache_key(digest, self._pack))
        raise ProtocolError(f"commit: layer {layer.index} of {excerpt(platform_id)} was never sent")

    def _config_file(self, platform_id: str, state: _PlatformState) -> str:
        raw = self._metadata.get(f"containerimage.config/{platform_id}")
        if raw is None and len(self._platforms) == 1:
            raw = self._metadata.get("containerimage.config")
        if raw is None:
            return ""
        if json_depth(bytes(raw)) > MAX_JSON_DEPTH:
            raise ConfigError(
                f"metadata containerimage.config of {excerpt(platform_id)} nests deeper than "
                f"{MAX_JSON_DEPTH} levels"
            )
        try:
            config = json.loads(bytes(raw))
        except (ValueError, RecursionError):
            raise ConfigError(
                f"metadata containerimage.config of {excerpt(platform_id)} is not JSON"
            ) from None
        if not isinstance(config, dict):
            raise ConfigError(
                f"metadata containerimage.config of {excerpt(platform_id)} is not a JSON object"
            )
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", platform_id)
        path = self._workdir / f"config-{safe}.json"
        path.write_bytes(bytes(raw))
        return str(path)

    def close(self) -> None:
        """Close an open spool and let the metadata go (commit wrote what the worker needs);
        the job directory itself is removed by the job."""
        if self._spool is not None:
            self._spool.file.close()
            self._spool = None
        self._metadata.clear()
        self._metadata_budget.close()

    def close_references(self) -> None:
        """Close the descriptors of layers sent by reference (after the conversion)."""
        for fd in self._references.values():
            os.close(fd)
        self._references.clear()


def _write_and_hash(spool: _Spool, data: bytes) -> None:
    spool.file.write(data)
    spool.hash.update(data)
