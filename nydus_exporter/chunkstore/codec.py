"""How the chunk store writes :class:`BlobInfo` and :class:`ChunkRef` into SQLite rows, and
the checksum that lets it verify a blob's record on use.

No pickle: a ``ChunkRef`` is one row of explicit integer columns (its digest a BLOB), a
``BlobInfo`` the JSON object of its dataclass fields (``bytes`` as hex). Both decode back to
objects equal to the originals. Decoding is strict: a missing, extra or mistyped field is a
:class:`ValueError`, which the store treats as a bad record and forgets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Iterable, Sequence

from nydus_exporter.rafs.model import BlobInfo, ChunkRef

# Column order of the ``chunks`` table after (blob, seq); ``ci_index`` is ChunkRef.index.
CHUNK_COLUMNS = (
    "digest",
    "blob_index",
    "ci_index",
    "compressed_offset",
    "compressed_size",
    "uncompressed_offset",
    "uncompressed_size",
    "flags",
    "crc32",
    "file_offset",
)
# ChunkRef field <-> column (only the ci index is renamed: "index" is an SQL keyword).
_CHUNK_FIELDS = tuple("index" if c == "ci_index" else c for c in CHUNK_COLUMNS)

ChunkRow = tuple[bytes, int, int, int, int, int, int, int, int, int]

_INFO_TYPES: dict[str, type] = typing.get_type_hints(BlobInfo)


def chunk_row(chunk: ChunkRef) -> ChunkRow:
    return (
        bytes(chunk.digest),
        chunk.blob_index,
        chunk.index,
        chunk.compressed_offset,
        chunk.compressed_size,
        chunk.uncompressed_offset,
        chunk.uncompressed_size,
        chunk.flags,
        chunk.crc32,
        chunk.file_offset,
    )


def chunk_from_row(row: Sequence[object]) -> ChunkRef:
    if len(row) != len(CHUNK_COLUMNS):
        raise ValueError(f"chunk row has {len(row)} columns, not {len(CHUNK_COLUMNS)}")
    digest, *numbers = row
    if not isinstance(digest, bytes):
        raise ValueError("chunk digest is not a BLOB")
    ints: list[int] = []
    for name, value in zip(_CHUNK_FIELDS[1:], numbers, strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"chunk {name} is not a non-negative integer: {value!r}")
        ints.append(value)
    return ChunkRef(digest, *ints)


def info_to_json(info: BlobInfo) -> str:
    out: dict[str, object] = {}
    for f in dataclasses.fields(info):
        value = getattr(info, f.name)
        out[f.name] = value.hex() if isinstance(value, bytes) else value
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def info_from_json(text: str) -> BlobInfo:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"blob info is not JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != set(_INFO_TYPES):
        raise ValueError("blob info does not have exactly the fields of BlobInfo")
    values: dict[str, object] = {}
    for name, kind in _INFO_TYPES.items():
        value = raw[name]
        if kind is bytes:
            if not isinstance(value, str):
                raise ValueError(f"blob info {name} is not hex")
            values[name] = bytes.fromhex(value)  # ValueError on bad hex
        elif kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"blob info {name} is not an integer")
            values[name] = value
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError(f"blob info {name} is not a string")
            values[name] = value
        else:  # a new BlobInfo field of another type: teach the codec before storing it
            raise ValueError(f"blob info field {name} has an unsupported type {kind!r}")
    return BlobInfo(**values)  # type: ignore[arg-type]


def record_checksum(
    head: Sequence[object], info_json: str, blob_meta: bytes | None, rows: Iterable[ChunkRow]
) -> bytes:
    """SHA-256 over everything a blob record says (``head``: its scalar columns), so a record
    that does not read back exactly as written is recognised and dropped."""
    h = hashlib.sha256()
    h.update(json.dumps([list(head), info_json], separators=(",", ":")).encode())
    h.update(b"\x00meta:" + (b"-" if blob_meta is None else hashlib.sha256(blob_meta).digest()))
    for row in rows:
        h.update(json.dumps([row[0].hex(), *row[1:]], separators=(",", ":")).encode() + b"\n")
    return h.digest()
