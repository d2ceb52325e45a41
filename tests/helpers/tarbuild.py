"""A small DSL that builds tar archives for tests, as bytes or lazily as a stream of chunks.

Example::

    from tests.helpers import tarbuild as tb

    layer = tb.tar_of(
        tb.dir("etc"),
        tb.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\\n", mode=0o600),
        tb.symlink("bin", "usr/bin"),
        tb.hardlink("etc/passwd.bak", "etc/passwd"),
        tb.whiteout("var/cache"),           # etc/.wh.cache: an empty regular file
        tb.file("big", size=5 << 30, pattern=b"ab"),   # generated lazily
        fmt="pax",
    )
    for chunk in tb.tar_stream(...):        # the same, never holding more than ~1 MiB
        ...

Formats (``fmt=``): ``"pax"`` (default; POSIX.1-2001: long names, big ids/sizes, xattrs and
sub-second mtimes go to PAX records), ``"gnu"`` (``L``/``K`` long names, base-256 numbers, no
xattrs) and ``"ustar"`` (names <= 255 bytes via the prefix field, octal numbers only). A
member that the chosen format cannot carry raises ``ValueError`` while rendering.

Ordinary members (:func:`file`, :func:`dir`, :func:`symlink`, :func:`hardlink`,
:func:`chardev`, :func:`blockdev`, :func:`fifo`) are rendered with the standard library's
``tarfile.TarInfo.tobuf``, so their bytes come from an independent writer. What tarfile
cannot write is hand-crafted here: :func:`sparse_file` (old GNU ``S`` headers with extended
sparse headers, PAX sparse 0.0 / 0.1 / 1.0), :func:`pax_header` (raw records: exact bytes,
newlines in values, repeated keys, or a raw payload with bad lengths), :func:`raw_header`
(any header field, base-256 numbers, wrong checksums, unknown typeflags) and :func:`raw`
(verbatim bytes). Paths and values may be ``str`` or ``bytes`` (bytes are kept exactly).

:class:`IterStream` and :func:`piped` turn a chunk iterator into a readable, non-seekable
stream (the latter through a real ``os.pipe`` fed by a writer thread).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import tarfile
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

BLOCK = 512
CHUNK = 1 << 20  # size of the pieces lazily generated content is produced in
GNU_MAGIC = b"ustar  \x00"  # magic + version of GNU headers (no prefix field)
USTAR_MAGIC = b"ustar\x0000"  # POSIX magic + version "00"
_FORMATS: dict[str, Literal[0, 1, 2]] = {"ustar": 0, "gnu": 1, "pax": 2}  # tarfile.*_FORMAT

Text = str | bytes
TextMap = Mapping[str, Text] | Mapping[bytes, Text]  # xattrs, PAX records: str or bytes keys


class Member(Protocol):
    """Anything :func:`tar_stream` can render: yields the member's blocks in format ``fmt``."""

    def render(self, fmt: str) -> Iterator[bytes]: ...


# --------------------------------------------------------------------------------------------
# Encoding helpers (usable on their own, e.g. to build corrupt headers)


def as_bytes(value: Text) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _as_text(value: Text) -> str:
    # tarfile takes str; surrogateescape keeps arbitrary bytes exact on the way back out.
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal header field of ``width`` bytes (``ValueError`` if it does not fit)."""
    digits = b"%0*o" % (width - 1, value)
    if value < 0 or len(digits) > width - 1:
        raise ValueError(f"{value} does not fit an octal field of {width} bytes")
    return digits + b"\x00"


def base256(value: int, width: int) -> bytes:
    """GNU base-256 (two's complement, high bit of the first byte set) header field."""
    raw = bytearray(value.to_bytes(width, "big", signed=True))
    if value >= 0:
        if raw[0] & 0x80:
            raise ValueError(f"{value} does not fit a base-256 field of {width} bytes")
        raw[0] |= 0x80
    return bytes(raw)


def pax_record(key: Text, value: Text) -> bytes:
    """One ``"<len> <key>=<value>\\n"`` record; the length counts its own digits."""
    body = b" " + as_bytes(key) + b"=" + as_bytes(value) + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax_time(seconds: int, nsec: int) -> bytes:
    """PAX decimal time for ``seconds + nsec / 1e9`` (``seconds`` may be negative)."""
    total = seconds * 10**9 + nsec
    sign = b"-" if total < 0 else b""
    whole, frac = divmod(abs(total), 10**9)
    return sign + b"%d.%09d" % (whole, frac)


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


_FIELDS = {  # name: (offset, width) of ustar header fields (+ GNU sparse fields)
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "gid": (116, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "chksum": (148, 8),
    "typeflag": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 8),  # magic[6] + version[2]
    "uname": (265, 32),
    "gname": (297, 32),
    "devmajor": (329, 8),
    "devminor": (337, 8),
    "prefix": (345, 155),
    "gnu_sparse": (386, 96),
    "gnu_isextended": (482, 1),
    "gnu_realsize": (483, 12),
}


def _number(value: int, width: int) -> bytes:
    try:
        return octal(value, width)
    except ValueError:
        return base256(value, width)


def header_block(
    name: Text,
    *,
    typeflag: Text = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    linkname: Text = b"",
    magic: bytes = USTAR_MAGIC,
    devmajor: int = 0,
    devminor: int = 0,
    prefix: Text = b"",
    fields: Mapping[str, bytes] | None = None,
    checksum: int | None = None,
) -> bytes:
    """A hand-made 512-byte header. Numbers are octal, or base-256 when they do not fit.

    ``fields`` overwrites named fields (see ``_FIELDS``) with raw bytes *before* the checksum
    is computed; ``checksum`` forces a (wrong) checksum value instead.
    """
    block = bytearray(BLOCK)

    def put(name_: str, value: bytes) -> None:
        start, width = _FIELDS[name_]
        if len(value) > width:
            raise ValueError(f"{name_} is {len(value)} bytes, the field holds {width}")
        block[start : start + len(value)] = value

    put("name", as_bytes(name))
    put("mode", octal(mode, 8))
    put("uid", _number(uid, 8))
    put("gid", _number(gid, 8))
    put("size", _number(size, 12))
    put("mtime", _number(mtime, 12))
    put("typeflag", as_bytes(typeflag))
    put("linkname", as_bytes(linkname))
    put("magic", magic)
    put("devmajor", octal(devmajor, 8))
    put("devminor", octal(devminor, 8))
    if prefix:
        put("prefix", as_bytes(prefix))
    for key, value in (fields or {}).items():
        put(key, value)
    start, width = _FIELDS["chksum"]
    block[start : start + width] = b" " * width
    chksum = sum(block) if checksum is None else checksum
    block[start : start + width] = b"%06o\x00 " % chksum
    return bytes(block)


# --------------------------------------------------------------------------------------------
# File content


@dataclass(frozen=True)
class Content:
    """Regular-file content: explicit ``data``, or ``size`` bytes repeating ``pattern`` (lazy)."""

    data: bytes | None = None
    size_: int = 0
    pattern: bytes = b"\x00"

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.size_

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            if self.data:
                yield self.data
            return
        period = len(self.pattern)
        block = self.pattern * max(1, CHUNK // period)
        left = self.size_
        while left > 0:
            piece = block if left >= len(block) else block[:left]
            yield piece
            left -= len(piece)

    def data_bytes(self) -> bytes:
        """The whole content (only for sizes that fit in memory comfortably)."""
        return b"".join(self.chunks())

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.chunks():
            digest.update(piece)
        return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Ordinary members (rendered by tarfile)


@dataclass(frozen=True)
class Entry:
    """An ordinary tar member; build it with :func:`file`, :func:`dir`, :func:`symlink`, ..."""

    path: bytes
    typeflag: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int | None = None  # None: no PAX mtime record
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[bytes, bytes] = field(default_factory=dict)
    xattr_style: str = "schily"  # "schily", "libarchive" or "both"
    pax: Mapping[bytes, bytes] = field(default_factory=dict)  # extra PAX records
    uname: str = ""
    gname: str = ""
    content: Content = field(default_factory=Content)

    @property
    def size(self) -> int:
        return self.content.size

    def tarinfo(self, fmt: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(_as_text(self.path))
        info.type = self.typeflag
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname, info.gname = self.uname, self.gname
        info.mtime = self.mtime
        info.size = self.content.size
        info.linkname = _as_text(self.linkname)
        info.devmajor, info.devminor = self.devmajor, self.devminor
        records = self._pax_records()
        if records:
            if fmt != "pax":
                raise ValueError(f"{self.path!r}: xattrs / sub-second mtime / PAX records need fmt='pax'")
            info.pax_headers = {_as_text(k): _as_text(v) for k, v in records.items()}
        return info

    def _pax_records(self) -> dict[bytes, bytes]:
        records: dict[bytes, bytes] = {}
        if self.mtime_nsec is not None:
            records[b"mtime"] = pax_time(self.mtime, self.mtime_nsec)
        for name, value in self.xattrs.items():
            if self.xattr_style in ("libarchive", "both"):
                key = b"LIBARCHIVE.xattr." + urllib.parse.quote_from_bytes(name, safe="").encode()
                records[key] = base64.b64encode(value).rstrip(b"=")  # libarchive omits padding
            if self.xattr_style in ("schily", "both"):
                records[b"SCHILY.xattr." + name] = value
        records.update(self.pax)
        return records

    def render(self, fmt: str) -> Iterator[bytes]:
        yield self.tarinfo(fmt).tobuf(_FORMATS[fmt], "utf-8", "surrogateescape")
        yield from self.content.chunks()
        yield _padding(self.content.size)


def _bytes_map(mapping: TextMap | None) -> dict[bytes, bytes]:
    items: Iterable[tuple[Text, Text]] = (mapping or {}).items()
    return {as_bytes(k): as_bytes(v) for k, v in items}


def file(
    path: Text,
    data: bytes | None = None,
    *,
    size: int | None = None,
    pattern: bytes = b"\x00",
    mode: int = 0o644,
    typeflag: bytes = b"0",
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    mtime_nsec: int | None = None,
    xattrs: TextMap | None = None,
    xattr_style: str = "schily",
    pax: TextMap | None = None,
    uname: str = "",
    gname: str = "",
) -> Entry:
    """A regular file with ``data``, or ``size`` bytes of ``pattern`` generated lazily.

    ``typeflag`` may be ``b"0"`` (default), ``b"\\0"`` (old AREGTYPE) or ``b"7"`` (contiguous).
    """
    if data is not None and size is not None:
        raise ValueError("give data or size, not both")
    content = Content(data=data) if size is None else Content(size_=size, pattern=pattern)
    return Entry(
        as_bytes(path), typeflag, mode, uid=uid, gid=gid, mtime=mtime, mtime_nsec=mtime_nsec,
        xattrs=_bytes_map(xattrs), xattr_style=xattr_style, pax=_bytes_map(pax), uname=uname,
        gname=gname, content=content,
    )  # fmt: skip


def dir(  # the DSL reads like the tar type names, even where that shadows a builtin
    path: Text,
    *,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    mtime_nsec: int | None = None,
    xattrs: TextMap | None = None,
    xattr_style: str = "schily",
    pax: TextMap | None = None,
) -> Entry:
    """A directory (tarfile appends the trailing ``/``)."""
    return Entry(
        as_bytes(path), tarfile.DIRTYPE, mode, uid=uid, gid=gid, mtime=mtime, mtime_nsec=mtime_nsec,
        xattrs=_bytes_map(xattrs), xattr_style=xattr_style, pax=_bytes_map(pax),
    )  # fmt: skip


directory = dir


def symlink(
    path: Text,
    target: Text,
    *,
    mode: int = 0o777,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    mtime_nsec: int | None = None,
    xattrs: TextMap | None = None,
    pax: TextMap | None = None,
) -> Entry:
    return Entry(
        as_bytes(path), tarfile.SYMTYPE, mode, uid=uid, gid=gid, mtime=mtime, mtime_nsec=mtime_nsec,
        linkname=as_bytes(target), xattrs=_bytes_map(xattrs), pax=_bytes_map(pax),
    )  # fmt: skip


def hardlink(
    path: Text,
    target: Text,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    pax: TextMap | None = None,
) -> Entry:
    """A hardlink; ``target`` is an archive path (resolved from the archive root)."""
    return Entry(
        as_bytes(path), tarfile.LNKTYPE, mode, uid=uid, gid=gid, mtime=mtime, linkname=as_bytes(target),
        pax=_bytes_map(pax),
    )  # fmt: skip


def chardev(path: Text, major: int, minor: int, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(as_bytes(path), tarfile.CHRTYPE, mode, uid=uid, gid=gid, devmajor=major, devminor=minor)


def blockdev(path: Text, major: int, minor: int, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(as_bytes(path), tarfile.BLKTYPE, mode, uid=uid, gid=gid, devmajor=major, devminor=minor)


def fifo(path: Text, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(as_bytes(path), tarfile.FIFOTYPE, mode, uid=uid, gid=gid)


def _join(parent: Text, name: bytes) -> bytes:
    parent_b = as_bytes(parent).rstrip(b"/")
    return parent_b + b"/" + name if parent_b else name


def whiteout(path: Text) -> Entry:
    """OCI whiteout of ``path``: an empty file ``<dir>/.wh.<name>``."""
    parent, _, name = as_bytes(path).rstrip(b"/").rpartition(b"/")
    return file(_join(parent, b".wh." + name), b"")


def opaque(dirpath: Text) -> Entry:
    """OCI opaque marker of ``dirpath``: an empty file ``<dirpath>/.wh..wh..opq``."""
    return file(_join(dirpath, b".wh..wh..opq"), b"")


# --------------------------------------------------------------------------------------------
# Hand-crafted members


@dataclass(frozen=True)
class Raw:
    """Verbatim bytes in the archive (escape hatch: garbage, partial blocks, zero blocks)."""

    data: bytes

    def render(self, fmt: str) -> Iterator[bytes]:
        yield self.data


def raw(data: bytes) -> Raw:
    return Raw(data)


@dataclass(frozen=True)
class RawHeader:
    """A hand-made header followed by ``data`` padded to a block (see :func:`raw_header`)."""

    block: bytes
    data: bytes

    def render(self, fmt: str) -> Iterator[bytes]:
        yield self.block
        yield self.data
        yield _padding(len(self.data))


def raw_header(name: Text, *, data: bytes = b"", size: int | None = None, **header: object) -> RawHeader:
    """A member with a hand-made header (any :func:`header_block` argument) and ``data``.

    ``size`` defaults to ``len(data)``; give a different one to declare more (or fewer) bytes
    than are written, e.g. for truncation tests.
    """
    block = header_block(name, size=len(data) if size is None else size, **header)  # type: ignore[arg-type]
    return RawHeader(block, data)


PaxRecords = TextMap | Sequence[tuple[Text, Text]] | Sequence[tuple[str, str]] | Sequence[tuple[bytes, bytes]]


def pax_payload(records: PaxRecords) -> bytes:
    items = records.items() if isinstance(records, Mapping) else records
    return b"".join(pax_record(k, v) for k, v in items)


def pax_header(
    records: PaxRecords | bytes, *, typeflag: bytes = b"x", name: Text = b"././@PaxHeader"
) -> RawHeader:
    """A PAX extended header with exactly these records (a sequence keeps repeats and order),
    or with ``records`` as the raw payload when it is ``bytes`` (for malformed records)."""
    payload = records if isinstance(records, bytes) else pax_payload(records)
    return raw_header(name, typeflag=typeflag, data=payload)


def pax_global(records: PaxRecords) -> RawHeader:
    """A PAX global header (typeflag ``g``)."""
    return pax_header(records, typeflag=b"g", name=b"pax_global_header")


def gnu_long(kind: bytes, value: Text) -> RawHeader:
    """A GNU ``L`` (long name) or ``K`` (long link) header carrying ``value`` + NUL."""
    return raw_header(b"././@LongLink", typeflag=kind, data=as_bytes(value) + b"\x00", magic=GNU_MAGIC)


SPARSE_FORMATS = ("gnu", "pax-0.0", "pax-0.1", "pax-1.0")


@dataclass(frozen=True)
class SparseFile:
    """A sparse regular file of ``size`` bytes: zeros except ``regions`` ((offset, data), sorted).

    Rendered in its own ``sparse_format`` whatever the archive format: ``"gnu"`` (old GNU
    ``S`` header; more than 4 regions spill into extended sparse headers), ``"pax-0.0"``
    (repeated ``GNU.sparse.offset``/``numbytes`` records), ``"pax-0.1"`` (``GNU.sparse.map``)
    or ``"pax-1.0"`` (map at the start of the data, name ``GNUSparseFile.0/<name>``).
    """

    path: bytes
    size: int
    regions: tuple[tuple[int, bytes], ...]
    sparse_format: str = "gnu"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    def __post_init__(self) -> None:
        end = 0
        for offset, data in self.regions:
            if offset < end:
                raise ValueError("sparse regions must be sorted and must not overlap")
            end = offset + len(data)
        if end > self.size:
            raise ValueError("sparse region beyond the file size")
        if self.sparse_format not in SPARSE_FORMATS:
            raise ValueError(f"sparse_format must be one of {SPARSE_FORMATS}")

    def chunks(self) -> Iterator[bytes]:
        """The logical (expanded) content, lazily."""
        position = 0
        for offset, data in (*self.regions, (self.size, b"")):
            yield from Content(size_=offset - position).chunks()
            if data:
                yield data
            position = offset + len(data)

    def data_bytes(self) -> bytes:
        return b"".join(self.chunks())

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.chunks():
            digest.update(piece)
        return digest.hexdigest()

    @property
    def stored(self) -> bytes:
        return b"".join(data for _, data in self.regions)

    def _map(self) -> list[tuple[int, int]]:
        pairs = [(offset, len(data)) for offset, data in self.regions]
        # GNU tar ends a map that stops before the end of the file with an empty entry at
        # the end, so the real size is visible from the map too.
        if not pairs or pairs[-1][0] + pairs[-1][1] < self.size:
            pairs.append((self.size, 0))
        return pairs

    def render(self, fmt: str) -> Iterator[bytes]:
        if self.sparse_format == "gnu":
            yield from self._render_old_gnu()
            return
        pairs = self._map()
        records: list[tuple[Text, Text]] = []
        name = self.path
        stored = self.stored
        if self.sparse_format == "pax-1.0":
            records += [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]
            records += [("GNU.sparse.name", self.path), ("GNU.sparse.realsize", str(self.size))]
            head, _, base = self.path.rpartition(b"/")
            name = _join(head, b"GNUSparseFile.0/" + base)
            text = b"%d\n" % len(pairs) + b"".join(b"%d\n%d\n" % p for p in pairs)
            stored = text + _padding(len(text)) + stored
        else:
            records += [("GNU.sparse.size", str(self.size)), ("GNU.sparse.numblocks", str(len(pairs)))]
            if self.sparse_format == "pax-0.1":
                records.append(("GNU.sparse.map", ",".join(f"{o},{n}" for o, n in pairs)))
            else:
                for offset, length in pairs:
                    records += [("GNU.sparse.offset", str(offset)), ("GNU.sparse.numbytes", str(length))]
        if len(name) > 100:
            records.append(("path", name))
            name = name[:100]
        yield from pax_header(records).render(fmt)
        yield from raw_header(
            name, data=stored, mode=self.mode, uid=self.uid, gid=self.gid, mtime=self.mtime
        ).render(fmt)

    def _render_old_gnu(self) -> Iterator[bytes]:
        pairs = self._map()
        entries = [octal(o, 12) + octal(n, 12) for o, n in pairs]
        in_header, rest = entries[:4], entries[4:]
        if len(self.path) > 100:
            yield from gnu_long(b"L", self.path).render("gnu")
        stored = self.stored
        yield header_block(
            self.path[:100],
            typeflag=b"S",
            size=len(stored),
            mode=self.mode,
            uid=self.uid,
            gid=self.gid,
            mtime=self.mtime,
            magic=GNU_MAGIC,
            fields={
                "gnu_sparse": b"".join(in_header),
                "gnu_isextended": b"\x01" if rest else b"\x00",
                "gnu_realsize": octal(self.size, 12),
            },
        )
        while rest:
            block = bytearray(BLOCK)
            piece, rest = rest[:21], rest[21:]
            block[: 24 * len(piece)] = b"".join(piece)
            block[504] = 1 if rest else 0
            yield bytes(block)
        yield stored
        yield _padding(len(stored))


def sparse_file(
    path: Text,
    size: int,
    data_regions: Iterable[tuple[int, bytes]],
    *,
    sparse_format: str = "gnu",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
) -> SparseFile:
    """A GNU sparse file; see :class:`SparseFile`."""
    return SparseFile(as_bytes(path), size, tuple(data_regions), sparse_format, mode, uid, gid, mtime)


# --------------------------------------------------------------------------------------------
# Archives and streams


def tar_stream(
    *members: Member,
    fmt: str = "pax",
    end_blocks: int = 2,
    record_size: int | None = None,
    trailing: bytes = b"",
) -> Iterator[bytes]:
    """The archive as a lazy sequence of chunks (members rendered on demand).

    ``end_blocks`` zero blocks mark the end (2 is the standard); ``record_size`` pads the
    archive with zeros to a multiple of it (GNU tar pads to 10240); ``trailing`` is appended
    after everything (garbage after the end of the archive).
    """
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {tuple(_FORMATS)}")
    total = 0
    for member in members:
        for chunk in member.render(fmt):
            total += len(chunk)
            yield chunk
    end = bytes(BLOCK * end_blocks)
    total += len(end)
    if record_size:
        end += bytes(-total % record_size)
    yield end + trailing


def tar_of(*members: Member, **options: object) -> bytes:
    """The archive as bytes (see :func:`tar_stream` for the options)."""
    return b"".join(tar_stream(*members, **options))  # type: ignore[arg-type]


class IterStream(io.RawIOBase):
    """A non-seekable raw stream reading from an iterator of byte chunks (``readinto`` only
    copies; memory stays at one chunk)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        while not len(self._current):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._current = memoryview(chunk).cast("B")
        n = min(len(out), len(self._current))
        out[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


@dataclass
class PipeStream:
    """The read end of a pipe fed by a writer thread (see :func:`piped`)."""

    stream: io.FileIO
    _thread: threading.Thread
    _errors: list[BaseException]

    def writer_finished(self, timeout: float = 10.0) -> bool:
        """True once the writer wrote everything and closed its end (it never stalled)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


@contextlib.contextmanager
def piped(chunks: Iterable[bytes]) -> Iterator[PipeStream]:
    """Feed ``chunks`` through a real ``os.pipe`` from a writer thread; yields the read side
    as an unbuffered, non-seekable :class:`io.FileIO` (no ``peek``, short reads)."""
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open(write_fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        except BrokenPipeError:
            pass  # the reader stopped early; that is the reader's business
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=writer, name="tar-pipe-writer", daemon=True)
    thread.start()
    stream = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed in finally
    try:
        yield PipeStream(stream, thread, errors)
    finally:
        stream.close()
        thread.join(10)
    if errors:
        raise errors[0]
