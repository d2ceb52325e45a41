"""Client-named host paths never lead the daemon out of its allowed roots.

A layer sent by reference and an ``oci-layout=`` destination are checked when they are named;
each test then swaps the path (or one of its components) for a symlink to a directory outside
every root *after* that check and before the daemon uses it, and proves that the secret out
there never lands in the image and that nothing is written out there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.client.exporter import ExporterClient, RemoteExportError
from nydus_exporter.pipeline.sources import open_source
from nydus_exporter.service import beneath
from nydus_exporter.service.errors import PathNotAllowedError, ProtocolError
from nydus_exporter.service.server import RunningServer
from tests.e2e.test_export import layer_meta_only
from tests.helpers import tarbuild as tb
from tests.service import streams as s

SECRET = b"-----BEGIN PRIVATE KEY----- outside every root"
PUBLIC = b"public content of the layer under the root"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside every allowed root, holding a 'secret' tar and a secret tree."""
    path = Path(tempfile.mkdtemp(prefix="nx-outside-", dir="/tmp"))
    (path / "layer.tar").write_bytes(tb.tar_of(tb.file("secret.key", SECRET)))
    (path / "tree").mkdir()
    (path / "tree" / "secret.key").write_bytes(SECRET)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["openat2", "no-follow"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of resolving beneath a root: the kernel's openat2, and component by component."""
    monkeypatch.setattr(beneath, "use_openat2", request.param == "openat2")
    return str(request.param)


def _blobs(layout: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((layout / "blobs" / "sha256").iterdir()))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def _export_by_reference(
    client: ExporterClient,
    out: Path,
    path: Path,
    kind: pb.LayerReference.Kind.ValueType,
    swap: Path,
    target: Path,
) -> pb.ExportEvent:
    """Send one layer by reference; after platform_begin (the check), make ``swap`` a symlink
    to ``target``; then commit."""
    resolved = await client.resolve({"push": "false", "oci-layout": str(out), "compressor": "none"})
    call = client.stub.Export()
    await call.write(s.header(resolved.instance_id))
    info = pb.LayerInfo(index=0, reference=pb.LayerReference(path=str(path), kind=kind))
    await call.write(pb.ExportRequest(platform_begin=pb.PlatformBegin(platform_id="p", layers=[info])))
    wants = await s.read_until(call, "layer_wants")
    assert list(wants.layer_wants.indices) == []
    await asyncio.to_thread(_replace_with_symlink, swap, target)
    await call.write(s.platform_end("p"))
    await call.write(s.commit())
    await call.done_writing()
    return await s.read_until(call, "result")


@pytest.mark.parametrize("component", ["file", "parent"])
async def test_tar_layer_swapped_for_a_symlink_after_the_check(
    client: ExporterClient, short_tmp: Path, outside: Path, resolution: str, component: str
) -> None:
    layer = short_tmp / "layers" / "layer.tar"
    layer.parent.mkdir()
    layer.write_bytes(tb.tar_of(tb.file("public.txt", PUBLIC)))
    swap, target = (layer, outside / "layer.tar") if component == "file" else (layer.parent, outside)
    out = short_tmp / "out"
    await _export_by_reference(client, out, layer, pb.LayerReference.KIND_TAR, swap, target)
    image = _blobs(out)
    assert PUBLIC in image  # the layer that was checked is the one converted
    assert SECRET not in image


@pytest.mark.parametrize("component", ["directory", "parent", "inside"])
async def test_directory_layer_swapped_for_a_symlink_after_the_check(
    client: ExporterClient, short_tmp: Path, outside: Path, resolution: str, component: str
) -> None:
    tree = short_tmp / "snapshots" / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "public.txt").write_bytes(PUBLIC)
    (tree / "key-link").symlink_to(outside / "tree" / "secret.key")  # stored as a link, not read
    swap, target = {
        "directory": (tree, outside / "tree"),
        "parent": (tree.parent, outside),
        "inside": (tree / "sub", outside / "tree"),  # the walk never follows it
    }[component]
    out = short_tmp / "out"
    await _export_by_reference(client, out, tree, pb.LayerReference.KIND_DIRECTORY_OCI, swap, target)
    image = _blobs(out)
    assert PUBLIC in image
    assert SECRET not in image


async def test_a_reference_through_a_symlink_out_of_the_root_is_refused(
    client: ExporterClient, daemon: RunningServer, short_tmp: Path, outside: Path, resolution: str
) -> None:
    (short_tmp / "escape").symlink_to(outside)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _export_by_reference(
            client,
            short_tmp / "out",
            short_tmp / "escape" / "layer.tar",
            pb.LayerReference.KIND_TAR,
            short_tmp / "unused",
            outside,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "escape/layer.tar" in (info.value.details() or "")
    assert not (short_tmp / "out").exists()


@pytest.mark.parametrize("component", ["layout", "blobs", "sha256"])
async def test_layout_destination_swapped_for_a_symlink_after_resolve(
    client: ExporterClient, short_tmp: Path, outside: Path, resolution: str, component: str
) -> None:
    out = short_tmp / "out"
    resolved = await client.resolve({"push": "false", "oci-layout": str(out)})
    # After Resolve checked the destination, part of it becomes a symlink out of the roots.
    escape = outside / "written-here"
    escape.mkdir()
    link = {"layout": out, "blobs": out / "blobs", "sha256": out / "blobs" / "sha256"}[component]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(escape)
    layer = short_tmp / "top.tar"
    layer.write_bytes(layer_meta_only())
    with open_source(f"tar:{layer}", workdir=short_tmp) as src:
        with pytest.raises(RemoteExportError) as info:
            await client.export(src, resolved.instance_id)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _files(escape) == []
    # The daemon goes on serving, and a destination without tricks works.
    good = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "good")})
    with open_source(f"tar:{layer}", workdir=short_tmp) as src:
        outcome = await client.export(src, good.instance_id)
    assert outcome.result.response["containerimage.digest"].startswith("sha256:")


async def test_a_symlink_staying_inside_the_root_is_followed_with_openat2(
    client: ExporterClient, short_tmp: Path
) -> None:
    """openat2 (RESOLVE_BENEATH) lets a symlink that stays under the root through."""
    probe = os.open(short_tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = beneath._openat2(probe, ".", os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(probe)
    if fd is None:
        pytest.skip("openat2 is not available here (the fallback refuses every symlink)")
    os.close(fd)
    real = short_tmp / "layouts" / "real"
    real.mkdir(parents=True)
    (short_tmp / "layouts" / "alias").symlink_to("real")
    resolved = await client.resolve({"push": "false", "oci-layout": str(short_tmp / "layouts" / "alias")})
    layer = short_tmp / "top.tar"
    layer.write_bytes(layer_meta_only())
    with open_source(f"tar:{layer}", workdir=short_tmp) as src:
        await client.export(src, resolved.instance_id)
    assert (real / "index.json").is_file()


def test_open_beneath_refuses_what_is_not_the_asked_kind_or_leads_out(
    short_tmp: Path, outside: Path, resolution: str
) -> None:
    root = short_tmp / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    (root / "file-link").symlink_to(outside / "layer.tar")
    (root / "real.tar").write_bytes(b"tar")
    with pytest.raises(ProtocolError, match="fifo is not a file"):
        beneath.open_beneath([root], root / "fifo", "file")  # no writer: must not wait for one
    with pytest.raises(PathNotAllowedError, match="file-link"):
        beneath.open_beneath([root], root / "file-link", "file")
    with pytest.raises(PathNotAllowedError, match="not under an allowed root"):
        beneath.open_beneath([root], outside / "layer.tar", "file")
    with pytest.raises(PathNotAllowedError, match=r"contains '\.\.'"):
        beneath.open_beneath([root], root / ".." / "root" / "real.tar", "file")
    with pytest.raises(ProtocolError, match="is not a directory"):
        beneath.open_beneath([root], root / "real.tar", "dir")
    fd = beneath.open_beneath([root], root / "real.tar", "file")
    try:
        assert os.pread(fd, 16, 0) == b"tar"
    finally:
        os.close(fd)


def _replace_with_symlink(path: Path, target: Path) -> None:
    """Move ``path`` aside and put a symlink to ``target`` in its place."""
    path.rename(path.with_name(path.name + ".checked"))
    path.symlink_to(target)
