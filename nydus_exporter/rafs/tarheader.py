"""The 512-byte GNU tar headers that trail every section of a Nydus blob ([format §3.6]).

A blob is a "reverse tar": each section's bytes come first and the header describing them
follows, so a reader walks the blob backwards from its end. The header bytes are exactly what
the Rust ``tar`` crate writes for ``Header::new_gnu()`` + path + Regular + size + checksum:
every field other than name, size, mtime, checksum, typeflag and magic is NUL.
"""

from __future__ import annotations

from dataclasses import dataclass

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import layout

# Field offsets inside the 512-byte header ([format §3.6]).
_NAME = slice(0, 100)
_SIZE = slice(124, 136)
_MTIME = slice(136, 148)
_CHKSUM = slice(148, 156)
_TYPEFLAG = 156
_MAGIC = slice(257, 265)

_GNU_MAGIC = b"ustar  \x00"  # "ustar" + two spaces + NUL: magic and version of a GNU header
_REGULAR = ord("0")
_ZERO_MTIME = b"00000000000\x00"
_OCTAL_SIZE_LIMIT = 8**11  # 11 octal digits; larger sizes use the GNU base-256 encoding
_BASE256_FLAG = 0x80


@dataclass(frozen=True, slots=True)
class TarHeader:
    """``H(name, size)``: the header describing the ``size`` bytes that precede it."""

    name: bytes
    size: int

    def encode(self) -> bytes:
        return build_header(self.name, self.size)


def build_header(name: bytes, size: int) -> bytes:
    """The byte-exact 512-byte GNU header for section ``name`` of ``size`` bytes ([format §3.6])."""
    if not name or len(name) > 100 or b"\x00" in name:
        raise ValueError(f"invalid tar header name {name!r}")
    if size < 0 or size >= 1 << 88:
        raise ValueError(f"tar header size {size} out of range")
    buf = bytearray(layout.TAR_BLOCK_SIZE)
    buf[_NAME.start : _NAME.start + len(name)] = name
    buf[_SIZE] = _encode_size(size)
    buf[_MTIME] = _ZERO_MTIME
    buf[_TYPEFLAG] = _REGULAR
    buf[_MAGIC] = _GNU_MAGIC
    # The checksum is computed with its own field read as 8 spaces (POSIX), then stored as
    # 7 octal digits + NUL like the Rust tar crate does.
    buf[_CHKSUM] = b" " * 8
    buf[_CHKSUM] = b"%07o\x00" % sum(buf)
    return bytes(buf)


def parse_header(block: bytes) -> TarHeader:
    """Decode and validate one 512-byte header written by :func:`build_header`'s rules.

    Checks the GNU magic (nydusd requires it), the checksum (Go's archive/tar does), the
    typeflag and the size field. Raises :class:`FormatError` naming what is wrong.
    """
    if len(block) != layout.TAR_BLOCK_SIZE:
        raise FormatError(f"tar header must be {layout.TAR_BLOCK_SIZE} bytes, got {len(block)}")
    if block[_MAGIC] != _GNU_MAGIC:
        raise FormatError(f"tar header has no GNU magic (found {bytes(block[_MAGIC])!r})")
    stored = _parse_octal(block[_CHKSUM], "checksum")
    actual = sum(block[: _CHKSUM.start]) + 8 * ord(" ") + sum(block[_CHKSUM.stop :])
    if stored != actual:
        raise FormatError(f"tar header checksum {stored:#o} does not match computed {actual:#o}")
    if block[_TYPEFLAG] not in (_REGULAR, 0):
        raise FormatError(f"tar header typeflag {block[_TYPEFLAG]:#x} is not a regular file")
    name = bytes(block[_NAME]).rstrip(b"\x00")
    if not name or b"\x00" in name:
        raise FormatError(f"tar header has an invalid name {name!r}")
    return TarHeader(name, _decode_size(block[_SIZE]))


def _encode_size(size: int) -> bytes:
    if size < _OCTAL_SIZE_LIMIT:
        return b"%011o\x00" % size
    # GNU base-256: big-endian binary over the whole field with the top bit of byte 0 set.
    out = bytearray(size.to_bytes(12, "big"))
    out[0] |= _BASE256_FLAG
    return bytes(out)


def _decode_size(field: bytes) -> int:
    if field[0] & _BASE256_FLAG:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    return _parse_octal(field, "size")


def _parse_octal(field: bytes, what: str) -> int:
    """An octal number terminated/padded by NUL or space, as tar writes them."""
    digits = bytes(field).strip(b" \x00")
    if not digits or any(c not in b"01234567" for c in digits):
        raise FormatError(f"tar header {what} field {bytes(field)!r} is not an octal number")
    return int(digits, 8)
