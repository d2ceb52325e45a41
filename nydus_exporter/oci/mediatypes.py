"""Media types, artifact types and annotation keys of OCI, Docker and Nydus images.

Strings mirror opencontainers/image-spec ``specs-go/v1/mediatype.go`` and
``annotations.go`` (v1.1), the Docker distribution schema2 / manifest list types, and the
Nydus constants of nydus-snapshotter ``pkg/converter/constant.go`` and nydusify
``pkg/utils/constant.go`` ([format §6.1, §6.2]). ``tests/oci/test_mediatypes.py`` pins every
string: a typo here would make registries or snapshotters ignore our images silently.
"""

from __future__ import annotations

from typing import Literal

# --- OCI image-spec v1.1 (specs-go/v1/mediatype.go) ------------------------------------------
MEDIA_TYPE_DESCRIPTOR = "application/vnd.oci.descriptor.v1+json"
MEDIA_TYPE_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
MEDIA_TYPE_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_EMPTY_JSON = "application/vnd.oci.empty.v1+json"
MEDIA_TYPE_IMAGE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_IMAGE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_IMAGE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Deprecated by image-spec v1.1 but still found in the wild (Windows base layers).
MEDIA_TYPE_IMAGE_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_IMAGE_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_TYPE_IMAGE_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# --- Docker image manifest v2 schema 2 / manifest list ----------------------------------------
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"  # moby/containerd
MEDIA_TYPE_DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# --- Nydus ([format §6.1]) -----------------------------------------------------------------------------
# A Nydus data blob layer: not a tar, never unpacked; "nydus.blob.v1" even in Docker manifests.
MEDIA_TYPE_NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
# Config media type of the Nydus manifest when merged into an index in "nydus-config" mode, so
# non-Nydus clients never pick it (nydus-snapshotter MergeOption.MergeManifest).
MEDIA_TYPE_NYDUS_CONFIG = "application/vnd.nydus.image.config.v1+json"
# ``artifactType`` of the Nydus manifest's descriptor in a merged index (nydus >= v2.3.5).
ARTIFACT_TYPE_NYDUS_MANIFEST = "application/vnd.nydus.image.manifest.v1+json"
# Older merged indexes mark the Nydus manifest with this ``platform.os.features`` entry.
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"

# --- Annotation keys ------------------------------------------------------------------------
# image-spec annotations.go
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# containerd's (and BuildKit's OCI exporter's) full image name of an index.json entry, next to
# a ref.name that holds only the tag.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_BASE_IMAGE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_IMAGE_DIGEST = "org.opencontainers.image.base.digest"
# containerd: uncompressed digest of a layer (used internally by converters, [format §6.2])
ANNOTATION_UNCOMPRESSED = "containerd.io/uncompressed"
# Nydus layer annotations ([format §6.2]); containerd copies ``containerd.io/snapshot/*`` layer
# annotations into snapshot labels, which is how nydus-snapshotter sees them at pull time.
ANNOTATION_NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
ANNOTATION_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANNOTATION_NYDUS_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
ANNOTATION_NYDUS_REF = "containerd.io/snapshot/nydus-ref"
ANNOTATION_NYDUS_ENCRYPTED_BLOB = "containerd.io/snapshot/nydus-encrypted-blob"
ANNOTATION_NYDUS_REFERENCE_BLOB_IDS = "containerd.io/snapshot/nydus-reference-blob-ids"
ANNOTATION_NYDUS_BLOB_IDS = "containerd.io/snapshot/nydus-blob-ids"  # deprecated (nydusify <= 2.1)
ANNOTATION_NYDUS_EMPTY_LAYER = "containerd.io/snapshot/nydus-empty-layer"
# Nydus manifest annotations added by acceleration-service / nydusify ([format §6.2])
ANNOTATION_NYDUS_SOURCE_DIGEST = "containerd.io/snapshot/nydus-source-digest"
ANNOTATION_NYDUS_SOURCE_REFERENCE = "containerd.io/snapshot/nydus-source-reference"
ANNOTATION_NYDUS_BUILDER_VERSION = "containerd.io/snapshot/nydus-builder-version"

NYDUS_FS_VERSION = "6"  # value of ANNOTATION_NYDUS_FS_VERSION for RAFS v6

LayerCompression = Literal["none", "gzip", "zstd"]

_INDEX_TYPES = frozenset({MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
_MANIFEST_TYPES = frozenset({MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
_CONFIG_TYPES = frozenset({MEDIA_TYPE_IMAGE_CONFIG, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_NYDUS_CONFIG})
_TAR_LAYER_COMPRESSION: dict[str, LayerCompression] = {
    MEDIA_TYPE_IMAGE_LAYER: "none",
    MEDIA_TYPE_IMAGE_LAYER_GZIP: "gzip",
    MEDIA_TYPE_IMAGE_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_IMAGE_LAYER_NONDISTRIBUTABLE: "none",
    MEDIA_TYPE_IMAGE_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    MEDIA_TYPE_IMAGE_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    MEDIA_TYPE_DOCKER_LAYER: "none",
    MEDIA_TYPE_DOCKER_LAYER_GZIP: "gzip",
    MEDIA_TYPE_DOCKER_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER: "gzip",
}


def is_index(media_type: str) -> bool:
    """An OCI image index or a Docker manifest list."""
    return media_type in _INDEX_TYPES


def is_manifest(media_type: str) -> bool:
    """An OCI image manifest or a Docker schema2 manifest (not an index)."""
    return media_type in _MANIFEST_TYPES


def is_config(media_type: str) -> bool:
    """An image config: OCI, Docker or the Nydus config type of merged indexes."""
    return media_type in _CONFIG_TYPES


def is_docker(media_type: str) -> bool:
    """A Docker (``application/vnd.docker.*``) media type."""
    return media_type.startswith("application/vnd.docker.")


def is_tar_layer(media_type: str) -> bool:
    """A layer that is a (possibly compressed) tar of a filesystem change set."""
    return media_type in _TAR_LAYER_COMPRESSION


def is_nydus_blob(media_type: str) -> bool:
    return media_type == MEDIA_TYPE_NYDUS_BLOB


def is_layer(media_type: str) -> bool:
    """Any layer a manifest may list: a tar layer or a Nydus data blob."""
    return is_tar_layer(media_type) or is_nydus_blob(media_type)


def layer_compression(media_type: str) -> LayerCompression | None:
    """Compression of a tar layer media type; ``None`` when it is not a tar layer (Nydus blobs
    are not tars, a config is not a layer)."""
    return _TAR_LAYER_COMPRESSION.get(media_type)


def gzip_layer_media_type(*, oci: bool) -> str:
    """The tar+gzip layer media type of an OCI or a Docker manifest (bootstrap layer, [format §6.1])."""
    return MEDIA_TYPE_IMAGE_LAYER_GZIP if oci else MEDIA_TYPE_DOCKER_LAYER_GZIP


def manifest_media_type(*, oci: bool) -> str:
    return MEDIA_TYPE_IMAGE_MANIFEST if oci else MEDIA_TYPE_DOCKER_MANIFEST


def index_media_type(*, oci: bool) -> str:
    return MEDIA_TYPE_IMAGE_INDEX if oci else MEDIA_TYPE_DOCKER_MANIFEST_LIST


def config_media_type(*, oci: bool) -> str:
    return MEDIA_TYPE_IMAGE_CONFIG if oci else MEDIA_TYPE_DOCKER_CONFIG
