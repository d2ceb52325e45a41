"""Push a converted image from an OCI layout to registries, tags last.

Order (so a failed export never moves a tag): every blob of every manifest (HEAD first: blobs
the repository has are not uploaded again; a blob already pushed to another name on the same
registry is mounted from there), then each manifest and index by digest, then the tags.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nydus_exporter.errors import ConfigError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor, ImageIndex, ImageManifest
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.reference import Reference
from nydus_exporter.registry.sync import SyncRegistry

if TYPE_CHECKING:
    from nydus_exporter.registry.client import PushResult

MAX_PARALLEL_BLOBS = 4


@dataclass
class PushStats:
    blobs: int = 0
    uploaded: int = 0  # blobs sent
    uploaded_bytes: int = 0
    mounted: int = 0
    existing: int = 0


def collect(layout: OciLayout, root: Descriptor) -> tuple[list[Descriptor], list[Descriptor]]:
    """(blobs, manifests) reachable from ``root``; manifests children first, ``root`` last.

    Index entries absent from ``layout`` are skipped: with merge-manifest they are the
    manifests the index already had in the target repository.
    """
    blobs: dict[str, Descriptor] = {}
    manifests: list[Descriptor] = []

    def visit(desc: Descriptor) -> None:
        raw = layout.read_blob(desc.digest)
        if mt.is_index(desc.media_type):
            for child in ImageIndex.parse(raw).manifests:
                if layout.has_blob(child.digest):
                    visit(child)
        else:
            manifest = ImageManifest.parse(raw)
            for blob in (manifest.config, *manifest.layers):
                blobs.setdefault(blob.digest, blob)
        if all(m.digest != desc.digest for m in manifests):
            manifests.append(desc)

    visit(root)
    return list(blobs.values()), manifests


def push_image(
    registry: SyncRegistry,
    layout: OciLayout,
    root: Descriptor,
    refs: Sequence[Reference],
    *,
    on_blob: Callable[[str, str], None] | None = None,
    remote: Collection[str] = (),
    mountable: Mapping[str, tuple[str, Callable[[], None]]] | None = None,
    pushed: Mapping[str, PushResult] | None = None,
) -> PushStats:
    """Push everything ``root`` reaches in ``layout`` to each of ``refs``, then tag them.

    ``remote``: digests of blobs that are not in ``layout`` but verified to exist in the
    first reference's repository (the chunk store's blobs); other repositories of the same
    registry mount them from there. ``mountable``: digest -> (repository of the same registry
    to mount it from, a function that puts it into ``layout`` when the mount is refused).
    ``pushed``: blobs already pushed to the first reference's repository (push while packing:
    :mod:`.early_push`) and what that did.
    """
    blobs, manifests = collect(layout, root)
    pusher = _BlobPusher(registry, layout, refs[0], on_blob, remote, mountable or {})
    pushed_to: list[Reference] = []
    for ref in refs:
        mount_from = [
            p.repository for p in pushed_to if p.api_host == ref.api_host and p.repository != ref.repository
        ]
        done = pushed if pushed is not None and ref is refs[0] else {}
        for desc in blobs:
            if desc.digest in done:
                pusher.pushed_before(desc, done[desc.digest])
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_BLOBS, thread_name_prefix="push") as pool:
            todo = [desc for desc in blobs if desc.digest not in done]
            for future in [pool.submit(pusher.push, desc, ref, mount_from) for desc in todo]:
                future.result()
        for desc in manifests:
            registry.put_manifest(ref, layout.read_blob(desc.digest), desc.media_type, tags=())  # by digest
        pushed_to.append(ref)
    # Tags last, once everything they point at is in every repository.
    raw = layout.read_blob(root.digest)
    for ref in refs:
        registry.put_manifest(ref, raw, root.media_type, tags=[ref.tag or "latest"])
    return pusher.stats


class _BlobPusher:
    """Puts one blob into one repository, the cheapest way it can (called from threads)."""

    def __init__(
        self,
        registry: SyncRegistry,
        layout: OciLayout,
        first: Reference,
        on_blob: Callable[[str, str], None] | None,
        remote: Collection[str],
        mountable: Mapping[str, tuple[str, Callable[[], None]]],
    ) -> None:
        self._registry = registry
        self._layout = layout
        self._first = first
        self._on_blob = on_blob
        self._remote = remote
        self._mountable = mountable
        self._lock = threading.Lock()
        self.stats = PushStats()

    def _count(self, outcome: str, uploaded_bytes: int = 0) -> None:
        with self._lock:
            self.stats.blobs += 1
            if outcome == "uploaded":
                self.stats.uploaded += 1
                self.stats.uploaded_bytes += uploaded_bytes
            elif outcome == "mounted":
                self.stats.mounted += 1
            else:
                self.stats.existing += 1

    def pushed_before(self, desc: Descriptor, result: PushResult) -> None:
        self._count(result.outcome, result.uploaded_bytes)
        if self._on_blob is not None:
            self._on_blob(desc.digest, result.outcome)

    def push(self, desc: Descriptor, ref: Reference, mount_from: list[str]) -> None:
        if desc.digest in self._remote:
            self._remote_blob(desc, ref, mount_from)
            return
        elsewhere = desc.digest in self._mountable and not self._layout.has_blob(desc.digest)
        if elsewhere and self._mount_or_fetch(desc, ref):
            return
        result = self._registry.push_blob(
            ref, desc.digest, desc.size, self._layout.blob_path(desc.digest), mount_from=mount_from
        )
        self._count(result.outcome, result.uploaded_bytes)
        if self._on_blob is not None:
            self._on_blob(desc.digest, result.outcome)

    def _remote_blob(self, desc: Descriptor, ref: Reference, mount_from: list[str]) -> None:
        """A blob only the first repository holds (verified before the conversion used it)."""
        if ref is self._first:
            return
        if not any(self._registry.mount_blob(ref, desc.digest, repo) for repo in mount_from):
            raise ConfigError(
                f"blob {desc.digest} exists only in {self._first}; it cannot be mounted into {ref}"
            )
        with self._lock:
            self.stats.mounted += 1

    def _mount_or_fetch(self, desc: Descriptor, ref: Reference) -> bool:
        """A blob of another repository of the registry: there already, or mounted (True), or
        copied into the layout to be uploaded (False: no pull access there, say)."""
        source_repo, fetch = self._mountable[desc.digest]
        if self._registry.blob_exists(ref, desc.digest) == desc.size:
            self._count("existing")
            return True
        if self._registry.mount_blob(ref, desc.digest, source_repo):
            self._count("mounted")
            return True
        fetch()
        return False
