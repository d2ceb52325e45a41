"""Self-checks of the test oracles (tests/helpers), independent of the project's code.

The format tests trust ``snapshot_tar`` (the expected tree), ``snapshot_dir`` (the observed
tree) and ``mount_rafs`` (the kernel as reader). These tests pin each of them against
independent tools: GNU tar extracts and creates archives, mkfs.erofs builds EROFS images
that the kernel mounts.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, require
from tests.helpers.erofs import (
    FSCK_EROFS_REASON,
    FSCK_EXTRACT_IGNORE,
    KERNEL_EROFS_REASON,
    fsck_erofs_available,
    fsck_extract,
    kernel_erofs_available,
    mount_rafs,
)
from tests.helpers.treesnap import EntrySnap, diff_snapshots, snapshot_dir, snapshot_tar

MTIME = 1_700_000_000

AddFn = Callable[..., None]


def make_tar(build: Callable[[AddFn], None], *, compress: bool = False) -> bytes:
    """Build a PAX tar in memory; ``build`` calls ``add(name, type, mode, data=..., **attrs)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, kind: bytes, mode: int = 0o644, data: bytes = b"", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.uid = int(attrs.pop("uid", 1000))  # type: ignore[call-overload]
            info.gid = int(attrs.pop("gid", 1001))  # type: ignore[call-overload]
            info.mtime = int(attrs.pop("mtime", MTIME))  # type: ignore[call-overload]
            for key, value in attrs.items():
                setattr(info, key, value)
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)

        build(add)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def rich_layer(add: AddFn) -> None:
    """Every entry kind a layer can carry, plus the replacement rules of [format §5.1]."""
    add("./", tarfile.DIRTYPE, 0o751)
    add(
        "d",
        tarfile.DIRTYPE,
        0o755,
        pax_headers={"mtime": "1700000001.123456789", "SCHILY.xattr.user.dir": "x"},
    )
    binary = b"\xff\x00bin".decode("utf-8", "surrogateescape")
    add("d/f", tarfile.REGTYPE, 0o4755, b"hello", pax_headers={"SCHILY.xattr.user.bin": binary})
    add("d/big", tarfile.REGTYPE, 0o640, os.urandom(3 * 4096 + 17), pax_headers={"mtime": "1600000000.5"})
    add("d/l", tarfile.SYMTYPE, 0o777, linkname="f", pax_headers={"mtime": "1500000000.25"})
    add("d/h", tarfile.LNKTYPE, 0o600, linkname="./d/f")  # metadata comes from the target
    add("d/empty", tarfile.REGTYPE, 0o2755, b"", uid=0, gid=0)
    add("dev", tarfile.DIRTYPE, 0o755)
    add("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
    add("dev/blk", tarfile.BLKTYPE, 0o600, devmajor=259, devminor=300)
    add("dev/fifo", tarfile.FIFOTYPE, 0o640)
    add("dev/.wh.gone", tarfile.REGTYPE, 0o644, b"")  # whiteouts are plain files here
    # Replacements: a file overwritten, a hardlink target replaced (the link keeps the old
    # content and leaves the group), a directory re-declared (keeps children).
    add("r", tarfile.DIRTYPE, 0o755)
    add("r/file", tarfile.REGTYPE, 0o644, b"old")
    add("r/alias", tarfile.LNKTYPE, 0o644, linkname="r/file")
    add("r/file", tarfile.REGTYPE, 0o600, b"new content")
    add("r/dup", tarfile.REGTYPE, 0o644, b"first")
    add("r/dup", tarfile.REGTYPE, 0o644, b"second")
    # GNU tar keeps the xattrs of a re-declared directory while a layer replaces the node
    # ([format §5.1]), so the re-declaration repeats the xattr to keep the comparison meaningful.
    add("d", tarfile.DIRTYPE, 0o750, uid=7, gid=8, pax_headers={"SCHILY.xattr.user.dir": "x"})


def gnu_tar_extract(tar: bytes, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(
        ["tar", "-x", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-p", "-C", str(dest), "-f", "-"],
        input=tar,
        check=True,
        capture_output=True,
    )


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (chown, mknod, trusted.* xattrs)")


def require_mkfs_erofs() -> None:
    require(shutil.which("mkfs.erofs") is not None, "needs mkfs.erofs (apt-get install erofs-utils)")


# --------------------------------------------------------------------------------------------
# snapshot_tar semantics, pinned to the spec ([format §5.1]) with hand-written expectations


def test_root_and_missing_parents_get_spec_defaults() -> None:
    tar = make_tar(lambda add: add("a/b/file", tarfile.REGTYPE, 0o640, b"data", uid=5, gid=6))
    snap = snapshot_tar(tar)
    assert sorted(snap) == [b"/", b"/a", b"/a/b", b"/a/b/file"]
    for path, nlink in ((b"/", 3), (b"/a", 3), (b"/a/b", 2)):
        assert snap[path] == EntrySnap(kind="dir", mode=0o755, uid=0, gid=0, mtime=0, nlink=nlink)
    f = snap[b"/a/b/file"]
    assert (f.kind, f.mode, f.uid, f.gid, f.size, f.mtime, f.nlink) == ("reg", 0o640, 5, 6, 4, MTIME, 1)
    assert f.sha256 == "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"  # sha256(b"data")


@pytest.mark.parametrize("root_name", ["./", "/", "."])
def test_root_entry_replaces_default_root(root_name: str) -> None:
    tar = make_tar(lambda add: add(root_name, tarfile.DIRTYPE, 0o700, uid=3, gid=4, mtime=123))
    assert snapshot_tar(tar) == {b"/": EntrySnap(kind="dir", mode=0o700, uid=3, gid=4, mtime=123, nlink=2)}


def test_later_entries_replace_earlier_ones() -> None:
    def build(add: AddFn) -> None:
        add("dir/sub/x", tarfile.REGTYPE, 0o644, b"x")
        add("dir", tarfile.DIRTYPE, 0o700)  # re-declared: keeps its children
        add("gone/child", tarfile.REGTYPE, 0o644, b"c")
        add("gone", tarfile.SYMTYPE, 0o777, linkname="dir")  # a dir replaced by a non-dir
        add("f", tarfile.REGTYPE, 0o644, b"one")
        add("g", tarfile.LNKTYPE, linkname="f")
        add("h", tarfile.LNKTYPE, linkname="./f")
        add("f", tarfile.REGTYPE, 0o644, b"two")  # f leaves the group; g and h stay linked

    snap = snapshot_tar(make_tar(build))
    assert sorted(snap) == [b"/", b"/dir", b"/dir/sub", b"/dir/sub/x", b"/f", b"/g", b"/gone", b"/h"]
    assert snap[b"/dir"].mode == 0o700 and snap[b"/dir"].nlink == 3
    assert snap[b"/gone"].kind == "symlink" and snap[b"/gone"].target == b"dir"
    assert snap[b"/f"].size == 3 and snap[b"/f"].nlink == 1 and snap[b"/f"].link_group is None
    assert snap[b"/g"].nlink == snap[b"/h"].nlink == 2
    assert snap[b"/g"].link_group is not None and snap[b"/g"].link_group == snap[b"/h"].link_group
    assert snap[b"/g"].sha256 == snap[b"/h"].sha256 != snap[b"/f"].sha256
    assert snap[b"/"].nlink == 3  # only /dir: /gone was a dir but is a symlink now


def test_xattrs_from_schily_and_libarchive_records_keep_raw_bytes() -> None:
    def build(add: AddFn) -> None:
        add(
            "f",
            tarfile.REGTYPE,
            pax_headers={
                "SCHILY.xattr.user.raw": b"\x00\xff\xfe\x80 ok".decode("utf-8", "surrogateescape"),
                "SCHILY.xattr.trusted.utf8": "h\u00e9llo",
                # libarchive: %-escaped name, base64 value without padding
                "LIBARCHIVE.xattr.user.a%3Db%20c": "dmFsdWU",
                "unrelated": "ignored",
            },
        )

    xattrs = snapshot_tar(make_tar(build))[b"/f"].xattrs
    assert xattrs == {
        b"user.raw": b"\x00\xff\xfe\x80 ok",
        b"trusted.utf8": "h\u00e9llo".encode(),
        b"user.a=b c": b"value",
    }


@pytest.mark.parametrize(
    ("pax_mtime", "expected"),
    [
        ("1700000001.123456789", (1700000001, 123456789)),
        ("1700000001.5", (1700000001, 500000000)),
        ("1700000001.1234567891", (1700000001, 123456789)),  # truncated past nanoseconds
        ("-1.5", (-2, 500000000)),  # seconds are floored, nsec is non-negative
        ("42", (42, 0)),
    ],
)
def test_pax_mtime_with_nanoseconds(pax_mtime: str, expected: tuple[int, int]) -> None:
    tar = make_tar(lambda add: add("f", tarfile.REGTYPE, pax_headers={"mtime": pax_mtime}))
    entry = snapshot_tar(tar)[b"/f"]
    assert (entry.mtime, entry.mtime_nsec) == expected


def test_gzip_tar_and_whiteouts() -> None:
    def build(add: AddFn) -> None:
        add("a/.wh.b", tarfile.REGTYPE)
        add("a/.wh..wh..opq", tarfile.REGTYPE)

    snap = snapshot_tar(make_tar(build, compress=True))
    assert snap[b"/a/.wh.b"].kind == snap[b"/a/.wh..wh..opq"].kind == "reg"


def test_hardlink_to_missing_target_is_rejected() -> None:
    tar = make_tar(lambda add: add("h", tarfile.LNKTYPE, linkname="nowhere"))
    with pytest.raises(ValueError, match="hardlink"):
        snapshot_tar(tar)


def test_dotdot_is_rejected() -> None:
    tar = make_tar(lambda add: add("a/../../etc/passwd", tarfile.REGTYPE))
    with pytest.raises(ValueError, match=r"\.\."):
        snapshot_tar(tar)


def test_diff_snapshots_reports_each_kind_of_difference() -> None:
    base = EntrySnap(kind="reg", mode=0o644, size=1, sha256="aa", nlink=2)
    expected = {
        b"/a": EntrySnap(kind="dir", mode=0o755, nlink=2),
        b"/x": EntrySnap(kind="reg", mode=0o644, link_group=1, nlink=2),
        b"/y": EntrySnap(kind="reg", mode=0o644, link_group=1, nlink=2),
        b"/z": base,
    }
    assert diff_snapshots(expected, dict(expected)) == []
    # same partition under different group ids is equal
    renumbered = {**expected, b"/x": EntrySnap(kind="reg", mode=0o644, link_group=9, nlink=2)}
    renumbered[b"/y"] = renumbered[b"/x"]
    assert diff_snapshots(expected, renumbered) == []

    actual = {
        b"/b": EntrySnap(kind="dir", mode=0o755, nlink=2),
        b"/x": EntrySnap(kind="reg", mode=0o644, link_group=1, nlink=2),
        b"/y": EntrySnap(kind="reg", mode=0o644, link_group=2, nlink=2),
        b"/z": EntrySnap(kind="reg", mode=0o600, size=1, sha256="bb", nlink=2, xattrs={b"user.k": b"v"}),
    }
    diff = diff_snapshots(expected, actual)
    assert "missing b'/a' (dir)" in diff
    assert "extra b'/b' (dir)" in diff
    assert "b'/z': mode expected '0o644', got '0o600'" in diff
    assert any(line.startswith("b'/z': sha256") for line in diff)
    assert any(line.startswith("b'/z': xattrs") for line in diff)
    assert "hardlink group {b'/x', b'/y'} expected but not found" in diff
    assert len(diff) == 6
    assert diff_snapshots(expected, actual, ignore={"mode", "sha256", "xattrs", "link_group"}) == [
        "missing b'/a' (dir)",
        "extra b'/b' (dir)",
    ]
    with pytest.raises(ValueError):
        diff_snapshots(expected, actual, ignore={"no_such_field"})


# --------------------------------------------------------------------------------------------
# snapshot_tar vs snapshot_dir through GNU tar (an independent implementation)


def test_snapshot_tar_matches_gnu_tar_extraction(tmp_path: Path) -> None:
    require_root()
    tar = make_tar(rich_layer)
    gnu_tar_extract(tar, tmp_path / "x")
    expected = snapshot_tar(tar)
    actual = snapshot_dir(tmp_path / "x")
    assert diff_snapshots(expected, actual) == []
    # The comparison is not vacuous: every kind and the tricky fields are present.
    assert {e.kind for e in expected.values()} == {"dir", "reg", "symlink", "chr", "blk", "fifo"}
    assert expected[b"/d/f"].xattrs == {b"user.bin": b"\xff\x00bin"}
    assert expected[b"/d/f"].mode == 0o4755 and expected[b"/d/h"].nlink == 2
    assert expected[b"/d"].mode == 0o750 and expected[b"/d"].uid == 7
    assert expected[b"/d"].mtime_nsec == 0  # the re-declaration had no PAX mtime
    assert expected[b"/r/alias"].size == 3 and expected[b"/r/file"].size == 11
    assert expected[b"/dev/blk"].rdev == (259, 300)


def test_snapshot_tar_of_gnu_tar_archive_matches_source_dir(tmp_path: Path) -> None:
    """The other direction: GNU tar archives a real tree (sparse file, xattrs, hardlinks,
    nanosecond mtimes); snapshot_tar of the archive must equal snapshot_dir of the tree."""
    require_root()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    with open(src / "sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"tail")
        f.seek(5 << 20)
        f.write(b"end")
    (src / "sub" / "plain").write_bytes(os.urandom(10_000))
    os.setxattr(src / "sub" / "plain", "user.k", b"v\x00\xfe")
    os.setxattr(src / "sub", "trusted.t", b"1")
    os.link(src / "sub" / "plain", src / "hl")
    os.symlink("sub/plain", src / "sym")
    os.mkfifo(src / "fifo")
    os.chown(src / "sub" / "plain", 1234, 5678)
    os.utime(src / "sub" / "plain", ns=(0, 981_173_106_789_000_001))
    tar = tmp_path / "src.tar"
    tar_options = ["--sparse", "--format=posix", "--numeric-owner", "--xattrs", "--xattrs-include=*"]
    subprocess.run(
        ["tar", *tar_options, "-C", str(src), "-cf", str(tar), "."],
        check=True,
        capture_output=True,
    )
    with tarfile.open(tar) as tf:
        sparse_member = tf.getmember("./sparse")
        assert "GNU.sparse.major" in sparse_member.pax_headers  # really stored sparse
    expected = snapshot_dir(src)
    assert diff_snapshots(expected, snapshot_tar(tar)) == []
    assert expected[b"/sparse"].size == (5 << 20) + 3
    assert expected[b"/sub/plain"].mtime_nsec == 789_000_001
    assert expected[b"/hl"].link_group is not None


def test_sample_layer_script_writes_what_it_promises(tmp_path: Path) -> None:
    require_root()
    out = tmp_path / "sample.tar"
    script = PROJECT_ROOT / "scripts" / "sample_layer.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True)
    again = subprocess.run([sys.executable, str(script), "-"], check=True, capture_output=True).stdout
    assert again == out.read_bytes()  # deterministic
    expected = snapshot_tar(out)
    gnu_tar_extract(out.read_bytes(), tmp_path / "x")
    assert diff_snapshots(expected, snapshot_dir(tmp_path / "x")) == []
    assert max(e.size for e in expected.values()) > 1 << 20
    assert any(e.kind == "symlink" for e in expected.values())
    assert any(e.link_group is not None for e in expected.values())
    assert any(e.xattrs for e in expected.values())


# --------------------------------------------------------------------------------------------
# The kernel oracle: mkfs.erofs images mounted through mount_rafs


def _mkfs(*args: str) -> None:
    subprocess.run(["mkfs.erofs", "--quiet", *args], check=True, capture_output=True)


def _loops_of(path: Path) -> str:
    return subprocess.run(["losetup", "-j", str(path)], capture_output=True, text=True, check=True).stdout


@pytest.mark.kernel
def test_kernel_mount_of_mkfs_erofs_image_matches_source(tmp_path: Path) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    require_mkfs_erofs()
    gnu_tar_extract(make_tar(rich_layer), tmp_path / "src")
    image = tmp_path / "image.erofs"
    _mkfs(str(image), str(tmp_path / "src"))
    expected = snapshot_dir(tmp_path / "src")
    with mount_rafs(image, []) as mnt:
        assert os.path.ismount(mnt)
        assert diff_snapshots(expected, snapshot_dir(mnt)) == []
    assert not mnt.exists()
    assert _loops_of(image) == ""


@pytest.mark.kernel
def test_kernel_mount_with_blob_device_and_fsck_extract(tmp_path: Path) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    require(fsck_erofs_available(), FSCK_EROFS_REASON)
    require_mkfs_erofs()

    def build(add: AddFn) -> None:
        add("./", tarfile.DIRTYPE, 0o755, uid=0, gid=0)
        add("data", tarfile.DIRTYPE, 0o755)
        add("data/chunked", tarfile.REGTYPE, 0o644, os.urandom(5 * 4096 + 100))
        add("data/small", tarfile.REGTYPE, 0o600, b"small", uid=0, gid=0)
        add("data/link", tarfile.SYMTYPE, 0o777, linkname="chunked")

    gnu_tar_extract(make_tar(build), tmp_path / "src")
    meta, blob = tmp_path / "meta.erofs", tmp_path / "blob.img"
    # Chunk-based files with their data on an extra device: the shape of a RAFS v6 image.
    _mkfs("--chunksize=4096", f"--blobdev={blob}", str(meta), str(tmp_path / "src"))
    assert blob.stat().st_size >= 5 * 4096 + 100
    expected = snapshot_dir(tmp_path / "src")
    with mount_rafs(meta, [blob]) as mnt:
        assert diff_snapshots(expected, snapshot_dir(mnt)) == []
    assert _loops_of(meta) == "" and _loops_of(blob) == ""

    fsck_extract(meta, [blob], tmp_path / "out")
    assert diff_snapshots(expected, snapshot_dir(tmp_path / "out"), ignore=FSCK_EXTRACT_IGNORE) == []
    # Without its device the data cannot be read: fsck must say so.
    with pytest.raises(AssertionError, match=r"fsck\.erofs"):
        fsck_extract(meta, [], tmp_path / "out2")


@pytest.mark.kernel
def test_mount_rafs_cleans_up_when_the_body_raises(tmp_path: Path) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    require_mkfs_erofs()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    image = tmp_path / "image.erofs"
    _mkfs(str(image), str(tmp_path / "src"))
    with pytest.raises(KeyError, match="boom"), mount_rafs(image, []) as mnt:
        held = open(mnt / "f", "rb")  # noqa: SIM115 - a busy mount must still be released
        try:
            raise KeyError("boom")
        finally:
            held.close()
    assert not os.path.ismount(mnt) and not mnt.exists()
    assert _loops_of(image) == ""


@pytest.mark.kernel
def test_mount_rafs_failure_reports_dmesg_and_detaches(tmp_path: Path) -> None:
    require(kernel_erofs_available(), KERNEL_EROFS_REASON)
    garbage = tmp_path / "garbage.boot"
    garbage.write_bytes(b"\x5a" * 8192)
    with pytest.raises(RuntimeError, match="dmesg tail") as info, mount_rafs(garbage, []):
        pass
    assert "mount -t erofs" in str(info.value)
    assert _loops_of(garbage) == ""
