"""Corrupt bootstraps: the reader raises FormatError and nothing else, and never hangs."""

from __future__ import annotations

import stat
import struct
import tarfile
from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nydus_exporter.errors import FormatError
from nydus_exporter.rafs.bootstrap import write_bootstrap
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.model import Inode, Node
from tests.conftest import nydus_fixture
from tests.rafs.test_bootstrap_roundtrip import rich_image

FUZZ = settings(
    max_examples=300,
    deadline=2000,  # ms per case; a parse of the 643 KiB fixture takes a few tens of ms
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@cache
def samples() -> dict[str, bytes]:
    out = {"written": rich_image(big_entries=300).write()}
    out["v22"] = nydus_fixture("bootstrap/rafs-v6-2.2.boot").read_bytes()
    with tarfile.open(nydus_fixture("v6-bootstrap-chunk-pos-438272.tar.gz")) as tar:
        member = tar.extractfile("image/image.boot")
        assert member is not None
        out["accel"] = member.read()
    return out


def parse_or_format_error(data: bytes) -> None:
    try:
        read_bootstrap(data)
    except FormatError as exc:
        assert str(exc)  # names what is wrong
        event(f"FormatError: {str(exc).split()[0]} {str(exc).split()[-1][:12]}")
    else:
        event("parsed")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(sorted(samples())))
    data = bytearray(samples()[name])
    size = len(data)
    # Aim most edits at the metadata: superblocks, device/blob/prefetch tables, and the inode
    # area (inodes, xattrs, dirents, chunk indexes) between meta_addr + 4096 and the chunk table.
    meta_addr = struct.unpack_from("<I", data, 1024 + 40)[0] * 4096
    chunk_table = struct.unpack_from("<Q", data, 0x480 + 24)[0]
    position = st.one_of(
        st.integers(1024, 0x580 + 128),
        st.integers(0x580, meta_addr + 4096),
        st.integers(meta_addr + 4096, chunk_table - 1),
        st.integers(meta_addr + 4096, chunk_table - 1),
        st.integers(0, size - 1),
    )
    for _ in range(draw(st.integers(1, 6))):
        how = draw(
            st.sampled_from(
                ["flip", "flip", "flip", "byte", "byte", "word", "splice", "truncate", "insert", "delete"]
            )
        )
        at = min(draw(position), len(data) - 1) if data else 0
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "byte" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01, 0x02, 0x04, 0x20]))
        elif how == "word":  # plausible-looking integers: small counts, offsets, nids
            value = draw(st.sampled_from([0, 1, 2, 128, 4096, 0xFFFF, 0xFFFFFFFF, size // 32, size]))
            data[at : at + 4] = value.to_bytes(4, "little")
        elif how == "splice":
            piece = draw(st.binary(min_size=1, max_size=64))
            data[at : at + len(piece)] = piece
        elif how == "truncate":
            del data[at:]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 64))]
    if len(data) != size and draw(st.booleans()):
        # Keep the size a multiple of 4096 so the parser gets past that first check.
        data = data[:size] + bytes(max(0, size - len(data)))
    return bytes(data)


@pytest.mark.slow
@FUZZ
@given(mutated())
def test_mutated_bootstraps_raise_only_format_error(data: bytes) -> None:
    parse_or_format_error(data)


@FUZZ
@given(st.binary(max_size=20000))
def test_random_bytes_raise_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        read_bootstrap(data)


@pytest.mark.slow
@FUZZ
@given(
    st.sampled_from(["written", "v22", "accel"]),
    st.integers(0, 2**31),
    st.binary(min_size=1, max_size=4096),
)
def test_valid_superblocks_with_random_metadata(which: str, where: int, noise: bytes) -> None:
    # Keep the superblocks and tables intact so the parser gets to the inodes, and overwrite
    # part of the inode area (starting at the root inode often) with noise.
    base = samples().get(which) or samples()["written"]
    meta_addr = struct.unpack_from("<I", base, 1024 + 40)[0] * 4096
    chunk_table = struct.unpack_from("<Q", base, 0x480 + 24)[0]
    start = meta_addr + 4096 + (where % 2) * (where % max(1, chunk_table - meta_addr - 4096))
    data = bytearray(base)
    data[start : start + len(noise)] = noise[: max(0, len(base) - start)]
    parse_or_format_error(bytes(data))


# -------------------------------------------------------------------------------------------
# Targeted corruptions with known causes


def small_tree() -> tuple[bytes, dict[bytes, int]]:
    """root/a/b (directories) and root/f; returns the image and the nids by name."""
    root = Node.directory(b"/", Inode(stat.S_IFDIR | 0o755))
    a = Node.directory(b"a", Inode(stat.S_IFDIR | 0o755))
    b = Node.directory(b"b", Inode(stat.S_IFDIR | 0o755))
    assert root.children is not None and a.children is not None
    root.children[b"a"] = a
    a.children[b"b"] = b
    root.children[b"f"] = Node(b"f", Inode(stat.S_IFREG | 0o644))
    data = write_bootstrap(root, [], chunk_size=0x100000, flags=0x0100_0094)
    boot = read_bootstrap(data)
    read_root = boot.root.children or {}
    read_a = read_root[b"a"]
    nids = {
        b"/": boot.root_nid,
        b"a": boot.nid_of(read_a),
        b"b": boot.nid_of((read_a.children or {})[b"b"]),
        b"f": boot.nid_of(read_root[b"f"]),
    }
    return data, nids


def patch_dirent(data: bytes, dir_nid: int, entry: int, edit: Callable[[bytearray, int], None]) -> bytes:
    """Edit dirent ``entry`` of an inline directory without xattrs (meta_addr 0: no blobs)."""
    out = bytearray(data)
    at = 32 * dir_nid + 64 + 12 * entry
    edit(out, at)
    return bytes(out)


def point_to(nid: int) -> Callable[[bytearray, int], None]:
    def edit(data: bytearray, at: int) -> None:
        struct.pack_into("<Q", data, at, nid)

    return edit


def test_directory_cycle_is_an_error() -> None:
    data, nids = small_tree()
    # a's dirents: ".", "..", "b". Point "b" back at "a" itself.
    bad = patch_dirent(data, nids[b"a"], 2, point_to(nids[b"a"]))
    with pytest.raises(FormatError, match="cycle"):
        read_bootstrap(bad)
    # Point "b" at the root: also a second link to a directory.
    bad = patch_dirent(data, nids[b"a"], 2, point_to(nids[b"/"]))
    with pytest.raises(FormatError, match="cycle"):
        read_bootstrap(bad)


def test_dirent_pointing_outside_the_image_is_an_error() -> None:
    data, nids = small_tree()
    for target in (len(data) // 32, 2**40):
        bad = patch_dirent(data, nids[b"a"], 2, point_to(target))
        with pytest.raises(FormatError, match="outside"):
            read_bootstrap(bad)


def test_wrong_dot_dot_is_an_error() -> None:
    data, nids = small_tree()
    bad = patch_dirent(data, nids[b"a"], 1, point_to(nids[b"f"]))
    with pytest.raises(FormatError, match=r"'\.\.'"):
        read_bootstrap(bad)


def test_file_type_mismatch_is_an_error() -> None:
    data, nids = small_tree()
    # Root dirents: ".", "..", "a", "f"; claim "f" is a directory.
    bad = patch_dirent(data, nids[b"/"], 3, lambda d, at: d.__setitem__(at + 10, 2))
    with pytest.raises(FormatError):
        read_bootstrap(bad)


def test_unsorted_names_are_an_error() -> None:
    data, nids = small_tree()
    # Rename "f" to "0", which sorts before "." and "a".
    name_off = struct.unpack_from("<H", data, 32 * nids[b"/"] + 64 + 12 * 3 + 8)[0]
    out = bytearray(data)
    out[32 * nids[b"/"] + 64 + name_off] = ord("0")
    with pytest.raises(FormatError, match="ascending"):
        read_bootstrap(bytes(out))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:4095], "smaller than"),
        (lambda d: bytes(len(d)), "magic"),
        (lambda d: d[:-1], "multiple"),
        (lambda d: d[: 1024 + 80] + b"\x0d" + d[1024 + 81 :], "incompat"),
        (lambda d: d[:0x480] + (0x1234_0000).to_bytes(8, "little") + d[0x488:], "unknown RAFS"),
        (lambda d: d[: 0x480 + 20] + (3000).to_bytes(4, "little") + d[0x480 + 24 :], "chunk size"),
    ],
)
def test_header_corruptions_are_named(mutate: Callable[[bytes], bytes], message: str) -> None:
    data, _ = small_tree()
    with pytest.raises(FormatError, match=message):
        read_bootstrap(mutate(data))


def test_v5_bootstrap_is_rejected() -> None:
    # RAFS v5 starts with "SFAR" at offset 0 and has no EROFS superblock ([format §9]).
    data = b"SFAR" + (0x500).to_bytes(4, "little") + bytes(8192 - 8)
    with pytest.raises(FormatError, match="magic"):
        read_bootstrap(data)
