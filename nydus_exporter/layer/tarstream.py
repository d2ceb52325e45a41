"""Streaming reader of layer tar archives: one :class:`LayerEntry` per filesystem entry.

Our own header parser (not :mod:`tarfile`): PAX values stay exact bytes, sparse files are
expanded on the fly from a non-seekable stream, and file data is read straight from the
stream with no per-entry buffering. Nothing larger than one extended header (capped at
:data:`MAX_EXTENDED_HEADER`) or one ``data.read(n)`` result is ever held in memory.

What is understood (POSIX.1-2001 ustar/pax, GNU tar formats):

* typeflags ``0``/NUL/``7`` (regular; V7 NUL with a trailing ``/`` is a directory), ``1``
  hardlink, ``2`` symlink, ``3``/``4`` char/block device, ``5`` directory, ``6`` fifo;
  ``x``/``X`` PAX local headers, ``g`` PAX global headers, ``L``/``K`` GNU long name/link,
  ``S`` old GNU sparse (incl. extended sparse headers). Any other typeflag raises
  :class:`UnsupportedEntryError`.
* PAX keywords ``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``mtime`` (sub-second,
  may be negative), ``SCHILY.xattr.<name>`` (raw value bytes), ``LIBARCHIVE.xattr.<url-encoded
  name>`` (base64 value; padding optional, as libarchive writes it), ``SCHILY.devmajor`` /
  ``SCHILY.devminor``, and the GNU sparse keywords of formats 0.0, 0.1 and 1.0. When both
  xattr spellings name the same attribute, the ``SCHILY`` value wins (it is the one nydus
  reads, [format §5.1]). A record with an empty value deletes a standard keyword (POSIX), except
  for xattrs, where an empty value is a legitimate empty attribute.
* PAX global headers (``g``): per POSIX their ``uid``, ``gid``, ``mtime`` and xattr records
  apply to every following entry unless overridden; ``path``, ``linkpath``, ``size`` and
  sparse records in a global header are ignored (a global name or size is meaningless for
  a layer and would collapse all entries into one).
* Numeric header fields: octal (NUL/space terminated) or GNU base-256 (sizes > 8 GiB,
  ids > 2097151, negative mtimes).

Rules ([format §5.1], [pitfalls §4]):

* Paths are made absolute and normalised by :func:`normalize_path`; ``..`` climbing above
  the root, a bare ``.wh.`` component, NUL bytes and empty names raise
  :class:`UnsafePathError`, and so does an entry for the root (``/``, ``./``) that is not a
  directory. A name of :data:`PATH_MAX` bytes or more raises :class:`EntryLimitError`
  before it is split: no extraction could pass it to the kernel, and its implied
  directories would cost memory far beyond its size. Hardlink targets are normalised the
  same way (they resolve from the archive root); symlink targets are kept verbatim.
* ``/stargz.index.json``, ``/.prefetch.landmark`` and ``/.no.prefetch.landmark`` are skipped,
  as nydus does.
* The size field always counts the data bytes that follow a header, whatever the type (as
  tar-rs and GNU tar read it); data of non-regular entries is skipped.
* End of archive: two zero blocks, or one zero block followed by the end of the stream (or
  by a partial all-zero block). The rest of the stream is then read and discarded, so a
  writer on the other end of a pipe never stalls. A zero-length stream is an empty layer. A
  stream that ends at a header boundary without a zero block, or a lone zero block followed
  by a non-zero block, is :class:`CorruptLayerError` (it would otherwise silently drop
  entries). Concatenated archives are not supported (data after the end is ignored).
* Truncation, bad checksums, invalid numeric fields and malformed PAX records raise
  :class:`CorruptLayerError` with the stream offset and the path when known.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from nydus_exporter.errors import CorruptLayerError, EntryLimitError, UnsafePathError, UnsupportedEntryError
from nydus_exporter.layer.entry import EntryKind, LayerEntry

BLOCK_SIZE = 512
ZERO_BLOCK = bytes(BLOCK_SIZE)
MAX_EXTENDED_HEADER = 16 << 20  # PAX / GNU long-name payloads larger than this are refused
MAX_SPARSE_SEGMENTS = 1 << 18  # bounds the memory of one sparse map
# Linux's PATH_MAX, with its terminating NUL: entry names and hardlink targets must be
# shorter. It also bounds the depth of one path to 2048 directories, so a small tar cannot
# imply millions of them (each one a tree node).
PATH_MAX = 4096
SHOWN_NAME_BYTES = 200  # names quoted in errors are cut to this
SKIPPED_PATHS = frozenset({b"/stargz.index.json", b"/.prefetch.landmark", b"/.no.prefetch.landmark"})

_STREAM_BUFFER = 1 << 20
_SKIP_CHUNK = 1 << 20
_MAX_DECIMAL_DIGITS = 30  # PAX numbers: far beyond any real value, keeps int() cheap

# ustar header fields (POSIX.1-1988 ustar; GNU additions for the old sparse format).
_NAME = slice(0, 100)
_MODE = slice(100, 108)
_UID = slice(108, 116)
_GID = slice(116, 124)
_SIZE = slice(124, 136)
_MTIME = slice(136, 148)
_CHKSUM = slice(148, 156)
_TYPEFLAG = 156
_LINKNAME = slice(157, 257)
_MAGIC = slice(257, 263)
_DEVMAJOR = slice(329, 337)
_DEVMINOR = slice(337, 345)
_PREFIX = slice(345, 500)
_GNU_SPARSE = 386  # 4 x (offset[12], numbytes[12])
_GNU_ISEXTENDED = 482
_GNU_REALSIZE = slice(483, 495)
_GNU_SPARSE_IN_HEADER = 4
_GNU_SPARSE_IN_EXTENSION = 21  # per 512-byte extended sparse header; isextended at 504
_GNU_EXT_ISEXTENDED = 504
_SPARSE_ENTRY = 24
_USTAR_MAGIC = b"ustar\x00"  # POSIX; the GNU magic "ustar  \0" has no prefix field
_CHKSUM_BLANK = 8 * ord(" ")

_KINDS = {
    b"0": EntryKind.REGULAR,
    b"\x00": EntryKind.REGULAR,
    b"7": EntryKind.REGULAR,  # contiguous file: a regular file on every modern system
    b"S": EntryKind.REGULAR,  # old GNU sparse
    b"1": EntryKind.HARDLINK,
    b"2": EntryKind.SYMLINK,
    b"3": EntryKind.CHAR_DEVICE,
    b"4": EntryKind.BLOCK_DEVICE,
    b"5": EntryKind.DIRECTORY,
    b"6": EntryKind.FIFO,
}
_PAX_LOCAL = (b"x", b"X")  # "X": the pre-POSIX Solaris spelling
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"

_SCHILY_XATTR = b"SCHILY.xattr."
_LIBARCHIVE_XATTR = b"LIBARCHIVE.xattr."
_STANDARD_KEYS = (b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime")
_GLOBAL_KEYS = (b"uid", b"gid", b"mtime")
_PAX_MTIME = re.compile(rb"(-?)([0-9]{1,20})(?:\.([0-9]{0,1000}))?")
_NSEC_DIGITS = 9


def normalize_path(raw: bytes, what: str = "path") -> bytes:
    """Absolute, normalised form of a tar path: ``./a//b/`` -> ``/a/b``, ``./`` -> ``/``.

    ``..`` is resolved lexically; climbing above the root, a bare ``.wh.`` component
    (image-spec PR 1314), a NUL byte or an empty name raises :class:`UnsafePathError`.
    """
    if not raw:
        raise UnsafePathError(f"empty {what}")
    if len(raw) >= PATH_MAX:
        raise EntryLimitError(
            f"{what} {show_name(raw)} is {len(raw)} bytes long;"
            f" paths must be shorter than PATH_MAX ({PATH_MAX})"
        )
    if b"\x00" in raw:
        raise UnsafePathError(f"NUL byte in {what} {show_name(raw)}")
    parts: list[bytes] = []
    for component in raw.split(b"/"):
        if component in (b"", b"."):
            continue
        if component == b"..":
            if not parts:
                raise UnsafePathError(f"{what} {show_name(raw)} escapes the root")
            parts.pop()
        elif component == b".wh.":
            raise UnsafePathError(f"{what} {show_name(raw)} has a bare whiteout component '.wh.'")
        else:
            parts.append(component)
    return b"/" + b"/".join(parts)


def iter_entries(stream: BinaryIO) -> Iterator[LayerEntry]:
    """Yield the entries of the tar archive read from ``stream`` (uncompressed; see
    :func:`nydus_exporter.layer.compression.open_layer_stream`), in stream order.

    A regular entry's ``data`` is valid until the next entry is requested; whatever the
    consumer leaves unread is skipped then.
    """
    return _TarReader(stream).entries()


def show_name(raw: bytes) -> str:
    """A name for an error message: quoted, and cut short (a PAX name may be megabytes)."""
    if len(raw) > SHOWN_NAME_BYTES:
        return repr(raw[:SHOWN_NAME_BYTES].decode("utf-8", "backslashreplace") + "…")
    return repr(raw.decode("utf-8", "backslashreplace"))


# --------------------------------------------------------------------------------------------
# Byte source


class _RawAdapter(io.RawIOBase):
    """Raw-stream face of any readable object, so it can sit under an io.BufferedReader."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._readinto is not None:
            n = self._readinto(b)
            return 0 if n is None else int(n)
        data = self._stream.read(len(b))
        memoryview(b).cast("B")[: len(data)] = data
        return len(data)


class _Source:
    """The tar byte stream with its offset; ``read`` returns short only at the end of input.

    Buffered readers and BytesIO already loop until ``n`` bytes or EOF, in C; anything else
    (raw pipes, sockets, custom objects) is put under an ``io.BufferedReader``. Large reads
    bypass the buffer and land directly in the result.
    """

    def __init__(self, stream: BinaryIO) -> None:
        if isinstance(stream, io.BufferedReader | io.BufferedRandom | io.BytesIO):
            self._f: BinaryIO = stream
        else:
            self._f = cast(BinaryIO, io.BufferedReader(_RawAdapter(stream), _STREAM_BUFFER))
        self.offset = 0
        self._scratch: bytearray | None = None

    def read(self, n: int) -> bytes:
        data = self._f.read(n)
        self.offset += len(data)
        return data

    def readinto(self, buf: memoryview) -> int:
        n = int(self._f.readinto(buf))  # type: ignore[attr-defined]
        self.offset += n
        return n

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise CorruptLayerError(f"tar truncated at offset {self.offset}: {what} is incomplete")
        return data

    def skip(self, n: int, what: str) -> None:
        while n > 0:
            got = self._discard(min(n, _SKIP_CHUNK))
            if not got:
                raise CorruptLayerError(f"tar truncated at offset {self.offset}: {what} is incomplete")
            n -= got

    def drain(self) -> None:
        """Read and discard everything up to the end of the stream."""
        while self._discard(_SKIP_CHUNK):
            pass

    def _discard(self, n: int) -> int:
        if self._scratch is None:
            self._scratch = bytearray(_SKIP_CHUNK)
        return self.readinto(memoryview(self._scratch)[:n])


# --------------------------------------------------------------------------------------------
# Header parsing


@dataclass(slots=True)
class _Header:
    """One parsed 512-byte header block."""

    offset: int
    block: bytes
    typeflag: bytes
    name: bytes  # with the ustar prefix applied
    linkname: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int

    def number(self, field_slice: slice, what: str) -> int:
        return _parse_number(self.block[field_slice], what, self.offset)


def _parse_header(block: bytes, offset: int) -> _Header:
    _verify_checksum(block, offset)
    name = _cstring(block[_NAME])
    if block[_MAGIC] == _USTAR_MAGIC:
        prefix = _cstring(block[_PREFIX])
        if prefix:
            name = prefix + b"/" + name
    size = _parse_number(block[_SIZE], "size", offset)
    if size < 0:
        raise CorruptLayerError(f"tar header at offset {offset} has a negative size")
    return _Header(
        offset=offset,
        block=block,
        typeflag=block[_TYPEFLAG : _TYPEFLAG + 1],
        name=name,
        linkname=_cstring(block[_LINKNAME]),
        mode=_parse_number(block[_MODE], "mode", offset),
        uid=_parse_number(block[_UID], "uid", offset),
        gid=_parse_number(block[_GID], "gid", offset),
        size=size,
        mtime=_parse_number(block[_MTIME], "mtime", offset),
    )


def _cstring(raw: bytes) -> bytes:
    end = raw.find(b"\x00")
    return raw if end < 0 else raw[:end]


def _verify_checksum(block: bytes, offset: int) -> None:
    field_bytes = block[_CHKSUM]
    stored = _parse_octal(field_bytes, "checksum", offset)
    unsigned = sum(block) - sum(field_bytes) + _CHKSUM_BLANK
    if stored == unsigned:
        return
    # Some historic writers summed signed chars.
    high = sum(1 for b in block if b >= 0x80) - sum(1 for b in field_bytes if b >= 0x80)
    signed = unsigned - 256 * high
    if stored != signed:
        raise CorruptLayerError(
            f"tar header at offset {offset} has a bad checksum (stored {stored}, computed {unsigned})"
        )


def _parse_number(raw: bytes, what: str, offset: int) -> int:
    """A numeric header field: GNU base-256 if the high bit is set, else octal."""
    if raw and raw[0] & 0x80:
        # Base-256, two's complement: bit 0x80 of the first byte is the marker, bit 0x40
        # the sign (so 0x80... is positive and 0xFF... negative, as GNU tar writes them).
        value = int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
        if raw[0] & 0x40:
            value -= 1 << (8 * len(raw) - 1)
        return value
    return _parse_octal(raw, what, offset)


def _parse_octal(raw: bytes, what: str, offset: int) -> int:
    digits = _cstring(raw).strip(b" ")
    if not digits:
        return 0
    if digits.strip(b"01234567"):
        raise CorruptLayerError(f"tar header at offset {offset}: invalid {what} field {raw!r}")
    return int(digits, 8)


# --------------------------------------------------------------------------------------------
# PAX extended headers


def parse_pax_records(data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
    """Split a PAX extended header payload into (keyword, value) records, in order.

    Records are ``"<len> <keyword>=<value>\\n"``; they are cut by their length prefix, so
    values may contain newlines, ``=`` and NUL bytes. Trailing NUL padding is tolerated.
    """
    records: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if not data[pos:].strip(b"\x00"):
            break
        space = data.find(b" ", pos, min(end, pos + _MAX_DECIMAL_DIGITS + 1))
        length_field = data[pos:space] if space > pos else b""
        if not length_field.isdigit():
            raise CorruptLayerError(f"PAX header at offset {offset}: bad record length at byte {pos}")
        record_end = pos + int(length_field)
        if record_end > end or record_end <= space + 1 or data[record_end - 1] != 0x0A:
            raise CorruptLayerError(f"PAX header at offset {offset}: record at byte {pos} has a bad length")
        record = data[space + 1 : record_end - 1]
        eq = record.find(b"=")
        if eq <= 0:
            raise CorruptLayerError(f"PAX header at offset {offset}: record at byte {pos} has no keyword")
        records.append((record[:eq], record[eq + 1 :]))
        pos = record_end
    return records


def _pax_uint(value: bytes, key: bytes, where: str) -> int:
    if not value.isdigit() or len(value) > _MAX_DECIMAL_DIGITS:
        keyword = key.decode("ascii", "replace")
        raise CorruptLayerError(f"{where}: PAX record {keyword}={value!r} is not a number")
    return int(value)


def _pax_mtime(value: bytes, where: str) -> tuple[int, int]:
    """``"1700000000.123456789"`` -> (1700000000, 123456789); rounds toward -infinity, so
    ``"-1.5"`` -> (-2, 500000000): seconds + nsec/1e9 is the recorded time."""
    match = _PAX_MTIME.fullmatch(value)
    if match is None:
        raise CorruptLayerError(f"{where}: PAX mtime {value!r} is not a decimal time")
    negative, whole, fraction = match.group(1), match.group(2), match.group(3) or b""
    nanos = int(whole) * 10**_NSEC_DIGITS + int(fraction[:_NSEC_DIGITS].ljust(_NSEC_DIGITS, b"0"))
    if negative:
        # Digits beyond nanoseconds are truncated toward -infinity.
        nanos = -nanos - (1 if fraction[_NSEC_DIGITS:].strip(b"0") else 0)
    seconds, nsec = divmod(nanos, 10**_NSEC_DIGITS)
    return seconds, nsec


@dataclass(slots=True)
class _Extensions:
    """Metadata collected from the extended headers that precede one entry."""

    pax: list[tuple[bytes, bytes]] = field(default_factory=list)
    long_name: bytes | None = None
    long_link: bytes | None = None
    first_offset: int = -1

    def empty(self) -> bool:
        return not self.pax and self.long_name is None and self.long_link is None

    def note(self, offset: int) -> None:
        if self.first_offset < 0:
            self.first_offset = offset


def _effective_pax(ext: _Extensions, global_pax: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Global records overlaid with local ones (last one wins); empty standard values delete."""
    merged = dict(global_pax)
    merged.update(ext.pax)
    for key in _STANDARD_KEYS:
        if merged.get(key) == b"":
            del merged[key]
    return merged


def _update_globals(global_pax: dict[bytes, bytes], records: list[tuple[bytes, bytes]]) -> None:
    for key, value in records:
        if key in _GLOBAL_KEYS:
            if value:
                global_pax[key] = value
            else:
                global_pax.pop(key, None)
        elif key.startswith((_SCHILY_XATTR, _LIBARCHIVE_XATTR)):
            global_pax[key] = value


def _xattrs(pax: dict[bytes, bytes], where: str) -> dict[bytes, bytes]:
    xattrs: dict[bytes, bytes] = {}
    # LIBARCHIVE first, so that the SCHILY spelling (what nydus reads) wins a conflict.
    for key, value in pax.items():
        if key.startswith(_LIBARCHIVE_XATTR):
            name = urllib.parse.unquote_to_bytes(key[len(_LIBARCHIVE_XATTR) :])
            xattrs[_xattr_name(name, where)] = _base64(value, where)
    for key, value in pax.items():
        if key.startswith(_SCHILY_XATTR):
            xattrs[_xattr_name(key[len(_SCHILY_XATTR) :], where)] = value
    return xattrs


def _xattr_name(name: bytes, where: str) -> bytes:
    if not name or b"\x00" in name:
        raise CorruptLayerError(f"{where}: invalid xattr name {name!r}")
    return name


def _base64(value: bytes, where: str) -> bytes:
    # libarchive writes base64 without '=' padding; restore it before strict decoding.
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CorruptLayerError(f"{where}: LIBARCHIVE.xattr value {value!r} is not base64") from None


# --------------------------------------------------------------------------------------------
# Sparse files


@dataclass(slots=True)
class _Layout:
    """Where an entry's bytes are: ``segments`` are (offset, length) data runs of a file of
    ``real_size`` bytes (holes read as zeros), stored back to back in ``stored_size`` bytes."""

    segments: list[tuple[int, int]]
    real_size: int
    sparse: bool = True  # declared sparse in the tar (it may have holes)

    @classmethod
    def contiguous(cls, size: int) -> _Layout:
        return cls([(0, size)] if size else [], size, sparse=False)


def _validated_layout(pairs: Sequence[tuple[int, int]], real_size: int, stored: int, where: str) -> _Layout:
    position = 0
    total = 0
    for start, length in pairs:
        if start < position or start + length > real_size:
            raise CorruptLayerError(
                f"{where}: sparse map entry ({start}, {length}) is out of order or out of range"
            )
        position = start + length
        total += length
    if total != stored:
        raise CorruptLayerError(f"{where}: sparse map covers {total} bytes but {stored} are stored")
    return _Layout([p for p in pairs if p[1]], real_size)


def _check_segment_count(count: int, where: str) -> None:
    if count > MAX_SPARSE_SEGMENTS:
        raise UnsupportedEntryError(f"{where}: sparse map has more than {MAX_SPARSE_SEGMENTS} entries")


def _gnu_sparse_pairs(raw: bytes, count: int, offset: int) -> tuple[list[tuple[int, int]], bool]:
    """Entries of an old GNU sparse array; the bool says an empty slot ended the list."""
    pairs: list[tuple[int, int]] = []
    for i in range(count):
        entry = raw[i * _SPARSE_ENTRY : (i + 1) * _SPARSE_ENTRY]
        if entry[0] == 0:
            return pairs, True
        start = _parse_number(entry[:12], "sparse offset", offset)
        length = _parse_number(entry[12:], "sparse numbytes", offset)
        if start < 0 or length < 0:
            raise CorruptLayerError(f"tar header at offset {offset}: negative sparse map entry")
        pairs.append((start, length))
    return pairs, False


def _read_old_gnu_sparse(header: _Header, stored: int, source: _Source, where: str) -> _Layout:
    """Old GNU 'S' entry: 4 map entries in the header, more in extended sparse headers."""
    block = header.block
    area = block[_GNU_SPARSE : _GNU_SPARSE + _GNU_SPARSE_IN_HEADER * _SPARSE_ENTRY]
    pairs, _ = _gnu_sparse_pairs(area, _GNU_SPARSE_IN_HEADER, header.offset)
    extended = block[_GNU_ISEXTENDED] != 0
    while extended:
        ext_offset = source.offset
        ext = source.read_exact(BLOCK_SIZE, f"extended sparse header of {where}")
        more, _ = _gnu_sparse_pairs(ext, _GNU_SPARSE_IN_EXTENSION, ext_offset)
        pairs.extend(more)
        _check_segment_count(len(pairs), where)
        extended = ext[_GNU_EXT_ISEXTENDED] != 0
    real_size = header.number(_GNU_REALSIZE, "sparse realsize")
    return _validated_layout(pairs, real_size, stored, where)


def _pax_sparse_pairs(
    pax: dict[bytes, bytes], records: list[tuple[bytes, bytes]], where: str
) -> list[tuple[int, int]]:
    """GNU sparse 0.1 (``GNU.sparse.map``) or 0.0 (repeated offset/numbytes records)."""
    if b"GNU.sparse.map" in pax:
        numbers = pax[b"GNU.sparse.map"].split(b",") if pax[b"GNU.sparse.map"] else []
        if len(numbers) % 2:
            raise CorruptLayerError(f"{where}: GNU.sparse.map has an odd number of values")
        values = [_pax_uint(v, b"GNU.sparse.map", where) for v in numbers]
        pairs = list(zip(values[0::2], values[1::2], strict=True))
    else:
        starts = [_pax_uint(v, k, where) for k, v in records if k == b"GNU.sparse.offset"]
        lengths = [_pax_uint(v, k, where) for k, v in records if k == b"GNU.sparse.numbytes"]
        if len(starts) != len(lengths):
            raise CorruptLayerError(f"{where}: GNU.sparse.offset/numbytes records do not pair up")
        pairs = list(zip(starts, lengths, strict=True))
    numblocks = pax.get(b"GNU.sparse.numblocks")
    if numblocks is not None and _pax_uint(numblocks, b"GNU.sparse.numblocks", where) != len(pairs):
        raise CorruptLayerError(f"{where}: GNU.sparse.numblocks does not match the sparse map")
    _check_segment_count(len(pairs), where)
    return pairs


def _read_sparse_1_0_map(source: _Source, stored: int, where: str) -> tuple[list[tuple[int, int]], int]:
    """GNU sparse 1.0: the map is decimal lines at the start of the data, padded to a block.

    Returns the pairs and the number of bytes the map occupied.
    """
    text = b""
    used = 0
    numbers: list[int] = []
    wanted = -1  # 1 + 2 * count once the count is known
    while wanted < 0 or len(numbers) < wanted:
        if used + BLOCK_SIZE > stored:
            raise CorruptLayerError(f"{where}: GNU sparse 1.0 map runs past the stored data")
        text += source.read_exact(BLOCK_SIZE, f"sparse map of {where}")
        used += BLOCK_SIZE
        *lines, text = text.split(b"\n")
        for line in lines:
            if wanted < 0 or len(numbers) < wanted:
                numbers.append(_pax_uint(line, b"sparse map", where))
            if len(numbers) == 1 and wanted < 0:
                _check_segment_count(numbers[0], where)
                wanted = 1 + 2 * numbers[0]
        if (wanted < 0 or len(numbers) < wanted) and len(text) > _MAX_DECIMAL_DIGITS:
            raise CorruptLayerError(f"{where}: GNU sparse 1.0 map has an overlong number")
    values = numbers[1:]
    return list(zip(values[0::2], values[1::2], strict=True)), used


# --------------------------------------------------------------------------------------------
# Entry data


class _EntryData(io.BufferedIOBase):
    """Read-only view of one entry's content: exactly ``size`` bytes, holes as zeros.

    Closed (and its unread remainder skipped by the reader) when the next entry is requested.
    """

    def __init__(self, source: _Source, layout: _Layout, where: str) -> None:
        super().__init__()
        self._source = source
        self._segments = layout.segments
        self._size = layout.real_size
        self._where = where
        self._pos = 0  # logical position in the file
        self._seg = 0  # index of the first segment that ends after _pos

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        remaining = self._size - self._pos
        want = remaining if size is None or size < 0 else min(size, remaining)
        pieces: list[bytes] = []
        while want > 0:
            piece = self._read_piece(want)
            pieces.append(piece)
            want -= len(piece)
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    read1 = read

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check_open()
        out = memoryview(b).cast("B")
        want = min(len(out), self._size - self._pos)
        done = 0
        while done < want:
            hole, data = self._next_run(want - done)
            if hole:
                out[done : done + hole] = bytes(hole)
                done += hole
            else:
                got = self._source.readinto(out[done : done + data])
                if got != data:
                    raise self._truncated()
                done += data
            self._pos += hole or data
        return done

    def readinto1(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self.readinto(b)

    def _read_piece(self, limit: int) -> bytes:
        hole, data = self._next_run(limit)
        if hole:
            self._pos += hole
            return bytes(hole)  # zero-filled; never larger than one read request
        piece = self._source.read(data)
        if len(piece) != data:
            raise self._truncated()
        self._pos += data
        return piece

    def skip_hole(self, size: int) -> None:
        """Pass over ``size`` bytes of hole without materialising them (see ``HoleSkipping``)."""
        self._check_open()
        while size > 0:
            hole, _ = self._next_run(size)
            if not hole:
                raise ValueError(f"data of {self._where}: no hole of {size} bytes at {self._pos}")
            self._pos += hole
            size -= hole

    def _next_run(self, limit: int) -> tuple[int, int]:
        """(hole bytes, 0) or (0, stored bytes) available at ``_pos``, at most ``limit``."""
        while self._seg < len(self._segments):
            start, length = self._segments[self._seg]
            if self._pos < start:
                return min(limit, start - self._pos), 0
            if self._pos < start + length:
                return 0, min(limit, start + length - self._pos)
            self._seg += 1
        return min(limit, self._size - self._pos), 0

    def _truncated(self) -> CorruptLayerError:
        offset = self._source.offset
        return CorruptLayerError(f"tar truncated at offset {offset}: data of {self._where} is incomplete")

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"data of {self._where} read after the next entry was requested")


# --------------------------------------------------------------------------------------------
# The reader


class _TarReader:
    def __init__(self, stream: BinaryIO) -> None:
        self._source = _Source(stream)
        self._global_pax: dict[bytes, bytes] = {}

    def entries(self) -> Iterator[LayerEntry]:
        source = self._source
        ext = _Extensions()
        while True:
            offset = source.offset
            block = source.read(BLOCK_SIZE)
            if len(block) < BLOCK_SIZE:
                self._end_of_stream(block, offset, ext)
                return
            if block == ZERO_BLOCK:
                self._end_of_archive(offset, ext)
                return
            header = _parse_header(block, offset)
            if self._read_extension(header, ext):
                continue
            entry, stored = self._build_entry(header, ext)
            ext = _Extensions()
            data_end = source.offset + stored
            if entry is not None:
                yield entry
                if entry.data is not None:
                    entry.data.close()
            source.skip(data_end - source.offset, f"data of entry at offset {offset}")
            source.skip(-data_end % BLOCK_SIZE, f"padding of entry at offset {offset}")

    # -- end of input ------------------------------------------------------------------------

    def _end_of_stream(self, partial: bytes, offset: int, ext: _Extensions) -> None:
        if partial:
            raise CorruptLayerError(f"tar truncated at offset {self._source.offset}: incomplete header block")
        if not ext.empty():
            raise CorruptLayerError(
                f"tar truncated: extended header at offset {ext.first_offset} is not followed by an entry"
            )
        if offset:
            raise CorruptLayerError(f"tar truncated at offset {offset}: no end-of-archive marker")

    def _end_of_archive(self, offset: int, ext: _Extensions) -> None:
        if not ext.empty():
            raise CorruptLayerError(
                f"extended header at offset {ext.first_offset} is followed by the end of the archive"
            )
        following = self._source.read(BLOCK_SIZE)
        if following.strip(b"\x00"):
            raise CorruptLayerError(f"lone zero block at offset {offset} followed by data")
        self._source.drain()

    # -- extended headers --------------------------------------------------------------------

    def _read_extension(self, header: _Header, ext: _Extensions) -> bool:
        """Consume a PAX / GNU long-name header into ``ext``; False for a real entry."""
        kind = header.typeflag
        if kind not in (*_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            return False
        if header.size > MAX_EXTENDED_HEADER:
            raise UnsupportedEntryError(
                f"extended header at offset {header.offset} is {header.size} bytes"
                f" (limit {MAX_EXTENDED_HEADER})"
            )
        payload = self._source.read_exact(header.size, f"extended header at offset {header.offset}")
        self._source.skip(-header.size % BLOCK_SIZE, f"padding of extended header at offset {header.offset}")
        if kind == _PAX_GLOBAL:
            _update_globals(self._global_pax, parse_pax_records(payload, header.offset))
            return True
        ext.note(header.offset)
        if kind in _PAX_LOCAL:
            ext.pax.extend(parse_pax_records(payload, header.offset))
        else:
            name = payload.rstrip(b"\x00")
            if b"\x00" in name:
                raise UnsafePathError(f"GNU long name at offset {header.offset} contains a NUL byte")
            if kind == _GNU_LONGNAME:
                ext.long_name = name
            else:
                ext.long_link = name
        return True

    # -- entries -----------------------------------------------------------------------------

    def _build_entry(self, header: _Header, ext: _Extensions) -> tuple[LayerEntry | None, int]:
        """The entry for ``header`` (None if skipped) and the number of stored data bytes
        that follow, after what this method consumed itself (extended sparse headers, maps)."""
        pax = _effective_pax(ext, self._global_pax)
        raw_name = self._raw_name(header, ext, pax)
        where = f"entry {show_name(raw_name)} at offset {header.offset}"
        kind = _KINDS.get(header.typeflag)
        if kind is None:
            raise UnsupportedEntryError(
                f"unsupported tar entry type {header.typeflag!r} for {show_name(raw_name)}"
                f" at offset {header.offset}"
            )
        if header.typeflag == b"\x00" and raw_name.endswith(b"/"):
            kind = EntryKind.DIRECTORY  # V7 convention
        stored = _pax_uint(pax[b"size"], b"size", where) if b"size" in pax else header.size
        path = normalize_path(raw_name, f"path of entry at offset {header.offset}")
        if path == b"/" and kind is not EntryKind.DIRECTORY:
            raise UnsafePathError(f"{where}: the root '/' can only be a directory, not a {kind.value} entry")
        entry = LayerEntry(
            path=path,
            kind=kind,
            mode=header.mode & 0o7777,
            uid=_pax_uint(pax[b"uid"], b"uid", where) if b"uid" in pax else header.uid,
            gid=_pax_uint(pax[b"gid"], b"gid", where) if b"gid" in pax else header.gid,
            xattrs=_xattrs(pax, where),
        )
        if entry.uid < 0 or entry.gid < 0:
            raise CorruptLayerError(f"{where}: negative uid/gid")
        if b"mtime" in pax:
            entry.mtime, entry.mtime_nsec = _pax_mtime(pax[b"mtime"], where)
        else:
            entry.mtime = header.mtime
        if kind is EntryKind.REGULAR:
            layout, stored = self._layout(header, pax, ext, stored, where)
            entry.size = layout.real_size
            entry.data = cast(BinaryIO, _EntryData(self._source, layout, where))
            if layout.sparse:
                entry.data_runs = layout.segments
        elif kind in (EntryKind.SYMLINK, EntryKind.HARDLINK):
            entry.link_target = self._link_target(header, ext, pax, kind, where)
        elif kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE):
            entry.devmajor = self._device_number(header, pax, b"SCHILY.devmajor", _DEVMAJOR, where)
            entry.devminor = self._device_number(header, pax, b"SCHILY.devminor", _DEVMINOR, where)
        if path in SKIPPED_PATHS:
            return None, stored
        return entry, stored

    @staticmethod
    def _raw_name(header: _Header, ext: _Extensions, pax: dict[bytes, bytes]) -> bytes:
        # Precedence: GNU sparse real name > PAX path > GNU long name > header name.
        for key in (b"GNU.sparse.name", b"path"):
            if key in pax:
                return pax[key]
        return ext.long_name if ext.long_name is not None else header.name

    @staticmethod
    def _link_target(
        header: _Header, ext: _Extensions, pax: dict[bytes, bytes], kind: EntryKind, where: str
    ) -> bytes:
        # Precedence: PAX linkpath > GNU long link > header linkname.
        target = pax.get(b"linkpath", ext.long_link if ext.long_link is not None else header.linkname)
        if kind is EntryKind.HARDLINK:
            # Hardlink targets resolve from the archive root, like entry paths.
            return normalize_path(target, f"hardlink target of {where}")
        if b"\x00" in target:
            raise UnsafePathError(f"NUL byte in symlink target of {where}")
        return target

    @staticmethod
    def _device_number(
        header: _Header, pax: dict[bytes, bytes], key: bytes, field_slice: slice, where: str
    ) -> int:
        if key in pax:
            return _pax_uint(pax[key], key, where)
        number = header.number(field_slice, key.decode()[len("SCHILY.") :])
        if number < 0:
            raise CorruptLayerError(f"{where}: negative device number")
        return number

    def _layout(
        self, header: _Header, pax: dict[bytes, bytes], ext: _Extensions, stored: int, where: str
    ) -> tuple[_Layout, int]:
        """The sparse layout of a regular entry, and the stored bytes left after it is read."""
        if header.typeflag == b"S":
            return _read_old_gnu_sparse(header, stored, self._source, where), stored
        major = pax.get(b"GNU.sparse.major")
        if major is not None:
            minor = pax.get(b"GNU.sparse.minor")
            if (major, minor) != (b"1", b"0"):
                version = f"{major.decode('ascii', 'replace')}.{(minor or b'').decode('ascii', 'replace')}"
                raise UnsupportedEntryError(f"{where}: GNU sparse format {version} is not supported")
            real_size = _pax_uint(pax.get(b"GNU.sparse.realsize", b""), b"GNU.sparse.realsize", where)
            pairs, used = _read_sparse_1_0_map(self._source, stored, where)
            return _validated_layout(pairs, real_size, stored - used, where), stored - used
        if b"GNU.sparse.map" in pax or b"GNU.sparse.offset" in pax or b"GNU.sparse.size" in pax:
            real_size = _pax_uint(pax.get(b"GNU.sparse.size", b""), b"GNU.sparse.size", where)
            pairs = _pax_sparse_pairs(pax, ext.pax, where)
            return _validated_layout(pairs, real_size, stored, where), stored
        return _Layout.contiguous(stored), stored
