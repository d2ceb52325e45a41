"""Sparse tar entries: holes cost no per-byte work, and `sparse-limit` refuses huge ones.

A few KiB of tar can declare a terabyte of holes. Every chunk wholly inside a hole is the
same zero chunk, prepared once; an entry declaring more than `sparse-limit` bytes is refused
when its header is read, before any chunk work.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.errors import ConfigError, EntryLimitError
from nydus_exporter.layer.entry import DEFAULT_SPARSE_LIMIT
from nydus_exporter.pipeline.options import parse_output
from nydus_exporter.pipeline.pack import PackOptions, pack_layer
from nydus_exporter.rafs import codecs
from nydus_exporter.rafs.blob import zero_chunk
from nydus_exporter.service.attrs import resolve_attrs
from tests.e2e.test_kernel_oracle import check_against_kernel, write_tar
from tests.helpers import tarbuild as tb

TIB = 1 << 40
MIB = 1 << 20


@pytest.fixture
def hashed() -> Iterator[list[int]]:
    """Sizes of the chunks whose bytes were hashed (CRC-32C runs once per prepared chunk)."""
    sizes: list[int] = []
    real = codecs.crc32c

    def counting(data: bytes) -> int:
        sizes.append(len(data))
        return real(data)

    zero_chunk.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codecs, "crc32c", counting)
        yield sizes
    zero_chunk.cache_clear()


def _terabyte_of_holes() -> bytes:
    return tb.tar_of(
        tb.file("etc/hostname", b"nydus\n"),
        tb.sparse_file("var/log/lastlog", TIB, [(TIB - 3, b"end")], sparse_format="pax-0.1"),
        fmt="pax",
    )


def test_a_terabyte_of_holes_is_refused_by_the_default_limit(hashed: list[int]) -> None:
    layer = _terabyte_of_holes()
    assert len(layer) < 8 << 10
    with pytest.raises(EntryLimitError) as caught:
        pack_layer(io.BytesIO(layer), lambda _: None)
    message = str(caught.value)
    assert "'/var/log/lastlog'" in message
    assert f"declares {TIB} bytes (3 stored" in message
    assert f"sparse-limit={DEFAULT_SPARSE_LIMIT}" in message
    assert sum(hashed) < MIB  # refused before any of its chunks was prepared


def test_cli_pack_refuses_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_terabyte_of_holes())
    assert cli.main(["pack", str(layer), "-o", str(tmp_path / "layer.blob")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sparse-limit" in err and "/var/log/lastlog" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.tar"]


def test_the_limit_is_an_option_of_pack_export_and_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tb.tar_of(tb.sparse_file("disk.img", 5 * MIB, [(0, b"boot")]), fmt="pax")
    layer = tmp_path / "small.tar"
    layer.write_bytes(small)
    out = tmp_path / "small.blob"
    assert cli.main(["pack", str(layer), "-o", str(out), "--sparse-limit", "4MiB"]) == 1
    assert "more than sparse-limit=4194304" in capsys.readouterr().err
    assert cli.main(["pack", str(layer), "-o", str(out), "--sparse-limit", "5MiB"]) == 0

    options = parse_output({"push": "false", "oci-layout": str(tmp_path), "sparse-limit": "4MiB"}).options
    assert options.pack.sparse_limit == 4 * MIB
    with pytest.raises(EntryLimitError):
        pack_layer(io.BytesIO(small), lambda _: None, options.pack)
    with pytest.raises(ConfigError, match="not a size"):
        parse_output({"push": "false", "oci-layout": str(tmp_path), "sparse-limit": "huge"})

    # The daemon's configured limit is the default of its exports and the most they may ask for.
    attrs = {"push": "false", "oci-layout": str(tmp_path)}
    resolved = resolve_attrs(attrs, path_allowed=lambda _: True, sparse_limit=8 * MIB)
    assert resolved.options.pack.sparse_limit == 8 * MIB
    lowered = resolve_attrs(
        {**attrs, "sparse-limit": "1MiB"}, path_allowed=lambda _: True, sparse_limit=8 * MIB
    )
    assert lowered.options.pack.sparse_limit == MIB
    with pytest.raises(ConfigError, match="above this daemon's limit"):
        resolve_attrs({**attrs, "sparse-limit": "9MiB"}, path_allowed=lambda _: True, sparse_limit=8 * MIB)


# 64 MiB + 300 KiB with data in three chunks of 1 MiB: chunk 0, chunk 10 and the last one.
SIZE = 64 * MIB + 300_000
REGIONS = [(0, b"head" * 25), (10 * MIB + 5, b"x" * 4096), (SIZE - 3, b"end")]


@pytest.mark.parametrize("fmt", tb.SPARSE_FORMATS)
def test_holes_are_one_zero_chunk_prepared_once(fmt: str, hashed: list[int]) -> None:
    layer = tb.tar_of(tb.sparse_file("sparse", SIZE, REGIONS, sparse_format=fmt), fmt="pax")
    result = pack_layer(io.BytesIO(layer), lambda _: None, PackOptions(chunk_size=MIB, threads=2))
    # Three chunks with data, and the 1 MiB zero chunk once for the 62 chunks of holes.
    assert sorted(hashed) == sorted([MIB, MIB, 300_000, MIB])
    # Stored: the three data chunks and one zero chunk (in-blob dedup, as before).
    assert result.chunk_count == 4


def test_a_sparse_file_under_the_limit_mounts_through_the_kernel(tmp_path: Path, hashed: list[int]) -> None:
    members = [
        tb.sparse_file(f"sparse/{fmt}", SIZE, REGIONS, sparse_format=fmt) for fmt in tb.SPARSE_FORMATS
    ] + [tb.sparse_file("sparse/all-hole", 3 * MIB + 1, [], sparse_format="gnu")]
    tar = write_tar(tmp_path / "layer.tar", members, "pax")
    # One thread: with more, a later batch may claim a chunk first and the earlier one then
    # prepares it again (same bytes, one more count).
    check_against_kernel(tar, tmp_path, PackOptions(chunk_size=MIB, sparse_limit=SIZE, threads=1))
    # Two full data chunks, the same in every file (prepared once: only the first occurrence is
    # compressed, see pipeline/hash_first.py); per size, one zero chunk: 1 MiB and the all-hole
    # tail of 1 byte.
    assert hashed.count(MIB) == 2 + 1
    assert hashed.count(1) == 1
