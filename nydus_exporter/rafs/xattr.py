"""Inline extended attributes of RAFS v6 inodes ([format §2.13]).

Layout right after the inode: a 12-byte ``erofs_xattr_ibody_header`` (all zero: no shared
xattrs), then per attribute an ``erofs_xattr_entry`` {name_len, name_index, value_size}, the
name suffix, the value, zero padding to 4 bytes. ``i_xattr_icount`` counts 4-byte units after
the first one: ``icount = (size - 12) / 4 + 1``.

nydus-image writes entries in random (HashMap) order; we write them sorted by full name so a
bootstrap is reproducible. The reader accepts any order.
"""

from __future__ import annotations

from collections.abc import Mapping

from nydus_exporter.errors import FormatError, UnsupportedEntryError
from nydus_exporter.rafs import layout

MAX_NAME_LEN = 255  # XATTR_NAME_MAX: the full name, prefix included
MAX_VALUE_LEN = 0xFFFF  # e_value_size is a u16
MAX_ICOUNT = 0xFFFF  # i_xattr_icount is a u16

# Prefixes that name exactly one attribute (POSIX ACLs): the suffix must be empty, otherwise
# the kernel would list the attribute under the bare prefix and the name would be lost.
_WHOLE_NAME_INDEXES = frozenset({2, 3})


def split_name(name: bytes) -> tuple[int, bytes]:
    """``(e_name_index, suffix)`` for a full attribute name, or UnsupportedEntryError."""
    if len(name) > MAX_NAME_LEN:
        raise UnsupportedEntryError(f"xattr name {name!r} is {len(name)} bytes, longer than {MAX_NAME_LEN}")
    for prefix, index in layout.XATTR_PREFIXES:  # first match wins ([format §2.13])
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            if index in _WHOLE_NAME_INDEXES:
                if suffix:
                    raise UnsupportedEntryError(f"xattr name {name!r} is not a POSIX ACL name")
            elif not suffix:
                raise UnsupportedEntryError(f"xattr name {name!r} has an empty name after its prefix")
            return index, suffix
    raise UnsupportedEntryError(
        f"xattr {name!r} has a prefix RAFS v6 cannot store "
        "(only user., trusted., security. and system.posix_acl_*)"
    )


def _entry_size(suffix_len: int, value_len: int) -> int:
    return layout.round_up(layout.XATTR_ENTRY_SIZE + suffix_len + value_len, 4)


def xattr_size(xattrs: Mapping[bytes, bytes]) -> int:
    """Bytes the inline xattr area takes after the inode (0 without xattrs); validates names."""
    if not xattrs:
        return 0
    size = layout.XATTR_IBODY_HEADER_SIZE
    for name, value in xattrs.items():
        _, suffix = split_name(name)
        if len(value) > MAX_VALUE_LEN:
            raise UnsupportedEntryError(
                f"xattr {name!r} value is {len(value)} bytes, longer than {MAX_VALUE_LEN}"
            )
        size += _entry_size(len(suffix), len(value))
    if icount_of_size(size) > MAX_ICOUNT:
        raise UnsupportedEntryError(f"xattrs take {size} bytes, more than an inode can hold")
    return size


def icount_of_size(size: int) -> int:
    """``i_xattr_icount`` for an xattr area of ``size`` bytes (0 -> 0)."""
    if size == 0:
        return 0
    return (size - layout.XATTR_IBODY_HEADER_SIZE) // 4 + 1


def size_of_icount(icount: int) -> int:
    """Inverse of :func:`icount_of_size`."""
    if icount == 0:
        return 0
    return layout.XATTR_IBODY_HEADER_SIZE + 4 * (icount - 1)


def encode_xattrs(xattrs: Mapping[bytes, bytes]) -> bytes:
    """The inline xattr area (header + entries sorted by full name); b"" without xattrs."""
    if not xattrs:
        return b""
    out = bytearray(layout.XATTR_IBODY_HEADER.pack(0, 0, bytes(7)))
    for name in sorted(xattrs):
        value = xattrs[name]
        index, suffix = split_name(name)
        if len(value) > MAX_VALUE_LEN:
            raise UnsupportedEntryError(
                f"xattr {name!r} value is {len(value)} bytes, longer than {MAX_VALUE_LEN}"
            )
        start = len(out)
        out += layout.XATTR_ENTRY.pack(len(suffix), index, len(value))
        out += suffix
        out += value
        out += bytes(start + _entry_size(len(suffix), len(value)) - len(out))
    if icount_of_size(len(out)) > MAX_ICOUNT:
        raise UnsupportedEntryError(f"xattrs take {len(out)} bytes, more than an inode can hold")
    return bytes(out)


def decode_xattrs(data: bytes | memoryview, offset: int, icount: int) -> dict[bytes, bytes]:
    """Parse the inline xattr area of ``icount`` at ``data[offset:]``; FormatError if corrupt."""
    size = size_of_icount(icount)
    if size == 0:
        return {}
    end = offset + size
    if offset < 0 or end > len(data):
        raise FormatError(f"xattr area [{offset}, {end}) extends past the end of the image")
    _, shared_count, _ = layout.XATTR_IBODY_HEADER.unpack_from(data, offset)
    if shared_count:
        raise FormatError(f"xattr area at {offset} uses {shared_count} shared xattrs (unsupported)")
    pos = offset + layout.XATTR_IBODY_HEADER_SIZE
    out: dict[bytes, bytes] = {}
    # Each entry is at least 4 bytes, so this loop runs at most icount times.
    while pos + layout.XATTR_ENTRY_SIZE <= end:
        name_len, index, value_len = layout.XATTR_ENTRY.unpack_from(data, pos)
        if name_len == 0 and index == 0 and value_len == 0:
            # Zero padding at the end of the area (an all-zero entry names nothing).
            if any(bytes(data[pos:end])):
                raise FormatError(f"garbage after the xattr entries at {pos}")
            break
        prefix = layout.XATTR_INDEX_TO_PREFIX.get(index)
        if prefix is None:
            raise FormatError(f"xattr entry at {pos} has unknown name index {index}")
        entry_end = pos + _entry_size(name_len, value_len)
        if entry_end > end:
            raise FormatError(f"xattr entry at {pos} overruns the xattr area ending at {end}")
        body = pos + layout.XATTR_ENTRY_SIZE
        name = prefix + bytes(data[body : body + name_len])
        if name in out:
            raise FormatError(f"duplicate xattr {name!r} at {pos}")
        out[name] = bytes(data[body + name_len : body + name_len + value_len])
        pos = entry_end
    return out
