"""``check``, ``unpack`` and ``cat`` on ``docker://`` images in a real registry.

Images are exported locally (``nydus_exporter.cli.main.main(["export", ...])``) into an OCI
layout and pushed with skopeo (an independent client) to Debian's ``docker-registry``
(tests/registry_fixtures.py). What went over the wire is measured by a plain TCP relay in
front of the registry that counts the bytes the registry sent back — not by the client's
own bookkeeping — and the requests by the fault proxy's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.errors import ConfigError, FormatError, RegistryError
from nydus_exporter.image.reader import open_image
from nydus_exporter.image.registry import RegistryOptions, RegistryRepository
from nydus_exporter.image.repository import parse_image_spec
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.registry import RetryPolicy
from nydus_exporter.tools.cat import cat_file
from nydus_exporter.tools.check import check_image
from nydus_exporter.tools.unpack import unpack_image
from tests.conftest import PROJECT_ROOT, require
from tests.e2e.test_check import write_layers
from tests.helpers import tarbuild as tb
from tests.helpers.shared import build_once
from tests.registry_fixtures import FaultProxy, LoopThread, RegistryServer

MIB = 1 << 20
BIG_FILES = 40
BIG_FILE_SIZE = 5 * MIB
MOTD = b"Welcome to a lazily loaded image.\n"
_NO_RETRY = RetryPolicy(attempts=1)
LOG_LINE = b"2024-01-01T00:00:00Z INFO nydus lazy loading works, line number padding......\n"


# --- a byte-counting TCP relay ----------------------------------------------------------------


class WireCounter:
    """A TCP relay to ``upstream`` (host:port) counting the bytes sent back to the client."""

    def __init__(self, loop_thread: LoopThread, upstream: str) -> None:
        self._loop_thread = loop_thread
        self._upstream = upstream.rsplit(":", 1)
        self.down = 0  # bytes from the registry to the client
        self.connections = 0
        self.host = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing: asyncio.Event | None = None  # cleared: nothing more reaches the client

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await src.read(1 << 16):
                if count:
                    assert self._flowing is not None
                    await self._flowing.wait()
                    self.down += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(self._upstream[0], int(self._upstream[1]))
            await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True))
        finally:
            self._tasks.discard(task)

    def pause(self) -> None:
        """Stop passing the registry's bytes on: the client waits as on a stalled network."""
        assert self._flowing is not None
        self._loop_thread.loop.call_soon_threadsafe(self._flowing.clear)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.host = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> WireCounter:
        self._loop_thread.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop_thread.run(self._stop())


# --- building and pushing images --------------------------------------------------------------


def skopeo_push(layout: Path, tag: str, registry_host: str, repo: str, dest_tag: str = "v1") -> str:
    require(shutil.which("skopeo") is not None, "skopeo is not installed")
    done = subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{registry_host}/{repo}:{dest_tag}",
        ],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return f"{repo}:{dest_tag}"


def export_layout(source: str, out: Path, *, oci: bool = True) -> None:
    output = f"type=nydus,push=false,oci-layout={out},oci-mediatypes={str(oci).lower()},name=x:1"
    assert cli.main(["export", source, "--output", output, "--progress", "quiet"]) == 0


def big_tar(path: Path) -> None:
    """~200 MB of incompressible files (seeded), a compressible multi-chunk log, and small
    files, symlinks and special files, written to disk one file at a time."""
    rng = random.Random(20240601)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_700_000_000
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind == tarfile.REGTYPE:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("data", kind=tarfile.DIRTYPE)
        for i in range(BIG_FILES):
            add(f"data/blob{i:02}.bin", rng.randbytes(BIG_FILE_SIZE))
        add("etc", kind=tarfile.DIRTYPE)
        add("etc/motd", MOTD)
        lines = (b"%09d " % n + LOG_LINE for n in range(3 * MIB // (len(LOG_LINE) + 10) + 7))
        add("var/log/app.log", b"".join(lines))  # distinct chunks, each very compressible
        add("etc/motd-abs", kind=tarfile.SYMTYPE, link="/etc/motd")
        add("etc/motd-rel", kind=tarfile.SYMTYPE, link="./motd")
        add("etc/escape", kind=tarfile.SYMTYPE, link="../../../../etc/./motd")
        add("etc/via-dir", kind=tarfile.SYMTYPE, link="../etc")
        add("loop-a", kind=tarfile.SYMTYPE, link="loop-b")
        add("loop-b", kind=tarfile.SYMTYPE, link="/loop-a")
        add("dangling", kind=tarfile.SYMTYPE, link="/nowhere")
        add("dev/null", kind=tarfile.CHRTYPE)
        add("dev/fifo", kind=tarfile.FIFOTYPE)


def tar_file(tar_path: Path, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


@dataclass
class PushedImage:
    layout: Path
    tar: Path
    repo_tag: str  # repository:tag in the registry

    def docker(self, host: str) -> str:
        return f"docker://{host}/{self.repo_tag}"

    @property
    def oci(self) -> str:
        return f"oci:{self.layout}:1"


@pytest.fixture(scope="module")
def big_image(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, registry: RegistryServer
) -> PushedImage:
    def build(directory: Path) -> None:  # once per run (read-only), pushed by each worker
        big_tar(directory / "layer.tar")
        export_layout(f"tar:{directory / 'layer.tar'}", directory / "layout")

    directory = build_once(tmp_path_factory, worker_id, "registry-tools-big", build)
    repo_tag = skopeo_push(directory / "layout", "1", registry.host, f"t/lazy-{uuid.uuid4().hex[:8]}")
    return PushedImage(directory / "layout", directory / "layer.tar", repo_tag)


@pytest.fixture(scope="module")
def rich_image(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, registry: RegistryServer
) -> PushedImage:
    """test_check's three layers: hardlinks, devices, xattrs, whiteouts, an opaque dir."""

    def build(directory: Path) -> None:  # once per run (read-only), pushed by each worker
        layers = write_layers(directory / "layers")
        export_layout("tar:" + ",".join(map(str, layers)), directory / "layout")

    directory = build_once(tmp_path_factory, worker_id, "registry-tools-rich", build)
    layers = sorted((directory / "layers").iterdir())
    repo_tag = skopeo_push(directory / "layout", "1", registry.host, f"t/rich-{uuid.uuid4().hex[:8]}")
    return PushedImage(directory / "layout", layers[0], repo_tag)


@pytest.fixture
def wire(server_loop: LoopThread, fault_proxy: FaultProxy) -> Iterator[WireCounter]:
    """client -> byte counter -> fault proxy (request log) -> registry."""
    with WireCounter(server_loop, fault_proxy.host) as counter:
        yield counter


def chunk_bytes_of(layout: Path, path: bytes) -> tuple[int, int]:
    """(compressed bytes, number of chunks) of a file, read from the bootstrap layer with the
    stdlib (gzip, tarfile, json) and the bootstrap reader."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    raw = gzip.decompress((blobs / manifest["layers"][-1]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = tar.extractfile("image/image.boot")
        assert member is not None
        boot = read_bootstrap(member.read())
    node = boot.root
    for part in path.strip(b"/").split(b"/"):
        assert node.children is not None
        node = node.children[part]
    return sum(c.compressed_size for c in node.inode.chunks), len(node.inode.chunks)


def blob_gets(proxy: FaultProxy) -> list[str]:
    return [path for method, path, _ in proxy.log if method == "GET" and "/blobs/" in path]


# --- cat: lazy loading ------------------------------------------------------------------------


def test_cat_small_file_reads_under_3_mib_of_a_200_mb_image(
    big_image: PushedImage, wire: WireCounter, fault_proxy: FaultProxy
) -> None:
    blob_size = sum(
        layer["size"]
        for layer in json.loads(
            (
                big_image.layout
                / "blobs/sha256"
                / json.loads((big_image.layout / "index.json").read_text())["manifests"][0]["digest"][7:]
            ).read_bytes()
        )["layers"]
    )
    assert blob_size > 200 * 10**6  # the image really is that big
    out = io.BytesIO()
    result = cat_file(big_image.docker(wire.host), "/etc/motd", out)
    assert out.getvalue() == MOTD == tar_file(big_image.tar, "etc/motd")
    assert wire.down < 3 * MIB, f"{wire.down} bytes went over the wire"
    # One range request for the one chunk; the other blob GETs are the config and the
    # bootstrap layer (streamed whole).
    gets = blob_gets(fault_proxy)
    assert len(gets) == 3, gets
    assert result.reads.range_reads == 1 and result.reads.range_bytes == len(MOTD)
    assert result.registry is not None and result.registry.bytes_downloaded < 3 * MIB


@pytest.mark.parametrize("name", ["/data/blob17.bin", "/var/log/app.log"], ids=["random", "compressible"])
def test_cat_multi_chunk_file_reads_about_its_compressed_size(
    big_image: PushedImage, wire: WireCounter, name: str
) -> None:
    baseline = io.BytesIO()
    cat_file(big_image.docker(wire.host), "/etc/motd", baseline)
    overhead = wire.down - len(MOTD)  # manifest, config, bootstrap layer, headers
    wire.down = 0
    out = io.BytesIO()
    result = cat_file(big_image.docker(wire.host), name, out)
    expected = tar_file(big_image.tar, name.lstrip("/"))
    assert out.getvalue() == expected
    compressed, chunks = chunk_bytes_of(big_image.layout, name.encode())
    assert chunks > 1 and result.chunks == chunks
    assert result.reads.range_bytes == compressed  # exactly the chunks' bytes
    assert compressed <= wire.down - overhead <= compressed + 64 * 1024, (wire.down, overhead, compressed)
    if name.endswith(".log"):
        assert wire.down < len(expected) // 10  # the lazily fetched bytes are the compressed ones


def test_cat_cli_prints_exact_bytes_and_reports_the_transfer(
    big_image: PushedImage, registry: RegistryServer
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nydus_exporter.cli.main",
            "cat",
            big_image.docker(registry.host),
            "/etc/motd-abs",
            "--stats",
        ],
        capture_output=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == MOTD
    report = done.stderr.decode()
    assert "cat /etc/motd:" in report and "1 range request(s)" in report, report
    assert "registry:" in report and "blob bytes downloaded" in report


@pytest.mark.parametrize(
    "link", ["/etc/motd-abs", "etc/motd-rel", "/etc/escape", "/etc/via-dir/motd", "/../etc/motd"]
)
def test_cat_follows_symlinks_inside_the_image(big_image: PushedImage, link: str) -> None:
    out = io.BytesIO()
    result = cat_file(big_image.oci, link, out)
    assert out.getvalue() == MOTD and result.path == "/etc/motd"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/nothing", "/etc/nothing: no such file or directory"),
        ("/dangling", "/dangling: no such file or directory"),
        ("/etc", "/etc: is a directory"),
        ("/etc/via-dir", "/etc/via-dir: is a directory"),
        ("/loop-a", "/loop-a: too many levels of symbolic links"),
        ("/dev/null", "/dev/null: is a character device"),
        ("/dev/fifo", "/dev/fifo: is a FIFO"),
        ("/etc/motd/x", "/etc/motd/x: /etc/motd in"),
    ],
)
def test_cat_errors_name_the_path(
    big_image: PushedImage, registry: RegistryServer, path: str, message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        cat_file(big_image.oci, path, io.BytesIO())
    if path in ("/etc/nothing", "/etc", "/loop-a"):
        with pytest.raises(ConfigError, match=message):
            cat_file(big_image.docker(registry.host), path, io.BytesIO())


def test_cat_cli_errors_exit_1(
    big_image: PushedImage, registry: RegistryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["cat", big_image.docker(registry.host), "/etc/missing"]) == 1
    err = capsys.readouterr().err
    assert "/etc/missing: no such file or directory" in err


# --- the store: streams, documents, options ---------------------------------------------------


def test_open_blob_streams_verified_bytes_and_close_stops_the_transfer(
    big_image: PushedImage, wire: WireCounter
) -> None:
    layout_blobs = big_image.layout / "blobs" / "sha256"
    blob = max(layout_blobs.iterdir(), key=lambda p: p.stat().st_size)
    digest = f"sha256:{blob.name}"
    with RegistryRepository.open(big_image.docker(wire.host)) as store:
        with store.open_blob(digest) as stream:
            assert stream.read(MIB) == blob.read_bytes()[:MIB]
        # Closing early cancelled the GET: far less than the 200 MB blob went over the wire
        # (the queue, the reader's buffer and the socket buffers hold a few MiB at most).
        assert wire.down < 40 * MIB, wire.down
        h = hashlib.sha256()
        with store.open_blob(digest, verify=True) as stream:
            while piece := stream.read(3 * MIB + 17):
                h.update(piece)
        assert f"sha256:{h.hexdigest()}" == digest
        assert store.blob_size(digest) == blob.stat().st_size
        assert store.read_at(digest, blob.stat().st_size - 10, 100) == blob.read_bytes()[-10:]
        missing = "sha256:" + "0" * 64
        with pytest.raises(FormatError, match=f"blob {missing} not found"):
            store.open_blob(missing)
        with pytest.raises(FormatError, match=f"blob {missing} not found"):
            store.blob_size(missing)


def test_closing_the_store_wakes_a_reader_in_another_thread(
    big_image: PushedImage, wire: WireCounter
) -> None:
    blob = max((big_image.layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    store = RegistryRepository.open(big_image.docker(wire.host))
    stream = store.open_blob(f"sha256:{blob.name}")
    outcome: list[object] = []
    started = threading.Event()

    def reader() -> None:
        total = 0
        try:
            while piece := stream.read(64 << 10):
                total += len(piece)
                if not started.is_set():
                    wire.pause()  # the network stalls: the reader ends up waiting for bytes
                    started.set()
            outcome.append(total)
        except ValueError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    assert started.wait(10)
    store.close()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome[0], ValueError) and "closed" in str(outcome[0]), outcome


def test_image_spec_forms() -> None:
    assert parse_image_spec("docker://127.0.0.1:5000/a/b:t") == ("docker", "127.0.0.1:5000/a/b:t", None)
    assert parse_image_spec("oci:/x/y:t") == ("oci", "/x/y", "t")
    for bad in ("docker://", "registry:foo", "/just/a/path"):
        with pytest.raises(ConfigError):
            parse_image_spec(bad)
    with pytest.raises(ConfigError):
        open_image("docker://127.0.0.1:1/UPPER/case")


def test_missing_tag_is_a_registry_error(registry: RegistryServer, rich_image: PushedImage) -> None:
    repo = rich_image.repo_tag.split(":")[0]
    with pytest.raises(RegistryError, match="no manifest tagged 'nope'"):
        open_image(f"docker://{registry.host}/{repo}:nope")


def test_tls_registry_needs_its_ca_or_insecure(registry_tls: RegistryServer, rich_image: PushedImage) -> None:
    repo_tag = skopeo_push(rich_image.layout, "1", registry_tls.host, f"t/tls-{uuid.uuid4().hex[:8]}")
    spec = f"docker://{registry_tls.host}/{repo_tag}"
    expected = io.BytesIO()
    cat_file(rich_image.oci, "/etc/passwd", expected)
    for options in (RegistryOptions(ca_file=registry_tls.ca_file), RegistryOptions(insecure=True)):
        out = io.BytesIO()
        cat_file(spec, "/etc/passwd", out, registry=options)
        assert out.getvalue() == expected.getvalue() == b"root:x:0:0::/root:/bin/bash\n"
    assert cli.main(["cat", spec, "/etc/passwd", "--ca-file", str(registry_tls.ca_file)]) == 0
    with pytest.raises(RegistryError):
        cat_file(spec, "/etc/passwd", io.BytesIO(), registry=RegistryOptions(retry=_NO_RETRY))


# --- check and unpack -------------------------------------------------------------------------


def test_check_passes_for_a_pushed_image(rich_image: PushedImage, registry: RegistryServer) -> None:
    report = check_image(rich_image.docker(registry.host))
    assert report.ok, report.problems
    local = check_image(rich_image.oci)
    assert report.counts == local.counts and report.manifest == local.manifest
    assert cli.main(["check", rich_image.docker(registry.host)]) == 0


def test_check_names_a_blob_corrupted_in_the_registry(
    tmp_path: Path, registry: RegistryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Unique content: blobs are stored once per registry, whatever the repository.
    unique = os.urandom(300_000)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tb.tar_of(tb.file("payload.bin", unique), tb.file("readme", b"unique image\n")))
    export_layout(f"tar:{layer}", tmp_path / "layout")
    repo_tag = skopeo_push(tmp_path / "layout", "1", registry.host, f"t/corrupt-{uuid.uuid4().hex[:8]}")
    spec = f"docker://{registry.host}/{repo_tag}"
    with open_image(spec) as image:
        (blob,) = image.blob_layers
    assert check_image(spec).ok
    stored = registry.stored_blob(blob.digest)
    data = bytearray(stored.read_bytes())
    for i in range(100_000, 100_016):  # inside payload.bin's chunk data (stored raw)
        data[i] ^= 0xFF
    stored.write_bytes(bytes(data))
    report = check_image(spec)
    assert not report.ok
    assert any(blob.digest in p and "sha256 is" in p for p in report.problems), report.problems
    assert any(blob.digest in p and "does not match its blake3 digest" in p for p in report.problems)
    assert cli.main(["check", spec]) == 1
    assert blob.digest in capsys.readouterr().out
    # cat verifies the chunk it fetched.
    with pytest.raises(FormatError, match="does not match its blake3 digest"):
        cat_file(spec, "/payload.bin", io.BytesIO())
    out = io.BytesIO()
    cat_file(spec, "/readme", out)  # an intact chunk of the same blob still reads
    assert out.getvalue() == b"unique image\n"


def test_unpack_from_registry_equals_unpack_from_layout(
    rich_image: PushedImage, registry: RegistryServer, tmp_path: Path
) -> None:
    from_registry, from_layout = tmp_path / "registry.tar", tmp_path / "layout.tar"
    result = unpack_image(rich_image.docker(registry.host), from_registry)
    unpack_image(rich_image.oci, from_layout)
    assert from_registry.read_bytes() == from_layout.read_bytes()
    assert result.files > 0
    with tarfile.open(from_registry) as tar:
        names = tar.getnames()
    assert "etc/passwd" in names and "gone.txt" not in names
    assert cli.main(["unpack", rich_image.docker(registry.host), "-o", str(tmp_path / "cli.tar")]) == 0
    assert (tmp_path / "cli.tar").read_bytes() == from_layout.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.tar", "layout.tar", "registry.tar"]
