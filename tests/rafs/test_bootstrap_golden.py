"""Golden tests against bootstraps produced by the real nydus toolchain ([format §9]).

Every expected value here is a fact stated in the spec ([format §2, §8.4, §9]) or derived from the
fixture bytes by an independent route (raw struct offsets, the data blob, fsck.erofs); none
was copied from this project's parser output.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import struct
import subprocess
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import blake3
import pytest
import zstandard

from nydus_exporter.rafs import layout
from nydus_exporter.rafs.bootstrap import plan_layout, write_bootstrap
from nydus_exporter.rafs.bootstrap_reader import Bootstrap, read_bootstrap
from nydus_exporter.rafs.model import walk
from tests.conftest import require

V22_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
ACCEL_BLOB_ID = "cdde6f5645daea414d60bc75611102a8bc8dae6198f087366365d6ff85bf5726"
INODE_I_INO = 20  # offsets inside the 64-byte extended inode ([format §2.7.2])
INODE_I_U = 16
INODE_NLINK = 44


@pytest.fixture(scope="module")
def v22(nydus_fixtures: Path) -> bytes:
    return (nydus_fixtures / "bootstrap" / "rafs-v6-2.2.boot").read_bytes()


@pytest.fixture(scope="module")
def accel(nydus_fixtures: Path) -> bytes:
    with tarfile.open(nydus_fixtures / "v6-bootstrap-chunk-pos-438272.tar.gz") as tar:
        member = tar.extractfile("image/image.boot")
        assert member is not None
        return member.read()


def u32(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", data, offset)[0]
    return value


# -------------------------------------------------------------------------------------------
# rafs-v6-2.2.boot


def test_v22_fixture_facts(v22: bytes) -> None:
    assert len(v22) == 20480
    assert hashlib.sha256(v22).hexdigest() == (
        "6a1ab377a31df3b1dfe6d3f09b4168f1db66207f77012206ac7b98cb5a42186d"
    )
    boot = read_bootstrap(v22)
    assert boot.flags == 0x194
    assert boot.chunk_size == 0x100000
    assert boot.block_size == 4096
    assert boot.meta_blkaddr == 2
    assert boot.root_nid == 128
    assert boot.inos == 3
    assert [b.blob_id for b in boot.blobs] == [V22_BLOB_ID]
    blob = boot.blobs[0]
    assert blob.features == 0x7000_0021
    assert blob.compressed_size == 14554  # = the blob file size ([format §2.5])
    assert blob.chunk_count == 2
    assert blob.compressor == layout.COMPRESSOR_ID_ZSTD
    assert blob.digester == layout.DIGESTER_ID_BLAKE3
    assert blob.uncompressed_size == 36864  # the decompressed device is 36864 bytes ([format §9])
    assert [(d.blob_id, d.blocks, d.mapped_blkaddr) for d in boot.devices] == [(V22_BLOB_ID, 9, 512)]
    assert boot.chunk_table_offset == 0x4000
    assert len(boot.chunk_table) == 2
    digests = [c.digest for c in boot.chunk_table]
    assert digests == sorted(digests)
    assert all(c.crc32 == 0 for c in boot.chunk_table)
    assert sorted(c.compressed_size for c in boot.chunk_table) == [2974, 4828]

    root = boot.root
    assert boot.nid_of(root) == 128
    assert boot.records[128].i_ino == 0  # v2.2.x wrote 0 for the root ([format §8.4])
    assert sorted(root.children or {}) == [b"lib.rs", b"sync_io.rs"]
    lib = (root.children or {})[b"lib.rs"]
    sync_io = (root.children or {})[b"sync_io.rs"]
    assert (boot.nid_of(lib), lib.inode.size) == (133, 16931)
    assert (boot.nid_of(sync_io), sync_io.inode.size) == (136, 13400)
    assert all(r.compact is False for r in boot.records.values())
    assert boot.records[128].nlink == 2


def test_v22_chunk_index_bytes(v22: bytes) -> None:
    # [format §2.11] example: (lo=1, hi=0x0001, blk=5) for ci 1, blob 0, uncompressed offset 20480.
    boot = read_bootstrap(v22)
    found = []
    for nid in (133, 136):
        at = layout.round_up(boot.meta_blkaddr * 4096 + 32 * nid + 64, 8)
        found.append(struct.unpack_from("<HHI", v22, at))
    assert (1, 0x0001, 5) in found
    sync_io = (boot.root.children or {})[b"sync_io.rs"]
    lib = (boot.root.children or {})[b"lib.rs"]
    chunk_of = {c.index: c for c in lib.inode.chunks + sync_io.inode.chunks}
    assert chunk_of[1].uncompressed_offset == 20480
    assert all(c.blob_index == 0 for c in chunk_of.values())


def _v22_device(nydus_fixtures: Path, boot: Bootstrap) -> bytes:
    """Decompress the fixture blob's chunks to their uncompressed offsets ([format §7.3])."""
    blob = (nydus_fixtures / "blobs" / V22_BLOB_ID).read_bytes()
    device = bytearray(boot.blobs[0].uncompressed_size)
    dctx = zstandard.ZstdDecompressor()
    for chunk in boot.chunk_table:
        raw = blob[chunk.compressed_offset : chunk.compressed_offset + chunk.compressed_size]
        plain = dctx.decompress(raw, max_output_size=chunk.uncompressed_size)
        assert len(plain) == chunk.uncompressed_size
        assert blake3.blake3(plain).digest() == chunk.digest  # [format §3.2]: digest of raw chunk
        device[chunk.uncompressed_offset : chunk.uncompressed_offset + len(plain)] = plain
    return bytes(device)


def test_v22_fsck_extract_matches_chunk_digests(v22: bytes, nydus_fixtures: Path, tmp_path: Path) -> None:
    require(shutil.which("fsck.erofs") is not None, "fsck.erofs (erofs-utils) is not installed")
    boot = read_bootstrap(v22)
    device = tmp_path / "blob.data"
    device.write_bytes(_v22_device(nydus_fixtures, boot))
    rewritten = write_bootstrap(boot.root, boot.blobs, chunk_size=boot.chunk_size, flags=boot.flags)
    for name, image in (("fixture", v22), ("rewritten", rewritten)):
        (tmp_path / f"{name}.boot").write_bytes(image)
        out = tmp_path / name
        subprocess.run(
            ["fsck.erofs", f"--device={device}", f"--extract={out}", str(tmp_path / f"{name}.boot")],
            check=True,
            capture_output=True,
        )
        for child in (boot.root.children or {}).values():
            content = (out / child.name.decode()).read_bytes()
            assert len(content) == child.inode.size
            for chunk in child.inode.chunks:
                piece = content[chunk.file_offset : chunk.file_offset + chunk.uncompressed_size]
                assert blake3.blake3(piece).digest() == chunk.digest


def test_v22_byte_fidelity(v22: bytes) -> None:
    """Re-writing the fixture's own tree reproduces it except for the v2.2 -> v2.3 deltas.

    Excluded ranges (each asserted to hold the old and the new value instead):
    * abs 0x5c4..0x5c8, device slot 0 ``mapped_blkaddr``: v2.2 aligned to 2 MiB (512), nydus
      >= v2.3.0 to 512 KiB: round_up(20480, 0x80000) / 4096 = 128 ([format §2.4, §8.4]).
    * root inode ``i_ino`` (4 bytes at meta_addr + 32*128 + 20): v2.2 wrote 0, >= v2.3.0 1.
    The fixture has no prefetch table (built without prefetch), so none is requested. Its
    chunk table has no HAS_CRC32 flags and zero crc32, and the parsed chunks carry exactly
    that, so the chunk table must be identical too.
    """
    boot = read_bootstrap(v22)
    out = write_bootstrap(
        boot.root, boot.blobs, chunk_size=boot.chunk_size, flags=boot.flags, prefetch_root=False
    )
    assert len(out) == len(v22)
    mapped = layout.DEVICE_TABLE_OFFSET + 68
    root_ino = 2 * 4096 + 32 * 128 + INODE_I_INO
    assert (u32(v22, mapped), u32(out, mapped)) == (512, 128)
    assert (u32(v22, root_ino), u32(out, root_ino)) == (0, 1)
    excluded = [(mapped, mapped + 4), (root_ino, root_ino + 4)]
    expected, actual = bytearray(v22), bytearray(out)
    for start, end in excluded:
        expected[start:end] = actual[start:end] = bytes(end - start)
    assert actual == expected


# -------------------------------------------------------------------------------------------
# v6-bootstrap-chunk-pos-438272 (accel-v6.boot, May 2022)


def test_accel_fixture_facts(accel: bytes) -> None:
    assert len(accel) == 643072
    assert hashlib.sha256(accel).hexdigest() == (
        "4f9744a85eb30089395035c73ba790971e9039a8b4037b022441459a6fdee6cf"
    )
    boot = read_bootstrap(accel)
    assert boot.flags == 0x6  # lz4_block | blake3
    assert boot.inos == 3517
    assert len(boot.records) == 3517  # hardlinks are separate inodes in this image
    assert boot.blocks == 4096  # old builders wrote a constant 4096 ([format §2.2])
    assert boot.root_nid == 128
    assert boot.chunk_table_offset == 438272
    assert len(boot.chunk_table) == 201200 // 80 == 2515
    assert boot.prefetch == [142]
    assert [b.blob_id for b in boot.blobs] == [ACCEL_BLOB_ID]
    blob = boot.blobs[0]
    assert (blob.chunk_count, blob.compressor, blob.digester, blob.features) == (
        2515,
        layout.COMPRESSOR_ID_LZ4_BLOCK,
        layout.DIGESTER_ID_BLAKE3,
        0x1,
    )
    assert [(d.blocks, d.mapped_blkaddr) for d in boot.devices] == [(20451, 0)]
    digests = [(c.digest, c.blob_index) for c in boot.chunk_table]
    assert digests != sorted(digests)  # 2022-05 builders wrote unsorted tables ([format §2.14])
    assert all(not r.compact for r in boot.records.values())  # all extended ([format §2.7.1])

    dirs_and_symlinks = 0
    nodes = 0
    for _, node in walk(boot.root):
        nodes += 1
        record = boot.records[boot.nid_of(node)]
        if node.inode.is_dir:
            subdirs = sum(1 for c in (node.children or {}).values() if c.inode.is_dir)
            assert record.nlink == 2 + subdirs
        if node.inode.is_dir or node.inode.is_symlink:
            dirs_and_symlinks += 1
    assert nodes == 3517
    assert dirs_and_symlinks == 890  # [format §2.15]: "i_u of all 890 dirs/symlinks"


@pytest.mark.parametrize("which", ["v22", "accel"])
def test_fixtures_pass_fsck_with_zero_devices(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    require(shutil.which("fsck.erofs") is not None, "fsck.erofs (erofs-utils) is not installed")
    data: bytes = request.getfixturevalue(which)
    boot = read_bootstrap(data)
    args = ["fsck.erofs"]
    for i, slot in enumerate(boot.devices):
        dev = tmp_path / f"dev{i}"
        with dev.open("wb") as f:
            f.truncate(slot.blocks * 4096)
        args.append(f"--device={dev}")
    (tmp_path / "boot").write_bytes(data)
    subprocess.run([*args, f"--extract={tmp_path / 'out'}", str(tmp_path / "boot")], check=True)


# -------------------------------------------------------------------------------------------
# Layout algorithm ([format §2.15]) against real images


@pytest.mark.parametrize("which", ["v22", "accel"])
def test_plan_layout_reproduces_every_nid_layout_and_i_u(which: str, request: pytest.FixtureRequest) -> None:
    data: bytes = request.getfixturevalue(which)
    boot = read_bootstrap(data)
    plan = plan_layout(boot.root)
    meta_addr = boot.meta_blkaddr * boot.block_size
    assert plan.inos == boot.inos
    # Old images gave hardlinks separate inodes with one shared i_ino ([format §8.4]): group the
    # fixture's nids by i_ino; the group's i_ino must be the smallest index we assign.
    by_ino: dict[int, list[int]] = defaultdict(list)
    checked = 0
    for path, node in walk(boot.root):
        nid = boot.nid_of(node)
        record = boot.records[nid]
        node_plan = plan.of(node)
        assert node_plan.nid == nid, path
        assert node_plan.layout == record.layout, path
        if node.inode.is_dir or node.inode.is_symlink:
            assert plan.raw_blkaddr(node_plan, meta_addr) == record.i_u, path
            checked += 1
        if node is not boot.root:
            by_ino[record.i_ino].append(node_plan.index)
    for ino, indexes in by_ino.items():
        assert ino == min(indexes)
    assert checked == sum(1 for r in boot.records.values() if not stat.S_ISREG(r.mode))


def test_accel_inode_area_byte_fidelity(accel: bytes) -> None:
    """Re-write the 3517-inode image and compare everything up to the chunk table.

    Differences allowed, each because of a [format §8.4] version delta (and asserted, not ignored):
    * s_blocks (abs 1060): the 2022 builder wrote a constant 4096; now blocks of the blob.
    * device slot mapped_blkaddr (abs 0x5c4): 2022 builders wrote 0; now
      round_up(643072, 512 KiB) / 4096 = 256.
    * i_u of regular files the continuity optimisation applies to (v2.2.0): fixture 0x28,
      now 0x20 | (log2(next_pow2(size)) - 12).
    * i_ino and nlink of hardlink members: the 2022 image kept them as separate inodes with
      one i_ino and nlink = group size; a tree of separate inodes now gets own i_ino, nlink 1.
    The chunk table (unsorted in 2022) must hold the same 80-byte entries, now sorted.
    """
    boot = read_bootstrap(accel)
    out = write_bootstrap(
        boot.root,
        boot.blobs,
        chunk_size=boot.chunk_size,
        flags=boot.flags,
        prefetch_nids=boot.prefetch,
    )
    assert len(out) == len(accel)
    expected, actual = bytearray(accel), bytearray(out)

    def allow(at: int, old: int, new: int) -> None:
        assert (u32(accel, at), u32(out, at)) == (old, new), hex(at)
        expected[at : at + 4] = actual[at : at + 4] = bytes(4)

    allow(layout.EROFS_SUPER_OFFSET + 36, 4096, 20451)
    allow(layout.DEVICE_TABLE_OFFSET + 68, 0, 256)
    meta_addr = boot.meta_blkaddr * 4096
    plan = plan_layout(boot.root)
    index_of_nid = {boot.nid_of(node): plan.of(node).index for _, node in walk(boot.root)}
    ino_groups = Counter(r.i_ino for r in boot.records.values())
    continuity = hardlinked = 0
    for nid, record in boot.records.items():
        at = meta_addr + 32 * nid
        if ino_groups[record.i_ino] > 1:
            hardlinked += 1
            allow(at + INODE_NLINK, ino_groups[record.i_ino], 1)
            if record.i_ino != index_of_nid[nid]:  # not the first member of its group
                allow(at + INODE_I_INO, record.i_ino, index_of_nid[nid])
        if stat.S_ISREG(record.mode) and u32(accel, at + INODE_I_U) != u32(out, at + INODE_I_U):
            erofs_chunk = 1 << (record.size - 1).bit_length()
            allow(at + INODE_I_U, 0x28, 0x20 | (erofs_chunk.bit_length() - 1 - 12))
            assert record.size > boot.chunk_size
            continuity += 1
    assert continuity > 0
    assert hardlinked > 0
    table = boot.chunk_table_offset
    assert actual[:table] == expected[:table]

    entries_old = {accel[i : i + 80] for i in range(table, table + 2515 * 80, 80)}
    new_table = [out[i : i + 80] for i in range(table, table + 2515 * 80, 80)]
    assert set(new_table) == entries_old
    keys = [(e[:32], u32(e, 32)) for e in new_table]
    assert keys == sorted(keys)
    assert out[table + 2515 * 80 :] == bytes(len(out) - table - 2515 * 80)


def test_accel_bootstrap_inside_tar_is_read_with_tarfile(nydus_fixtures: Path) -> None:
    # The tar.gz holds exactly image/ and image/image.boot ([format §9]).
    raw = (nydus_fixtures / "v6-bootstrap-chunk-pos-438272.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert sorted(tar.getnames()) == ["image", "image/image.boot"]
