"""Media types and annotation keys: every string pinned (a typo silently breaks consumers)."""

from __future__ import annotations

import pytest

from nydus_exporter.oci import mediatypes as mt

PINNED = {
    "MEDIA_TYPE_DESCRIPTOR": "application/vnd.oci.descriptor.v1+json",
    "MEDIA_TYPE_LAYOUT_HEADER": "application/vnd.oci.layout.header.v1+json",
    "MEDIA_TYPE_IMAGE_MANIFEST": "application/vnd.oci.image.manifest.v1+json",
    "MEDIA_TYPE_IMAGE_INDEX": "application/vnd.oci.image.index.v1+json",
    "MEDIA_TYPE_IMAGE_CONFIG": "application/vnd.oci.image.config.v1+json",
    "MEDIA_TYPE_EMPTY_JSON": "application/vnd.oci.empty.v1+json",
    "MEDIA_TYPE_IMAGE_LAYER": "application/vnd.oci.image.layer.v1.tar",
    "MEDIA_TYPE_IMAGE_LAYER_GZIP": "application/vnd.oci.image.layer.v1.tar+gzip",
    "MEDIA_TYPE_IMAGE_LAYER_ZSTD": "application/vnd.oci.image.layer.v1.tar+zstd",
    "MEDIA_TYPE_DOCKER_MANIFEST": "application/vnd.docker.distribution.manifest.v2+json",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST": "application/vnd.docker.distribution.manifest.list.v2+json",
    "MEDIA_TYPE_DOCKER_CONFIG": "application/vnd.docker.container.image.v1+json",
    "MEDIA_TYPE_DOCKER_LAYER_GZIP": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "MEDIA_TYPE_NYDUS_BLOB": "application/vnd.oci.image.layer.nydus.blob.v1",
    "MEDIA_TYPE_NYDUS_CONFIG": "application/vnd.nydus.image.config.v1+json",
    "ARTIFACT_TYPE_NYDUS_MANIFEST": "application/vnd.nydus.image.manifest.v1+json",
    "NYDUS_OS_FEATURE": "nydus.remoteimage.v1",
    "ANNOTATION_REF_NAME": "org.opencontainers.image.ref.name",
    "ANNOTATION_UNCOMPRESSED": "containerd.io/uncompressed",
    "ANNOTATION_NYDUS_BLOB": "containerd.io/snapshot/nydus-blob",
    "ANNOTATION_NYDUS_BOOTSTRAP": "containerd.io/snapshot/nydus-bootstrap",
    "ANNOTATION_NYDUS_FS_VERSION": "containerd.io/snapshot/nydus-fs-version",
    "ANNOTATION_NYDUS_REF": "containerd.io/snapshot/nydus-ref",
    "ANNOTATION_NYDUS_REFERENCE_BLOB_IDS": "containerd.io/snapshot/nydus-reference-blob-ids",
    "ANNOTATION_NYDUS_SOURCE_DIGEST": "containerd.io/snapshot/nydus-source-digest",
    "NYDUS_FS_VERSION": "6",
}


@pytest.mark.parametrize(("name", "value"), PINNED.items(), ids=PINNED.keys())
def test_pinned_strings(name: str, value: str) -> None:
    assert getattr(mt, name) == value


PREDICATES = [
    # media type, is_index, is_manifest, is_config, is_layer, compression
    (mt.MEDIA_TYPE_IMAGE_INDEX, True, False, False, False, None),
    (mt.MEDIA_TYPE_DOCKER_MANIFEST_LIST, True, False, False, False, None),
    (mt.MEDIA_TYPE_IMAGE_MANIFEST, False, True, False, False, None),
    (mt.MEDIA_TYPE_DOCKER_MANIFEST, False, True, False, False, None),
    (mt.MEDIA_TYPE_IMAGE_CONFIG, False, False, True, False, None),
    (mt.MEDIA_TYPE_DOCKER_CONFIG, False, False, True, False, None),
    (mt.MEDIA_TYPE_NYDUS_CONFIG, False, False, True, False, None),
    (mt.MEDIA_TYPE_IMAGE_LAYER, False, False, False, True, "none"),
    (mt.MEDIA_TYPE_IMAGE_LAYER_GZIP, False, False, False, True, "gzip"),
    (mt.MEDIA_TYPE_IMAGE_LAYER_ZSTD, False, False, False, True, "zstd"),
    (mt.MEDIA_TYPE_DOCKER_LAYER_GZIP, False, False, False, True, "gzip"),
    (mt.MEDIA_TYPE_DOCKER_LAYER_ZSTD, False, False, False, True, "zstd"),
    (mt.MEDIA_TYPE_IMAGE_LAYER_NONDISTRIBUTABLE_GZIP, False, False, False, True, "gzip"),
    (mt.MEDIA_TYPE_NYDUS_BLOB, False, False, False, True, None),  # a layer, but not a tar
    ("application/octet-stream", False, False, False, False, None),
]


@pytest.mark.parametrize(
    ("media_type", "index", "manifest", "config", "layer", "compression"),
    PREDICATES,
    ids=[p[0] for p in PREDICATES],
)
def test_predicates(
    media_type: str, index: bool, manifest: bool, config: bool, layer: bool, compression: str | None
) -> None:
    assert mt.is_index(media_type) is index
    assert mt.is_manifest(media_type) is manifest
    assert mt.is_config(media_type) is config
    assert mt.is_layer(media_type) is layer
    assert mt.layer_compression(media_type) == compression
    assert mt.is_tar_layer(media_type) is (compression is not None)


def test_flavour_helpers() -> None:
    assert mt.manifest_media_type(oci=True) == PINNED["MEDIA_TYPE_IMAGE_MANIFEST"]
    assert mt.manifest_media_type(oci=False) == PINNED["MEDIA_TYPE_DOCKER_MANIFEST"]
    assert mt.index_media_type(oci=False) == PINNED["MEDIA_TYPE_DOCKER_MANIFEST_LIST"]
    assert mt.gzip_layer_media_type(oci=True) == PINNED["MEDIA_TYPE_IMAGE_LAYER_GZIP"]
    assert mt.gzip_layer_media_type(oci=False) == PINNED["MEDIA_TYPE_DOCKER_LAYER_GZIP"]
    assert mt.config_media_type(oci=False) == PINNED["MEDIA_TYPE_DOCKER_CONFIG"]
    assert mt.is_docker(mt.MEDIA_TYPE_DOCKER_MANIFEST) and not mt.is_docker(mt.MEDIA_TYPE_IMAGE_MANIFEST)
