"""Push a converted image from an OCI layout to registries, tags last.

Order (so a failed export never moves a tag): every blob of every manifest (HEAD first: blobs
the repository has are not uploaded again; a blob already pushed to another name on the same
registry is mounted from there), then each manifest and index by digest, then the tags.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nydus_exporter.errors import ConfigError
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor, ImageIndex, ImageManifest
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.reference import Reference
from nydus_exporter.registry.sync import SyncRegistry

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
) -> PushStats:
    """Push everything ``root`` reaches in ``layout`` to each of ``refs``, then tag them.

    ``remote``: digests of blobs that are not in ``layout`` but verified to exist in the
    first reference's repository (the chunk store's blobs); other repositories of the same
    registry mount them from there. ``mountable``: digest -> (repository of the same registry
    to mount it from, a function that puts it into ``layout`` when the mount is refused).
    """
    blobs, manifests = collect(layout, root)
    stats = PushStats()
    pushed_to: list[Reference] = []
    for ref in refs:
        mount_from = [
            p.repository for p in pushed_to if p.api_host == ref.api_host and p.repository != ref.repository
        ]

        def push_one(desc: Descriptor, ref: Reference = ref, mount_from: list[str] = mount_from) -> None:
            if desc.digest in remote:
                if ref is refs[0]:
                    return  # it is there (verified before the conversion used it)
                if not any(registry.mount_blob(ref, desc.digest, repo) for repo in mount_from):
                    raise ConfigError(
                        f"blob {desc.digest} exists only in {refs[0]}; it cannot be mounted into {ref}"
                    )
                stats.mounted += 1
                return
            if mountable and desc.digest in mountable and not layout.has_blob(desc.digest):
                source_repo, fetch = mountable[desc.digest]
                if registry.blob_exists(ref, desc.digest) == desc.size:
                    stats.blobs += 1
                    stats.existing += 1
                    return
                if registry.mount_blob(ref, desc.digest, source_repo):
                    stats.blobs += 1
                    stats.mounted += 1
                    return
                fetch()  # no mount (e.g. no pull access there): copy it through this machine
            result = registry.push_blob(
                ref, desc.digest, desc.size, layout.blob_path(desc.digest), mount_from=mount_from
            )
            stats.blobs += 1
            if result.outcome == "uploaded":
                stats.uploaded += 1
                stats.uploaded_bytes += result.uploaded_bytes
            elif result.outcome == "mounted":
                stats.mounted += 1
            else:
                stats.existing += 1
            if on_blob is not None:
                on_blob(desc.digest, result.outcome)

        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_BLOBS, thread_name_prefix="push") as pool:
            for future in [pool.submit(push_one, desc) for desc in blobs]:
                future.result()
        for desc in manifests:
            registry.put_manifest(ref, layout.read_blob(desc.digest), desc.media_type, tags=())  # by digest
        pushed_to.append(ref)
    # Tags last, once everything they point at is in every repository.
    raw = layout.read_blob(root.digest)
    for ref in refs:
        registry.put_manifest(ref, raw, root.media_type, tags=[ref.tag or "latest"])
    return stats
