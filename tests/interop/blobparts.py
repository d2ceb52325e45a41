"""A Nydus data blob cut into its sections, with the standard library only (and zstandard for
the bootstrap section), so two blobs can be compared section by section.

An inline-meta blob with a ToC (``nydus-image create --type tar-rafs --blob-inline-meta
--features blob-toc``) ends with a 512-byte tar header named ``rafs.blob.toc``; the ToC before
it is a list of 128-byte entries ``<flags u32, reserved u32, name[16], sha256[32],
compressed_offset u64, compressed_size u64, uncompressed_size u64, reserved[48]>`` naming the
other sections (``blob.meta``, ``blob.digest``, ``image.boot``; each followed by its own tar
header). Everything before the first section's data is the chunk data (with its ``image.blob``
header).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

_HEADER = 512
_ENTRY = struct.Struct("<II16s32sQQQ48s")
_TOC_FLAG_ZSTD = 0x2


@dataclass(frozen=True)
class Section:
    name: str
    flags: int
    digest: bytes
    offset: int
    stored: bytes  # the bytes as stored in the blob
    uncompressed_size: int
    header: bytes  # its tar header (the 512 bytes after it)

    @property
    def data(self) -> bytes:
        """The uncompressed section."""
        if self.flags & _TOC_FLAG_ZSTD:
            return zstandard.ZstdDecompressor().decompress(
                self.stored, max_output_size=self.uncompressed_size
            )
        return self.stored


@dataclass(frozen=True)
class BlobParts:
    chunk_region: bytes  # everything before the first ToC-listed section
    sections: dict[str, Section]
    toc: bytes  # the ToC entries, raw
    toc_header: bytes

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\x00 ").strip()
    return int(text, 8) if text else 0


def split_blob(blob: bytes) -> BlobParts:
    toc_header = blob[-_HEADER:]
    if toc_header[:13] != b"rafs.blob.toc":
        raise ValueError(f"no rafs.blob.toc header at the end of the blob: {toc_header[:16]!r}")
    toc_size = _octal(toc_header[124:136])
    toc = blob[-_HEADER - toc_size : -_HEADER]
    if toc_size % _ENTRY.size:
        raise ValueError(f"ToC size {toc_size} is not a multiple of {_ENTRY.size}")
    sections: dict[str, Section] = {}
    for i in range(0, toc_size, _ENTRY.size):
        flags, _, name, digest, offset, csize, usize, _ = _ENTRY.unpack_from(toc, i)
        text = name.rstrip(b"\x00").decode()
        sections[text] = Section(
            name=text,
            flags=flags,
            digest=digest,
            offset=offset,
            stored=blob[offset : offset + csize],
            uncompressed_size=usize,
            header=blob[offset + csize : offset + csize + _HEADER],
        )
    listed = [s.offset for name, s in sections.items() if name != "rafs.blob.toc"]
    first = min(listed) if listed else len(blob) - _HEADER - toc_size
    return BlobParts(chunk_region=blob[:first], sections=sections, toc=toc, toc_header=toc_header)
