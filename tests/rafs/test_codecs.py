"""The codec table (rafs/codecs.py): every compressor and digester, found by each of its ids."""

from __future__ import annotations

import os

import pytest

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.rafs import codecs

DATA = b"".join(b"line %05d of a chunk\n" % i for i in range(2000)) + os.urandom(3000)


@pytest.mark.parametrize("name", codecs.COMPRESSOR_NAMES)
def test_compressor_round_trips_and_is_found_by_each_id(name: str) -> None:
    comp = codecs.thread_compressor(name)
    assert comp.name == name
    assert comp.decompress(comp.compress(DATA), len(DATA)) == DATA
    assert codecs.compressor_by_id(comp.algorithm_id).name == name
    assert codecs.compressor_by_toc_flag(comp.toc_flag).name == name
    stored, compressed = codecs.compress_if_smaller(comp, DATA)
    assert compressed == (name != "none")
    assert (comp.decompress(stored, len(DATA)) if compressed else stored) == DATA


@pytest.mark.parametrize("name", codecs.COMPRESSOR_NAMES)
def test_compress_many_gives_the_bytes_compress_gives_each_input(name: str) -> None:
    """The pack pool compresses a batch in one call: the blob must not change for it."""
    comp = codecs.thread_compressor(name)
    inputs = [DATA, DATA[:5000], os.urandom(4096), b"x", DATA[7:] * 3, bytes(65536)]
    assert comp.compress_many(inputs) == [comp.compress(d) for d in inputs]
    assert comp.compress_many(inputs[:1]) == [comp.compress(inputs[0])]
    assert comp.compress_many([]) == []


@pytest.mark.parametrize("name", [n for n in codecs.COMPRESSOR_NAMES if n != "none"])
def test_compressor_refuses_data_of_another_size(name: str) -> None:
    comp = codecs.thread_compressor(name)
    with pytest.raises(FormatError):
        comp.decompress(comp.compress(DATA), len(DATA) - 1)


def test_compressor_ids_and_flags_are_distinct() -> None:
    comps = [codecs.thread_compressor(name) for name in codecs.COMPRESSOR_NAMES]
    for field in ("algorithm_id", "super_flag", "toc_flag"):
        assert len({getattr(c, field) for c in comps}) == len(comps), field


@pytest.mark.parametrize("name", codecs.DIGESTER_NAMES)
def test_digester_is_found_by_its_id(name: str) -> None:
    digester = codecs.digester(name)
    assert codecs.digester_by_id(digester.algorithm_id) is digester
    assert len(digester.digest(DATA)) == 32


def test_unknown_names_and_ids_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown compressor 'brotli'"):
        codecs.thread_compressor("brotli")
    with pytest.raises(ConfigError, match="unknown digester 'md5'"):
        codecs.digester("md5")
    with pytest.raises(FormatError, match="unsupported compression algorithm id 99"):
        codecs.compressor_by_id(99)
    with pytest.raises(FormatError, match="unsupported digest algorithm id 99"):
        codecs.digester_by_id(99)
