"""iter_directory: a directory tree read as layer entries.

The reference is the tree itself, read path by path with ``os.lstat`` / ``os.readlink`` /
``os.listxattr`` (:func:`lstat_reference`), plus explicit values the test set (modes, owners,
nanosecond mtimes, xattrs, device numbers), so a shared misreading of ``stat`` cannot pass.
Overlayfs conversion is also checked against a real overlay mount: the converted upper
directory, applied to the lower one with the OCI whiteout rules, must give the merged view.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nydus_exporter.errors import (
    ConfigError,
    CorruptLayerError,
    InvalidLayerError,
    UnsafePathError,
    UnsupportedEntryError,
)
from nydus_exporter.layer.directory import iter_directory
from nydus_exporter.layer.entry import EntryKind, LayerEntry
from nydus_exporter.pipeline.pack import PackOptions, pack_entries
from tests.conftest import PROJECT_ROOT, require
from tests.helpers.treesnap import snapshot_dir

IS_ROOT = os.geteuid() == 0
ROOT_REASON = "needs root (mknod, chown, trusted.* and security.* xattrs)"

_rng = random.Random(20260301)
NOISE = _rng.randbytes((3 << 20) + 5)
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, NULs inside
EMOJI_NAME = "\U0001f600" * 63 + "abc"  # 255 bytes of UTF-8 (NAME_MAX)
WEIRD_NAMES = ["-x", "!x", "+x", "#x", ",x", " lead", ".-x", ".x", "..x", "a b", "tab\tname", "\u5510\u8bd7"]
BASE_NS = 1_700_000_000_000_000_000


@dataclass
class Built:
    """What build_tree made, in the terms the test set them (independent of lstat)."""

    root: Path
    modes: dict[bytes, int] = field(default_factory=dict)
    owners: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    mtimes_ns: dict[bytes, int] = field(default_factory=dict)
    xattrs: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    devices: dict[bytes, tuple[EntryKind, int, int]] = field(default_factory=dict)
    content: dict[bytes, bytes] = field(default_factory=dict)
    targets: dict[bytes, bytes] = field(default_factory=dict)
    sockets: list[bytes] = field(default_factory=list)


def build_tree(root: Path, *, privileged: bool) -> Built:
    """Every entry kind a root filesystem has; ``privileged`` adds what needs root."""
    b = Built(root)
    rb = os.fsencode(root)

    def full(rel: bytes) -> bytes:
        return rb + rel

    def mkdir(rel: str | bytes, mode: int = 0o755) -> None:
        r = os.fsencode(rel)
        os.makedirs(full(b"/" + r), exist_ok=True)
        os.chmod(full(b"/" + r), mode)  # after mkdir: no umask, set-id bits kept
        b.modes[b"/" + r] = mode

    def file(rel: str | bytes, data: bytes, mode: int = 0o644) -> None:
        r = b"/" + os.fsencode(rel)
        os.makedirs(os.path.dirname(full(r)), exist_ok=True)
        with open(full(r), "wb") as f:
            f.write(data)
        os.chmod(full(r), mode)
        b.modes[r] = mode
        b.content[r] = data

    def symlink(rel: str, target: str | bytes) -> None:
        r = b"/" + os.fsencode(rel)
        os.makedirs(os.path.dirname(full(r)), exist_ok=True)
        os.symlink(os.fsencode(target), full(r))
        b.targets[r] = os.fsencode(target)

    mkdir("etc")
    mkdir("tmp", 0o1777)
    mkdir("modes/suid", 0o4700)
    mkdir("modes/sgid", 0o2775)
    mkdir("modes/sticky", 0o1777)
    mkdir("modes/all", 0o7777)
    mkdir("empty-dir", 0o700)
    file("etc/hostname", b"nydus\n")
    file("usr/bin/su", b"\x7fELF" + bytes(100), 0o4755)
    file("usr/bin/wall", b"\x7fELF" + bytes(200), 0o2755)
    file("secret", b"s3cret", 0o600)
    file("odd-mode", b"x", 0o7000)
    for name, size in [("0", 0), ("1", 1), ("4096", 4096), ("1MiB+1", (1 << 20) + 1), ("big", len(NOISE))]:
        file(f"sizes/{name}", NOISE[:size])
    symlink("bin", "usr/bin")
    symlink("abs", "/etc/hostname")
    symlink("dangling", "does/not/exist")
    symlink("long", "d/" * 1500 + "end")
    symlink("selfloop", "selfloop")  # a symlink cycle: never followed
    symlink("up", "..")
    # Hardlinks across directories; the first path IN WALK ORDER is the group's entry.
    file("zzz/original", b"shared content")
    os.makedirs(full(b"/aaa"))
    os.link(full(b"/zzz/original"), full(b"/aaa/link"))
    os.makedirs(full(b"/other/dir"))
    os.link(full(b"/etc/hostname"), full(b"/etc/hostname.hard"))
    os.link(full(b"/etc/hostname"), full(b"/other/dir/hostname"))
    os.link(full(b"/bin"), full(b"/bin.hard"), follow_symlinks=False)  # hardlink to a symlink
    os.makedirs(full(b"/run"))
    os.mkfifo(full(b"/run/initctl"), 0o600)
    os.chmod(full(b"/run/initctl"), 0o600)
    b.modes[b"/run/initctl"] = 0o600
    os.link(full(b"/run/initctl"), full(b"/run/initctl.hard"))
    # A socket (skipped by the walk); bound through /proc to stay under sun_path's 108 bytes.
    dfd = os.open(full(b"/run"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(f"/proc/self/fd/{dfd}/sock")
    finally:
        os.close(dfd)
    b.sockets.append(b"/run/sock")
    # OCI whiteouts in a plain tree are ordinary files.
    file("whiteouts/.wh.gone", b"")
    file("whiteouts/.wh..wh..opq", b"")
    # Names: sorting before ".", 255-byte UTF-8, not UTF-8 at all, and a DFS-vs-flat order trap
    # ("/names/a/x" comes before "/names/a-b" in a depth-first walk, after it in a flat sort).
    for n in WEIRD_NAMES:
        file(f"names/{n}", n.encode())
    file("names/" + EMOJI_NAME, b"emoji")
    mkdir("names/" + EMOJI_NAME[:-3] + "dir")
    file(b"names/latin1-\xe9", b"not utf-8")
    file("names/a/x", b"in a")
    file("names/a-b", b"a-b")
    file("names/a.b", b"a.b")
    # xattrs anyone can set (user.* only on files and directories).
    file("xattr/user", b"u")
    user_x = {
        b"user.a": b"1",
        b"user.bin": b"\xff\x00bin\x00",
        b"user.newline": b"l1\nl2\n",
        b"user.empty": b"",
    }
    for k, v in user_x.items():
        os.setxattr(full(b"/xattr/user"), k, v)
    b.xattrs[b"/xattr/user"] = user_x
    mkdir("xattr/dir")
    os.setxattr(full(b"/xattr/dir"), b"user.d", b"v" * 300)
    b.xattrs[b"/xattr/dir"] = {b"user.d": b"v" * 300}

    if privileged:
        mkdir("srv", 0o2750)
        for rel, ids in {
            b"/srv": (33, 33),
            b"/secret": (1000, 1000),
            b"/usr/bin/wall": (0, 5),
            b"/bin": (7, 8),  # a symlink's own owner (lchown)
        }.items():
            os.chown(full(rel), *ids, follow_symlinks=False)
            if rel in b.modes:
                os.chmod(full(rel), b.modes[rel])  # chown cleared the set-id bits
            b.owners[rel] = ids
        file("bigids", b"ids")
        os.chown(full(b"/bigids"), 3_000_000, 4_000_000_000)
        b.owners[b"/bigids"] = (3_000_000, 4_000_000_000)
        os.makedirs(full(b"/dev"))
        for rel, kind, major, minor, mode in [
            (b"/dev/null", EntryKind.CHAR_DEVICE, 1, 3, 0o666),
            (b"/dev/big", EntryKind.CHAR_DEVICE, 511, 300_000, 0o600),
            (b"/dev/zero-zero", EntryKind.CHAR_DEVICE, 0, 0, 0o600),  # an overlay whiteout shape
            (b"/dev/sda1", EntryKind.BLOCK_DEVICE, 8, 1, 0o660),
        ]:
            type_bits = stat.S_IFCHR if kind is EntryKind.CHAR_DEVICE else stat.S_IFBLK
            os.mknod(full(rel), type_bits | mode, os.makedev(major, minor))
            os.chmod(full(rel), mode)
            b.devices[rel] = (kind, major, minor)
            b.modes[rel] = mode
        os.link(full(b"/dev/null"), full(b"/dev/null.hard"))
        file("xattr/cap", b"ping", 0o755)
        os.setxattr(full(b"/xattr/cap"), b"security.capability", CAPABILITY)
        b.xattrs[b"/xattr/cap"] = {b"security.capability": CAPABILITY}
        file("xattr/trusted", b"t")
        os.setxattr(full(b"/xattr/trusted"), b"trusted.t", b"\x00\x01\x00")
        os.setxattr(full(b"/xattr/trusted"), b"trusted.overlay.opaque", b"y")  # kept in oci mode
        b.xattrs[b"/xattr/trusted"] = {b"trusted.t": b"\x00\x01\x00", b"trusted.overlay.opaque": b"y"}
        symlink("xattr/dangling-link", "nowhere")
        os.setxattr(full(b"/xattr/dangling-link"), b"trusted.sym", b"on the link", follow_symlinks=False)
        b.xattrs[b"/xattr/dangling-link"] = {b"trusted.sym": b"on the link"}
        os.setxattr(full(b"/run/initctl"), b"trusted.fifo", b"f", follow_symlinks=False)
        b.xattrs[b"/run/initctl"] = {b"trusted.fifo": b"f"}

    # Nanosecond mtimes last (creating children changes a directory's mtime), one pre-1970.
    paths = [b"/"]
    for dirpath, dirnames, filenames in os.walk(rb):
        rel_dir = dirpath[len(rb) :]
        paths += [rel_dir + b"/" + n for n in dirnames + filenames]
    inode_ns: dict[tuple[int, int], int] = {}
    for i, rel in enumerate(sorted(paths)):
        ns = BASE_NS + i * 1_000_000_007 + 123_456_789
        if rel == b"/sizes/1":
            ns = -999_999_999_500  # 1938: mtime -1000 s + 500 ns
        p = full(rel) if rel != b"/" else rb
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
        st = os.lstat(p)
        inode_ns[(st.st_dev, st.st_ino)] = ns  # hardlink members: the last write wins
    for rel in paths:
        st = os.lstat(full(rel) if rel != b"/" else rb)
        b.mtimes_ns[rel] = inode_ns[(st.st_dev, st.st_ino)]
    return b


# --------------------------------------------------------------------------------------------
# The reference


@dataclass
class Seen:
    """An entry with its data read out while it was current."""

    entry: LayerEntry
    size_read: int | None
    sha256: str | None


def walk(root: Path, **kwargs: object) -> list[Seen]:
    out = []
    for e in iter_directory(root, **kwargs):  # type: ignore[arg-type]
        if e.data is not None:
            h = hashlib.sha256()
            n = 0
            while chunk := e.data.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
            out.append(Seen(e, n, h.hexdigest()))
        else:
            out.append(Seen(e, None, None))
    return out


def dfs_key(path: bytes) -> list[bytes]:
    """Pre-order, siblings in byte order: compare paths component by component."""
    return [] if path == b"/" else path[1:].split(b"/")


def _kind(st_mode: int) -> EntryKind | None:
    for test, kind in (
        (stat.S_ISREG, EntryKind.REGULAR),
        (stat.S_ISDIR, EntryKind.DIRECTORY),
        (stat.S_ISLNK, EntryKind.SYMLINK),
        (stat.S_ISCHR, EntryKind.CHAR_DEVICE),
        (stat.S_ISBLK, EntryKind.BLOCK_DEVICE),
        (stat.S_ISFIFO, EntryKind.FIFO),
    ):
        if test(st_mode):
            return kind
    return None  # socket


def lstat_reference(root: Path) -> list[tuple[bytes, dict[str, object]]]:
    """The entries the walk must produce, from os.walk + os.lstat, path by path."""
    rb = os.fsencode(root)
    paths = [b"/"]
    for dirpath, dirnames, filenames in os.walk(rb):
        rel_dir = dirpath[len(rb) :]
        paths += [rel_dir + b"/" + n for n in dirnames + filenames]
    out = []
    first_of: dict[tuple[int, int], bytes] = {}
    for rel in sorted(paths, key=dfs_key):
        p = rb if rel == b"/" else rb + rel
        st = os.lstat(p)
        kind = _kind(st.st_mode)
        if kind is None:
            continue
        if kind is not EntryKind.DIRECTORY and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in first_of:
                out.append((rel, {"kind": EntryKind.HARDLINK, "link_target": first_of[key]}))
                continue
            first_of[key] = rel
        fields: dict[str, object] = {
            "kind": kind,
            "mode": st.st_mode & 0o7777,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": st.st_mtime_ns // 10**9,
            "mtime_nsec": st.st_mtime_ns % 10**9,
            "xattrs": {
                os.fsencode(n): os.getxattr(p, n, follow_symlinks=False)
                for n in os.listxattr(p, follow_symlinks=False)
            },
        }
        if kind is EntryKind.REGULAR:
            with open(p, "rb") as f:
                data = f.read()
            fields.update(size=st.st_size, size_read=len(data), sha256=hashlib.sha256(data).hexdigest())
        elif kind is EntryKind.SYMLINK:
            fields.update(link_target=os.readlink(p), size=len(os.readlink(p)))
        elif kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE):
            fields.update(devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev))
        out.append((rel, fields))
    return out


def compare(seen: list[Seen], reference: list[tuple[bytes, dict[str, object]]]) -> list[str]:
    problems = []
    got_paths = [s.entry.path for s in seen]
    want_paths = [p for p, _ in reference]
    if got_paths != want_paths:
        problems.append(f"order/paths differ:\n got {got_paths}\nwant {want_paths}")
    by_path = {s.entry.path: s for s in seen}
    for path, want in reference:
        s = by_path.get(path)
        if s is None:
            continue
        for name, value in want.items():
            got = getattr(s, name) if name in ("size_read", "sha256") else getattr(s.entry, name)
            if got != value:
                problems.append(f"{path!r}: {name} = {got!r}, lstat says {value!r}")
    return problems


@pytest.fixture(params=[False, True], ids=["unprivileged", "privileged"])
def built(request: pytest.FixtureRequest, tmp_path: Path) -> Built:
    privileged: bool = request.param
    if privileged:
        require(IS_ROOT, ROOT_REASON)
    return build_tree(tmp_path / "root", privileged=privileged)


# --------------------------------------------------------------------------------------------
# Plain trees


def test_entries_are_what_lstat_says(built: Built) -> None:
    warnings: list[str] = []
    seen = walk(built.root, on_warning=warnings.append)
    assert compare(seen, lstat_reference(built.root)) == []
    assert len(warnings) == len(built.sockets) and "run/sock" in warnings[0]
    assert seen[0].entry.path == b"/" and seen[0].entry.kind is EntryKind.DIRECTORY


def test_entries_carry_what_the_test_set(built: Built) -> None:
    """Independent of lstat: the values build_tree wrote."""
    walked = {s.entry.path: s for s in walk(built.root)}
    # A hardlink member is checked through the group's entry (its inode).
    seen = {
        p: walked[s.entry.link_target] if s.entry.kind is EntryKind.HARDLINK else s for p, s in walked.items()
    }
    for path, mode in built.modes.items():
        assert seen[path].entry.mode == mode, path
    for path, (uid, gid) in built.owners.items():
        assert (seen[path].entry.uid, seen[path].entry.gid) == (uid, gid), path
    for path, ns in built.mtimes_ns.items():
        if path in built.sockets:
            continue
        e = walked[path].entry
        assert e.mtime * 10**9 + e.mtime_nsec == ns and 0 <= e.mtime_nsec < 10**9, path
    assert (seen[b"/sizes/1"].entry.mtime, seen[b"/sizes/1"].entry.mtime_nsec) == (-1000, 500)
    for path, xattrs in built.xattrs.items():
        assert seen[path].entry.xattrs == xattrs, path
    for path, (kind, major, minor) in built.devices.items():
        e = seen[path].entry
        assert (e.kind, e.devmajor, e.devminor) == (kind, major, minor), path
    for path, data in built.content.items():
        s = seen[path]
        if s.entry.kind is EntryKind.REGULAR:
            assert (s.entry.size, s.size_read, s.sha256) == (
                len(data),
                len(data),
                hashlib.sha256(data).hexdigest(),
            ), path
    for path, target in built.targets.items():
        e = seen[path].entry
        assert (e.kind, e.link_target, e.size) == (EntryKind.SYMLINK, target, len(target)), path
    # Hardlinks: the first path in walk order, not the first one created, holds the inode.
    assert walked[b"/aaa/link"].entry.kind is EntryKind.REGULAR
    assert walked[b"/aaa/link"].sha256 == hashlib.sha256(b"shared content").hexdigest()
    assert (walked[b"/zzz/original"].entry.kind, walked[b"/zzz/original"].entry.link_target) == (
        EntryKind.HARDLINK,
        b"/aaa/link",
    )
    for link in (b"/etc/hostname.hard", b"/other/dir/hostname"):
        e = walked[link].entry
        assert (e.kind, e.link_target) == (EntryKind.HARDLINK, b"/etc/hostname")
    assert (
        walked[b"/bin.hard"].entry.link_target == b"/bin" and walked[b"/bin"].entry.kind is EntryKind.SYMLINK
    )
    assert walked[b"/run/initctl.hard"].entry.link_target == b"/run/initctl"
    assert seen[b"/run/initctl"].entry.kind is EntryKind.FIFO
    assert b"/run/sock" not in seen
    # OCI whiteouts of a plain tree are ordinary empty files.
    assert seen[b"/whiteouts/.wh.gone"].entry.kind is EntryKind.REGULAR
    assert seen[b"/whiteouts/.wh..wh..opq"].entry.kind is EntryKind.REGULAR
    # Names: raw bytes, children in byte order, depth first.
    names = [p for p in seen if p.startswith(b"/names/")]
    assert names.index(b"/names/a/x") == names.index(b"/names/a") + 1
    assert names.index(b"/names/a-b") > names.index(b"/names/a/x")
    assert names[0] == b"/names/ lead" and b"/names/latin1-\xe9" in seen
    assert b"/names/" + EMOJI_NAME.encode() in seen and len(EMOJI_NAME.encode()) == 255


def test_root_is_a_plain_directory_and_trailing_slash_is_fine(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    os.chmod(tmp_path, 0o711)
    entries = [e.path for e in iter_directory(str(tmp_path) + "//")]
    assert entries == [b"/", b"/f"]
    first = next(iter_directory(tmp_path))
    assert first.mode == 0o711


def test_unknown_whiteout_mode_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        iter_directory(tmp_path, whiteouts="aufs")  # type: ignore[arg-type]


def test_bare_whiteout_name_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".wh.").write_bytes(b"")
    with pytest.raises(UnsafePathError, match=r"d/\.wh\."):
        list(iter_directory(tmp_path))


def test_data_is_closed_when_the_next_entry_is_requested(tmp_path: Path) -> None:
    """One file descriptor per directory level plus one file, never more; none left behind."""
    for i in range(50):
        (tmp_path / f"a/b/c/f{i}").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"a/b/c/f{i}").write_bytes(b"x" * i)
    before = len(os.listdir("/proc/self/fd"))
    peak = 0
    previous = None
    for entry in iter_directory(tmp_path):
        peak = max(peak, len(os.listdir("/proc/self/fd")) - before)
        if previous is not None and previous.data is not None:
            assert previous.data.closed
        previous = entry
    assert peak <= 4 + 1  # root, a, b, c + one file
    assert len(os.listdir("/proc/self/fd")) == before
    it = iter_directory(tmp_path)
    for _ in range(10):
        next(it)
    it.close()  # type: ignore[attr-defined]
    assert len(os.listdir("/proc/self/fd")) == before


def test_data_cannot_be_read_after_the_walk_moved_on(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    it = iter_directory(tmp_path)
    next(it)
    first = next(it)
    assert next(it).path == b"/b"
    assert first.data is not None
    with pytest.raises(ValueError, match="moved on"):
        first.data.read(1)


@pytest.mark.slow
def test_a_very_deep_tree_walks(tmp_path: Path) -> None:
    """Deeper than Python's recursion limit and than PATH_MAX allows as one path."""
    depth = 1200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < depth + 200:
        require(hard == resource.RLIM_INFINITY or hard >= depth + 200, "needs a higher open-file limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (depth + 200, hard))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("dd", dir_fd=fd)
            child = os.open("dd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    try:
        paths = [e.path for e in iter_directory(tmp_path)]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        subprocess.run(["rm", "-rf", str(tmp_path / "dd")], check=False)  # shutil.rmtree needs paths
    assert len(paths) == 1 + depth + 1
    assert paths[-1] == b"/dd" * depth + b"/leaf"


@pytest.mark.slow
def test_a_ten_thousand_file_tree_walks(tmp_path: Path) -> None:
    # How long this takes is measured by bench/metadata.py, not asserted here.
    for d in range(100):
        sub = tmp_path / f"d{d:03d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"file-{i:03d}").write_bytes(b"x" if i % 2 else b"")
    count = sum(1 for _ in iter_directory(tmp_path))
    assert count == 1 + 100 + 10_000


# --------------------------------------------------------------------------------------------
# Live trees and unreadable entries


def _write_big(path: Path) -> None:
    path.write_bytes(NOISE)


def test_a_file_growing_while_read_raises(tmp_path: Path) -> None:
    _write_big(tmp_path / "grow")
    (tmp_path / "z-after").write_bytes(b"after")
    it = iter_directory(tmp_path)
    assert next(it).path == b"/"
    entry = next(it)
    assert entry.path == b"/grow" and entry.data is not None
    first = entry.data.read(1 << 20)
    with (tmp_path / "grow").open("ab") as f:
        f.write(b"appended while packing")
    rest = entry.data.read(entry.size)  # exactly the announced size
    assert len(first) + len(rest) <= entry.size
    while chunk := entry.data.read(1 << 20):
        rest += chunk
    assert len(first) + len(rest) == len(NOISE)
    with pytest.raises(CorruptLayerError, match=r"grow changed size"):
        next(it)


def test_a_file_growing_after_its_data_was_read_raises_too(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"abc")
    it = iter_directory(tmp_path)
    next(it)
    entry = next(it)
    assert entry.data is not None and entry.data.read() == b"abc"
    with (tmp_path / "small").open("ab") as f:
        f.write(b"d")
    with pytest.raises(InvalidLayerError, match="small"):
        next(it)


def test_a_file_rewritten_in_place_raises(tmp_path: Path) -> None:
    (tmp_path / "same-size").write_bytes(b"abcd")
    it = iter_directory(tmp_path)
    next(it)
    entry = next(it)
    with (tmp_path / "same-size").open("r+b") as f:
        f.write(b"ABCD")
    os.utime(tmp_path / "same-size", ns=(1, 1))  # a different mtime, whatever the clock says
    assert entry.data is not None
    entry.data.read()
    with pytest.raises(CorruptLayerError, match="same-size was modified"):
        next(it)


def test_a_file_shrinking_while_read_raises_at_once(tmp_path: Path) -> None:
    _write_big(tmp_path / "shrink")
    it = iter_directory(tmp_path)
    next(it)
    entry = next(it)
    assert entry.data is not None
    entry.data.read(1000)
    os.truncate(tmp_path / "shrink", 2000)
    entry.data.read(1000)
    with pytest.raises(CorruptLayerError, match=r"shrink shrank .* 2000 of"):
        entry.data.read(1 << 20)


def test_pack_entries_refuses_a_file_that_grows(tmp_path: Path) -> None:
    """End to end: the blob is never finished from a tree that changed under the packer."""
    src = tmp_path / "src"
    src.mkdir()
    _write_big(src / "grow")
    (src / "z").write_bytes(b"z")

    def growing() -> Iterator[LayerEntry]:
        for entry in iter_directory(src):
            if entry.path == b"/grow":
                with (src / "grow").open("ab") as f:  # after the entry's fstat, before packing
                    f.write(b"more")
            yield entry

    out: list[bytes] = []
    with pytest.raises(CorruptLayerError, match="grow"):
        pack_entries(growing(), out.append, PackOptions(threads=2))


def test_a_file_vanishing_mid_walk_raises(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "d" / name).write_bytes(name.encode())
    it = iter_directory(tmp_path)
    paths = []
    for entry in it:
        paths.append(entry.path)
        if entry.path == b"/d/a":  # /d is listed already: b is known but not opened yet
            (tmp_path / "d" / "b").unlink()
            break
    with pytest.raises(CorruptLayerError, match=r"d/b vanished"):
        next(it)


def test_a_directory_vanishing_mid_walk_raises(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    it = iter_directory(tmp_path)
    assert [next(it).path, next(it).path] == [b"/", b"/a"]
    shutil.rmtree(tmp_path / "sub")
    with pytest.raises(CorruptLayerError, match=r"sub vanished"):
        next(it)


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """The classic escape: after the listing, a directory becomes a symlink to outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"must not be read")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a").write_bytes(b"a")
    it = iter_directory(root)
    assert [next(it).path, next(it).path] == [b"/", b"/a"]
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(CorruptLayerError, match="no longer a directory"):
        next(it)


def test_a_file_swapped_for_a_fifo_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    it = iter_directory(tmp_path)
    assert [next(it).path, next(it).path] == [b"/", b"/a"]
    (tmp_path / "b").unlink()
    os.mkfifo(tmp_path / "b")
    with pytest.raises(CorruptLayerError, match="replaced"):
        next(it)


def test_a_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(CorruptLayerError, match="missing"):
        list(iter_directory(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CorruptLayerError, match="file"):
        list(iter_directory(tmp_path / "file"))


_UNREADABLE_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    from nydus_exporter.errors import InvalidLayerError
    from nydus_exporter.layer.directory import iter_directory
    if os.geteuid() == 0:  # root bypasses permission checks: become nobody (imports are done)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    try:
        for entry in iter_directory(sys.argv[1]):
            if entry.data is not None:
                entry.data.read()
    except InvalidLayerError as exc:
        print(type(exc).__name__, exc)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("what", ["dir", "file"])
def test_permission_denied_names_the_path(what: str) -> None:
    """As an unprivileged user: the walk runs in a child that drops to nobody."""
    base = Path(tempfile.mkdtemp(prefix="nydus-dir-perm-"))
    try:
        os.chmod(base, 0o755)
        (base / "ok").write_bytes(b"ok")
        if what == "dir":
            (base / "locked").mkdir()
            (base / "locked" / "inside").write_bytes(b"x")
            os.chmod(base / "locked", 0o000)
        else:
            (base / "locked").write_bytes(b"x")
            os.chmod(base / "locked", 0o000)
        res = subprocess.run(
            [sys.executable, "-c", _UNREADABLE_SCRIPT, str(base)],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            timeout=60,
            check=False,
        )
        assert res.returncode == 3, res.stdout + res.stderr
        assert res.stdout.startswith("CorruptLayerError permission denied")
        assert f"{base}/locked" in res.stdout
    finally:
        with contextlib.suppress(OSError):
            os.chmod(base / "locked", 0o755)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# overlayfs upper directories


def _kinds(entries: list[Seen]) -> list[tuple[bytes, EntryKind]]:
    return [(s.entry.path, s.entry.kind) for s in entries]


def test_overlayfs_user_opaque_and_private_xattrs(tmp_path: Path) -> None:
    """Rootless ("userxattr") overlays keep their markers under user.overlay.*."""
    (tmp_path / "opq").mkdir()
    (tmp_path / "opq" / "kept").write_bytes(b"k")
    os.setxattr(tmp_path / "opq", b"user.overlay.opaque", b"y")
    os.setxattr(tmp_path / "opq", b"user.overlay.impure", b"y")
    os.setxattr(tmp_path / "opq", b"user.mine", b"stays")
    (tmp_path / "plain").mkdir()
    os.setxattr(tmp_path / "plain", b"user.overlay.opaque", b"n")
    (tmp_path / "nested").write_bytes(b"n")
    os.setxattr(tmp_path / "nested", b"user.overlay.overlay.opaque", b"y")  # escaped: a real xattr
    seen = walk(tmp_path, whiteouts="overlayfs")
    assert _kinds(seen) == [
        (b"/", EntryKind.DIRECTORY),
        (b"/nested", EntryKind.REGULAR),
        (b"/opq", EntryKind.DIRECTORY),
        (b"/opq/.wh..wh..opq", EntryKind.REGULAR),
        (b"/opq/kept", EntryKind.REGULAR),
        (b"/plain", EntryKind.DIRECTORY),
    ]
    by = {s.entry.path: s for s in seen}
    assert by[b"/opq"].entry.xattrs == {b"user.mine": b"stays"}
    assert by[b"/plain"].entry.xattrs == {}
    assert by[b"/nested"].entry.xattrs == {b"user.overlay.opaque": b"y"}
    marker = by[b"/opq/.wh..wh..opq"]
    assert (marker.entry.mode, marker.entry.uid, marker.entry.gid, marker.entry.size, marker.size_read) == (
        0,
        0,
        0,
        0,
        0,
    )
    # The same tree in OCI mode is passed through untouched.
    oci = {s.entry.path: s.entry for s in walk(tmp_path)}
    assert b"/opq/.wh..wh..opq" not in oci
    assert oci[b"/opq"].xattrs == {
        b"user.overlay.opaque": b"y",
        b"user.overlay.impure": b"y",
        b"user.mine": b"stays",
    }


@pytest.mark.parametrize("xattr", [b"user.overlay.redirect", b"user.overlay.metacopy"])
def test_overlayfs_redirect_and_metacopy_are_unsupported(xattr: bytes, tmp_path: Path) -> None:
    target = tmp_path / "x"
    if xattr.endswith(b"redirect"):
        target.mkdir()
        value = b"/old-name"
    else:
        target.write_bytes(b"")
        value = b""
    os.setxattr(target, xattr, value)
    with pytest.raises(UnsupportedEntryError, match=r"x carries " + xattr.decode()):
        list(iter_directory(tmp_path, whiteouts="overlayfs"))
    assert [e.path for e in iter_directory(tmp_path)] == [b"/", b"/x"]  # fine as a plain tree


def test_overlayfs_whiteouts_and_trusted_opaque(tmp_path: Path) -> None:
    require(IS_ROOT, ROOT_REASON)
    d = tmp_path / "d"
    d.mkdir()
    os.mknod(d / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.link(d / "gone", d / "also-gone")  # overlayfs shares one whiteout inode
    os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (d / "kept").write_bytes(b"kept")
    os.setxattr(d / "kept", b"trusted.overlay.origin", b"\x00\xfb\x21")
    os.setxattr(d / "kept", b"user.keep", b"1")
    opq = tmp_path / "opq"
    opq.mkdir()
    os.setxattr(opq, b"trusted.overlay.opaque", b"y")
    os.setxattr(opq, b"trusted.other", b"stays")
    (opq / "!first").write_bytes(b"sorts before the marker")
    # Linux 6.7 "xwhiteouts": a directory marked opaque=x holds xattr-marked whiteouts.
    xw = tmp_path / "xw"
    xw.mkdir()
    os.setxattr(xw, b"trusted.overlay.opaque", b"x")
    (xw / "hidden").write_bytes(b"")
    os.setxattr(xw / "hidden", b"trusted.overlay.whiteout", b"")
    (xw / "empty").write_bytes(b"")
    os.mknod(tmp_path / "root-gone", stat.S_IFCHR, os.makedev(0, 0))
    os.utime(d / "gone", ns=(5, 5), follow_symlinks=False)

    seen = walk(tmp_path, whiteouts="overlayfs")
    assert _kinds(seen) == [
        (b"/", EntryKind.DIRECTORY),
        (b"/.wh.root-gone", EntryKind.REGULAR),
        (b"/d", EntryKind.DIRECTORY),
        (b"/d/.wh.also-gone", EntryKind.REGULAR),
        (b"/d/.wh.gone", EntryKind.REGULAR),
        (b"/d/kept", EntryKind.REGULAR),
        (b"/d/null", EntryKind.CHAR_DEVICE),
        (b"/opq", EntryKind.DIRECTORY),
        (b"/opq/.wh..wh..opq", EntryKind.REGULAR),
        (b"/opq/!first", EntryKind.REGULAR),
        (b"/xw", EntryKind.DIRECTORY),
        (b"/xw/.wh.hidden", EntryKind.REGULAR),
        (b"/xw/empty", EntryKind.REGULAR),
    ]
    by = {s.entry.path: s for s in seen}
    for path in (
        b"/.wh.root-gone",
        b"/d/.wh.also-gone",
        b"/d/.wh.gone",
        b"/opq/.wh..wh..opq",
        b"/xw/.wh.hidden",
    ):
        e = by[path].entry
        assert (e.mode, e.uid, e.gid, e.mtime, e.size, e.xattrs, by[path].size_read) == (0, 0, 0, 0, 0, {}, 0)
    assert by[b"/d/kept"].entry.xattrs == {b"user.keep": b"1"}
    assert by[b"/opq"].entry.xattrs == {b"trusted.other": b"stays"}
    assert by[b"/xw"].entry.xattrs == {}
    assert (by[b"/d/null"].entry.devmajor, by[b"/d/null"].entry.devminor) == (1, 3)

    oci = walk(tmp_path)
    oci_by = {s.entry.path: s.entry for s in oci}
    assert oci_by[b"/d/also-gone"].kind is EntryKind.CHAR_DEVICE
    assert (oci_by[b"/d/gone"].kind, oci_by[b"/d/gone"].link_target) == (EntryKind.HARDLINK, b"/d/also-gone")
    assert oci_by[b"/opq"].xattrs[b"trusted.overlay.opaque"] == b"y"
    assert not any(p.endswith(b".wh..wh..opq") for p in oci_by)


def test_overlayfs_name_collision_is_rejected(tmp_path: Path) -> None:
    require(IS_ROOT, ROOT_REASON)
    os.mknod(tmp_path / "x", stat.S_IFCHR, os.makedev(0, 0))
    (tmp_path / ".wh.x").write_bytes(b"")
    with pytest.raises(UnsafePathError, match=r"\.wh\.x"):
        list(iter_directory(tmp_path, whiteouts="overlayfs"))


def _overlay_available() -> bool:
    if not IS_ROOT:
        return False
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


def _apply_oci(lower: dict[bytes, str], upper: list[Seen]) -> dict[bytes, str]:
    """The OCI whiteout rules (image-spec layer.md), independent of the project's merge."""
    result = dict(lower)

    def parent(p: bytes) -> bytes:
        return p.rsplit(b"/", 1)[0] or b"/"

    def drop_under(p: bytes, *, keep_self: bool) -> None:
        prefix = p.rstrip(b"/") + b"/"
        for q in [q for q in result if q.startswith(prefix) or (q == p and not keep_self)]:
            del result[q]

    for s in upper:  # opaque markers first ("regardless of ordering"), then whiteouts
        base = s.entry.path.rsplit(b"/", 1)[1]
        if base == b".wh..wh..opq":
            drop_under(parent(s.entry.path), keep_self=True)
    for s in upper:
        base = s.entry.path.rsplit(b"/", 1)[1]
        if base.startswith(b".wh.") and base != b".wh..wh..opq":
            dir_ = parent(s.entry.path)
            drop_under((dir_.rstrip(b"/") + b"/" + base[4:]), keep_self=False)
    for s in upper:
        base = s.entry.path.rsplit(b"/", 1)[1]
        if not base.startswith(b".wh."):
            kind = s.entry.kind
            if kind is EntryKind.HARDLINK:
                kind = next(u.entry.kind for u in upper if u.entry.path == s.entry.link_target)
            if kind is not EntryKind.DIRECTORY:
                drop_under(s.entry.path, keep_self=True)
            result[s.entry.path] = {
                EntryKind.REGULAR: "reg",
                EntryKind.DIRECTORY: "dir",
                EntryKind.SYMLINK: "symlink",
                EntryKind.FIFO: "fifo",
                EntryKind.CHAR_DEVICE: "chr",
                EntryKind.BLOCK_DEVICE: "blk",
            }[kind]
    return result


def test_a_real_overlay_upper_dir_converts_to_the_merged_view(tmp_path: Path) -> None:
    """Mount an overlay, change things through it, convert the upper dir: lower + converted
    upper with the OCI rules must be exactly what the mount shows."""
    require(_overlay_available(), "needs root and overlayfs")
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for p in (upper, work, merged):
        p.mkdir()
    for rel in ("keep/a", "keep/b", "gone-file", "gone-dir/x/y", "opaque/old1", "opaque/old2", "mod"):
        (lower / rel).parent.mkdir(parents=True, exist_ok=True)
        (lower / rel).write_bytes(rel.encode())
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off"
    res = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(res.returncode == 0, f"mount -t overlay failed: {res.stderr.strip()}")
    try:
        (merged / "gone-file").unlink()
        (merged / "keep/b").unlink()
        shutil.rmtree(merged / "gone-dir")
        shutil.rmtree(merged / "opaque")
        (merged / "opaque").mkdir()  # an opaque directory in the upper layer
        (merged / "opaque" / "new").write_bytes(b"new")
        (merged / "mod").write_bytes(b"modified")  # copy-up
        (merged / "added" / "deep").mkdir(parents=True)
        (merged / "added" / "deep" / "f").write_bytes(b"f")
        os.symlink("keep/a", merged / "link")
        os.sync()
        want = {p: e.kind for p, e in snapshot_dir(merged).items()}
        want_sha = {p: e.sha256 for p, e in snapshot_dir(merged).items()}
    finally:
        subprocess.run(["umount", str(merged)], check=False)
    converted = walk(upper, whiteouts="overlayfs")
    assert not any(s.entry.kind is EntryKind.CHAR_DEVICE for s in converted)
    assert not any(b"overlay" in k for s in converted for k in s.entry.xattrs)
    lower_kinds = {p: e.kind for p, e in snapshot_dir(lower).items()}
    assert _apply_oci(lower_kinds, converted) == want
    for s in converted:
        if s.entry.kind is EntryKind.REGULAR and not s.entry.path.rsplit(b"/", 1)[1].startswith(b".wh."):
            assert s.sha256 == want_sha[s.entry.path], s.entry.path
