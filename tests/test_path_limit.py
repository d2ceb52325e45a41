"""Paths are bounded by PATH_MAX: a small tar cannot imply millions of directories."""

from __future__ import annotations

import io
import tarfile
import tracemalloc

import pytest

from nydus_exporter.errors import UnsupportedEntryError
from nydus_exporter.layer.tarstream import PATH_MAX
from nydus_exporter.pipeline.pack import pack_layer
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap


def _tar_with(name: str, *, link: str | None = None) -> bytes:
    """A file ``name``; with ``link``, then a hardlink ``/l`` whose target is ``link``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
        if link is not None:
            hard = tarfile.TarInfo("l")
            hard.type = tarfile.LNKTYPE
            hard.linkname = link  # a long target goes into a PAX linkpath record
            tar.addfile(hard)
    return buf.getvalue()


def _pack(data: bytes) -> bytes:
    out = bytearray()
    pack_layer(io.BytesIO(data), out.extend)
    return bytes(out)


def test_a_million_directories_deep_path_is_refused_before_memory_is_spent() -> None:
    layer = _tar_with("d/" * 1_000_000 + "file")  # a 2 MB tar
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedEntryError) as caught:
            _pack(layer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith("path of entry at offset ")  # names the entry
    assert "2000004 bytes long" in message
    assert f"PATH_MAX ({PATH_MAX})" in message
    assert len(message) < 600  # the name is quoted as an excerpt, not 2 MB of it
    # The packer holds no more than a few copies of the 2 MB name (it used 1.36 GB).
    assert peak < 32 << 20


def test_a_path_just_under_path_max_packs_and_reads_back() -> None:
    name = "d/" * ((PATH_MAX - 1 - len("file")) // 2) + "file"
    name = "x" * (PATH_MAX - 1 - len(name)) + name
    assert len(name) == PATH_MAX - 1
    blob = _pack(_tar_with(name))
    boot = BlobReader(lambda offset, length: blob[offset : offset + length], len(blob)).bootstrap()
    assert boot is not None
    node = read_bootstrap(boot).root
    for component in name.encode().split(b"/"):
        assert node.children is not None
        node = node.children[component]
    assert node.inode.size == 2


def test_a_hardlink_target_at_path_max_is_refused() -> None:
    with pytest.raises(UnsupportedEntryError, match="hardlink target"):
        _pack(_tar_with("f", link="t" * PATH_MAX))
