"""The other way round: images the real toolchain writes are read correctly by our ``check``,
``unpack``, ``cat`` and ``mount``, and work as ``chunk-dict=`` input.

The reference image is assembled from the real builder's output only: one data blob per layer
tar from ``rafs-ref-build`` (nydus-builder, as nydusify runs ``nydus-image create``), the
merged bootstrap from ``rafs-ref-merge`` (nydus-builder's Merger), the bootstrap layer tar from
Go's archive/tar (tests/interop/gotar, as nydus-snapshotter's packToTar), gzip'd; manifest,
config and index.json are written here with the standard library, in the shape nydusify gives
them. The expected tree is the layer tars' (tests/helpers/treesnap.py ``snapshot_tar``, stdlib).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.cli import main as cli
from tests.helpers import tarbuild as tb
from tests.helpers.treesnap import diff_snapshots, snapshot_dir, snapshot_tar
from tests.interop.blobparts import split_blob
from tests.interop.images import TAG, export_image, kernel_mount, kernel_tree, write_tars
from tests.interop.test_bootstrap_layer_go import go_tar
from tests.interop.test_parity import go_fifo
from tests.interop.tools import rafs_check, run_tool

pytestmark = pytest.mark.kernel

F, D, S, H = tb.file, tb.dir, tb.symlink, tb.hardlink
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep
BIG = bytes(range(256)) * 12_000 + b"tail"  # 3 MiB, several chunks

# fmt: off
LAYERS: list[list[tb.Member]] = [
    [D("etc", mtime=100), F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mtime=101),
     H("etc/passwd-", "etc/passwd", mtime=101), D("opt", mtime=102), F("opt/old", b"old\n", mtime=103),
     D("data", mtime=107), F("data/big.bin", BIG, mtime=108), S("opt/link", "../data/big.bin", mtime=104),
     go_fifo("fifo", 105),
     F("cap", b"x", mtime=106, xattrs={"security.capability": CAPABILITY})],
    [D("etc", mtime=200), tb.whiteout("etc/passwd-"), F("etc/hosts", b"127.0.0.1 localhost\n", mtime=201),
     D("opt", mtime=202), tb.opaque("opt"), F("opt/new", b"new\n", mtime=203)],
]
# fmt: on


def _put(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def reference_image(tmp_path: Path) -> tuple[Path, list[Path]]:
    """An OCI layout holding the Nydus image the real toolchain builds from ``LAYERS``."""
    tars = write_tars(tmp_path / "tars", LAYERS)
    layout = tmp_path / "ref-layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, boots, metas = [], [], []
    for i, tar in enumerate(tars):
        out = tmp_path / f"ref{i}"
        args: list[str | Path] = [tar, "-o", out, "--prefetch-policy", "fs"]
        run_tool("rafs-ref-build", args, stdin="/\n")
        blob = (out / "blob").read_bytes()
        layers.append(_put(blobs, blob))
        parts = split_blob(blob)
        boot, ci, ci_header = (
            parts.section("image.boot"),
            parts.section("blob.meta"),
            parts.section("blob.meta.header"),
        )
        assert boot is not None and ci is not None and ci_header is not None
        # Named by the layer digest, as the converter names them: the merge takes the blob ids
        # from the bootstrap file names.
        boots.append(tmp_path / "bootstraps" / layers[-1]["digest"].removeprefix("sha256:"))
        boots[-1].parent.mkdir(exist_ok=True)
        boots[-1].write_bytes(boot.data)
        # `image/<blob>.blob.meta`, the blob cache's meta file the snapshotter takes from the
        # bootstrap layer: the builder's chunk info, padded to 4 KiB, then its 4 KiB header.
        digest_hex = layers[-1]["digest"].removeprefix("sha256:")
        metas.append(
            (f"image/{digest_hex}.blob.meta", ci.data + bytes(-len(ci.data) % 4096) + ci_header.data)
        )
    merged = tmp_path / "image.boot"
    args = ["-o", merged, "--prefetch-policy", "fs", *boots]
    run_tool("rafs-ref-merge", args, stdin="/\n")
    boot_tar = go_tar(tmp_path, [("image/image.boot", merged.read_bytes()), *metas])
    boot_layer = _put(blobs, gzip.compress(boot_tar, mtime=0))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "history": [{"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}],
        "rootfs": {
            "type": "layers",
            # A Nydus blob is not compressed: its diff_id is its digest (nydusify).
            "diff_ids": [
                *(layer["digest"] for layer in layers),
                "sha256:" + hashlib.sha256(boot_tar).hexdigest(),
            ],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_put(blobs, json.dumps(config).encode()),
        },
        "layers": [
            *(
                {
                    "mediaType": "application/vnd.oci.image.layer.nydus.blob.v1",
                    **layer,
                    "annotations": {"containerd.io/snapshot/nydus-blob": "true"},
                }
                for layer in layers
            ),
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                **boot_layer,
                "annotations": {
                    "containerd.io/snapshot/nydus-bootstrap": "true",
                    "containerd.io/snapshot/nydus-fs-version": "6",
                },
            },
        ],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_put(blobs, json.dumps(manifest).encode()),
                "annotations": {"org.opencontainers.image.ref.name": TAG},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout, tars


def test_our_readers_read_reference_images(tmp_path: Path) -> None:
    layout, tars = reference_image(tmp_path)
    ref = f"oci:{layout}:{TAG}"
    # What the layers merge to: our own export of the same tars through the kernel (checked
    # against umoci's extraction in tests/test_merge_kernel.py).
    ours = export_image(tars, tmp_path / "our-layout")
    expected = kernel_tree(ours.ref, tmp_path / "our-kernel")

    with kernel_mount(ref, tmp_path / "kernel") as mnt:
        mounted = snapshot_dir(mnt)
    assert diff_snapshots(expected, mounted) == [], "kernel mount of the reference image"
    assert cli.main(["check", ref]) == 0
    unpacked = tmp_path / "rootfs.tar"
    assert cli.main(["unpack", ref, "-o", str(unpacked)]) == 0
    assert diff_snapshots(expected, snapshot_tar(unpacked)) == [], "unpack of the reference image"


def test_cat_reads_reference_image(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    layout, _ = reference_image(tmp_path)
    assert cli.main(["cat", f"oci:{layout}:{TAG}", "/opt/new"]) == 0
    assert capsysbinary.readouterr().out == b"new\n"


def test_reference_image_as_chunk_dict(tmp_path: Path) -> None:
    """``chunk-dict=`` a reference image: its blob holds our new layer's chunks."""
    layout, _ = reference_image(tmp_path)
    (tar,) = write_tars(tmp_path / "app", [[F("app/copy.bin", BIG, mtime=300), F("app/x", b"x\n")]])
    image = export_image([tar], tmp_path / "app-layout", f"chunk-dict=oci:{layout}:{TAG}")
    assert len(image.blob_layers) == 2  # our layer and the reference blob holding the copy's chunks
    served = rafs_check(image.bootstrap, image.blob_dir).tree
    assert served[b"/app/copy.bin"].sha256 == hashlib.sha256(BIG).hexdigest()
