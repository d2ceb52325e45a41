"""The Makefile's set-up targets: what `make run` / `make test` install, and that Debian's
docker-registry service (port 5000 on every interface, enabled at boot) never stays running.

apt-get, dpkg-query, systemctl and sudo are replaced by recording scripts on PATH: the thing
under test is the Makefile's logic, and the real tools would change the machine.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class _Machine:
    """A fake Debian: ``missing`` packages are not installed; every tool call is logged."""

    def __init__(self, tmp: Path, missing: str) -> None:
        self.tmp = tmp
        self.log = tmp / "calls.log"
        self.policy = tmp / "policy-rc.d"
        self.systemd = tmp / "run-systemd-system"
        self.init_script = tmp / "init.d-docker-registry"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        _script(
            bin_dir / "dpkg-query",
            f'for pkg; do :; done\ncase " {missing} " in *" $pkg "*) exit 1;; esac\n'
            'echo "install ok installed"\n',
        )
        # apt-get records its arguments and what the policy says about starting a service.
        _script(
            bin_dir / "apt-get",
            f'if [ -x "{self.policy}" ]; then "{self.policy}" docker-registry start; p=$?; else p=none; fi\n'
            f'echo "apt-get $* policy=$p" >> "{self.log}"\n',
        )
        _script(
            bin_dir / "systemctl",
            f'echo "systemctl $*" >> "{self.log}"\n'
            'case "$1" in cat|is-enabled) exit 0;; is-active) exit 3;; esac\n',
        )
        _script(bin_dir / "update-rc.d", f'echo "update-rc.d $*" >> "{self.log}"\n')
        _script(bin_dir / "sudo", 'exec "$@"\n')
        self.rc_dir = tmp / "etc"
        (self.rc_dir / "rc2.d").mkdir(parents=True)
        self.path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    def make(self, *targets: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-C",
                str(ROOT),
                *targets,
                f"POLICY_RC_D={self.policy}",
                f"SYSTEMD_RUN_DIR={self.systemd}",
                f"REGISTRY_INIT_SCRIPT={self.init_script}",
                f"RC_DIR={self.rc_dir}",
            ],
            env={**os.environ, "PATH": self.path},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def test_system_deps_installs_docker_registry_without_starting_it(tmp_path: Path) -> None:
    machine = _Machine(tmp_path, missing="docker-registry")
    machine.systemd.mkdir()
    result = machine.make("system-deps")
    assert result.returncode == 0, result.stderr
    installs = [c for c in machine.calls() if c.startswith("apt-get") and " install " in c]
    assert len(installs) == 1
    assert "docker-registry" in installs[0].split()
    # Services may not start during the install, and the policy does not outlive it.
    assert installs[0].endswith("policy=101")
    assert not machine.policy.exists()
    # With systemd, the enabled unit is disabled and stopped.
    assert "systemctl disable --now docker-registry.service" in machine.calls()


def test_an_existing_policy_file_is_left_alone(tmp_path: Path) -> None:
    machine = _Machine(tmp_path, missing="docker-registry")
    _script(machine.policy, "exit 101\n")
    assert machine.make("system-deps").returncode == 0
    assert machine.policy.read_text() == "#!/bin/sh\nexit 101\n"


def test_a_previously_started_sysvinit_registry_is_stopped(tmp_path: Path) -> None:
    machine = _Machine(tmp_path, missing="")
    # No systemd: the init script says the service runs.
    _script(machine.init_script, f'echo "init.d $*" >> "{machine.log}"\n')
    (machine.rc_dir / "rc2.d" / "S01docker-registry").symlink_to(machine.init_script)
    result = machine.make("system-deps")
    assert result.returncode == 0, result.stderr
    assert "init.d stop" in machine.calls()
    assert "update-rc.d docker-registry disable" in machine.calls()


def test_make_run_installs_only_what_the_daemon_needs(tmp_path: Path) -> None:
    machine = _Machine(tmp_path, missing="ca-certificates docker-registry skopeo erofs-utils")
    result = machine.make("runtime-deps")
    assert result.returncode == 0, result.stderr
    installs = [c for c in machine.calls() if c.startswith("apt-get") and " install " in c]
    assert len(installs) == 1
    packages = installs[0].split()
    assert "ca-certificates" in packages
    assert not {"docker-registry", "skopeo", "erofs-utils"} & set(packages)
    # `make run` uses that list, `make test` the full one.
    database = subprocess.run(
        ["make", "-C", str(ROOT), "-p", "-n", "-q", "run"], capture_output=True, text=True, timeout=60
    ).stdout
    rules = {
        line.split(":", 1)[0]: line.split(":", 1)[1].split()
        for line in database.splitlines()
        if line.startswith(("run:", "test:"))
    }
    assert "runtime-deps" in rules["run"] and "system-deps" not in rules["run"]
    assert "system-deps" in rules["test"]
