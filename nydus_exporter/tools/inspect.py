"""Human- and machine-readable descriptions of bootstraps and data blobs (``inspect``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import Bootstrap, read_bootstrap
from nydus_exporter.rafs.model import BlobInfo, walk

_SUPER_FLAG_NAMES = {
    layout.RAFS_COMPRESSION_NONE: "COMPRESSION_NONE",
    layout.RAFS_COMPRESSION_LZ4: "COMPRESSION_LZ4",
    layout.RAFS_HASH_BLAKE3: "HASH_BLAKE3",
    layout.RAFS_HASH_SHA256: "HASH_SHA256",
    layout.RAFS_EXPLICIT_UID_GID: "EXPLICIT_UID_GID",
    layout.RAFS_HAS_XATTR: "HAS_XATTR",
    layout.RAFS_COMPRESSION_GZIP: "COMPRESSION_GZIP",
    layout.RAFS_COMPRESSION_ZSTD: "COMPRESSION_ZSTD",
    layout.RAFS_INLINED_CHUNK_DIGEST: "INLINED_CHUNK_DIGEST",
    layout.RAFS_TARTFS_MODE: "TARTFS_MODE",
    layout.RAFS_ENCRYPTION_NONE: "ENCRYPTION_NONE",
    layout.RAFS_ENCRYPTION_ASE_128_XTS: "ENCRYPTION_ASE_128_XTS",
}
_BLOB_FEATURE_NAMES = {
    layout.BLOB_FEATURE_ALIGNED: "ALIGNED",
    layout.BLOB_FEATURE_INLINED_FS_META: "INLINED_FS_META",
    layout.BLOB_FEATURE_CHUNK_INFO_V2: "CHUNK_INFO_V2",
    layout.BLOB_FEATURE_ZRAN: "ZRAN",
    layout.BLOB_FEATURE_SEPARATE: "SEPARATE",
    layout.BLOB_FEATURE_INLINED_CHUNK_DIGEST: "INLINED_CHUNK_DIGEST",
    layout.BLOB_FEATURE_TARFS: "TARFS",
    layout.BLOB_FEATURE_BATCH: "BATCH",
    layout.BLOB_FEATURE_ENCRYPTED: "ENCRYPTED",
    layout.BLOB_FEATURE_HAS_TAR_HEADER: "HAS_TAR_HEADER",
    layout.BLOB_FEATURE_HAS_TOC: "HAS_TOC",
    layout.BLOB_FEATURE_CAP_TAR_TOC: "CAP_TAR_TOC",
}
_COMPRESSOR_NAMES = {
    layout.COMPRESSOR_ID_NONE: "none",
    layout.COMPRESSOR_ID_LZ4_BLOCK: "lz4_block",
    layout.COMPRESSOR_ID_GZIP: "gzip",
    layout.COMPRESSOR_ID_ZSTD: "zstd",
}
_DIGESTER_NAMES = {layout.DIGESTER_ID_BLAKE3: "blake3", layout.DIGESTER_ID_SHA256: "sha256"}
_KIND_NAMES = {
    0o040000: "dir",
    0o100000: "reg",
    0o120000: "symlink",
    0o020000: "chr",
    0o060000: "blk",
    0o010000: "fifo",
    0o140000: "sock",
}


def flag_names(value: int, names: dict[int, str]) -> list[str]:
    found = [name for bit, name in names.items() if value & bit]
    unknown = value & ~sum(names)
    if unknown:
        found.append(f"{unknown:#x}")
    return found


def describe_file(path: Path, *, files: bool = False) -> dict[str, Any]:
    """Describe ``path``, a RAFS v6 bootstrap or a Nydus data blob."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(layout.EROFS_SUPER_OFFSET + 4)
            if (
                len(head) == layout.EROFS_SUPER_OFFSET + 4
                and int.from_bytes(head[layout.EROFS_SUPER_OFFSET :], "little") == layout.EROFS_SUPER_MAGIC_V1
            ):
                f.seek(0)
                return {"type": "bootstrap", "size": size, **describe_bootstrap(f.read(), files=files)}
            return describe_blob(f.fileno(), size, files=files)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def describe_blob(fd: int, size: int, *, files: bool = False) -> dict[str, Any]:
    def read_at(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    reader = BlobReader(read_at, size)
    toc = reader.toc()
    whole = hashlib.sha256()
    offset = 0
    while offset < size:
        block = read_at(offset, min(1 << 20, size - offset))
        if not block:
            raise FormatError("blob file shrank while reading")
        whole.update(block)
        offset += len(block)
    out: dict[str, Any] = {
        "type": "blob",
        "size": size,
        "digest": f"sha256:{whole.hexdigest()}",
        "toc": [
            {
                "name": e.name.decode("ascii", "replace"),
                "flags": e.flags,
                "offset": e.compressed_offset,
                "compressed_size": e.compressed_size,
                "uncompressed_size": e.uncompressed_size,
                "sha256": e.uncompressed_digest.hex(),
            }
            for e in toc
        ],
    }
    infos = reader.chunk_infos()
    out["chunk_count"] = len(infos)
    boot = reader.bootstrap()
    if boot is not None:
        # The embedded bootstrap names this very blob by the placeholder; its real id is the
        # file's digest (what a merged bootstrap and the image manifest call it).
        out["bootstrap"] = describe_bootstrap(boot, files=files, own_blob_id=whole.hexdigest())
    return out


# Why a blob id reads "xxxx…": said in `inspect`'s output, where the question arises.
PLACEHOLDER_NOTE = (
    "placeholder: nydus-image writes 64 'x' as the id of the blob this bootstrap is inlined in; "
    "an image's merged bootstrap names that blob by its sha256 digest"
)


def describe_bootstrap(data: bytes, *, files: bool = False, own_blob_id: str | None = None) -> dict[str, Any]:
    """``own_blob_id``: the real id of the blob holding ``data``, when it is read from one."""
    boot = read_bootstrap(data)
    out: dict[str, Any] = {
        "block_size": boot.block_size,
        "inodes": boot.inos,
        "chunk_size": boot.chunk_size,
        "flags": flag_names(boot.flags, _SUPER_FLAG_NAMES),
        "blobs": [_describe_blob_info(b, own_blob_id) for b in boot.blobs],
        "prefetch": list(boot.prefetch),
        "chunk_table_entries": len(boot.chunk_table),
    }
    if files:
        out["files"] = list(_walk_files(boot))
    return out


def _describe_blob_info(blob: BlobInfo, own_blob_id: str | None) -> dict[str, Any]:
    identity: dict[str, Any] = {"blob_id": blob.blob_id}
    if blob.blob_id == layout.INLINE_BLOB_ID_PLACEHOLDER:
        identity["placeholder"] = True
        if own_blob_id is not None:
            identity["real_blob_id"] = own_blob_id
        identity["note"] = PLACEHOLDER_NOTE + (
            " (real_blob_id)" if own_blob_id is not None else ", which a lone bootstrap does not know"
        )
    return {
        **identity,
        "chunk_count": blob.chunk_count,
        "compressor": _COMPRESSOR_NAMES.get(blob.compressor, str(blob.compressor)),
        "digester": _DIGESTER_NAMES.get(blob.digester, str(blob.digester)),
        "features": flag_names(blob.features, _BLOB_FEATURE_NAMES),
        "compressed_size": blob.compressed_size,
        "uncompressed_size": blob.uncompressed_size,
        "ci_offset": blob.ci_offset,
        "ci_compressed_size": blob.ci_compressed_size,
        "ci_uncompressed_size": blob.ci_uncompressed_size,
    }


def _walk_files(boot: Bootstrap) -> Iterator[dict[str, Any]]:
    for path, node in walk(boot.root):
        inode = node.inode
        entry: dict[str, Any] = {
            "path": path.decode("utf-8", "backslashreplace"),
            "type": _KIND_NAMES.get(inode.mode & 0o170000, "unknown"),
            "mode": f"{inode.mode & 0o7777:04o}",
            "uid": inode.uid,
            "gid": inode.gid,
            "size": inode.size,
            "mtime": inode.mtime,
            "mtime_nsec": inode.mtime_nsec,
        }
        if inode.is_symlink:
            entry["target"] = inode.symlink_target.decode("utf-8", "backslashreplace")
        if inode.xattrs:
            entry["xattrs"] = {
                k.decode("utf-8", "backslashreplace"): v.hex() for k, v in sorted(inode.xattrs.items())
            }
        if inode.chunks:
            entry["chunks"] = [
                {
                    "digest": c.digest.hex(),
                    "blob_index": c.blob_index,
                    "index": c.index,
                    "file_offset": c.file_offset,
                    "compressed_offset": c.compressed_offset,
                    "compressed_size": c.compressed_size,
                    "uncompressed_offset": c.uncompressed_offset,
                    "uncompressed_size": c.uncompressed_size,
                }
                for c in inode.chunks
            ]
        yield entry


def render_text(description: dict[str, Any], indent: str = "") -> str:
    """A readable multi-line rendering of a :func:`describe_file` result."""
    lines: list[str] = []
    for key, value in description.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(render_text(value, indent + "  "))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{key}: ({len(value)})")
            for item in value:
                summary = ", ".join(f"{k}={v}" for k, v in item.items() if not isinstance(v, list | dict))
                lines.append(f"{indent}  - {summary}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)
