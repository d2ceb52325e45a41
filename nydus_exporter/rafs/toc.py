"""The blob table of contents: 128-byte ``TocEntry`` records + ``H(rafs.blob.toc)`` ([format §3.7]).

The ToC is the last section of a blob; its tar header is the blob's last 512 bytes. Entry
flags use the ToC compression encoding (0x1 none, 0x2 zstd, 0x4 lz4_block), which differs
from the algorithm ids of the blob table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.tarheader import build_header

_NAME_SIZE = 16
_DIGEST_SIZE = 32
_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class TocEntry:
    """One ToC record: where section ``name`` lives and the sha256 of its uncompressed data."""

    flags: int  # TOC_FLAG_* compression of the section data
    name: bytes
    uncompressed_digest: bytes  # sha256 of the uncompressed section data ([format §3.7] table)
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    # Zero when we write them; kept as read so a decoded entry re-encodes to the same bytes
    # (the fixtures carry non-zero garbage in the last 4 reserved bytes).
    reserved1: int = 0
    reserved2: bytes = bytes(48)

    def encode(self) -> bytes:
        if not self.name or len(self.name) > _NAME_SIZE or b"\x00" in self.name:
            raise ValueError(f"invalid ToC entry name {self.name!r}")
        if len(self.uncompressed_digest) != _DIGEST_SIZE:
            raise ValueError("ToC entry digest must be 32 bytes")
        if not 0 <= self.flags <= _U32_MAX or not 0 <= self.reserved1 <= _U32_MAX:
            raise ValueError(f"ToC entry flags {self.flags:#x} out of range")
        if len(self.reserved2) != 48:
            raise ValueError("ToC entry reserved2 must be 48 bytes")
        for value in (self.compressed_offset, self.compressed_size, self.uncompressed_size):
            if not 0 <= value <= _U64_MAX:
                raise ValueError(f"ToC entry field {value} out of range")
        return layout.TOC_ENTRY.pack(
            self.flags,
            self.reserved1,
            self.name,
            self.uncompressed_digest,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            self.reserved2,
        )

    @classmethod
    def decode(cls, data: bytes) -> TocEntry:
        """Parse one 128-byte record; reserved fields are kept but not checked (nydusd ignores them)."""
        if len(data) != layout.TOC_ENTRY_SIZE:
            raise FormatError(f"ToC entry must be {layout.TOC_ENTRY_SIZE} bytes, got {len(data)}")
        flags, reserved1, raw_name, digest, c_off, c_size, u_size, reserved2 = layout.TOC_ENTRY.unpack(data)
        name = raw_name.rstrip(b"\x00")
        if not name or b"\x00" in name or not name.isascii():
            raise FormatError(f"ToC entry has an invalid name {raw_name!r}")
        return cls(flags, name, digest, c_off, c_size, u_size, reserved1, reserved2)

    @property
    def compressed_end(self) -> int:
        return self.compressed_offset + self.compressed_size


def encode_toc_entries(entries: list[TocEntry]) -> bytes:
    """The ToC data: entries back to back, in the order the builder added them."""
    return b"".join(entry.encode() for entry in entries)


def encode_toc(entries: list[TocEntry]) -> bytes:
    """The whole ToC section: entries ‖ ``H(rafs.blob.toc, 128 × n)`` ([format §3.7])."""
    data = encode_toc_entries(entries)
    return data + build_header(layout.TOC_NAME_RAFS_BLOB_TOC, len(data))


def decode_toc_entries(data: bytes) -> list[TocEntry]:
    """Parse the ToC data (without its tar header)."""
    if not data or len(data) % layout.TOC_ENTRY_SIZE:
        raise FormatError(f"ToC size {len(data)} is not a positive multiple of {layout.TOC_ENTRY_SIZE}")
    size = layout.TOC_ENTRY_SIZE
    return [TocEntry.decode(data[off : off + size]) for off in range(0, len(data), size)]


def toc_digest(entries: list[TocEntry]) -> bytes:
    """``blob_toc_digest``: sha256(entries ‖ their 512-byte tar header) ([format §2.5, §3.7])."""
    return hashlib.sha256(encode_toc(entries)).digest()


def toc_size(entries: list[TocEntry]) -> int:
    """``blob_toc_size``: 128 × entries + 512."""
    return layout.TOC_ENTRY_SIZE * len(entries) + layout.TAR_BLOCK_SIZE


def find_entry(entries: list[TocEntry], name: bytes) -> TocEntry | None:
    """The entry named ``name`` or None."""
    for entry in entries:
        if entry.name == name:
            return entry
    return None
