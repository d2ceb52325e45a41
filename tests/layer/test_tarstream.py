"""iter_entries: every tar feature a layer may use, cross-checked with stdlib tarfile where it
reads the same thing, plus the two tar fixtures of the nydus repository."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import random
import shutil
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import pytest
import zstandard

from nydus_exporter.errors import CorruptLayerError, UnsafePathError, UnsupportedEntryError
from nydus_exporter.layer.compression import open_layer_stream
from nydus_exporter.layer.entry import EntryKind, LayerEntry
from nydus_exporter.layer.tarstream import iter_entries, normalize_path
from tests.conftest import PROJECT_ROOT, require
from tests.helpers import tarbuild as tb

RNG = random.Random(20240601)


@dataclass
class Seen:
    """An entry with its data read out (entries' data views die with the next entry)."""

    entry: LayerEntry
    data: bytes | None


def read_tar(data: bytes | Iterable[bytes] | BinaryIO) -> list[Seen]:
    if isinstance(data, bytes):
        stream: BinaryIO = io.BytesIO(data)
    elif hasattr(data, "read"):
        stream = cast(BinaryIO, data)
    else:
        stream = cast(BinaryIO, tb.IterStream(data))
    return [Seen(e, e.data.read() if e.data is not None else None) for e in iter_entries(stream)]


def by_path(data: bytes) -> dict[bytes, Seen]:
    return {s.entry.path: s for s in read_tar(data)}


def one(data: bytes) -> Seen:
    entries = read_tar(data)
    assert len(entries) == 1, [s.entry.path for s in entries]
    return entries[0]


def _tarfile_path(name: str) -> bytes:
    # stdlib tarfile keeps "./" prefixes and strips trailing slashes; normalise independently.
    path = posixpath.normpath("/" + name.lstrip("/"))
    return path.encode("utf-8", "surrogateescape")


_TARFILE_KINDS = {
    tarfile.REGTYPE: EntryKind.REGULAR,
    tarfile.AREGTYPE: EntryKind.REGULAR,
    tarfile.CONTTYPE: EntryKind.REGULAR,
    tarfile.GNUTYPE_SPARSE: EntryKind.REGULAR,
    tarfile.DIRTYPE: EntryKind.DIRECTORY,
    tarfile.SYMTYPE: EntryKind.SYMLINK,
    tarfile.LNKTYPE: EntryKind.HARDLINK,
    tarfile.CHRTYPE: EntryKind.CHAR_DEVICE,
    tarfile.BLKTYPE: EntryKind.BLOCK_DEVICE,
    tarfile.FIFOTYPE: EntryKind.FIFO,
}


def tarfile_view(data: bytes) -> list[tuple[bytes, EntryKind, int, str | None, bytes]]:
    """(path, kind, size, content sha256, link target) of each member, read by stdlib tarfile."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        for member in tf:
            digest = None
            if member.isreg():
                extracted = tf.extractfile(member)
                assert extracted is not None
                digest = hashlib.sha256(extracted.read()).hexdigest()
            link = member.linkname.encode("utf-8", "surrogateescape")
            if member.islnk():
                link = _tarfile_path(member.linkname)
            out.append((_tarfile_path(member.name), _TARFILE_KINDS[member.type], member.size, digest, link))
    return out


def our_view(data: bytes | BinaryIO) -> list[tuple[bytes, EntryKind, int, str | None, bytes]]:
    return [
        (
            s.entry.path,
            s.entry.kind,
            s.entry.size,
            None if s.data is None else hashlib.sha256(s.data).hexdigest(),
            s.entry.link_target,
        )
        for s in read_tar(data)
    ]


def assert_agrees_with_tarfile(data: bytes) -> None:
    ours = our_view(data)
    # tarfile reports a hardlink's size as 0 and a directory's as 0, like us.
    assert ours == tarfile_view(data)


# --------------------------------------------------------------------------------------------
# Entry kinds and their attributes

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # cap_net_raw+ep


def all_kinds(fmt: str) -> bytes:
    return tb.tar_of(
        tb.dir("etc", mode=0o755, uid=1, gid=2, mtime=1000),
        tb.file("etc/hosts", b"127.0.0.1 localhost\n", mode=0o4755, uid=3, gid=4, mtime=2000),
        tb.symlink("etc/link", "../usr/bin/target", mtime=3000),
        tb.hardlink("etc/hosts.hard", "etc/hosts"),
        tb.chardev("dev/null", 1, 3, mode=0o666),
        tb.blockdev("dev/sda", 8, 0, mode=0o660, gid=6),
        tb.fifo("run/fifo", mode=0o600),
        tb.file("empty", b""),
        fmt=fmt,
    )


@pytest.mark.parametrize("fmt", ["pax", "gnu", "ustar"])
def test_every_entry_kind_with_its_attributes(fmt: str) -> None:
    entries = by_path(all_kinds(fmt))
    expected_paths = b"/etc /etc/hosts /etc/link /etc/hosts.hard /dev/null /dev/sda /run/fifo /empty".split()
    assert list(entries) == expected_paths
    etc = entries[b"/etc"].entry
    assert (etc.kind, etc.mode, etc.uid, etc.gid, etc.mtime, etc.mtime_nsec) == (
        EntryKind.DIRECTORY,
        0o755,
        1,
        2,
        1000,
        0,
    )
    hosts = entries[b"/etc/hosts"]
    assert (hosts.entry.kind, hosts.entry.mode, hosts.entry.uid, hosts.entry.gid) == (
        EntryKind.REGULAR,
        0o4755,
        3,
        4,
    )
    assert (hosts.entry.size, hosts.data, hosts.entry.mtime) == (20, b"127.0.0.1 localhost\n", 2000)
    link = entries[b"/etc/link"].entry
    assert (link.kind, link.link_target, link.mode, link.data) == (
        EntryKind.SYMLINK,
        b"../usr/bin/target",
        0o777,
        None,
    )
    hard = entries[b"/etc/hosts.hard"].entry
    assert (hard.kind, hard.link_target, hard.size, hard.data) == (EntryKind.HARDLINK, b"/etc/hosts", 0, None)
    null = entries[b"/dev/null"].entry
    assert (null.kind, null.devmajor, null.devminor, null.mode) == (EntryKind.CHAR_DEVICE, 1, 3, 0o666)
    sda = entries[b"/dev/sda"].entry
    assert (sda.kind, sda.devmajor, sda.devminor, sda.gid) == (EntryKind.BLOCK_DEVICE, 8, 0, 6)
    assert entries[b"/run/fifo"].entry.kind is EntryKind.FIFO
    assert (entries[b"/empty"].entry.size, entries[b"/empty"].data) == (0, b"")
    assert_agrees_with_tarfile(all_kinds(fmt))


@pytest.mark.parametrize("typeflag", [b"0", b"\x00", b"7"], ids=["regular-0", "regular-NUL", "contiguous-7"])
def test_regular_typeflags(typeflag: bytes) -> None:
    data = tb.tar_of(tb.file("f", b"content", typeflag=typeflag))
    seen = one(data)
    assert (seen.entry.kind, seen.data) == (EntryKind.REGULAR, b"content")
    assert_agrees_with_tarfile(data)


def test_old_v7_regular_with_trailing_slash_is_a_directory() -> None:
    seen = one(tb.tar_of(tb.raw_header("olddir/", typeflag=b"\x00", magic=b"\x00" * 8)))
    assert (seen.entry.path, seen.entry.kind) == (b"/olddir", EntryKind.DIRECTORY)


def test_mode_keeps_only_permission_bits() -> None:
    # Some writers put the file type bits into the mode field too.
    seen = one(tb.tar_of(tb.raw_header("f", mode=0o100755)))
    assert seen.entry.mode == 0o755


def test_size_of_non_regular_entries_counts_data_that_is_skipped() -> None:
    # tar-rs (nydus) and GNU tar skip `size` bytes after any header; the next entry must parse.
    data = tb.tar_of(
        tb.raw_header("d", typeflag=b"5", data=b"dumpdir-ish data"),
        tb.raw_header("l", typeflag=b"2", linkname=b"t", data=b"x" * 700),
        tb.file("after", b"ok"),
    )
    entries = by_path(data)
    assert entries[b"/d"].entry.kind is EntryKind.DIRECTORY
    assert entries[b"/l"].entry.link_target == b"t"
    assert entries[b"/after"].data == b"ok"


@pytest.mark.parametrize("typeflag", [b"V", b"M", b"N", b"D", b"A", b"Z", b"8"])
def test_unknown_typeflags_raise_naming_type_and_path(typeflag: bytes) -> None:
    with pytest.raises(UnsupportedEntryError, match=r"type b'.*some/path"):
        read_tar(tb.tar_of(tb.raw_header("some/path", typeflag=typeflag)))


# --------------------------------------------------------------------------------------------
# Paths

NORMALISED = [
    ("a/b", b"/a/b"),
    ("./a/b/", b"/a/b"),
    ("./", b"/"),
    ("/", b"/"),
    (".", b"/"),
    ("a//b///c", b"/a/b/c"),
    ("a/./b/.", b"/a/b"),
    ("a/b/../c", b"/a/c"),
    ("a/..", b"/"),
    ("/abs/path", b"/abs/path"),
    ("..a/b..", b"/..a/b.."),
    ("a/.wh.b", b"/a/.wh.b"),
    ("a/.wh..wh..opq", b"/a/.wh..wh..opq"),
    (".wh..", b"/.wh.."),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED, ids=[r for r, _ in NORMALISED])
def test_paths_are_normalised_to_absolute(raw: str, expected: bytes) -> None:
    assert normalize_path(raw.encode()) == expected
    kind = b"5" if expected == b"/" or raw.endswith("/") else b"0"
    assert one(tb.tar_of(tb.raw_header(raw, typeflag=kind))).entry.path == expected


UNSAFE = [
    pytest.param(tb.raw_header("../x"), id="dotdot"),
    pytest.param(tb.raw_header("a/../../x"), id="climbs-after-descending"),
    pytest.param(tb.raw_header("/../x"), id="absolute-dotdot"),
    pytest.param(tb.raw_header("./.."), id="dot-dotdot"),
    pytest.param(tb.raw_header(".wh."), id="bare-whiteout"),
    pytest.param(tb.raw_header("a/.wh./b"), id="bare-whiteout-directory"),
    pytest.param(tb.raw_header("a/.wh."), id="bare-whiteout-in-dir"),
    pytest.param(tb.raw_header(""), id="empty-name"),
    pytest.param(tb.raw_header("./"), id="root-as-regular-file"),
    pytest.param(tb.raw_header("a/..", typeflag=b"2", linkname=b"x"), id="root-as-symlink"),
    pytest.param(tb.raw_header("l", typeflag=b"1", linkname=b"../x"), id="hardlink-dotdot"),
    pytest.param(tb.raw_header("l", typeflag=b"1", linkname=b"/../x"), id="hardlink-absolute-dotdot"),
    pytest.param(tb.raw_header("l", typeflag=b"1", linkname=b"a/../../x"), id="hardlink-climbs"),
    pytest.param(tb.raw_header("l", typeflag=b"1", linkname=b""), id="hardlink-empty-target"),
    pytest.param(tb.raw_header("l", typeflag=b"1", linkname=b"d/.wh."), id="hardlink-bare-whiteout"),
]


@pytest.mark.parametrize("member", UNSAFE)
def test_unsafe_paths_raise(member: tb.RawHeader) -> None:
    with pytest.raises(UnsafePathError):
        read_tar(tb.tar_of(member))


@pytest.mark.parametrize(
    "members",
    [
        pytest.param([tb.pax_header({"path": b"a\x00b"}), tb.raw_header("x")], id="pax-path"),
        pytest.param(
            [tb.pax_header({"linkpath": b"t\x00"}), tb.raw_header("x", typeflag=b"2")], id="pax-symlink"
        ),
        pytest.param(
            [tb.pax_header({"linkpath": b"t\x00u"}), tb.raw_header("x", typeflag=b"1")], id="pax-hardlink"
        ),
        pytest.param([tb.gnu_long(b"L", b"long\x00name"), tb.raw_header("x")], id="gnu-longname"),
    ],
)
def test_nul_bytes_in_names_raise(members: list[tb.Member]) -> None:
    with pytest.raises(UnsafePathError, match="NUL"):
        read_tar(tb.tar_of(*members))


def test_whiteouts_and_opaque_markers_pass_through_as_ordinary_files() -> None:
    entries = by_path(tb.tar_of(tb.dir("d"), tb.whiteout("d/gone"), tb.opaque("d"), tb.whiteout("top")))
    assert list(entries) == [b"/d", b"/d/.wh.gone", b"/d/.wh..wh..opq", b"/.wh.top"]
    assert all(s.entry.kind is EntryKind.REGULAR and s.data == b"" for s in list(entries.values())[1:])


@pytest.mark.parametrize("name", ["stargz.index.json", "./.prefetch.landmark", "/.no.prefetch.landmark"])
def test_nydus_special_entries_are_skipped_with_their_data(name: str) -> None:
    data = tb.tar_of(
        tb.raw_header(name, data=b"x" * 1500),
        tb.file("sub/stargz.index.json", b"kept: not at the root"),
        tb.file("after", b"after"),
    )
    entries = by_path(data)
    assert list(entries) == [b"/sub/stargz.index.json", b"/after"]
    assert entries[b"/after"].data == b"after"


def test_hardlink_targets_resolve_from_the_archive_root() -> None:
    data = tb.tar_of(
        tb.file("a/b/file", b"x"),
        tb.hardlink("a/b/link1", "./a/b/file"),
        tb.hardlink("c/link2", "a/b/../b/file"),
        tb.hardlink("c/link3", "/a/b/file"),
    )
    assert {s.entry.link_target for s in read_tar(data)[1:]} == {b"/a/b/file"}


def test_symlink_targets_are_kept_verbatim() -> None:
    for target in [b"../../x", b"/abs//path/", b"./rel", b"\xff\xfebinary"]:
        assert one(tb.tar_of(tb.symlink("l", target))).entry.link_target == target


# --------------------------------------------------------------------------------------------
# Names: long, UTF-8, prefix

EMOJI_255 = ("😀" * 63 + "abc").encode()  # 63 * 4 + 3 = 255 bytes, the usual NAME_MAX


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_long_and_utf8_names(fmt: str) -> None:
    long_dir = "d" * 150 + "/" + "e" * 150
    data = tb.tar_of(
        tb.file(EMOJI_255, b"emoji"),
        tb.file("唐诗三百首", b"cjk"),
        tb.file(long_dir + "/file", b"long"),
        tb.symlink("sym", "t" * 300),
        tb.hardlink("hard", long_dir + "/file"),
        fmt=fmt,
    )
    entries = by_path(data)
    assert entries[b"/" + EMOJI_255].data == b"emoji"
    assert entries["/唐诗三百首".encode()].data == b"cjk"
    assert entries[("/" + long_dir + "/file").encode()].data == b"long"
    assert entries[b"/sym"].entry.link_target == b"t" * 300
    assert entries[b"/hard"].entry.link_target == ("/" + long_dir + "/file").encode()
    assert_agrees_with_tarfile(data)


def test_ustar_prefix_field() -> None:
    name = "p" * 120 + "/" + "n" * 90  # only fits ustar split into prefix + name
    data = tb.tar_of(tb.file(name, b"x"), fmt="ustar")
    assert one(data).entry.path == ("/" + name).encode()
    assert_agrees_with_tarfile(data)


def test_invalid_utf8_names_are_kept_as_bytes() -> None:
    data = tb.tar_of(tb.file(b"bad\xff\xfename", b"x"), fmt="gnu")
    assert one(data).entry.path == b"/bad\xff\xfename"


def test_prefix_is_ignored_in_gnu_headers() -> None:
    # In GNU headers the ustar prefix area holds atime/ctime, not a name part.
    block = tb.header_block("name", magic=tb.GNU_MAGIC, fields={"prefix": b"00000000001\x00"})
    assert one(tb.tar_of(tb.raw(block))).entry.path == b"/name"


# --------------------------------------------------------------------------------------------
# PAX


def test_pax_overrides_header_fields() -> None:
    data = tb.tar_of(
        tb.pax_header(
            {"path": "real/name", "uid": "3000000", "gid": "4294967295", "size": "5", "mtime": "1700000000"}
        ),
        tb.raw_header("short", data=b"hello", size=0, uid=1, gid=1, mtime=5),
        tb.pax_header({"linkpath": "t" * 200}),
        tb.raw_header("sym", typeflag=b"2", linkname="short"),
        tb.file("next", b"next"),
    )
    entries = by_path(data)
    real = entries[b"/real/name"]
    assert (real.entry.uid, real.entry.gid, real.entry.size, real.data) == (3000000, 4294967295, 5, b"hello")
    assert (real.entry.mtime, real.entry.mtime_nsec) == (1700000000, 0)
    assert entries[b"/sym"].entry.link_target == b"t" * 200
    assert entries[b"/next"].data == b"next"
    assert_agrees_with_tarfile(data)


def test_large_ids_from_tarfile_pax_and_gnu() -> None:
    for fmt in ("pax", "gnu"):  # PAX records / base-256 fields written by stdlib tarfile
        seen = one(tb.tar_of(tb.file("f", b"x", uid=2097152, gid=3_000_000_000), fmt=fmt))
        assert (seen.entry.uid, seen.entry.gid) == (2097152, 3_000_000_000)


MTIMES = [
    ("1700000000.123456789", 1700000000, 123456789),
    ("1700000000", 1700000000, 0),
    ("1700000000.5", 1700000000, 500000000),
    ("1700000000.", 1700000000, 0),
    ("0.000000001", 0, 1),
    ("1.1234567899", 1, 123456789),  # beyond nanoseconds: truncated
    ("-5", -5, 0),
    ("-1.5", -2, 500000000),  # seconds + nsec/1e9 == -1.5
    ("-0.000000001", -1, 999999999),
    ("-1.0000000001", -2, 999999999),  # rounds toward -infinity
]


@pytest.mark.parametrize(("value", "seconds", "nsec"), MTIMES, ids=[m[0] for m in MTIMES])
def test_pax_mtime_with_subsecond_precision(value: str, seconds: int, nsec: int) -> None:
    seen = one(tb.tar_of(tb.pax_header({"mtime": value}), tb.raw_header("f", mtime=42)))
    assert (seen.entry.mtime, seen.entry.mtime_nsec) == (seconds, nsec)


def test_dsl_subsecond_mtime_round_trips_through_tarfile_writer() -> None:
    seen = one(tb.tar_of(tb.file("f", b"", mtime=-3, mtime_nsec=250)))
    assert (seen.entry.mtime, seen.entry.mtime_nsec) == (-3, 250)


@pytest.mark.parametrize("value", ["abc", "1e5", "--1", "1.2.3", " 5", "0x10", "1" * 40])
def test_bad_pax_mtime_raises(value: str) -> None:
    with pytest.raises(CorruptLayerError, match="mtime"):
        read_tar(tb.tar_of(tb.pax_header({"mtime": value}), tb.raw_header("f")))


@pytest.mark.parametrize(
    ("key", "value"), [("uid", "-1"), ("gid", "12a"), ("size", "+5"), ("size", "1" * 40)]
)
def test_bad_pax_numbers_raise(key: str, value: str) -> None:
    with pytest.raises(CorruptLayerError, match=key):
        read_tar(tb.tar_of(tb.pax_header({key: value}), tb.raw_header("f")))


def test_empty_pax_value_falls_back_to_the_header_field() -> None:
    data = tb.tar_of(
        tb.pax_global({"uid": "77"}),
        tb.pax_header({"uid": "", "mtime": "", "path": ""}),
        tb.raw_header("from-header", uid=5, mtime=9),
    )
    seen = one(data)
    assert (seen.entry.path, seen.entry.uid, seen.entry.mtime) == (b"/from-header", 5, 9)


def test_pax_values_with_newlines_are_split_by_length() -> None:
    data = tb.tar_of(
        tb.file(
            "dir/new\nline", b"x", xattrs={"user.multi": b"a\nb=c\n\n"}, pax={"comment": "x\n12 path=evil\n"}
        ),
        tb.file("next", b"y"),
    )
    entries = by_path(data)
    assert list(entries) == [b"/dir/new\nline", b"/next"]
    assert entries[b"/dir/new\nline"].entry.xattrs == {b"user.multi": b"a\nb=c\n\n"}
    assert_agrees_with_tarfile(data)


def test_repeated_pax_headers_merge_last_wins() -> None:
    data = tb.tar_of(
        tb.pax_header([("uid", "1"), ("path", "first"), ("uid", "2")]),
        tb.pax_header({"path": "second"}),
        tb.raw_header("header-name"),
    )
    seen = one(data)
    assert (seen.entry.path, seen.entry.uid) == (b"/second", 2)


BAD_PAX = [
    pytest.param(b"5 a=b", id="length-too-short"),
    pytest.param(b"100 path=x\n", id="length-beyond-payload"),
    pytest.param(b"x path=a\n", id="non-digit-length"),
    pytest.param(b"9 =empty\n", id="empty-keyword"),
    pytest.param(b"9 noequal\n", id="no-equals-sign"),
    pytest.param(b"12 path=abcd", id="no-trailing-newline"),
    pytest.param(b"0 \n", id="zero-length"),
    pytest.param(b"-9 path=a\n", id="negative-length"),
    pytest.param(b"10 path=a\ngarbage", id="trailing-garbage"),
    pytest.param(b"99999999999999999999999999999999999999 path=a\n", id="huge-length"),
]


@pytest.mark.parametrize("payload", BAD_PAX)
def test_malformed_pax_records_raise(payload: bytes) -> None:
    with pytest.raises(CorruptLayerError, match="PAX header at offset 0"):
        read_tar(tb.tar_of(tb.pax_header(payload), tb.raw_header("f")))


def test_pax_payload_with_trailing_nul_padding_is_accepted() -> None:
    payload = tb.pax_record("path", "padded") + bytes(20)
    assert one(tb.tar_of(tb.pax_header(payload), tb.raw_header("f"))).entry.path == b"/padded"


def test_pax_global_header_defaults_apply_to_following_entries() -> None:
    data = tb.tar_of(
        tb.file("before", b""),
        tb.pax_global(
            {"uid": "7", "mtime": "100.5", "path": "ignored", "SCHILY.xattr.user.g": "gv", "comment": "x"}
        ),
        tb.file("a", b"", uid=1),
        tb.pax_header({"uid": "9", "SCHILY.xattr.user.l": "lv"}),
        tb.raw_header("b"),
        tb.pax_global({"uid": ""}),  # an empty global value deletes the default
        tb.raw_header("c", uid=3),
    )
    entries = by_path(data)
    assert list(entries) == [b"/before", b"/a", b"/b", b"/c"]
    assert (entries[b"/before"].entry.uid, entries[b"/before"].entry.xattrs) == (0, {})
    a = entries[b"/a"].entry
    assert (a.uid, a.mtime, a.mtime_nsec, a.xattrs) == (7, 100, 500000000, {b"user.g": b"gv"})
    b = entries[b"/b"].entry
    assert (b.uid, b.xattrs) == (9, {b"user.g": b"gv", b"user.l": b"lv"})
    assert entries[b"/c"].entry.uid == 3


def test_gnu_long_name_and_link_headers() -> None:
    data = tb.tar_of(
        tb.gnu_long(b"L", "x/" * 100 + "name"),
        tb.gnu_long(b"K", "y" * 200),
        tb.raw_header("trunc", typeflag=b"2", linkname="trunc", magic=tb.GNU_MAGIC),
    )
    seen = one(data)
    assert (seen.entry.path, seen.entry.link_target) == (b"/" + b"x/" * 100 + b"name", b"y" * 200)
    assert_agrees_with_tarfile(data)


def test_extended_header_without_entry_raises() -> None:
    with pytest.raises(CorruptLayerError, match="extended header at offset 0"):
        read_tar(tb.tar_of(tb.pax_header({"path": "x"})))


# --------------------------------------------------------------------------------------------
# xattrs

XATTRS = [
    pytest.param({"security.capability": CAP}, "schily", id="schily-binary-capability"),
    pytest.param({"user.nul": b"\x00\x00\x01\x00"}, "schily", id="schily-leading-nul"),
    pytest.param({"user.bin": bytes(range(256))}, "schily", id="schily-all-byte-values"),
    pytest.param({"user.empty": b""}, "schily", id="schily-empty-value"),
    pytest.param({"security.capability": CAP}, "libarchive", id="libarchive-binary-capability"),
    pytest.param({"user.with space%and=": b"v\x00"}, "libarchive", id="libarchive-urlencoded-name"),
    pytest.param(
        {"user.a": b"1", "user.bb": b"22", "user.ccc": b"333"}, "libarchive", id="libarchive-paddings"
    ),
    pytest.param({"trusted.overlay.opaque": b"y"}, "both", id="both-spellings"),
]


@pytest.mark.parametrize(("xattrs", "style"), XATTRS)
def test_xattrs_keep_exact_bytes(xattrs: dict[str, bytes], style: str) -> None:
    seen = one(tb.tar_of(tb.file("f", b"x", xattrs=xattrs, xattr_style=style)))
    assert seen.entry.xattrs == {k.encode(): v for k, v in xattrs.items()}


def test_xattrs_on_every_entry_kind() -> None:
    data = tb.tar_of(
        tb.dir("d", xattrs={"user.d": "1"}),
        tb.symlink("s", "d", xattrs={"user.s": "2"}),
        tb.file("f", b"", xattrs={"security.capability": CAP}),
    )
    assert [s.entry.xattrs for s in read_tar(data)] == [
        {b"user.d": b"1"}, {b"user.s": b"2"}, {b"security.capability": CAP}
    ]  # fmt: skip


def test_schily_xattr_wins_over_libarchive_spelling() -> None:
    data = tb.tar_of(
        tb.pax_header([("SCHILY.xattr.user.x", "schily"), ("LIBARCHIVE.xattr.user.x", "bGliYXJjaGl2ZQ")]),
        tb.raw_header("f"),
    )
    assert one(data).entry.xattrs == {b"user.x": b"schily"}


@pytest.mark.parametrize(
    "record",
    [("LIBARCHIVE.xattr.user.x", "not base64!"), ("LIBARCHIVE.xattr.user.x", "a"), ("SCHILY.xattr.", "v")],
    ids=["bad-base64-alphabet", "bad-base64-length", "empty-name"],
)
def test_bad_xattr_records_raise(record: tuple[str, str]) -> None:
    with pytest.raises(CorruptLayerError, match="xattr"):
        read_tar(tb.tar_of(tb.pax_header([record]), tb.raw_header("f")))


# --------------------------------------------------------------------------------------------
# Sparse files

SPARSE_LAYOUTS = {
    "one-region": (10000, [(4096, b"a" * 100)]),
    "leading-data-trailing-hole": (1 << 20, [(0, b"head")]),
    "ends-with-data": (9000, [(100, b"x"), (8990, b"0123456789")]),
    "all-hole": (5000, []),
    "empty": (0, []),
    "five-regions-extended-header": (100000, [(i * 10000, bytes([65 + i]) * 777) for i in range(5)]),
    "fifty-regions-two-extended-headers": (60000, [(i * 1000 + 7, RNG.randbytes(300)) for i in range(50)]),
    "adjacent-regions": (3000, [(0, b"a" * 1000), (1000, b"b" * 1000)]),
}


@pytest.mark.parametrize("sparse_format", tb.SPARSE_FORMATS)
@pytest.mark.parametrize("layout", SPARSE_LAYOUTS, ids=list(SPARSE_LAYOUTS))
def test_sparse_files_are_expanded(sparse_format: str, layout: str) -> None:
    size, regions = SPARSE_LAYOUTS[layout]
    member = tb.sparse_file("dir/sparse", size, regions, sparse_format=sparse_format)
    data = tb.tar_of(member, tb.file("after", b"after"))
    entries = by_path(data)
    assert list(entries) == [b"/dir/sparse", b"/after"]
    sparse = entries[b"/dir/sparse"]
    assert (sparse.entry.kind, sparse.entry.size) == (EntryKind.REGULAR, size)
    assert sparse.data == member.data_bytes()
    assert entries[b"/after"].data == b"after"
    assert_agrees_with_tarfile(data)


def test_sparse_data_is_streamed_in_requested_pieces() -> None:
    size = 64 << 20
    member = tb.sparse_file("s", size, [(1 << 20, b"x" * 10), (size - 3, b"end")], sparse_format="pax-1.0")
    entry = next(iter_entries(io.BytesIO(tb.tar_of(member))))
    assert entry.data is not None
    pieces = []
    while chunk := entry.data.read(3 << 20):
        pieces.append(chunk)
    assert [len(p) for p in pieces] == [3 << 20] * 21 + [1 << 20]
    assert hashlib.sha256(b"".join(pieces)).hexdigest() == member.sha256()


@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
def test_sparse_archives_written_by_gnu_tar(tmp_path: Path, version: str) -> None:
    gnu_tar = shutil.which("tar") or "tar"
    version_text = (
        subprocess.run([gnu_tar, "--version"], capture_output=True).stdout if shutil.which("tar") else b""
    )
    require(b"GNU tar" in version_text, "GNU tar is needed to write real sparse archives")
    path = tmp_path / "holey"
    with open(path, "wb") as f:
        f.truncate(30 << 20)
        for offset in (0, 5 << 20, 12 << 20, 13 << 20, 20 << 20, 25 << 20, (30 << 20) - 5000):
            f.seek(offset)
            f.write(RNG.randbytes(5000))
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    for fmt in (["--format=gnu"], ["--format=posix", f"--sparse-version={version}"]):
        archive = subprocess.run(
            [gnu_tar, "-S", *fmt, "-C", str(tmp_path), "-cf", "-", "holey"], check=True, capture_output=True
        ).stdout
        assert len(archive) < 1 << 20  # really stored sparse
        seen = one(archive)
        assert (seen.entry.path, seen.entry.size) == (b"/holey", path.stat().st_size)
        assert seen.data is not None and hashlib.sha256(seen.data).hexdigest() == want


BAD_SPARSE = [
    pytest.param([("GNU.sparse.size", "100"), ("GNU.sparse.map", "0,10,5,10")], 20, id="overlapping"),
    pytest.param([("GNU.sparse.size", "100"), ("GNU.sparse.map", "50,10,0,10")], 20, id="out-of-order"),
    pytest.param([("GNU.sparse.size", "100"), ("GNU.sparse.map", "95,10")], 10, id="beyond-real-size"),
    pytest.param([("GNU.sparse.size", "100"), ("GNU.sparse.map", "0,10")], 20, id="stored-size-mismatch"),
    pytest.param([("GNU.sparse.size", "100"), ("GNU.sparse.map", "0,10,20")], 10, id="odd-map"),
    pytest.param([("GNU.sparse.size", "100"), ("GNU.sparse.offset", "0")], 0, id="unpaired-0.0"),
    pytest.param(
        [("GNU.sparse.size", "100"), ("GNU.sparse.numblocks", "2"), ("GNU.sparse.map", "0,10")],
        10,
        id="numblocks-mismatch",
    ),
    pytest.param([("GNU.sparse.map", "0,10")], 10, id="no-real-size"),
]


@pytest.mark.parametrize(("records", "stored"), BAD_SPARSE)
def test_inconsistent_sparse_maps_raise(records: list[tuple[str, str]], stored: int) -> None:
    data = tb.tar_of(tb.pax_header(records), tb.raw_header("f", data=b"z" * stored))
    with pytest.raises(CorruptLayerError, match=r"sparse|GNU"):
        read_tar(data)


def test_sparse_1_0_map_errors_raise() -> None:
    records = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "10")]
    for stored_map in (b"2\n0\n5\n", b"x\n", b"1\n0\n" + b"9" * 600):  # short map, not a number, overlong
        data = tb.tar_of(tb.pax_header(records), tb.raw_header("f", data=stored_map.ljust(512, b"\0")))
        with pytest.raises(CorruptLayerError):
            read_tar(data)


def test_unknown_sparse_version_is_unsupported() -> None:
    data = tb.tar_of(tb.pax_header({"GNU.sparse.major": "2", "GNU.sparse.minor": "0"}), tb.raw_header("f"))
    with pytest.raises(UnsupportedEntryError, match=r"sparse format 2\.0"):
        read_tar(data)


# --------------------------------------------------------------------------------------------
# Numbers: octal, base-256, big sizes


def test_base256_fields() -> None:
    data = tb.tar_of(
        tb.raw_header(
            "f",
            data=b"hello",
            fields={
                "size": tb.base256(5, 12),
                "uid": tb.base256(3_000_000, 8),
                "gid": tb.base256(2**40, 8),
                "mtime": tb.base256(-1000, 12),
            },
        ),
        tb.raw_header("dev", typeflag=b"3", fields={"devmajor": b"  0253 \x00", "devminor": b"7\x00"}),
    )
    f, dev = read_tar(data)
    assert (f.entry.size, f.data, f.entry.uid, f.entry.gid, f.entry.mtime) == (
        5,
        b"hello",
        3_000_000,
        2**40,
        -1000,
    )
    assert (dev.entry.devmajor, dev.entry.devminor) == (0o253, 7)
    assert_agrees_with_tarfile(data)


@pytest.mark.parametrize(
    ("field", "raw"),
    [("size", b"12x\x00"), ("mode", b"0000999\x00"), ("uid", b"1 2\x00"), ("mtime", b"-5\x00")],
    ids=["size-letter", "mode-digit-9", "uid-inner-space", "mtime-minus-sign"],
)
def test_invalid_numeric_fields_raise(field: str, raw: bytes) -> None:
    with pytest.raises(CorruptLayerError, match=f"invalid {field}"):
        read_tar(tb.tar_of(tb.raw_header("f", fields={field: raw})))


def test_negative_size_raises() -> None:
    with pytest.raises(CorruptLayerError, match="negative size"):
        read_tar(tb.tar_of(tb.raw_header("f", fields={"size": tb.base256(-5, 12)})))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pax", "gnu"], ids=["pax-size-record", "gnu-base256-size"])
def test_sizes_beyond_8_gib_written_by_tarfile(fmt: str) -> None:
    # tarfile writes sizes >= 8 GiB as a PAX size record (pax) or a base-256 field (gnu);
    # the data is generated lazily and skipped, never materialised, and the skip is exact.
    size = (8 << 30) + 123
    headers = next(tb.file("huge", size=size).render(fmt))
    assert headers[124] == 0x80 if fmt == "gnu" else b" size=%d\n" % size in headers  # what we test
    members = tb.tar_stream(tb.file("huge", size=size), tb.file("n", b"z"), fmt=fmt)
    entries = iter_entries(cast(BinaryIO, tb.IterStream(members)))
    huge = next(entries)
    assert (huge.path, huge.size) == (b"/huge", size)
    assert huge.data is not None and huge.data.read(5) == bytes(5)
    following = next(entries)
    assert following.path == b"/n" and following.data is not None and following.data.read() == b"z"


# --------------------------------------------------------------------------------------------
# Data views


def test_partially_read_data_is_skipped_and_stale_views_are_closed() -> None:
    data = tb.tar_of(tb.file("a", b"A" * 3000), tb.file("b", b"B" * 10), tb.file("c", b"C" * 600))
    it = iter_entries(io.BytesIO(data))
    a = next(it)
    assert a.data is not None and a.data.read(5) == b"AAAAA"
    b = next(it)
    assert b.data is not None
    with pytest.raises(ValueError):
        a.data.read(1)
    c = next(it)  # b never read at all
    assert c.data is not None and c.data.read() == b"C" * 600
    assert list(it) == []


def test_data_view_read_semantics() -> None:
    content = RNG.randbytes(100000)
    entry = next(iter_entries(io.BytesIO(tb.tar_of(tb.file("f", content)))))
    view = entry.data
    assert view is not None and view.readable()
    assert view.read(0) == b""
    assert view.read(10) == content[:10]
    buf = bytearray(50)
    assert view.readinto(buf) == 50 and bytes(buf) == content[10:60]  # type: ignore[attr-defined]
    assert view.read(None) == content[60:]  # type: ignore[arg-type]
    assert view.read(10) == b"" and view.read() == b""


def test_data_view_works_with_hashlib_file_digest() -> None:
    content = RNG.randbytes(3 << 20)
    it = iter_entries(io.BytesIO(tb.tar_of(tb.file("f", content))))
    entry = next(it)
    assert entry.data is not None
    assert (
        hashlib.file_digest(cast(io.BufferedIOBase, entry.data), "sha256").hexdigest()
        == hashlib.sha256(content).hexdigest()
    )


def test_big_reads_return_exactly_the_requested_size() -> None:
    content = RNG.randbytes(1 << 20) * 40
    entry = next(iter_entries(cast(BinaryIO, tb.IterStream(tb.tar_stream(tb.file("f", content))))))
    assert entry.data is not None
    sizes = []
    while chunk := entry.data.read(16 << 20):
        sizes.append(len(chunk))
    assert sizes == [16 << 20, 16 << 20, 8 << 20]


class _CountingReader(io.RawIOBase):
    """A layer in memory that counts the reads made of it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.size = len(data)
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        return self._data.readinto(buffer)


def test_file_data_moves_in_large_reads() -> None:
    # No per-byte (or per-block) Python work on the data path: the layer is read in large
    # reads, and each file's data is handed out whole. (bench/metadata.py measures the speed.)
    members = [tb.file(f"f{i}", size=1 << 20, pattern=b"%04d" % i) for i in range(64)]
    layer = _CountingReader(tb.tar_of(*members))
    reads_per_file = []
    for entry in iter_entries(cast(BinaryIO, layer)):
        assert entry.data is not None
        reads = 0
        while entry.data.read(16 << 20):
            reads += 1
        reads_per_file.append(reads)
    assert reads_per_file == [1] * 64
    assert layer.reads * (256 << 10) <= layer.size, f"{layer.reads} reads of {layer.size} bytes"


# --------------------------------------------------------------------------------------------
# End of archive, truncation, corruption

BASIC = [tb.dir("d"), tb.file("d/f", b"data" * 300), tb.symlink("d/s", "f")]


def test_end_of_archive_variants() -> None:
    paths = [b"/d", b"/d/f", b"/d/s"]
    assert [s.entry.path for s in read_tar(tb.tar_of(*BASIC))] == paths
    assert [s.entry.path for s in read_tar(tb.tar_of(*BASIC, end_blocks=1))] == paths
    assert [s.entry.path for s in read_tar(tb.tar_of(*BASIC, end_blocks=1, trailing=bytes(100)))] == paths
    assert [s.entry.path for s in read_tar(tb.tar_of(*BASIC, record_size=10240))] == paths
    assert read_tar(b"") == []
    assert read_tar(bytes(1024)) == []


def test_data_after_the_end_of_archive_is_drained() -> None:
    stream = io.BytesIO(tb.tar_of(*BASIC, trailing=b"trailing garbage" * 1000))
    assert len(read_tar(stream)) == 3
    assert stream.read() == b""  # everything consumed


def test_trailing_data_on_a_pipe_is_drained_so_the_writer_finishes() -> None:
    trailing = [b"\xee" * (1 << 20)] * 8  # far more than a pipe buffer holds
    chunks = [*tb.tar_stream(*BASIC), *trailing]
    with tb.piped(chunks) as pipe:
        assert len(read_tar(open_layer_stream(cast(BinaryIO, pipe.stream)))) == 3
        assert pipe.writer_finished(timeout=10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            b"".join(m for b in BASIC for m in b.render("pax")), "no end-of-archive", id="no-zero-block"
        ),
        pytest.param(
            b"".join(BASIC[0].render("pax")) + bytes(512) + b"".join(BASIC[1].render("pax")) + bytes(1024),
            "lone zero block",
            id="lone-zero-block-then-entry",
        ),
        pytest.param(tb.tar_of(*BASIC)[:700], "truncated", id="mid-data"),
        pytest.param(tb.tar_of(*BASIC)[:600], "truncated", id="mid-header"),
    ],
)
def test_bad_archive_ends_raise(data: bytes, message: str) -> None:
    with pytest.raises(CorruptLayerError, match=message):
        read_tar(data)


@pytest.mark.slow
def test_every_truncation_point_raises_until_the_end_marker() -> None:
    members: list[tb.Member] = [
        tb.dir("d"),
        tb.file("d/f", RNG.randbytes(1500), xattrs={"user.a": "b"}),
        tb.file("l" * 150, b"long name"),
        tb.sparse_file("s", 4000, [(0, b"a"), (3000, b"b" * 600)], sparse_format="gnu"),
        tb.sparse_file("s1", 4000, [(100, b"c")], sparse_format="pax-1.0"),
        tb.hardlink("h", "d/f"),
    ]
    full = tb.tar_of(*members, end_blocks=2)
    end_marker = len(full) - 1024
    assert len(read_tar(full)) == len(members)
    for cut in range(1, end_marker + 512):  # up to a partial first zero block
        with pytest.raises(CorruptLayerError, match=r"truncated|offset"):
            read_tar(full[:cut])
    for cut in range(end_marker + 512, len(full) + 1):
        assert len(read_tar(full[:cut])) == len(members)


def test_bad_header_checksum_raises_with_offset() -> None:
    data = tb.tar_of(tb.file("a", b"x"), tb.raw_header("b", checksum=12345))
    with pytest.raises(CorruptLayerError, match=r"offset 1024.*checksum"):
        read_tar(data)


def test_signed_checksum_of_old_writers_is_accepted() -> None:
    block = bytearray(tb.header_block("caf\xe9".encode("latin-1")))
    signed = (
        sum(b - 256 if b >= 128 else b for b in block[:148])
        + 8 * 32
        + sum(b - 256 if b >= 128 else b for b in block[156:])
    )
    block[148:156] = b"%06o\x00 " % signed
    assert one(tb.tar_of(tb.raw(bytes(block)))).entry.path == b"/caf\xe9"


def test_garbage_instead_of_a_tar_raises() -> None:
    with pytest.raises(CorruptLayerError, match="offset 0"):
        read_tar(b"this is not a tar archive".ljust(1024, b"!"))


def test_oversized_extended_header_is_refused_without_reading_it() -> None:
    with pytest.raises(UnsupportedEntryError, match="limit"):
        read_tar(tb.tar_of(tb.raw_header("h", typeflag=b"x", size=1 << 40)))


# --------------------------------------------------------------------------------------------
# Streams: pipes, compression


def test_streaming_from_a_pipe_with_a_writer_thread() -> None:
    members = [tb.file(f"dir/f{i}", size=(3 << 20) + i, pattern=bytes([i])) for i in range(6)]
    with tb.piped(tb.tar_stream(*members, tb.symlink("dir/s", "f1"))) as pipe:
        seen = read_tar(pipe.stream)
        assert pipe.writer_finished()
    assert [s.entry.path for s in seen] == [b"/dir/f%d" % i for i in range(6)] + [b"/dir/s"]
    for member, s in zip(members, seen, strict=False):
        assert s.data is not None and hashlib.sha256(s.data).hexdigest() == member.content.sha256()


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_layers(codec: str) -> None:
    data = tb.tar_of(
        *BASIC, tb.file("big", RNG.randbytes(1 << 20) * 3), tb.file("x", b"x", xattrs={"user.a": CAP})
    )
    blob = gzip.compress(data) if codec == "gzip" else zstandard.ZstdCompressor().compress(data)
    with tb.piped([blob[i : i + 65536] for i in range(0, len(blob), 65536)]) as pipe:
        assert our_view(open_layer_stream(cast(BinaryIO, pipe.stream))) == our_view(data)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_truncated_compressed_layers_raise_corrupt_layer(codec: str) -> None:
    data = tb.tar_of(*BASIC, tb.file("big", RNG.randbytes(100000)))
    blob = gzip.compress(data) if codec == "gzip" else zstandard.ZstdCompressor().compress(data)
    for cut in (len(blob) // 3, len(blob) - 5):
        with pytest.raises(CorruptLayerError):
            read_tar(open_layer_stream(io.BytesIO(blob[:cut])))


# --------------------------------------------------------------------------------------------
# Fixtures of the nydus repository (tests/texture/tar)


def test_fixture_all_entry_type(nydus_fixtures: Path) -> None:
    data = (nydus_fixtures / "tar" / "all-entry-type.tar").read_bytes()
    entries = by_path(data)
    # Expected listing: `tar tvf` (GNU tar) of the fixture.
    assert {p: (s.entry.kind, s.entry.link_target) for p, s in entries.items()} == {
        b"/tar": (EntryKind.DIRECTORY, b""),
        b"/tar/dir1": (EntryKind.DIRECTORY, b""),
        b"/tar/dir1/dir3": (EntryKind.DIRECTORY, b""),
        b"/tar/dir1/dir3/hardlink1.txt": (EntryKind.REGULAR, b""),
        b"/tar/dir1/dir3/xfile.txt": (EntryKind.HARDLINK, b"/tar/dir1/dir3/hardlink1.txt"),
        b"/tar/dir1/hardlink2.txt": (EntryKind.HARDLINK, b"/tar/dir1/dir3/hardlink1.txt"),
        b"/tar/dir2": (EntryKind.DIRECTORY, b""),
        b"/tar/dir2/hardlink3.txt": (EntryKind.HARDLINK, b"/tar/dir1/dir3/hardlink1.txt"),  # another dir
        b"/tar/dir2/symlink1.txt": (EntryKind.SYMLINK, b"../dir1/dir3/file1.txt"),  # dangling, verbatim
    }
    regular = entries[b"/tar/dir1/dir3/hardlink1.txt"]
    assert (regular.entry.size, regular.entry.mode, regular.entry.uid, regular.entry.mtime) == (
        15,
        0o644,
        0,
        1665584430,
    )
    assert regular.data == b"This is a test\n"
    assert_agrees_with_tarfile(data)


def test_fixture_all_entry_type_macos(nydus_fixtures: Path) -> None:
    data = (nydus_fixtures / "tar" / "all-entry-type-macos.tar").read_bytes()
    entries = by_path(data)
    assert len(entries) == 16
    long_name = (
        b"/tar/dir1/dir3/this_is_really_a_very_long_name_to_test_tar_entry_type_" + b"a" * 196 + b".txt"
    )
    assert len(long_name.rsplit(b"/", 1)[1]) == 255  # per `tar tf`: a 255-byte name in a PAX path record
    assert entries[long_name].data == b"long name\n"
    hardlink2 = entries[b"/tar/dir1/hardlink2.txt"].entry
    # bsdtar writes each xattr twice (SCHILY raw + LIBARCHIVE base64 "dmFsdWU", unpadded).
    assert hardlink2.xattrs == {b"hardlink3": b"value"}
    assert (hardlink2.uid, hardlink2.gid, hardlink2.mtime, hardlink2.mtime_nsec) == (
        502,
        20,
        1665584430,
        393557573,
    )
    assert entries[b"/tar/dir1/dir3"].entry.xattrs == {b"dir": b"value"}
    assert entries[b"/tar/dir1/dir3"].entry.mtime_nsec == 107725102
    link = entries[b"/tar/dir2/symlink1.txt"].entry
    assert (link.link_target, link.xattrs) == (b"../dir1/dir3/file1.txt", {b"symlink": b"value"})
    for name in (b"xfile.txt", b"hardlink1.txt"):
        hard = entries[b"/tar/dir1/dir3/" + name].entry
        assert (hard.kind, hard.link_target) == (EntryKind.HARDLINK, b"/tar/dir1/hardlink2.txt")
    # AppleDouble companions ("._name", magic 0x00051607) are ordinary regular files.
    apple = [s for p, s in entries.items() if p.rsplit(b"/", 1)[1].startswith(b"._")]
    assert len(apple) == 6
    assert all(
        s.entry.kind is EntryKind.REGULAR and s.data and s.data[:4] == b"\x00\x05\x16\x07" for s in apple
    )
    assert_agrees_with_tarfile(data)


# --------------------------------------------------------------------------------------------
# Memory: a > 4 GiB layer streams with bounded RSS

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from nydus_exporter.layer.tarstream import iter_entries
    from tests.helpers import tarbuild as tb

    size = (4 << 30) + 4097
    members = [tb.file("small", b"x"), tb.file("big", size=size), tb.file("after", b"y")]
    stream = tb.IterStream(tb.tar_stream(*members, fmt="gnu"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen = []
    for entry in iter_entries(stream):
        total = 0
        while chunk := entry.data.read(16 << 20):
            total += len(chunk)
        seen.append((entry.path.decode(), entry.size, total))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(seen, before, after)
    assert seen == [("/small", 1, 1), ("/big", size, size), ("/after", 1, 1)], seen
    print("growth_kib", after - before)
    """
)


def test_layer_larger_than_4_gib_streams_with_bounded_memory() -> None:
    # A fresh interpreter, so that ru_maxrss (a peak) is not masked by earlier tests.
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    growth_kib = int(result.stdout.split("growth_kib")[1])
    assert growth_kib < 96 * 1024, result.stdout  # a few 16 MiB pieces at most, never the file
