"""The suite cleans up after itself: nothing is left in the temporary directory after a run.

At the start of a run, the process that runs it (the xdist controller, or the only process
without xdist) makes a private directory in the system temp dir and points every temporary
file of the run there: ``tempfile.tempdir`` for this process, ``TMPDIR`` for what it starts
(xdist workers, the CLI, daemons, conversion workers, registries). pytest's own ``tmp_path``
base stays in the system temp dir (``PYTEST_DEBUG_TEMPROOT``), where
``tmp_path_retention_policy`` (pyproject) removes a passing test's directory.

At the end the private directory must be empty. Whatever is left (a test's ``mkdtemp`` never
removed, an export killed before it cleaned up) is listed and fails the run; the directory is
kept for inspection. Other processes on the machine do not disturb the check: they write to
the system temp dir, not to this run's directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

__all__ = ["RUN_TMPDIR_ENV"]

RUN_TMPDIR_ENV = "NYDUS_EXPORTER_TEST_TMPDIR"  # set while a run is checked (workers inherit it)
_ROOT = pytest.StashKey[Path]()
_SHOWN = 20  # leftovers listed in the failure; the rest are counted


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _is_xdist_worker(config) or os.environ.get(RUN_TMPDIR_ENV):
        return  # a worker (or a pytest run inside a test): the outer run checks
    system_tmp = tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="nx-tests-", dir=system_tmp))
    root.chmod(0o1777)  # like /tmp: tests that drop to an unprivileged user still reach their files
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", system_tmp)
    os.environ[RUN_TMPDIR_ENV] = str(root)
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = str(root)
    config.stash[_ROOT] = root


def _describe(path: Path, root: Path) -> str:
    try:
        if path.is_dir() and not path.is_symlink():
            files = sum(len(names) for _, _, names in os.walk(path))
            size = sum((Path(d) / n).lstat().st_size for d, _, names in os.walk(path) for n in names)
            return f"{path.relative_to(root)}/ ({files} files, {size} bytes)"
        return f"{path.relative_to(root)} ({path.lstat().st_size} bytes)"
    except OSError as exc:  # vanished or unreadable while we looked
        return f"{path.relative_to(root)} ({exc.strerror})"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    root = session.config.stash.get(_ROOT, None)
    if root is None:
        return
    leftovers = sorted(root.iterdir())
    if not leftovers:
        return
    lines = [_describe(path, root) for path in leftovers[:_SHOWN]]
    if len(leftovers) > _SHOWN:
        lines.append(f"... and {len(leftovers) - _SHOWN} more")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", f"tests left {len(leftovers)} entries in {root}", red=True)
        for line in lines:
            reporter.write_line(f"  {line}")
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the run's directory when nothing is left in it (also after ``--help``)."""
    root = config.stash.get(_ROOT, None)
    if root is not None:
        with contextlib.suppress(OSError):  # not empty: kept for inspection
            root.rmdir()
