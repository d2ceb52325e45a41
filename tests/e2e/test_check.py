"""``nydus-exporter check``: a freshly exported image passes; each kind of damage is named.

The image is exported in-process (``nydus_exporter.cli.main.main(["export", ...])``) from layer
tars built with tests/helpers/tarbuild.py, with OCI and with Docker media types. Damaged
copies of the layout are made with the stdlib (json, hashlib, gzip, tarfile) so that only
the one thing under test is wrong: where a document changes, every digest that points at it
(config -> manifest -> index.json) is rewritten consistently.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.cli.main import main as tools_main
from nydus_exporter.rafs import layout as rafs_layout
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.tools.check import CheckReport, check_image
from tests.helpers import tarbuild as tb

MIB = 1 << 20
TAG = "v1"


def _incompressible(size: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "little")).digest()
        counter += 1
    return out[:size]


def layer_members() -> list[list[tb.Member]]:
    """Three layers: files, hardlinks, devices, xattrs; whiteouts and an opaque dir above;
    a last layer with no file data (a blob without chunks)."""
    return [
        [
            tb.dir(".", mode=0o755, mtime=1_600_000_000),
            tb.dir("etc", mode=0o755, mtime=1_600_000_001, mtime_nsec=123_456_789),
            tb.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mode=0o600, mtime=1_600_000_002),
            tb.file("etc/big", size=2 * MIB + 12345, pattern=b"nydus-check!", mtime=1_600_000_003),
            tb.file("etc/random", _incompressible(6000), mtime=1_600_000_003),  # stored uncompressed
            tb.symlink("bin", "usr/bin", mtime=1_600_000_004),
            tb.dir("usr", mtime=1_600_000_005),
            tb.dir("usr/bin", mtime=1_600_000_006),
            tb.file(
                "usr/bin/tool",
                b"#!/bin/sh\necho tool\n",
                mode=0o755,
                xattrs={"user.k": "v"},
                mtime=1_600_000_007,
            ),
            tb.hardlink("usr/bin/tool2", "usr/bin/tool"),
            tb.dir("dev", mtime=1_600_000_008),
            tb.chardev("dev/null", 1, 3, mode=0o666),
            tb.fifo("dev/fifo", mode=0o600),
            tb.dir("var", mtime=1_600_000_009),
            tb.dir("var/cache", mtime=1_600_000_010),
            tb.file("var/cache/a", b"cached", mtime=1_600_000_011),
            tb.file("gone.txt", b"to be deleted", mtime=1_600_000_012),
            tb.dir("opq", mtime=1_600_000_013),
            tb.file("opq/old", b"hidden by the opaque marker", mtime=1_600_000_014),
        ],
        [
            tb.dir("etc", mode=0o755, mtime=1_700_000_001, mtime_nsec=5),
            tb.file(
                "etc/passwd",
                b"root:x:0:0::/root:/bin/bash\n",
                mode=0o644,
                mtime=1_700_000_002,
                mtime_nsec=999_999_999,
            ),
            tb.whiteout("gone.txt"),
            tb.dir("opq", mode=0o700, mtime=1_700_000_013),
            tb.opaque("opq"),
            tb.file("opq/new", b"new", mtime=1_700_000_014),
            tb.dir("var", mtime=1_600_000_009),
            tb.whiteout("var/cache"),
            tb.file("newfile", b"x" * 5000, uid=1000, gid=1000, mtime=1_700_000_020, mtime_nsec=1),
        ],
        [
            tb.dir("usr", mode=0o750, mtime=1_800_000_005),
            tb.file("empty", b"", mtime=1_800_000_006),
        ],
    ]


def write_layers(directory: Path, layers: list[list[tb.Member]] | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, members in enumerate(layers or layer_members()):
        path = directory / f"layer{i}.tar"
        path.write_bytes(tb.tar_of(*members))
        paths.append(path)
    return paths


def tar_source(paths: list[Path]) -> str:
    return "tar:" + ",".join(str(p) for p in paths)


def export(source: str, out: Path, *, oci: bool) -> str:
    output = (
        f"type=nydus,push=false,oci-layout={out},name=example.com/img:{TAG},oci-mediatypes={str(oci).lower()}"
    )
    assert cli.main(["export", source, "--output", output, "--progress", "quiet"]) == 0
    return f"oci:{out}:{TAG}"


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_layers(tmp_path_factory.mktemp("layers"))


@pytest.fixture(scope="module", params=[True, False], ids=["oci", "docker"])
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, layers: list[Path]
) -> Path:
    out = tmp_path_factory.mktemp("image") / "layout"
    export(tar_source(layers), out, oci=request.param)
    return out


def copy_of(layout: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(layout, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# Rewriting a layout consistently (stdlib only)


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(layout, digest).write_bytes(data)
    return digest


def load_image(layout: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob_path(layout, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_bytes())
    return index, manifest, config


def store_image(
    layout: Path, index: dict[str, Any], manifest: dict[str, Any], config: dict[str, Any]
) -> None:
    """Write config, manifest and index.json so every digest and size agrees."""
    raw_config = json.dumps(config).encode()
    manifest["config"]["digest"] = put_blob(layout, raw_config)
    manifest["config"]["size"] = len(raw_config)
    raw_manifest = json.dumps(manifest).encode()
    index["manifests"][0]["digest"] = put_blob(layout, raw_manifest)
    index["manifests"][0]["size"] = len(raw_manifest)
    (layout / "index.json").write_text(json.dumps(index))


def read_bootstrap_layer(layout: Path, manifest: dict[str, Any]) -> tuple[bytes, dict[str, bytes]]:
    raw = blob_path(layout, manifest["layers"][-1]["digest"]).read_bytes()
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tar:
        for member in tar:
            if member.isreg():
                data = tar.extractfile(member)
                assert data is not None
                files[member.name] = data.read()
    return files.pop("image/image.boot"), files


def replace_bootstrap_layer(layout: Path, bootstrap: bytes, metas: dict[str, bytes]) -> None:
    """A new bootstrap layer (tar+gzip) with the manifest layer and config diff_id updated."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("image/image.boot", bootstrap), *sorted(metas.items())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o444
            tar.addfile(info, io.BytesIO(data))
    plain = buf.getvalue()
    compressed = gzip.compress(plain)
    index, manifest, config = load_image(layout)
    manifest["layers"][-1]["digest"] = put_blob(layout, compressed)
    manifest["layers"][-1]["size"] = len(compressed)
    config["rootfs"]["diff_ids"][-1] = "sha256:" + hashlib.sha256(plain).hexdigest()
    store_image(layout, index, manifest, config)


def run_check(image: str, *extra: str) -> tuple[int, CheckReport]:
    code = tools_main(["check", image, *extra])
    return code, check_image(image, source=_source_of(extra))


def _source_of(extra: tuple[str, ...]) -> str | None:
    return extra[extra.index("--source") + 1] if "--source" in extra else None


def reader_of(data: bytes) -> BlobReader:
    return BlobReader(lambda offset, length: data[offset : offset + length], len(data))


def problems_matching(report: CheckReport, *words: str) -> list[str]:
    return [p for p in report.problems if all(w in p for w in words)]


# ---------------------------------------------------------------------------------------------
# A good image passes


def test_exported_image_passes(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = f"oci:{exported}:{TAG}"
    assert tools_main(["check", image]) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    report = check_image(image)
    assert report.ok, report.problems
    # Everything was really looked at: 3 blobs, every chunk of the 2 blobs with data.
    assert report.counts["blobs"] == 3
    _index, manifest, _config = load_image(exported)
    expected_chunks = 0
    for layer in manifest["layers"][:-1]:
        data = blob_path(exported, layer["digest"]).read_bytes()
        expected_chunks += len(reader_of(data).chunk_infos())
    assert report.counts["chunks"] == expected_chunks >= 4


def test_json_report(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tools_main(["check", f"oci:{exported}:{TAG}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["problems"] == []
    assert report["platform"]


def test_source_matches(exported: Path, layers: list[Path]) -> None:
    code, report = run_check(f"oci:{exported}:{TAG}", "--source", tar_source(layers))
    assert code == 0, report.problems
    assert report.counts["source_entries"] > 15


def test_source_differing_by_one_file_is_named(exported: Path, tmp_path: Path) -> None:
    members = layer_members()
    members[1] = [m for m in members[1] if getattr(m, "path", b"") != b"newfile"]
    members[1].append(tb.file("newfile", b"y" * 5000, uid=1000, gid=1000, mtime=1_700_000_020, mtime_nsec=1))
    other = write_layers(tmp_path / "other", members)
    code, report = run_check(f"oci:{exported}:{TAG}", "--source", tar_source(other))
    assert code == 1
    assert report.problems == [p for p in report.problems if "/newfile" in p]
    assert problems_matching(report, "--source", "/newfile", "sha256")


# ---------------------------------------------------------------------------------------------
# Damage is named precisely


def _blob_with_chunks(layout: Path) -> tuple[str, BlobReader, bytes]:
    _index, manifest, _config = load_image(layout)
    for layer in manifest["layers"][:-1]:
        data = blob_path(layout, layer["digest"]).read_bytes()
        reader = reader_of(data)
        if len(reader.chunk_infos()) >= 2:
            return layer["digest"], reader, data
    raise AssertionError("no blob with two chunks")


def test_flipped_byte_in_a_chunk(exported: Path, tmp_path: Path) -> None:
    layout = copy_of(exported, tmp_path)
    digest, reader, data = _blob_with_chunks(layout)
    info = reader.chunk_infos()[1]
    damaged = bytearray(data)
    damaged[info.compressed_offset + info.compressed_size // 2] ^= 0x40
    blob_path(layout, digest).write_bytes(bytes(damaged))
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    named = problems_matching(report, f"blob layer {digest}", f"chunk {info.index} ")
    assert named, report.problems
    assert problems_matching(report, f"blob layer {digest}", "sha256 is")
    # Only that blob is blamed (the other chunks and blobs are fine).
    assert all(digest in p or "--source" in p for p in report.problems), report.problems
    assert not problems_matching(report, f"blob layer {digest}", "chunk 0 ")


def test_flipped_byte_in_an_uncompressed_chunk(exported: Path, tmp_path: Path) -> None:
    """A stored (uncompressed) chunk cannot fail decompression: only its digest catches it."""
    layout = copy_of(exported, tmp_path)
    _index, manifest, _config = load_image(layout)
    digest, data, info = max(
        (
            (layer["digest"], data, info)
            for layer in manifest["layers"][:-1]
            for data in [blob_path(layout, layer["digest"]).read_bytes()]
            for info in reader_of(data).chunk_infos()
            if not info.compressed
        ),
        key=lambda found: found[2].compressed_size,
    )
    assert info.compressed_size == 6000  # etc/random
    damaged = bytearray(data)
    damaged[info.compressed_offset + 3000] ^= 0x01
    blob_path(layout, digest).write_bytes(bytes(damaged))
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert problems_matching(
        report, f"blob layer {digest}", f"chunk {info.index} ", "blake3 digest in blob.digest"
    )


def test_truncated_blob(exported: Path, tmp_path: Path) -> None:
    layout = copy_of(exported, tmp_path)
    digest, _reader, data = _blob_with_chunks(layout)
    blob_path(layout, digest).write_bytes(data[:-700])
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert problems_matching(
        report, f"blob layer {digest}", f"has {len(data) - 700} bytes", f"says {len(data)}"
    )
    assert problems_matching(report, f"blob layer {digest}", "ToC")


def test_wrong_diff_id_in_config(exported: Path, tmp_path: Path) -> None:
    layout = copy_of(exported, tmp_path)
    index, manifest, config = load_image(layout)
    wrong = "sha256:" + "ab" * 32
    right = config["rootfs"]["diff_ids"][1]
    config["rootfs"]["diff_ids"][1] = wrong
    store_image(layout, index, manifest, config)
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert report.problems == [
        f"config rootfs.diff_ids[1] is {wrong}, expected {right} (blob layer 1 digest)"
    ]


def test_missing_blob_meta(exported: Path, tmp_path: Path) -> None:
    layout = copy_of(exported, tmp_path)
    _index, manifest, _config = load_image(layout)
    bootstrap, metas = read_bootstrap_layer(layout, manifest)
    assert len(metas) == 2  # the two blobs with chunks
    dropped = sorted(metas)[0]
    del metas[dropped]
    replace_bootstrap_layer(layout, bootstrap, metas)
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    hex_id = dropped.removeprefix("image/").removesuffix(".blob.meta")
    assert len(report.problems) == 1, report.problems
    assert problems_matching(report, f"no image/{hex_id}.blob.meta")


def test_blob_meta_differing_from_the_blob(exported: Path, tmp_path: Path) -> None:
    layout = copy_of(exported, tmp_path)
    _index, manifest, _config = load_image(layout)
    bootstrap, metas = read_bootstrap_layer(layout, manifest)
    name = sorted(metas)[1]
    meta = bytearray(metas[name])
    meta[0] ^= 1
    metas[name] = bytes(meta)
    replace_bootstrap_layer(layout, bootstrap, metas)
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert problems_matching(report, name, "differs from the ci data")


def test_bootstrap_naming_a_wrong_blob(exported: Path, tmp_path: Path) -> None:
    layout = copy_of(exported, tmp_path)
    _index, manifest, _config = load_image(layout)
    bootstrap, metas = read_bootstrap_layer(layout, manifest)
    boot = read_bootstrap(bootstrap)
    real = boot.blobs[0].blob_id
    fake = hashlib.sha256(b"some other blob").hexdigest()
    # The id is in the blob table and in the device slot ([format §2.4, §2.5]); swap it in both.
    assert bootstrap.count(real.encode()) == 2
    patched = bootstrap.replace(real.encode(), fake.encode())
    assert read_bootstrap(patched).blobs[0].blob_id == fake
    metas[f"image/{fake}.blob.meta"] = metas.pop(f"image/{real}.blob.meta")
    replace_bootstrap_layer(layout, patched, metas)
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert problems_matching(report, "blob table entry 0", fake, "no blob layer")
    assert any(real in note and "does not use" in note for note in report.notes), report.notes


def test_wrong_chunk_reference_in_bootstrap(exported: Path, tmp_path: Path) -> None:
    """A chunk-table entry whose offsets do not match the blob's ci is named by file path."""
    layout = copy_of(exported, tmp_path)
    _index, manifest, _config = load_image(layout)
    bootstrap, metas = read_bootstrap_layer(layout, manifest)
    boot = read_bootstrap(bootstrap)
    # Shift the compressed offset of one chunk-table entry ([format §2.14]); nothing checks it but us.
    entry = rafs_layout.CHUNK_TABLE_ENTRY
    target = max(range(len(boot.chunk_table)), key=lambda i: boot.chunk_table[i].compressed_offset)
    at = boot.chunk_table_offset + entry.size * target
    fields = list(entry.unpack_from(bootstrap, at))
    fields[5] += 1  # compressed_offset
    patched = bytearray(bootstrap)
    entry.pack_into(patched, at, *fields)
    replace_bootstrap_layer(layout, bytes(patched), metas)
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert problems_matching(report, "merged bootstrap /", "compressed offset"), report.problems


def test_missing_blob_file(exported: Path, tmp_path: Path) -> None:
    layout = copy_of(exported, tmp_path)
    digest, _reader, _data = _blob_with_chunks(layout)
    blob_path(layout, digest).unlink()
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert problems_matching(report, f"blob layer {digest}", "not found")


@pytest.mark.parametrize("mutate", ["manifest", "config"])
def test_document_not_matching_descriptor(exported: Path, tmp_path: Path, mutate: str) -> None:
    layout = copy_of(exported, tmp_path)
    index, manifest, _config = load_image(layout)
    digest = index["manifests"][0]["digest"] if mutate == "manifest" else manifest["config"]["digest"]
    path = blob_path(layout, digest)
    path.write_bytes(path.read_bytes() + b" ")
    code, report = run_check(f"oci:{layout}:{TAG}")
    assert code == 1
    assert len(report.problems) == 1 and digest in report.problems[0], report.problems


def test_unreadable_image_is_a_clear_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing"
    assert tools_main(["check", f"oci:{missing}"]) == 1
    assert f"problem: OCI layout {missing} is not a directory" in capsys.readouterr().out


def test_source_differing_in_metadata_only(exported: Path, tmp_path: Path) -> None:
    """Same content, one nanosecond and one mode bit apart: both named with the path."""
    members = layer_members()
    members[1] = [m for m in members[1] if getattr(m, "path", b"") != b"newfile"]
    members[1].append(
        tb.file("newfile", b"x" * 5000, mode=0o640, uid=1000, gid=1000, mtime=1_700_000_020, mtime_nsec=2)
    )
    other = write_layers(tmp_path / "other", members)
    code, report = run_check(f"oci:{exported}:{TAG}", "--source", tar_source(other))
    assert code == 1
    assert sorted(report.problems) == [
        "--source: /newfile: mode is '0o644' in the image, '0o640' in the source",
        "--source: /newfile: mtime_nsec is 1 in the image, 2 in the source",
    ]
