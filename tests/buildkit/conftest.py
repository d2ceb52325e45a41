"""nydus-buildkitd end to end: BuildKit (OCI worker, runc, overlayfs) with ``type=nydus``.

The fixtures start real parts only, each once per session, with all state under pytest's
temporary directory, and stop them at the end:

* ``nydus_daemon``: ``nydus-exporter serve`` on a unix socket, allowed to read buildkitd's
  root (``layers=by-reference`` and ``layers=snapshot``);
* ``buildkitd``: ``bin/nydus-buildkitd`` (built by ``make buildkit``, a dependency of
  ``make test``) with an ``[exporter.nydus]`` table naming the daemon's socket;
* ``base_image``: a three-layer base image pushed to the ``registry`` fixture by BuildKit's
  own ``type=image`` exporter. Its root filesystem is a handful of the host's dynamically
  linked tools (dash, coreutils) and their libraries: enough for RUN steps, built in well
  under a second and with no package mirror (debootstrap would need one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, require
from tests.registry_fixtures import RegistryServer

BIN = PROJECT_ROOT / "bin"
BUILDKITD = BIN / "nydus-buildkitd"
BUILDCTL = BIN / "buildctl"
_START_TIMEOUT = 60.0
# Host tools copied into the base image (with their shared libraries) for RUN steps.
_BASE_TOOLS = ("sh", "rm", "ln", "chmod", "mkdir", "cp", "mv", "cat", "echo", "touch", "ls", "true", "head")


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in {_START_TIMEOUT}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` (no fixed sleeps); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@dataclass
class Daemon:
    socket: Path
    state_dir: Path
    http: str  # HOST:PORT of /metrics
    log: Path

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the daemon's Prometheus text (0 when absent)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == (f"{name}{{{want}}}" if want else name):
                return float(value)
        return 0.0


@dataclass
class BuildKit:
    address: str
    root: Path
    log: Path

    def buildctl(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """``buildctl --addr … ARGS`` (output: stdout + plain progress on stderr)."""
        return subprocess.run(
            [str(BUILDCTL), "--addr", self.address, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )


def _require_buildkit() -> None:
    require(os.geteuid() == 0, "nydus-buildkitd runs as root here (OCI worker, overlayfs)")
    require(
        BUILDKITD.is_file() and BUILDCTL.is_file(),
        f"{BUILDKITD} and {BUILDCTL} are built by `make buildkit` (a part of `make test`)",
    )
    require(shutil.which("runc") is not None, "runc (Debian package) runs the RUN steps")


def free_port() -> int:
    from tests.registry_fixtures import free_port as port

    return port()


def start_daemon(
    directory: Path, *, allowed_roots: Sequence[Path] = ()
) -> tuple[Daemon, subprocess.Popen[bytes]]:
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / "exporter.sock"
    http = f"127.0.0.1:{free_port()}"
    log = directory / "daemon.log"
    argv = [
        str(Path(sys.executable).parent / "nydus-exporter"), "serve",
        "--state-dir", str(directory / "state"),
        "--listen", f"unix://{socket_path}",
        "--http", http,
        "--log-format", "console",
    ]  # fmt: skip
    for root in allowed_roots:
        argv += ["--allowed-root", str(root)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    daemon = Daemon(socket_path, directory / "state", http, log)
    try:
        _wait_for("nydus-exporter serve", socket_path.exists, proc, log)
    except BaseException:
        stop(proc)
        raise
    return daemon, proc


def start_buildkitd(
    directory: Path, *, daemon_address: str, extra_config: str = ""
) -> tuple[BuildKit, subprocess.Popen[bytes]]:
    directory.mkdir(parents=True, exist_ok=True)
    root = directory / "root"
    config = directory / "buildkitd.toml"
    config.write_text(
        f'[exporter.nydus]\n  address = "{daemon_address}"\n  resolve-timeout = "20s"\n{extra_config}'
    )
    sock = directory / "buildkitd.sock"
    log = directory / "buildkitd.log"
    argv = [
        str(BUILDKITD),
        "--root", str(root),
        "--addr", f"unix://{sock}",
        "--config", str(config),
        "--oci-worker=true",
        "--oci-worker-snapshotter=overlayfs",
        "--oci-worker-net=host",
        "--oci-worker-gc=false",
        "--containerd-worker=false",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    bk = BuildKit(f"unix://{sock}", root, log)

    def ready() -> bool:
        if not sock.exists():
            return False
        return bk.buildctl(["debug", "workers"], timeout=30).returncode == 0

    try:
        _wait_for("nydus-buildkitd", ready, proc, log)
    except BaseException:
        stop(proc)
        raise
    return bk, proc


@pytest.fixture(scope="session")
def buildkit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_buildkit()
    return tmp_path_factory.mktemp("buildkit")


@pytest.fixture(scope="session")
def nydus_daemon(buildkit_dir: Path) -> Iterator[Daemon]:
    daemon, proc = start_daemon(buildkit_dir / "daemon", allowed_roots=[buildkit_dir / "buildkitd" / "root"])
    yield daemon
    stop(proc)


@pytest.fixture(scope="session")
def buildkitd(buildkit_dir: Path, nydus_daemon: Daemon) -> Iterator[BuildKit]:
    bk, proc = start_buildkitd(buildkit_dir / "buildkitd", daemon_address=nydus_daemon.address)
    yield bk
    stop(proc)
    unmount_under(bk.root)


def unmount_under(root: Path) -> None:
    """Mounts buildkitd may leave after being stopped (executor rootfs, cache mounts)."""
    with contextlib.suppress(OSError):
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith(str(root)):
                subprocess.run(["umount", "-l", target], check=False)


def _library_paths(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [word for line in out.splitlines() for word in line.split() if word.startswith("/")]


def make_base_context(directory: Path) -> Path:
    """Two directories (libraries, tools) and a Dockerfile making three layers."""
    libs, tools = directory / "libs", directory / "tools"
    for name in _BASE_TOOLS:
        found = shutil.which(name)
        assert found is not None, f"{name} is not installed"
        real = os.path.realpath(found)
        target = tools / "bin" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, target)
        for lib in _library_paths(real):
            dest = libs / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy2(os.path.realpath(lib), dest)
    (directory / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY libs/ /\n"
        "COPY tools/ /\n"
        'RUN ["/bin/sh", "-c", "mkdir -p /etc /tmp /var/old && echo base > /etc/base-release '
        '&& echo one > /var/old/one && echo two > /var/old/two && chmod 1777 /tmp"]\n'
    )
    return directory


@pytest.fixture(scope="session")
def base_image(buildkitd: BuildKit, registry: RegistryServer, buildkit_dir: Path) -> str:
    context = make_base_context(buildkit_dir / "base")
    ref = f"{registry.host}/base:1"
    res = buildkitd.buildctl(
        [
            "build", "--progress", "plain", "--frontend", "dockerfile.v0",
            "--local", f"context={context}", "--local", f"dockerfile={context}",
            "--output", f"type=image,name={ref},push=true,registry.insecure=true",
        ]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    return ref


def docker_config(directory: Path, registry: RegistryServer) -> dict[str, str]:
    """``DOCKER_CONFIG`` for buildctl with the registry's basic credentials."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    return {"DOCKER_CONFIG": str(directory)}
