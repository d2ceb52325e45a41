"""Nydus images made by the project's own CLI, in the shapes the interop tests feed to the real
Nydus code, and the kernel's view of them.

:func:`export_image` runs ``nydus-exporter export tar:... --output type=nydus,push=false,
oci-layout=...`` in-process; the result's merged bootstrap is taken out of the bootstrap
layer with the standard library only. The blob ids of a merged blob table are the blob layers'
digests, so the layout's ``blobs/sha256`` directory is directly a localfs blob directory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nydus_exporter.cli import main as cli
from nydus_exporter.tools.mount import mount_image, umount_image
from tests.conftest import require
from tests.helpers import tarbuild as tb
from tests.helpers.erofs import KERNEL_EROFS_REASON, kernel_erofs_available
from tests.helpers.treesnap import Snapshot, snapshot_dir

TAG = "1"
BOOTSTRAP_MEMBER = "image/image.boot"


@dataclass(frozen=True)
class Image:
    """An exported Nydus image in an OCI layout, with its merged bootstrap extracted."""

    layout: Path
    manifest: dict[str, Any]
    bootstrap: Path

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{TAG}"

    @property
    def blob_dir(self) -> Path:
        return self.layout / "blobs" / "sha256"

    def blob(self, digest: str) -> Path:
        return self.blob_dir / digest.removeprefix("sha256:")

    @property
    def blob_layers(self) -> list[dict[str, Any]]:
        return list(self.manifest["layers"][:-1])


def write_tars(directory: Path, layers: Sequence[Sequence[tb.Member]], *, fmt: str = "pax") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, members in enumerate(layers):
        path = directory / f"layer{i}.tar"
        with path.open("wb") as f:
            for piece in tb.tar_stream(*members, fmt=fmt):
                f.write(piece)
        paths.append(path)
    return paths


def export_image(tars: Sequence[Path], out: Path, *attrs: str) -> Image:
    """``nydus-exporter export`` of the layer tars (lowest first) into the OCI layout ``out``."""
    fixed = ["type=nydus", "push=false", f"oci-layout={out}", "oci-mediatypes=true", f"name=interop:{TAG}"]
    output = ",".join([*fixed, *attrs])
    source = "tar:" + ",".join(str(p) for p in tars)
    assert cli.main(["export", source, "--output", output, "--progress", "quiet"]) == 0
    return open_layout(out)


def open_layout(layout: Path) -> Image:
    """An OCI layout holding one Nydus manifest (the one ``export`` or ``skopeo copy`` wrote)."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_bytes())
    boot_layer = blobs / manifest["layers"][-1]["digest"].removeprefix("sha256:")
    bootstrap = layout.parent / f"{layout.name}.boot"
    bootstrap.write_bytes(extract_bootstrap(boot_layer.read_bytes()))
    return Image(layout=layout, manifest=manifest, bootstrap=bootstrap)


def extract_bootstrap(layer: bytes) -> bytes:
    """``image/image.boot`` of a gzip bootstrap layer (stdlib gzip + tarfile)."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), mode="r:") as tf:
        member = tf.getmember(BOOTSTRAP_MEMBER)
        data = tf.extractfile(member)
        assert data is not None
        return data.read()


@contextlib.contextmanager
def kernel_mount(image_ref: str, work: Path) -> Iterator[Path]:
    """The image loop-mounted by the kernel EROFS driver (``nydus-exporter mount``)."""
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    mnt = work / "kernel-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    state = work / "mount-state"
    mount_image(image_ref, mnt, state_dir=state)
    try:
        yield mnt
    finally:
        umount_image(mnt, state_dir=state)


def kernel_tree(image_ref: str, work: Path) -> Snapshot:
    with kernel_mount(image_ref, work) as mnt:
        return snapshot_dir(mnt)
