"""Chunk compressors and digesters, registered under their nydus names ([format §4.1]).

Compressor and digester objects are cheap; zstd contexts are not thread-safe, so every
thread gets its own through :func:`thread_compressor`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import blake3
import google_crc32c
import lz4.block
import zstandard

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.rafs import layout

ZSTD_LEVEL = 3  # what nydus-image uses (zstd::bulk::compress level 3)


class Compressor(Protocol):
    name: str
    algorithm_id: int  # id in the blob table and ci header
    super_flag: int  # RafsSuperFlags bit
    toc_flag: int  # ToC entry flag

    def compress(self, data: bytes) -> bytes: ...

    def compress_many(self, datas: list[bytes]) -> list[bytes]:
        """``[compress(d) for d in datas]``, the same bytes, in as few native calls as it can."""
        ...

    def decompress(self, data: bytes, uncompressed_size: int) -> bytes: ...


class _NoneCompressor:
    name = "none"
    algorithm_id = layout.COMPRESSOR_ID_NONE
    super_flag = layout.RAFS_COMPRESSION_NONE
    toc_flag = layout.TOC_FLAG_NONE

    def compress(self, data: bytes) -> bytes:
        return data

    def compress_many(self, datas: list[bytes]) -> list[bytes]:
        return list(datas)

    def decompress(self, data: bytes, uncompressed_size: int) -> bytes:
        return data


class _ZstdCompressor:
    name = "zstd"
    algorithm_id = layout.COMPRESSOR_ID_ZSTD
    super_flag = layout.RAFS_COMPRESSION_ZSTD
    toc_flag = layout.TOC_FLAG_ZSTD

    def __init__(self) -> None:
        # One standard frame with the content size and no checksum, like zstd::bulk::compress.
        self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        self._d = zstandard.ZstdDecompressor()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def compress_many(self, datas: list[bytes]) -> list[bytes]:
        # One call for the whole batch: the GIL is released once, not once per chunk (a
        # layer is mostly small files, and a pack thread that must win the GIL back after
        # every small chunk spends more time waiting than compressing). Same frames as
        # compress(): the same parameters, one frame per input.
        if len(datas) < 2:
            return [self._c.compress(d) for d in datas]
        inputs = cast(list[bytes | bytearray | memoryview], datas)
        frames = self._c.multi_compress_to_buffer(inputs, threads=1)
        return [frames[i].tobytes() for i in range(len(frames))]

    def decompress(self, data: bytes, uncompressed_size: int) -> bytes:
        try:
            # A frame that declares its size is decompressed into a buffer of that size: refuse
            # a declared size other than the expected one before anything is allocated.
            declared = zstandard.frame_content_size(data)
            if declared not in (uncompressed_size, -1):
                raise FormatError(f"zstd frame declares {declared} bytes, expected {uncompressed_size}")
            out = self._d.decompress(data, max_output_size=uncompressed_size)
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd data does not decompress: {exc}") from None
        if len(out) != uncompressed_size:
            raise FormatError(f"zstd data decompressed to {len(out)} bytes, expected {uncompressed_size}")
        return out


@functools.cache
def _liblz4() -> ctypes.CDLL:
    """The system liblz4 (Debian ``liblz4-1``), for ``LZ4_compress_default`` itself.

    nydus-image compresses with ``LZ4_compress_default``; python-lz4's ``block.compress``
    (any mode or acceleration) produces different bytes for many inputs (a third of
    text-like chunks, and chunk-info tables), so blobs would not be byte-identical to the
    real toolchain's. Decompression is format-defined and stays with python-lz4.
    """
    name = ctypes.util.find_library("lz4") or "liblz4.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise ConfigError(f"lz4_block needs liblz4 (apt-get install liblz4-1): {exc}") from None
    lib.LZ4_compressBound.argtypes = [ctypes.c_int]
    lib.LZ4_compressBound.restype = ctypes.c_int
    lib.LZ4_compress_default.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.LZ4_compress_default.restype = ctypes.c_int
    return lib


class _Lz4BlockCompressor:
    name = "lz4_block"
    algorithm_id = layout.COMPRESSOR_ID_LZ4_BLOCK
    super_flag = layout.RAFS_COMPRESSION_LZ4
    toc_flag = layout.TOC_FLAG_LZ4_BLOCK

    def compress(self, data: bytes) -> bytes:
        # A raw LZ4 block from LZ4_compress_default: no frame, no size prefix. (ctypes
        # releases the GIL for the call, so packing threads compress in parallel.)
        lib = _liblz4()
        bound = lib.LZ4_compressBound(len(data))
        if len(data) > 0x7E000000 or bound <= 0:
            raise ValueError(f"{len(data)} bytes are too many for one LZ4 block")
        dst = ctypes.create_string_buffer(bound)
        size = lib.LZ4_compress_default(data, dst, len(data), bound)
        if size <= 0:
            raise RuntimeError(f"LZ4_compress_default failed ({size})")
        return ctypes.string_at(dst, size)

    def compress_many(self, datas: list[bytes]) -> list[bytes]:
        return [self.compress(d) for d in datas]

    def decompress(self, data: bytes, uncompressed_size: int) -> bytes:
        try:
            out: bytes = lz4.block.decompress(data, uncompressed_size=uncompressed_size)
        except lz4.block.LZ4BlockError as exc:
            raise FormatError(f"lz4 block does not decompress: {exc}") from None
        if len(out) != uncompressed_size:
            raise FormatError(f"lz4 block decompressed to {len(out)} bytes, expected {uncompressed_size}")
        return out


_COMPRESSORS: dict[str, Callable[[], Compressor]] = {
    "none": _NoneCompressor,
    "zstd": _ZstdCompressor,
    "lz4_block": _Lz4BlockCompressor,
}
_COMPRESSOR_NAMES_BY_ID = {
    layout.COMPRESSOR_ID_NONE: "none",
    layout.COMPRESSOR_ID_LZ4_BLOCK: "lz4_block",
    layout.COMPRESSOR_ID_ZSTD: "zstd",
}
_COMPRESSOR_NAMES_BY_TOC_FLAG = {
    layout.TOC_FLAG_NONE: "none",
    layout.TOC_FLAG_ZSTD: "zstd",
    layout.TOC_FLAG_LZ4_BLOCK: "lz4_block",
}
COMPRESSOR_NAMES = tuple(_COMPRESSORS)

_local = threading.local()


def thread_compressor(name: str) -> Compressor:
    """The calling thread's instance of compressor ``name``."""
    cache: dict[str, Compressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(name)
    if comp is None:
        try:
            comp = cache[name] = _COMPRESSORS[name]()
        except KeyError:
            choices = ", ".join(_COMPRESSORS)
            raise ConfigError(f"unknown compressor {name!r} (choose from {choices})") from None
    return comp


def compressor_by_id(algorithm_id: int) -> Compressor:
    """Compressor for a blob-table / ci-header algorithm id."""
    try:
        return thread_compressor(_COMPRESSOR_NAMES_BY_ID[algorithm_id])
    except KeyError:
        raise FormatError(f"unsupported compression algorithm id {algorithm_id}") from None


def compressor_by_toc_flag(flags: int) -> Compressor:
    """Compressor for a ToC entry's flags."""
    try:
        return thread_compressor(_COMPRESSOR_NAMES_BY_TOC_FLAG[flags & layout.TOC_FLAG_COMPRESSION_MASK])
    except KeyError:
        raise FormatError(f"unsupported ToC compression flags {flags:#x}") from None


def compress_if_smaller(comp: Compressor, data: bytes) -> tuple[bytes, bool]:
    """``(stored bytes, compressed?)``: raw bytes when compression does not shrink them ([format §3.2])."""
    return compress_many_if_smaller(comp, [data])[0]


def compress_many_if_smaller(comp: Compressor, datas: list[bytes]) -> list[tuple[bytes, bool]]:
    """:func:`compress_if_smaller` of each of ``datas``, compressed in one batch
    (:meth:`Compressor.compress_many`)."""
    if comp.algorithm_id == layout.COMPRESSOR_ID_NONE:
        return [(data, False) for data in datas]
    return [
        (out, True) if len(out) < len(data) else (data, False)
        for data, out in zip(datas, comp.compress_many(datas), strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Digester:
    name: str
    algorithm_id: int
    super_flag: int
    digest: Callable[[bytes], bytes]


def _blake3(data: bytes) -> bytes:
    # max_threads=1: callers already parallelise across chunks.
    return blake3.blake3(data).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_DIGESTERS = {
    "blake3": Digester("blake3", layout.DIGESTER_ID_BLAKE3, layout.RAFS_HASH_BLAKE3, _blake3),
    "sha256": Digester("sha256", layout.DIGESTER_ID_SHA256, layout.RAFS_HASH_SHA256, _sha256),
}
DIGESTER_NAMES = tuple(_DIGESTERS)


def digester(name: str) -> Digester:
    try:
        return _DIGESTERS[name]
    except KeyError:
        raise ConfigError(f"unknown digester {name!r} (choose from {', '.join(_DIGESTERS)})") from None


def digester_by_id(algorithm_id: int) -> Digester:
    for d in _DIGESTERS.values():
        if d.algorithm_id == algorithm_id:
            return d
    raise FormatError(f"unsupported digest algorithm id {algorithm_id}")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli / iSCSI) of ``data``, as in the chunk table ([format §2.14])."""
    return int(google_crc32c.value(data))


def check_chunk_size(chunk_size: int) -> int:
    """Validate a chunk size option: a power of two in [4 KiB, 16 MiB]."""
    if (
        chunk_size < layout.MIN_CHUNK_SIZE
        or chunk_size > layout.MAX_CHUNK_SIZE
        or chunk_size & (chunk_size - 1)
    ):
        raise ConfigError(f"chunk size {chunk_size:#x} is not a power of two between 4 KiB and 16 MiB")
    return chunk_size
