"""What the daemon hands a conversion worker (:mod:`.worker`): the images to convert and the
typed export options as resolved, written as one pickle on the worker's stdin.

A module of its own so both ends unpickle the same classes (the worker runs as ``__main__``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from nydus_exporter.oci.platform import Platform
from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.pipeline.pack import PackOptions
from nydus_exporter.service.attestations import SpooledAttestation

LayerKind = Literal["file", "cached", "dir"]


@dataclass(frozen=True)
class WorkerLayer:
    kind: LayerKind
    path: str  # tar file (spooled or by reference), cached blob link, or directory
    name: str  # digest or path: progress and messages
    cache_key: str = ""  # file layers: store the conversion under this key
    blob_digest: str = ""  # cached layers: the (verified) digest of the converted blob
    whiteouts: Literal["oci", "overlayfs"] = "oci"
    # >= 0: a layer sent by reference, opened by the daemon beneath its allowed roots and
    # inherited by the worker; read through it, never by ``path`` (which may have changed)
    fd: int = -1


@dataclass(frozen=True)
class WorkerImage:
    platform: Platform | None
    config_path: str
    layers: tuple[WorkerLayer, ...]


@dataclass(frozen=True)
class WorkerSpec:
    options: ExportOptions  # as resolved, for the staging layout (options_for_worker)
    staging: str
    workdir: str
    cache_dir: str
    images: tuple[WorkerImage, ...] = field(default_factory=tuple)
    # chunk-store=true: the daemon's chunk store, the target location, and the blobs there the
    # daemon verified (the worker has no registry access)
    store_dir: str = ""
    store_location: str = ""
    store_verified: tuple[str, ...] = ()
    # per image (same order as ``images``): the attestations attached to its Nydus manifest
    attestations: tuple[tuple[SpooledAttestation, ...], ...] = ()

    @property
    def inherited_fds(self) -> tuple[int, ...]:
        """The descriptors the worker process must inherit (layers sent by reference)."""
        return tuple(layer.fd for image in self.images for layer in image.layers if layer.fd >= 0)

    def to_bytes(self) -> bytes:
        """The spec as the worker reads it: one pickle (the daemon is the worker's parent and
        the only writer of its stdin)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def read_from(cls, stream: BinaryIO) -> WorkerSpec:
        spec = pickle.load(stream)
        if not isinstance(spec, cls):
            raise TypeError(f"expected a WorkerSpec, got {type(spec).__name__}")
        return spec


@dataclass(frozen=True)
class EarlyLayer:
    """Sent before the :class:`WorkerSpec`: a layer the worker may start packing while the
    daemon still receives it (convert while receiving). ``path`` is the spool file, growing to
    ``size`` bytes; the spec that follows names it again if it is used (its digest checked)."""

    path: str
    size: int
    pack: PackOptions
    workdir: str

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
