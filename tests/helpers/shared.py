"""Build an expensive, read-only input once per test run, whatever the number of xdist workers.

Each xdist worker is a process with its own session and module fixtures: a fixture that
builds a 200 MB image would build it once per worker. :func:`build_once` builds it in a
directory shared by all workers of the run (beside their own base temp dirs, so pytest's
retention policy removes it with the rest), under an exclusive file lock: the first worker
builds, the others wait for it and reuse the result. Inputs built this way must never be
modified by a test (copy them first).
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["build_once"]

_DONE = ".built"


def _run_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base temp is <run base>/<worker id>; without it, the run base.
    return base.parent if worker_id != "master" else base


def build_once(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str, build: Callable[[Path], None]
) -> Path:
    """The directory ``name`` of this run, filled by ``build(directory)`` exactly once."""
    run_dir = _run_dir(tmp_path_factory, worker_id)
    directory = run_dir / f"shared-{name}"
    with (run_dir / f"shared-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (directory / _DONE).exists():
            return directory
        if directory.exists():  # a worker failed half-way: start over
            shutil.rmtree(directory)
        directory.mkdir()
        build(directory)
        (directory / _DONE).touch()
    return directory
