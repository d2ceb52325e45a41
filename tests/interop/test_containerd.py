"""The user's last step: run a container from an image we pushed, with containerd and
nydus-snapshotter, reading files on demand.

* containerd: Debian's package (1.6), a private instance (own root, state and socket);
* nydus-snapshotter: ``containerd-nydus-grpc`` built from its published Go module (v0.15.15,
  ``make interop-tools``), dedicated fusedev mode, as containerd's ``nydus`` proxy snapshotter;
* nydusd: ``bin/nydusd``, the real RAFS filesystem of nydus-rafs over FUSE with nydus-storage's
  registry backend, behind the part of nydusd's command line and HTTP API the snapshotter uses;
* the pull: ``bin/cri-pull``, containerd's client pull with the layer labels CRI adds, so the
  snapshotter claims the data layer without containerd downloading it (``ctr pull`` adds no
  labels and downloads every layer);
* the run: ``ctr run`` with runc.

The image is exported by ``nydus-exporter export`` (push=true) to a real docker-registry; the
registry's access log counts the bytes served per blob (counts, not time).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from tests.conftest import require
from tests.helpers import tarbuild as tb
from tests.interop import summary
from tests.interop.images import open_layout, write_tars
from tests.interop.tools import tool
from tests.registry_fixtures import RegistryServer

pytestmark = pytest.mark.kernel

MESSAGE = b"hello from a nydus image written by nydus-exporter\n"
BIG = 50 << 20
START_TIMEOUT = 60.0
CONTAINERD_REASON = (
    "needs root, /dev/fuse, overlayfs and containerd + ctr + runc (apt-get install containerd)"
)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _our_processes(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (a path only this test uses)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _our_mounts(root: Path) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4]
        if point.startswith(str(root)):
            mounts.append(point)
    return sorted(mounts, key=len, reverse=True)  # deepest first


@contextlib.contextmanager
def containerd_with_nydus() -> Iterator[Path]:
    """A private containerd with nydus-snapshotter as its ``nydus`` snapshotter; yields the
    containerd socket. Everything it started is stopped and unmounted on exit, its directory
    removed. (A short directory under /tmp: the snapshotter refuses roots longer than 70 bytes,
    its sockets live there.)"""
    root = Path(tempfile.mkdtemp(prefix="nydus-ctr-", dir="/tmp"))
    (root / "snap").mkdir(parents=True)
    sock = root / "containerd.sock"
    snap_sock = root / "snap" / "nydus.sock"
    (root / "containerd.toml").write_text(
        f"""version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[proxy_plugins.nydus]
  type = "snapshot"
  address = "{snap_sock}"
"""
    )
    # The nydusd configuration template; the snapshotter fills in host, repo and cache dir.
    # Prefetch off, so only what is read is fetched.
    (root / "snap" / "nydusd.json").write_text(
        """{"device": {"backend": {"type": "registry", "config": {"scheme": "http", "timeout": 5,
  "connect_timeout": 5, "retry_limit": 2}}, "cache": {"type": "blobcache"}},
 "mode": "direct", "digest_validate": false, "enable_xattr": true, "fs_prefetch": {"enable": false}}"""
    )
    (root / "snap" / "config.toml").write_text(
        f"""version = 1
root = "{root}/snap/root"
address = "{snap_sock}"
daemon_mode = "dedicated"
cleanup_on_close = true
[system]
enable = false
[daemon]
nydusd_config = "{root}/snap/nydusd.json"
nydusd_path = "{tool("nydusd")}"
nydusimage_path = "/nonexistent/nydus-image"
fs_driver = "fusedev"
recover_policy = "none"
threads_number = 1
[cgroup]
enable = false
[log]
log_to_stdout = true
level = "debug"
[metrics]
address = ""
[cache_manager]
disable = true
"""
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ctd_log, snap_log = root / "containerd.log", root / "snapshotter.log"
        with ctd_log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    ["containerd", "--config", str(root / "containerd.toml")], stdout=out, stderr=out
                )
            )
        _wait_for(sock, procs[-1], ctd_log)
        with snap_log.open("wb") as out:
            snap = [str(tool("containerd-nydus-grpc")), "--config", str(root / "snap" / "config.toml")]
            procs.append(subprocess.Popen(snap, stdout=out, stderr=out))
        _wait_for(snap_sock, procs[-1], snap_log)
        yield sock
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for pid in _our_processes(str(root)):  # nydusd, shims left by a failed run
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in _our_mounts(root):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def served_bytes(registry: RegistryServer, digest: str, since: int) -> int:
    """Bytes docker-registry sent for blob ``digest`` (its access log's ``response completed``
    lines after byte ``since`` of the log; ranged reads included)."""
    total = 0
    with registry.log_file.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        if "response completed" in line and f"/blobs/{digest}" in line:
            found = re.search(r"http\.response\.written=(\d+)", line)
            total += int(found.group(1)) if found else 0
    return total


def test_ctr_run_reads_files_on_demand(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    require(
        os.geteuid() == 0
        and Path("/dev/fuse").exists()
        and all(shutil.which(b) for b in ("containerd", "ctr", "runc", "containerd-shim-runc-v2")),
        CONTAINERD_REASON,
    )
    summary.record(summary.MOUNTED, "containerd-run", False)
    layer: list[tb.Member] = [
        tb.dir("bin", mtime=1_700_000_000),
        tb.file("bin/cat-file", tool("cat-file").read_bytes(), mode=0o755, mtime=1_700_000_000),
        tb.dir("data", mtime=1_700_000_000),
        tb.file("data/message", MESSAGE, mtime=1_700_000_001),
        tb.file("data/big.bin", random.Random(3).randbytes(BIG), mtime=1_700_000_002),
    ]
    (tar,) = write_tars(tmp_path / "tars", [layer])
    ref = f"{registry.host}/{repo_name}:1"
    options = parse_output(
        {"name": ref, "oci-mediatypes": "true", "oci-layout": str(tmp_path / "layout")}
    ).options
    export(f"tar:{tar}", options, state_dir=tmp_path / "state")
    image = open_layout(tmp_path / "layout")
    (data_layer,) = image.blob_layers
    since = registry.log_file.stat().st_size  # count from here: the push is done

    with containerd_with_nydus() as sock:
        ctr = ["ctr", "--address", str(sock)]
        pulled = subprocess.run(
            [str(tool("cri-pull")), str(sock), "nydus", ref], capture_output=True, text=True
        )
        assert pulled.returncode == 0, pulled.stderr
        # containerd fetched the manifest, config and bootstrap layer, not the data blob.
        assert served_bytes(registry, data_layer["digest"], since) == 0
        run = subprocess.run(
            [
                *ctr,
                "run",
                "--rm",
                "--snapshotter",
                "nydus",
                ref,
                "interop-c1",
                "/bin/cat-file",
                "/data/message",
            ],
            capture_output=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr.decode(errors="replace")
        assert run.stdout == MESSAGE

    # nydusd read the chunk-info table, cat-file's chunks and the message: a few MiB of a
    # 50 MiB blob.
    fetched = served_bytes(registry, data_layer["digest"], since)
    print(f"containerd run: {fetched} of {data_layer['size']} bytes of the data blob fetched")
    assert 0 < fetched < 4 << 20, f"{fetched} of {data_layer['size']} bytes of the data blob fetched"
    summary.record(summary.MOUNTED, "containerd-run", True)
