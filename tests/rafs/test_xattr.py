"""Inline xattr encoding ([format §2.13]): sizes, entry bytes, prefixes, limits and corrupt input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nydus_exporter.errors import FormatError, UnsupportedEntryError
from nydus_exporter.rafs import xattr


def test_spec_example_size_and_icount() -> None:
    # [format §2.13]: {user.a=1B, trusted.b=1B} -> size 28, icount 5.
    encoded = xattr.encode_xattrs({b"user.a": b"1", b"trusted.b": b"2"})
    assert len(encoded) == 28
    assert xattr.xattr_size({b"user.a": b"1", b"trusted.b": b"2"}) == 28
    assert xattr.icount_of_size(28) == 5
    assert xattr.size_of_icount(5) == 28


def test_entry_bytes_follow_the_erofs_layout() -> None:
    encoded = xattr.encode_xattrs({b"security.selinux": b"ctx\0"})
    # 12-byte ibody header: name filter 0, no shared xattrs, reserved zeros.
    assert encoded[:12] == bytes(12)
    # erofs_xattr_entry {name_len=7, name_index=6 (security.), value_size=4}, suffix, value, pad.
    assert encoded[12:16] == bytes([7, 6, 4, 0])
    assert encoded[16:23] == b"selinux"
    assert encoded[23:27] == b"ctx\0"
    assert encoded[27:] == bytes(1)  # 4 + 7 + 4 = 15 -> padded to 16
    assert len(encoded) == 12 + 16


def test_entries_are_sorted_by_full_name_whatever_the_insertion_order() -> None:
    one = xattr.encode_xattrs({b"user.b": b"1", b"trusted.a": b"2", b"user.a": b"3"})
    two = xattr.encode_xattrs({b"user.a": b"3", b"user.b": b"1", b"trusted.a": b"2"})
    assert one == two
    # trusted.a < user.a < user.b: the first entry is the trusted one (name index 4).
    assert one[13] == 4
    assert list(xattr.decode_xattrs(one, 0, xattr.icount_of_size(len(one)))) == [
        b"trusted.a",
        b"user.a",
        b"user.b",
    ]


def test_no_xattrs_take_no_space() -> None:
    assert xattr.encode_xattrs({}) == b""
    assert xattr.xattr_size({}) == 0
    assert xattr.icount_of_size(0) == 0
    assert xattr.decode_xattrs(b"", 0, 0) == {}


@pytest.mark.parametrize(
    ("name", "index", "suffix"),
    [
        (b"user.x", 1, b"x"),
        (b"system.posix_acl_access", 2, b""),
        (b"system.posix_acl_default", 3, b""),
        (b"trusted.overlay.opaque", 4, b"overlay.opaque"),
        (b"security.capability", 6, b"capability"),
    ],
)
def test_prefix_indexes(name: bytes, index: int, suffix: bytes) -> None:
    assert xattr.split_name(name) == (index, suffix)


@pytest.mark.parametrize(
    "name", [b"system.foo", b"SCHILY.xattr.x", b"com.apple.quarantine", b"user.", b"trusted."]
)
def test_unsupported_names_are_rejected_naming_the_key(name: bytes) -> None:
    with pytest.raises(UnsupportedEntryError) as info:
        xattr.encode_xattrs({name: b"v"})
    assert repr(name) in str(info.value)


def test_acl_names_must_be_exact() -> None:
    with pytest.raises(UnsupportedEntryError):
        xattr.split_name(b"system.posix_acl_accessX")


def test_name_and_value_limits() -> None:
    longest = b"user." + b"n" * 250
    assert len(longest) == 255
    xattr.encode_xattrs({longest: b""})
    with pytest.raises(UnsupportedEntryError, match="longer than 255"):
        xattr.encode_xattrs({longest + b"n": b""})
    xattr.encode_xattrs({b"user.big": b"v" * 0xFFFF})
    with pytest.raises(UnsupportedEntryError, match="longer than 65535"):
        xattr.encode_xattrs({b"user.big": b"v" * 0x10000})
    with pytest.raises(UnsupportedEntryError, match="longer than 65535"):
        xattr.xattr_size({b"user.big": b"v" * 0x10000})


def test_total_size_limited_by_u16_icount() -> None:
    # Five 64 KiB values exceed what a 16-bit icount can describe (about 256 KiB).
    many = {b"user.%d" % i: b"v" * 0xFFFF for i in range(5)}
    with pytest.raises(UnsupportedEntryError, match="more than an inode can hold"):
        xattr.encode_xattrs(many)


_names = st.one_of(
    st.binary(min_size=1, max_size=40).map(lambda s: b"user." + s),
    st.binary(min_size=1, max_size=40).map(lambda s: b"trusted." + s),
    st.binary(min_size=1, max_size=40).map(lambda s: b"security." + s),
    st.sampled_from([b"system.posix_acl_access", b"system.posix_acl_default"]),
)


@given(st.dictionaries(_names, st.binary(max_size=300), max_size=8), st.binary(max_size=9))
def test_decode_inverts_encode(xattrs: dict[bytes, bytes], before: bytes) -> None:
    encoded = xattr.encode_xattrs(xattrs)
    assert len(encoded) == xattr.xattr_size(xattrs)
    assert len(encoded) % 4 == 0
    data = before + encoded + b"\xff" * 7  # surrounding bytes must not be read
    assert xattr.decode_xattrs(data, len(before), xattr.icount_of_size(len(encoded))) == xattrs


def test_decode_rejects_unknown_index() -> None:
    bad = bytearray(xattr.encode_xattrs({b"user.a": b"b"}))
    bad[13] = 5  # index 5 (lustre.) is not something nydus writes or we can name
    with pytest.raises(FormatError, match="unknown name index 5"):
        xattr.decode_xattrs(bytes(bad), 0, xattr.icount_of_size(len(bad)))


def test_decode_rejects_overrun_and_shared_xattrs_and_truncation() -> None:
    good = xattr.encode_xattrs({b"user.a": b"b"})
    icount = xattr.icount_of_size(len(good))
    overrun = bytearray(good)
    overrun[14] = 200  # value_size 200 runs past the area
    with pytest.raises(FormatError, match="overruns"):
        xattr.decode_xattrs(bytes(overrun), 0, icount)
    shared = bytearray(good)
    shared[4] = 1
    with pytest.raises(FormatError, match="shared"):
        xattr.decode_xattrs(bytes(shared), 0, icount)
    with pytest.raises(FormatError, match="past the end"):
        xattr.decode_xattrs(good[:-1], 0, icount)


def test_decode_rejects_duplicate_names() -> None:
    one = xattr.encode_xattrs({b"user.a": b"b"})
    doubled = one + one[12:]
    with pytest.raises(FormatError, match="duplicate"):
        xattr.decode_xattrs(doubled, 0, xattr.icount_of_size(len(doubled)))
