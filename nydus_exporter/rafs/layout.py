"""The RAFS v6 on-disk format: every magic number, flag, size and struct in one place.

No other module writes a numeric offset. Names follow nydus (``RafsV6SuperBlock`` ...) and
EROFS (``erofs_fs.h``) so they can be looked up; ``[format §n]`` refers to a section of
``docs/rafs-v6-format.md``. All integers are little-endian.
"""

from __future__ import annotations

import struct
from typing import Final

# ---------------------------------------------------------------------------------------------
# Bootstrap geometry ([format §2.1])

EROFS_BLOCK_SIZE: Final = 4096  # bs of every non-tarfs image
EROFS_BLKSZBITS: Final = 12
EROFS_SUPER_OFFSET: Final = 1024  # the superblock follows 1024 zero bytes
EROFS_SUPER_MAGIC_V1: Final = 0xE0F5E1E2
EROFS_INODE_SLOT: Final = 32  # nid = (offset - meta_addr) / 32
EXT_SUPER_OFFSET: Final = 0x480  # RafsV6SuperBlockExt
DEVICE_TABLE_OFFSET: Final = 0x580  # = s_devt_slotoff * 128
DEVT_SLOTOFF: Final = 11
DEVICE_SLOT_SIZE: Final = 128
BLOB_ENTRY_SIZE: Final = 256  # RafsV6Blob
CHUNK_TABLE_ENTRY_SIZE: Final = 80  # RafsV5ChunkInfo
PREFETCH_ENTRY_SIZE: Final = 4  # u32 nid
ROOT_NID: Final = 128  # the tree starts one block after meta_addr (glibc treats ino 0 as deleted)
MAPPED_BLKADDR_ALIGN: Final = 0x80000  # 512 KiB, nydus >= v2.3.0 ([format §2.4])
MAX_BLOBS: Final = 255  # device id is a u8 (nydus asserts N < 255)

# s_feature_compat / s_feature_incompat ([format §2.2])
EROFS_FEATURE_COMPAT_RAFS_V6: Final = 0x4000_0000
EROFS_FEATURE_INCOMPAT_CHUNKED_FILE: Final = 0x4
EROFS_FEATURE_INCOMPAT_DEVICE_TABLE: Final = 0x8
RAFS_V6_INCOMPAT: Final = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE

# RafsSuperFlags (u64, [format §2.3])
RAFS_COMPRESSION_NONE: Final = 0x0000_0001
RAFS_COMPRESSION_LZ4: Final = 0x0000_0002
RAFS_HASH_BLAKE3: Final = 0x0000_0004
RAFS_HASH_SHA256: Final = 0x0000_0008
RAFS_EXPLICIT_UID_GID: Final = 0x0000_0010
RAFS_HAS_XATTR: Final = 0x0000_0020
RAFS_COMPRESSION_GZIP: Final = 0x0000_0040
RAFS_COMPRESSION_ZSTD: Final = 0x0000_0080
RAFS_INLINED_CHUNK_DIGEST: Final = 0x0000_0100
RAFS_TARTFS_MODE: Final = 0x0000_0200
RAFS_ENCRYPTION_NONE: Final = 0x0100_0000
RAFS_ENCRYPTION_ASE_128_XTS: Final = 0x0200_0000
RAFS_KNOWN_FLAGS: Final = 0x0300_03FF
# Exactly one bit of each group must be set (nydusd validation, [format §2.3]).
RAFS_COMPRESSION_MASK: Final = (
    RAFS_COMPRESSION_NONE | RAFS_COMPRESSION_LZ4 | RAFS_COMPRESSION_GZIP | RAFS_COMPRESSION_ZSTD
)
RAFS_HASH_MASK: Final = RAFS_HASH_BLAKE3 | RAFS_HASH_SHA256

# BlobFeatures (u32, [format §2.5])
BLOB_FEATURE_ALIGNED: Final = 0x0000_0001
BLOB_FEATURE_INLINED_FS_META: Final = 0x0000_0002
BLOB_FEATURE_CHUNK_INFO_V2: Final = 0x0000_0004
BLOB_FEATURE_ZRAN: Final = 0x0000_0008
BLOB_FEATURE_SEPARATE: Final = 0x0000_0010
BLOB_FEATURE_INLINED_CHUNK_DIGEST: Final = 0x0000_0020
BLOB_FEATURE_TARFS: Final = 0x0000_0040
BLOB_FEATURE_BATCH: Final = 0x0000_0080
BLOB_FEATURE_ENCRYPTED: Final = 0x0000_0100
BLOB_FEATURE_HAS_TAR_HEADER: Final = 0x1000_0000
BLOB_FEATURE_HAS_TOC: Final = 0x2000_0000
BLOB_FEATURE_CAP_TAR_TOC: Final = 0x4000_0000

# BlobChunkFlags in the chunk table ([format §2.14])
CHUNK_FLAG_COMPRESSED: Final = 0x1
CHUNK_FLAG_ENCRYPTED: Final = 0x4
CHUNK_FLAG_BATCH: Final = 0x8
CHUNK_FLAG_HAS_CRC32: Final = 0x10

# Algorithm ids in the blob table and ci header ([format §4.1])
COMPRESSOR_ID_NONE: Final = 0
COMPRESSOR_ID_LZ4_BLOCK: Final = 1
COMPRESSOR_ID_GZIP: Final = 2
COMPRESSOR_ID_ZSTD: Final = 3
DIGESTER_ID_BLAKE3: Final = 0
DIGESTER_ID_SHA256: Final = 1

# Chunk size limits ([format §4.1])
MIN_CHUNK_SIZE: Final = 0x1000
MAX_CHUNK_SIZE: Final = 0x100_0000
DEFAULT_CHUNK_SIZE: Final = 0x10_0000
MAX_CHUNKS_PER_BLOB: Final = 1 << 24

# ---------------------------------------------------------------------------------------------
# Inodes ([format §2.7])

EROFS_INODE_LAYOUT_EXTENDED: Final = 1  # version bit of i_format
EROFS_INODE_FLAT_PLAIN: Final = 0
EROFS_INODE_FLAT_INLINE: Final = 2
EROFS_INODE_CHUNK_BASED: Final = 4
EROFS_CHUNK_FORMAT_INDEXES: Final = 0x0020
EROFS_INODE_EXTENDED_SIZE: Final = 64
EROFS_INODE_COMPACT_SIZE: Final = 32
CHUNK_INDEX_SIZE: Final = 8  # RafsV6InodeChunkAddr

# Dirent file types ([format §2.8])
EROFS_FT_UNKNOWN: Final = 0
EROFS_FT_REG_FILE: Final = 1
EROFS_FT_DIR: Final = 2
EROFS_FT_CHRDEV: Final = 3
EROFS_FT_BLKDEV: Final = 4
EROFS_FT_FIFO: Final = 5
EROFS_FT_SOCK: Final = 6
EROFS_FT_SYMLINK: Final = 7
DIRENT_SIZE: Final = 12

# Inline xattrs ([format §2.13]): prefix -> e_name_index, in match order.
XATTR_IBODY_HEADER_SIZE: Final = 12
XATTR_ENTRY_SIZE: Final = 4
XATTR_PREFIXES: Final[tuple[tuple[bytes, int], ...]] = (
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
)
XATTR_INDEX_TO_PREFIX: Final = {index: prefix for prefix, index in XATTR_PREFIXES}

# ---------------------------------------------------------------------------------------------
# Data blob ([format §3])

BLOB_META_MAGIC: Final = 0xB10BB10B
BLOB_META_HEADER_SIZE: Final = 4096
CHUNK_INFO_V1_SIZE: Final = 16
CHUNK_INFO_V2_SIZE: Final = 24
TAR_BLOCK_SIZE: Final = 512
TOC_ENTRY_SIZE: Final = 128
INLINE_BLOB_ID_PLACEHOLDER: Final = "x" * 64  # blob id inside an inline-meta blob's own bootstrap

# ToC entry flags (a different encoding from the algorithm ids, [format §3.7])
TOC_FLAG_NONE: Final = 0x1
TOC_FLAG_ZSTD: Final = 0x2
TOC_FLAG_LZ4_BLOCK: Final = 0x4
TOC_FLAG_COMPRESSION_MASK: Final = 0xF

# Section names (tar header names and ToC entry names)
TOC_NAME_IMAGE_BLOB: Final = b"image.blob"
TOC_NAME_BLOB_META: Final = b"blob.meta"
TOC_NAME_BLOB_META_HEADER: Final = b"blob.meta.header"
TOC_NAME_BLOB_DIGEST: Final = b"blob.digest"
TOC_NAME_IMAGE_BOOT: Final = b"image.boot"
TOC_NAME_RAFS_BLOB_TOC: Final = b"rafs.blob.toc"

# ---------------------------------------------------------------------------------------------
# Structs. Field lists are in the comments; sizes are asserted below.

# RafsV6SuperBlock at abs 1024 ([format §2.2]): magic, checksum, feature_compat, blkszbits, extslots,
# root_nid, inos, build_time, build_time_nsec, blocks, meta_blkaddr, xattr_blkaddr, uuid,
# volume_name, feature_incompat, s_u, extra_devices, devt_slotoff, reserved.
SUPER_BLOCK: Final = struct.Struct("<IIIBBHQQIIII16s16sIHHH38s")
# RafsV6SuperBlockExt at abs 0x480 ([format §2.3]): flags, blob_table_offset, blob_table_size,
# chunk_size, chunk_table_offset, chunk_table_size, prefetch_table_offset,
# prefetch_table_size, padding, reserved.
SUPER_BLOCK_EXT: Final = struct.Struct("<QQIIQQQII200s")
# erofs_deviceslot ([format §2.4]): tag, blocks, mapped_blkaddr, reserved.
DEVICE_SLOT: Final = struct.Struct("<64sII56s")
# RafsV6Blob ([format §2.5]): blob_id, blob_index, chunk_size, chunk_count, compression_algo,
# digest_algo, features, compressed_size, uncompressed_size, blob_toc_size, ci_compressor,
# ci_offset, ci_compressed_size, ci_uncompressed_size, blob_toc_digest, blob_meta_digest,
# blob_meta_size, cipher_iv, cipher_algo, reserved.
BLOB_ENTRY: Final = struct.Struct("<64sIIIIIIQQIIQQQ32s32sQQI36s")
# Extended inode ([format §2.7.2]): format, xattr_icount, mode, reserved, size, u, ino, uid, gid,
# mtime, mtime_nsec, nlink, reserved2.
INODE_EXTENDED: Final = struct.Struct("<HHHHQIIIIQII16s")
# Compact inode ([format §2.7.3], parse only): format, xattr_icount, mode, nlink, size, reserved, u,
# ino, uid, gid, reserved2.
INODE_COMPACT: Final = struct.Struct("<HHHHIIIIHHI")
# erofs_dirent ([format §2.8]): nid, nameoff, file_type, reserved.
DIRENT: Final = struct.Struct("<QHBB")
# RafsV6InodeChunkAddr ([format §2.11]): blob_addr_lo (ci index low 16 bits), blob_addr_hi
# (device id | ci index bits 16-23 << 8), blk_addr.
CHUNK_INDEX: Final = struct.Struct("<HHI")
# erofs_xattr_ibody_header ([format §2.13]): name_filter, shared_count, reserved.
XATTR_IBODY_HEADER: Final = struct.Struct("<IB7s")
# erofs_xattr_entry ([format §2.13]): name_len, name_index, value_size.
XATTR_ENTRY: Final = struct.Struct("<BBH")
# RafsV5ChunkInfo ([format §2.14]): block_id, blob_index, flags, compressed_size, uncompressed_size,
# compressed_offset, uncompressed_offset, file_offset, index, crc32.
CHUNK_TABLE_ENTRY: Final = struct.Struct("<32sIIIIQQQII")
# BlobCompressionContextHeader ([format §3.3]): magic, features, ci_compressor, ci_entries, ci_offset,
# ci_compressed_size, ci_uncompressed_size, ci_zran_offset, ci_zran_size, ci_zran_count,
# reserved, magic2.
BLOB_META_HEADER: Final = struct.Struct("<IIIIQQQQQI4032sI")
# BlobChunkInfoV1Ondisk ([format §3.4]): uncomp_info, comp_info.
CHUNK_INFO_V1: Final = struct.Struct("<QQ")
# BlobChunkInfoV2Ondisk ([format §3.4]): uncomp_info, comp_info, data.
CHUNK_INFO_V2: Final = struct.Struct("<QQQ")
# TocEntry ([format §3.7]): flags, reserved1, name, uncompressed_digest, compressed_offset,
# compressed_size, uncompressed_size, reserved2.
TOC_ENTRY: Final = struct.Struct("<II16s32sQQQ48s")

assert SUPER_BLOCK.size == 128
assert SUPER_BLOCK_EXT.size == 256
assert DEVICE_SLOT.size == DEVICE_SLOT_SIZE
assert BLOB_ENTRY.size == BLOB_ENTRY_SIZE
assert INODE_EXTENDED.size == EROFS_INODE_EXTENDED_SIZE
assert INODE_COMPACT.size == EROFS_INODE_COMPACT_SIZE
assert DIRENT.size == DIRENT_SIZE
assert CHUNK_INDEX.size == CHUNK_INDEX_SIZE
assert XATTR_IBODY_HEADER.size == XATTR_IBODY_HEADER_SIZE
assert XATTR_ENTRY.size == XATTR_ENTRY_SIZE
assert CHUNK_TABLE_ENTRY.size == CHUNK_TABLE_ENTRY_SIZE
assert BLOB_META_HEADER.size == BLOB_META_HEADER_SIZE
assert CHUNK_INFO_V1.size == CHUNK_INFO_V1_SIZE
assert CHUNK_INFO_V2.size == CHUNK_INFO_V2_SIZE
assert TOC_ENTRY.size == TOC_ENTRY_SIZE
assert DEVICE_TABLE_OFFSET == DEVT_SLOTOFF * DEVICE_SLOT_SIZE


def round_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment`` (any positive alignment)."""
    return (value + alignment - 1) // alignment * alignment


def encode_rdev(major: int, minor: int) -> int:
    """The 32-bit Linux "new" device encoding of glibc ``makedev`` stored in ``i_u`` ([format §2.7.2])."""
    return (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)


def decode_rdev(rdev: int) -> tuple[int, int]:
    """Inverse of :func:`encode_rdev`: ``(major, minor)``."""
    major = (rdev >> 8) & 0xFFF
    minor = (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)
    return major, minor
