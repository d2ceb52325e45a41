"""OCI layout archives and docker-save archives, made by skopeo and by hand."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.oci.archive import open_docker_archive, open_oci_archive
from nydus_exporter.oci.layout import OciLayout
from tests.conftest import require
from tests.oci.images import SmallImage, small_image, store
from tests.oci.imagespec import sha256


def _skopeo(*args: str) -> None:
    require(shutil.which("skopeo") is not None, "skopeo not installed")
    done = subprocess.run(["skopeo", *args], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()


def _source(tmp_path: Path) -> tuple[OciLayout, SmallImage, SmallImage]:
    layout = OciLayout.create(tmp_path / "src")
    a, b = small_image(b"first image\n"), small_image(b"second image\n", arch="arm64")
    store(layout, a, "t")
    store(layout, b, "other")
    return layout, a, b


def _tar(entries: list[tuple[str, bytes | str | None]]) -> bytes:
    """(name, bytes) regular file, (name, "->target") symlink, (name, None) directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# --- OCI archives -----------------------------------------------------------------------------


def test_oci_archive_from_skopeo_through_a_pipe(tmp_path: Path) -> None:
    layout, a, _ = _source(tmp_path)
    archive = tmp_path / "image.tar"
    _skopeo("copy", f"oci:{layout.root}:t", f"oci-archive:{archive}:t")
    with subprocess.Popen(["cat", str(archive)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        opened = open_oci_archive(cast(BinaryIO, cat.stdout), tmp_path / "work")
    assert cat.returncode == 0
    desc = opened.resolve("t")
    assert desc.digest == a.manifest.digest
    assert opened.read_blob(desc.digest) == a.manifest.data
    assert opened.read_blob(a.config.digest) == a.config.data
    assert opened.read_blob(sha256(a.layer_gz)) == a.layer_gz
    assert [p for p in opened.root.rglob("*") if p.name.startswith(".")] == []


def test_oci_archive_roundtrips_to_skopeo(tmp_path: Path) -> None:
    # What we spooled is itself a layout skopeo accepts.
    layout, a, _ = _source(tmp_path)
    archive = tmp_path / "image.tar"
    _skopeo("copy", f"oci:{layout.root}:t", f"oci-archive:{archive}:t")
    with archive.open("rb") as f:
        opened = open_oci_archive(f, tmp_path / "work")
    _skopeo("copy", f"oci:{opened.root}:t", f"oci:{tmp_path / 'again'}:t")
    assert OciLayout.open(tmp_path / "again").resolve("t").digest == a.manifest.digest


def test_oci_archive_gzip_compressed_and_hand_made(tmp_path: Path) -> None:
    # A tarred layout with ./-prefixed names, several tags, gzip-compressed on top.
    layout, _, b = _source(tmp_path)
    entries: list[tuple[str, bytes | str | None]] = [
        ("./", None),
        ("./blobs/", None),
        ("./blobs/sha256/", None),
    ]
    for blob in sorted((layout.root / "blobs" / "sha256").iterdir()):
        entries.append((f"./blobs/sha256/{blob.name}", blob.read_bytes()))
    entries += [("./index.json", layout.read_index()), ("./oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
    opened = open_oci_archive(io.BytesIO(gzip.compress(_tar(entries))), tmp_path / "work")
    assert sorted(opened.tags()) == ["other", "t"]
    assert opened.resolve("other").digest == b.manifest.digest
    assert opened.read_index() == layout.read_index()  # kept byte for byte


LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
EMPTY_INDEX = b'{"schemaVersion":2,"manifests":[]}'


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [("blobs/sha256/" + "0" * 64, b"x"), ("oci-layout", LAYOUT), ("index.json", EMPTY_INDEX)],
            "mismatch",
        ),
        ([("oci-layout", LAYOUT)], "no index.json"),
        ([("index.json", EMPTY_INDEX)], "no oci-layout"),
        ([("blobs/sha256/abc", b"x")], "not a valid sha256"),
        ([("../escape", b"x")], "unsafe"),
        ([("/abs", b"x")], "unsafe"),
        ([("blobs/sha256/" + "0" * 64, "->/etc/passwd")], "not a regular file"),
        (
            [
                ("oci-layout", LAYOUT),
                (
                    "index.json",
                    b'{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
                    b'"digest":"sha256:' + b"1" * 64 + b'","size":3}]}',
                ),
            ],
            "not in the archive",
        ),
    ],
    ids=["digest", "no-index", "no-marker", "bad-name", "dotdot", "absolute", "symlink", "dangling"],
)
def test_oci_archive_rejects_and_cleans_up(
    tmp_path: Path, entries: list[tuple[str, bytes | str | None]], message: str
) -> None:
    work = tmp_path / "work"
    with pytest.raises(FormatError, match=message):
        open_oci_archive(io.BytesIO(_tar(entries)), work)
    assert not work.exists()  # created by us, removed again


def test_oci_archive_missing_layer(tmp_path: Path) -> None:
    layout, a, _ = _source(tmp_path)
    entries: list[tuple[str, bytes | str | None]] = [
        (f"blobs/sha256/{p.name}", p.read_bytes())
        for p in (layout.root / "blobs" / "sha256").iterdir()
        if f"sha256:{p.name}" != sha256(a.layer_gz)
    ]
    entries += [("index.json", layout.read_index()), ("oci-layout", LAYOUT)]
    with pytest.raises(FormatError, match=f"references {sha256(a.layer_gz)}, which is not in the archive"):
        open_oci_archive(io.BytesIO(_tar(entries)), tmp_path / "work")


def test_oci_archive_truncated(tmp_path: Path) -> None:
    layout, _, _ = _source(tmp_path)
    archive = tmp_path / "image.tar"
    _skopeo("copy", f"oci:{layout.root}:t", f"oci-archive:{archive}:t")
    data = archive.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(FormatError):
        open_oci_archive(io.BytesIO(data[: len(data) // 3]), work)
    assert work.is_dir() and list(work.iterdir()) == []  # ours to empty, not to delete


def test_workdir_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "something").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        open_oci_archive(io.BytesIO(b""), tmp_path / "work")
    with pytest.raises(ConfigError, match="empty"):
        open_docker_archive(tmp_path / "x.tar", tmp_path / "work")


# --- docker archives --------------------------------------------------------------------------


def test_docker_archive_from_skopeo(tmp_path: Path) -> None:
    layout, a, _ = _source(tmp_path)
    archive = tmp_path / "docker.tar"
    _skopeo("copy", f"oci:{layout.root}:t", f"docker-archive:{archive}:repo/x:t")
    opened = open_docker_archive(archive, tmp_path / "work")
    assert len(opened.images) == 1
    image = opened.images[0]
    assert image.config == a.config.data
    assert image.config_digest == a.config.digest
    assert image.repo_tags == ("docker.io/repo/x:t",)
    assert image.diff_ids == [sha256(a.layer_tar)]
    assert len(image.layers) == 1
    # docker-archive stores layers uncompressed: the file is the diff.
    assert sha256(image.layers[0].read_bytes()) == image.diff_ids[0]
    assert image.layers[0].is_relative_to(opened.root)


def _legacy_docker_save(image: SmallImage, *, config_name: str | None = None) -> bytes:
    """The pre-Docker-25 layout: <id>/layer.tar (a symlink for a repeated layer), <id>.json."""
    cfg_hex = image.config.digest.removeprefix("sha256:")
    manifest = [
        {
            "Config": config_name or f"{cfg_hex}.json",
            "RepoTags": ["example.com/app:1", "example.com/app:latest"],
            "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
        }
    ]
    return _tar(
        [
            ("aaaa/", None),
            ("aaaa/layer.tar", image.layer_tar),
            ("aaaa/VERSION", b"1.0"),
            ("bbbb/", None),
            ("bbbb/layer.tar", "->../aaaa/layer.tar"),
            (f"{cfg_hex}.json", image.config.data),
            ("manifest.json", json.dumps(manifest).encode()),
            ("repositories", b"{}"),
        ]
    )


def test_docker_archive_legacy_layout_with_symlinks(tmp_path: Path) -> None:
    image = small_image()
    path = tmp_path / "save.tar"
    path.write_bytes(_legacy_docker_save(image))
    opened = open_docker_archive(path, tmp_path / "work")
    (entry,) = opened.images
    assert entry.repo_tags == ("example.com/app:1", "example.com/app:latest")
    assert entry.layers == (opened.root / "aaaa/layer.tar", opened.root / "aaaa/layer.tar")
    assert entry.layers[1].read_bytes() == image.layer_tar
    assert not any(p.is_symlink() for p in opened.root.rglob("*"))  # links are never created


def test_docker_archive_oci_layout_inside(tmp_path: Path) -> None:
    # Docker >= 25 `docker save`: an OCI layout plus manifest.json pointing into blobs/.
    image = small_image()
    cfg, layer = image.config.digest.removeprefix("sha256:"), sha256(image.layer_tar).removeprefix("sha256:")
    manifest = [{"Config": f"blobs/sha256/{cfg}", "RepoTags": None, "Layers": [f"blobs/sha256/{layer}"]}]
    path = tmp_path / "save.tar"
    path.write_bytes(
        _tar(
            [
                ("blobs/", None),
                ("blobs/sha256/", None),
                (f"blobs/sha256/{cfg}", image.config.data),
                (f"blobs/sha256/{layer}", image.layer_tar),
                ("index.json", b'{"schemaVersion":2,"manifests":[]}'),
                ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                ("manifest.json", json.dumps(manifest).encode()),
            ]
        )
    )
    (entry,) = open_docker_archive(path, tmp_path / "work").images
    assert entry.repo_tags == ()
    assert entry.config == image.config.data
    assert [sha256(p.read_bytes()) for p in entry.layers] == entry.diff_ids


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda image: _tar([("manifest.json", b"{}")]), "non-empty list"),
        (lambda image: _tar([("x", b"")]), "manifest"),
        (lambda image: _tar([("manifest.json", b'[{"Config":"c.json","Layers":[]}]')]), "Config"),
        (lambda image: _legacy_docker_save(image, config_name="0" * 64 + ".json"), "not in the archive"),
        (lambda image: _tar([("a/layer.tar", "->../../etc/passwd")]), "escapes"),
        (
            lambda image: _tar(
                [("a", "->b"), ("b", "->a"), ("manifest.json", b'[{"Config":"a","Layers":[]}]')]
            ),
            "links",
        ),
        (lambda image: b"not a tar at all" * 100, "not a valid tar"),
    ],
    ids=["not-list", "no-manifest", "missing-config", "config-name", "escape", "loop", "garbage"],
)
def test_docker_archive_rejects(tmp_path: Path, mutate: Callable[[SmallImage], bytes], message: str) -> None:
    path = tmp_path / "bad.tar"
    path.write_bytes(mutate(small_image()))
    with pytest.raises(FormatError, match=message):
        open_docker_archive(path, tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_docker_archive_config_digest_checked(tmp_path: Path) -> None:
    image = small_image()
    data = _legacy_docker_save(image).replace(b'"Cmd":["/bin/sh"]', b'"Cmd":["/bin/xx"]')
    path = tmp_path / "bad.tar"
    path.write_bytes(data)
    with pytest.raises(FormatError, match="has digest"):
        open_docker_archive(path, tmp_path / "work")
