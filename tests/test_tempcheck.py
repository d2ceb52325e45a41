"""The leftover check of tests/tempcheck.py, run on a small suite of its own."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.tempcheck import RUN_TMPDIR_ENV

SUITE = """
import shutil
import tempfile

def test_cleans_up():
    shutil.rmtree(tempfile.mkdtemp(prefix="tidy-"))

def test_leaves_a_directory():
    tempfile.mkdtemp(prefix="forgotten-")
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> pytest.RunResult:
    monkeypatch.delenv(RUN_TMPDIR_ENV)  # a run of its own, not a part of this one
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    pytester.makepyfile(test_suite=SUITE)
    return pytester.runpytest_subprocess("-p", "tests.tempcheck", "-p", "no:cacheprovider", *args)


def test_a_run_that_leaves_files_fails_and_lists_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch)
    try:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(["*tests left 1 entries in *", "  forgotten-*/ (0 files, 0 bytes)"])
    finally:
        kept = re.search(r"tests left \d+ entries in (\S+)", result.stdout.str())
        if kept:
            shutil.rmtree(Path(kept.group(1)))


def test_a_tidy_run_passes_and_leaves_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "-k", "cleans_up")
    assert result.ret == pytest.ExitCode.OK
    assert "tests left" not in result.stdout.str()
