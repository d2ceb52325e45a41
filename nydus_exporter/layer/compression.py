"""Transparent decompression of a layer stream: gzip, zstd or plain tar, sniffed from the magic.

:func:`open_layer_stream` peeks at the first bytes of any binary stream (a file, a pipe, a
socket: it may be non-seekable, and no byte is lost) and returns a stream of the
*uncompressed* tar bytes. Everything is streaming: compressed input is read in 1 MiB pieces
and output is produced on demand, so memory stays bounded whatever the layer size. Both zlib
and zstandard release the GIL while they work.

Corruption is reported as :class:`~nydus_exporter.errors.CorruptLayerError` naming the codec:
a bad deflate/zstd block, a CRC/checksum mismatch, a stream that ends inside a gzip member or
a zstd frame, or non-zero bytes after the last gzip member. (nydus itself auto-detects gzip
by ``1F 8B 08``, [format §5.1]; we accept zstd too because OCI layers may be ``+zstd``.)
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import BinaryIO, cast

import zstandard

# ISA-L inflates gzip 3-4x faster than zlib (same API); gzip layers are on every export's
# critical path.
from isal import isal_zlib

from nydus_exporter.errors import CorruptLayerError

# The stub types isal_zlib.error as an instance; at run time it is the IsalError class.
_IsalError = cast(type[Exception], isal_zlib.error)

GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 §2.3.1 ID1 ID2
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878 §3.1.1, 0xFD2FB528 little-endian
_SNIFF_LEN = 4

_READ_SIZE = 1 << 20  # compressed bytes pulled from the source per read
_BUFFER_SIZE = 1 << 20  # decompressed bytes buffered in front of the decoder
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip container only (no raw deflate, no zlib header)


def open_layer_stream(stream: BinaryIO) -> BinaryIO:
    """Return a stream of the uncompressed tar bytes of ``stream`` (gzip, zstd or plain).

    The caller keeps ownership of ``stream`` (closing the result does not close it). Plain
    input is returned unchanged when ``stream`` can ``peek()`` the magic; otherwise the
    sniffed bytes are replayed in front of the rest.
    """
    head, source = _sniff(stream)
    if head.startswith(GZIP_MAGIC):
        return cast(BinaryIO, io.BufferedReader(_GzipDecoder(source), _BUFFER_SIZE))
    if head.startswith(ZSTD_MAGIC):
        return cast(BinaryIO, io.BufferedReader(_ZstdDecoder(source), _BUFFER_SIZE))
    return source


def _sniff(stream: BinaryIO) -> tuple[bytes, BinaryIO]:
    """The first (up to) 4 bytes of ``stream`` and a stream that still starts with them."""
    peek = getattr(stream, "peek", None)
    if peek is not None:
        peeked = bytes(peek(_SNIFF_LEN)[:_SNIFF_LEN])
        if len(peeked) == _SNIFF_LEN:
            return peeked, stream
    # No peek (raw pipe, socket, custom reader) or a short peek: read the prefix ourselves,
    # looping because a pipe may hand out one byte at a time, and replay it.
    head = b""
    while len(head) < _SNIFF_LEN:
        piece = stream.read(_SNIFF_LEN - len(head))
        if not piece:
            break
        head += piece
    replay = io.BufferedReader(_ReplayRaw(head, stream), _BUFFER_SIZE)
    return head, cast(BinaryIO, replay)


def _read_into(stream: BinaryIO, buf: memoryview) -> int:
    """``stream.readinto(buf)`` if the stream has it, else ``read`` + copy."""
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        n = readinto(buf)
        return 0 if n is None else int(n)
    data = stream.read(len(buf))
    buf[: len(data)] = data
    return len(data)


class _ReplayRaw(io.RawIOBase):
    """A raw stream that yields ``prefix`` and then the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        if not len(out):
            return 0
        if self._prefix:
            n = min(len(out), len(self._prefix))
            out[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return _read_into(self._stream, out)


class _GzipDecoder(io.RawIOBase):
    """RFC 1952 gzip decoder over a stream: members back to back, optional zero padding after.

    Output per call is capped at the caller's buffer size (``max_length``), so a
    decompression bomb never materialises more than one buffer.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._decomp: isal_zlib.Decompress | None = isal_zlib.decompressobj(_GZIP_WBITS)
        self._pending = b""  # compressed bytes read but not yet fed to zlib
        self._consumed = 0  # compressed bytes read from the source, for messages
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        if not len(out):
            return 0
        while not self._done:
            data = self._step(len(out))
            if data:
                out[: len(data)] = data
                return len(data)
        return 0

    def _fill(self) -> bool:
        """Read more compressed input into ``_pending``; False at the end of the source."""
        self._pending = self._source.read(_READ_SIZE)
        self._consumed += len(self._pending)
        return bool(self._pending)

    def _step(self, max_length: int) -> bytes:
        """Advance the decoder once: returns output (possibly empty) or sets ``_done``."""
        if self._decomp is None:
            self._next_member()
            return b""
        if not self._pending and not self._fill():
            raise CorruptLayerError(
                f"gzip stream truncated: ends inside a member after {self._consumed} compressed bytes"
            )
        try:
            data = self._decomp.decompress(self._pending, max_length)
        except _IsalError as exc:
            raise CorruptLayerError(
                f"corrupt gzip stream near compressed byte {self._consumed}: {exc}"
            ) from None
        if self._decomp.eof:
            # End of a member (CRC32 and ISIZE already verified by zlib): what follows is
            # another member, zero padding, or the end of the stream.
            self._pending = self._decomp.unused_data
            self._decomp = None
        else:
            self._pending = self._decomp.unconsumed_tail
        return data

    def _next_member(self) -> None:
        if not self._pending and not self._fill():
            self._done = True
            return
        if self._pending[0] == 0:
            self._check_zero_padding()
            self._done = True
            return
        self._decomp = isal_zlib.decompressobj(_GZIP_WBITS)  # a bad magic fails in decompress()

    def _check_zero_padding(self) -> None:
        # Zero padding after the last member is tolerated (as gzip(1) and Python's gzip do);
        # anything else is trailing garbage. Bounded by the source size.
        while True:
            if self._pending.strip(b"\0"):
                raise CorruptLayerError(
                    f"gzip stream has trailing garbage near compressed byte {self._consumed}"
                )
            if not self._fill():
                return


class _ZstdDecoder(io.RawIOBase):
    """zstd decoder (all frames, skippable frames ignored) that also detects truncation.

    The zstandard stream reader reports input that ends inside a frame as a clean EOF, so
    the compressed bytes are also walked by :class:`_ZstdFrameWalker`, which must sit on a
    frame boundary when the input ends.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._walker = _ZstdFrameWalker()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _TeeReader(source, self._walker.feed),  # type: ignore[arg-type]  # only read() is used
            read_size=_READ_SIZE,
            read_across_frames=True,
            closefd=False,
        )

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        if not len(out):
            return 0
        try:
            n = int(self._reader.readinto(out))
        except zstandard.ZstdError as exc:
            raise CorruptLayerError(
                f"corrupt zstd stream near compressed byte {self._walker.consumed}: {exc}"
            ) from None
        if n == 0:
            self._walker.check_complete()
        return n


class _TeeReader:
    """``read()`` from ``source``, showing every piece to ``observe`` on the way."""

    def __init__(self, source: BinaryIO, observe: Callable[[bytes], None]) -> None:
        self._source = source
        self._observe = observe

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._observe(data)
        return data


# Frame walker states (RFC 8878 §3.1): what the next collected header bytes are.
_W_MAGIC = 0  # 4-byte frame magic
_W_SKIPPABLE_SIZE = 1  # 4-byte size of a skippable frame
_W_FRAME_HEADER = 2  # 1-byte Frame_Header_Descriptor
_W_BLOCK_HEADER = 3  # 3-byte block header
_W_BAD = 4  # not a zstd stream any more; the decoder reports the error
_SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
_ZSTD_MAGIC_NUMBER = 0xFD2FB528
_BLOCK_RLE = 1
_BLOCK_RESERVED = 3
_DICT_ID_SIZES = (0, 1, 2, 4)
_FCS_SIZES = (0, 2, 4, 8)  # index = Frame_Content_Size_flag (flag 0 -> 1 byte if single segment)


class _ZstdFrameWalker:
    """Follows frame and block headers over the compressed bytes without decoding them.

    Work is one small step per block (blocks are <= 128 KiB), so it costs next to nothing
    next to the decoder.
    """

    def __init__(self) -> None:
        self._state = _W_MAGIC
        self._need = 4  # header bytes the current state collects
        self._header = bytearray()
        self._skip = 0  # payload bytes to pass over before the next header
        self._has_checksum = False
        self.consumed = 0

    def feed(self, data: bytes) -> None:
        self.consumed += len(data)
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end and self._state != _W_BAD:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._header), end - pos)
            self._header += view[pos : pos + step]
            pos += step
            if len(self._header) == self._need:
                header = bytes(self._header)
                self._header.clear()
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        if self._state == _W_MAGIC:
            if value == _ZSTD_MAGIC_NUMBER:
                self._state, self._need = _W_FRAME_HEADER, 1
            elif value & _SKIPPABLE_MAGIC_MASK == _SKIPPABLE_MAGIC:
                self._state, self._need = _W_SKIPPABLE_SIZE, 4
            else:
                self._state = _W_BAD
        elif self._state == _W_SKIPPABLE_SIZE:
            self._skip = value
            self._state, self._need = _W_MAGIC, 4
        elif self._state == _W_FRAME_HEADER:
            self._start_frame(value)
        else:  # _W_BLOCK_HEADER
            self._start_block(value)

    def _start_frame(self, descriptor: int) -> None:
        # RFC 8878 §3.1.1.1.1 Frame_Header_Descriptor.
        fcs_flag = descriptor >> 6
        single_segment = (descriptor >> 5) & 1
        if descriptor & 0x08:  # reserved bit
            self._state = _W_BAD
            return
        self._has_checksum = bool((descriptor >> 2) & 1)
        fcs_size = _FCS_SIZES[fcs_flag] if fcs_flag or not single_segment else 1
        window_size = 0 if single_segment else 1
        self._skip = window_size + _DICT_ID_SIZES[descriptor & 3] + fcs_size
        self._state, self._need = _W_BLOCK_HEADER, 3

    def _start_block(self, header: int) -> None:
        # RFC 8878 §3.1.1.2 Block_Header: Last_Block(1) Block_Type(2) Block_Size(21).
        last = header & 1
        block_type = (header >> 1) & 3
        if block_type == _BLOCK_RESERVED:
            self._state = _W_BAD
            return
        self._skip = 1 if block_type == _BLOCK_RLE else header >> 3
        if last:
            self._skip += 4 if self._has_checksum else 0
            self._state, self._need = _W_MAGIC, 4

    def check_complete(self) -> None:
        """Raise unless the input ended exactly between frames."""
        if self._state == _W_BAD:
            raise CorruptLayerError(f"corrupt zstd stream near compressed byte {self.consumed}: bad frame")
        if self._state != _W_MAGIC or self._header or self._skip:
            raise CorruptLayerError(
                f"zstd stream truncated: ends inside a frame after {self.consumed} compressed bytes"
            )
