"""The Nydus bootstrap layer: a gzip'd tar carrying the merged bootstrap ([format §6.3, §3.10]).

Layout of the tar (what nydus-snapshotter ``packToTar`` writes and unpacks at pull time)::

    image/                       directory, mode 0755
    image/image.boot             the merged RAFS bootstrap, mode 0444
    image/<blob-hex>.blob.meta   one per blob layer with chunks, mode 0444 ([format §3.10] cache file)

uid/gid 0, empty uname/gname, mtime 0, USTAR headers exactly as Go ``archive/tar`` writes a
``tar.Header{Name, Mode, Typeflag, Size}`` (the directory is named ``image`` without a
trailing slash, and devmajor/devminor are octal zeros), ended by two zero blocks without
record padding: the tar (and its ``diff_id``) is byte-identical to the real converter's
(tests/interop/test_bootstrap_layer_go.py). The gzip stream has mtime 0, no file name, OS
"unknown" (255) and default level 6 like Go ``compress/gzip`` — same input, same bytes. The
Go *deflate* output cannot be reproduced from Python, so only ``diff_id`` (sha256 of the
uncompressed tar) may match the real toolchain, never ``digest`` ([format §10] open question 6).
Both digests are computed while the bytes stream out; nothing is buffered beyond one entry.
"""

from __future__ import annotations

import hashlib
import re
import struct
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from nydus_exporter.errors import CorruptLayerError, FormatError
from nydus_exporter.layer.compression import open_layer_stream
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor

BOOTSTRAP_DIR = "image"
BOOTSTRAP_PATH = "image/image.boot"
LEGACY_BOOTSTRAP_PATH = "image.boot"  # older converters put it at the tar root ([format §6.3])
BLOB_META_SUFFIX = ".blob.meta"
_DIR_MODE = 0o755
_FILE_MODE = 0o444
_BLOCK = tarfile.BLOCKSIZE  # 512
_META_ALIGN = 4096  # a blob.meta file is ci data padded to 4 KiB + the 4 KiB header ([format §3.10])
_GZIP_LEVEL = 6  # Go compress/gzip DefaultCompression
# RFC 1952 member header: ID1 ID2, CM=8 (deflate), FLG=0, MTIME=0, XFL=0, OS=255 (unknown).
_GZIP_HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"
_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_META_NAME = re.compile(r"^image/([a-f0-9]{64})\.blob\.meta$")
_READ_SIZE = 1 << 20


class ByteSink(Protocol):
    """Where the layer bytes go: a binary file, or an ``OciLayout.blob_writer()`` sink."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True, slots=True)
class BootstrapLayerInfo:
    """Digests of a written bootstrap layer."""

    digest: str  # sha256 of the gzip bytes: the layer digest
    diff_id: str  # sha256 of the uncompressed tar: the config's last rootfs.diff_id
    size: int  # number of gzip bytes written

    def descriptor(self, *, oci: bool) -> Descriptor:
        """The manifest layer descriptor (bootstrap annotations included, [format §6.2])."""
        return Descriptor(
            mt.gzip_layer_media_type(oci=oci),
            self.digest,
            self.size,
            {mt.ANNOTATION_NYDUS_BOOTSTRAP: "true", mt.ANNOTATION_NYDUS_FS_VERSION: mt.NYDUS_FS_VERSION},
        )


def write_bootstrap_layer(
    out: ByteSink, bootstrap: bytes, blob_metas: Sequence[tuple[str, bytes]] = ()
) -> BootstrapLayerInfo:
    """Write the gzip'd bootstrap layer tar to ``out``.

    ``blob_metas`` are ``(blob digest or hex, blob.meta bytes)`` in blob layer order, for the
    layers that have chunks; each must be a [format §3.10] cache file (a non-empty 4 KiB multiple).
    """
    if not bootstrap:
        raise FormatError("bootstrap is empty")
    metas: list[tuple[str, bytes]] = []
    for blob, meta in blob_metas:
        hex_id = blob.removeprefix("sha256:")
        if not _HEX64.match(hex_id):
            raise FormatError(f"blob.meta key {blob!r} is not a sha256 blob digest")
        if not meta or len(meta) % _META_ALIGN:
            raise FormatError(f"blob.meta of {hex_id} has {len(meta)} bytes, not a non-zero multiple of 4096")
        if any(hex_id == seen for seen, _ in metas):
            raise FormatError(f"duplicate blob.meta for blob {hex_id}")
        metas.append((hex_id, meta))

    sink = _GzipHashingWriter(out)
    sink.write_tar(_header(BOOTSTRAP_DIR, tarfile.DIRTYPE, _DIR_MODE, 0))
    _write_file(sink, BOOTSTRAP_PATH, bootstrap)
    for hex_id, meta in metas:
        _write_file(sink, f"{BOOTSTRAP_DIR}/{hex_id}{BLOB_META_SUFFIX}", meta)
    sink.write_tar(bytes(2 * _BLOCK))  # end-of-archive marker
    return sink.finish()


def _octal(value: int, width: int) -> bytes:
    # Go formatOctal: zero-padded octal digits and a NUL terminator filling the field.
    return b"%0*o\x00" % (width - 1, value)


def _header(name: str, kind: bytes, mode: int, size: int) -> bytes:
    """A USTAR header as Go's archive/tar writes it (``Writer.templateV7Plus``).

    Python's tarfile differs in two places: it appends "/" to directory names and leaves
    devmajor/devminor empty for non-devices, where Go writes the name as given and octal
    zeros in every numeric field.
    """
    raw_name = name.encode()
    if len(raw_name) > 100:
        raise FormatError(f"bootstrap layer entry name {name!r} is longer than 100 bytes")
    block = bytearray(_BLOCK)
    block[0 : len(raw_name)] = raw_name
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)  # uid
    block[116:124] = _octal(0, 8)  # gid
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)  # mtime (Go's zero time.Time)
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"  # magic + version
    block[329:337] = _octal(0, 8)  # devmajor
    block[337:345] = _octal(0, 8)  # devminor
    # The checksum is computed with its own field as spaces, then written as 6 octal digits,
    # NUL and a space.
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _write_file(sink: _GzipHashingWriter, name: str, data: bytes) -> None:
    sink.write_tar(_header(name, tarfile.REGTYPE, _FILE_MODE, len(data)))
    sink.write_tar(data)
    pad = -len(data) % _BLOCK
    if pad:
        sink.write_tar(bytes(pad))


class _GzipHashingWriter:
    """Gzip-compresses tar bytes into ``out`` and hashes both forms on the way."""

    def __init__(self, out: ByteSink) -> None:
        self._out = out
        self._tar_hash = hashlib.sha256()
        self._gz_hash = hashlib.sha256()
        self._gz_size = 0
        self._crc = 0
        self._isize = 0
        self._deflate = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._emit(_GZIP_HEADER)

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._gz_hash.update(data)
            self._gz_size += len(data)

    def write_tar(self, data: bytes) -> None:
        self._tar_hash.update(data)
        self._crc = zlib.crc32(data, self._crc)
        self._isize += len(data)
        self._emit(self._deflate.compress(data))

    def finish(self) -> BootstrapLayerInfo:
        self._emit(self._deflate.flush())
        self._emit(struct.pack("<II", self._crc, self._isize & 0xFFFFFFFF))
        return BootstrapLayerInfo(
            digest="sha256:" + self._gz_hash.hexdigest(),
            diff_id="sha256:" + self._tar_hash.hexdigest(),
            size=self._gz_size,
        )


def read_bootstrap_layer(stream: BinaryIO) -> tuple[bytes, dict[str, bytes]]:
    """``(bootstrap, {blob hex: blob.meta bytes})`` from a bootstrap layer (gzip, zstd or tar).

    Accepts ``image/image.boot`` and the legacy root ``image.boot`` (leading ``./`` or ``/``
    ignored); other entries are skipped. The stream is read to its end so the gzip trailer
    (CRC, size) is checked. Raises :class:`FormatError` when no bootstrap is found or the
    layer is corrupt.
    """
    bootstrap: bytes | None = None
    metas: dict[str, bytes] = {}
    try:
        tar_stream = open_layer_stream(stream)
        with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("/").removeprefix("./")
                if name in (BOOTSTRAP_PATH, LEGACY_BOOTSTRAP_PATH) and member.isreg():
                    if bootstrap is not None:
                        raise FormatError("bootstrap layer holds more than one image.boot")
                    bootstrap = _read_member(tar, member)
                    continue
                match = _META_NAME.match(name)
                if match and member.isreg():
                    if match.group(1) in metas:
                        raise FormatError(f"bootstrap layer holds {name} twice")
                    metas[match.group(1)] = _read_member(tar, member)
        while tar_stream.read(_READ_SIZE):  # drain: verify the compressed trailer, free the writer
            pass
    except CorruptLayerError as exc:
        raise FormatError(f"corrupt bootstrap layer: {exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise FormatError(f"bootstrap layer is not a valid tar: {exc}") from exc
    if bootstrap is None:
        raise FormatError(f"bootstrap layer has no {BOOTSTRAP_PATH} (nor legacy {LEGACY_BOOTSTRAP_PATH})")
    if not bootstrap:
        raise FormatError(f"{BOOTSTRAP_PATH} in the bootstrap layer is empty")
    return bootstrap, metas


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fileobj = tar.extractfile(member)
    if fileobj is None:  # pragma: no cover - regular files always have data
        raise FormatError(f"cannot read {member.name} from the bootstrap layer")
    data = fileobj.read()
    if len(data) != member.size:
        raise FormatError(f"{member.name} is truncated in the bootstrap layer")
    return data
