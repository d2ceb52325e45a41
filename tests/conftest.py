"""Shared test fixtures.

Tests that need root, loop devices or kernel EROFS call :func:`require` with a reason: they
skip on a developer machine without those, and FAIL when ``NYDUS_EXPORTER_CI=1`` (set by
``.ci/run``), so CI can never pass by skipping the kernel oracle.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real-registry fixtures (docker-registry on 127.0.0.1, auth, TLS, fault proxy), and the check
# that a run leaves nothing in the temporary directory.
pytest_plugins = ["pytester", "tests.registry_fixtures", "tests.tempcheck"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# End-to-end suites: the CLI, daemon, registry and kernel paths (e2e/), BuildKit driving the
# daemon (buildkit/) and the real Nydus code reading our images (interop/).
E2E_DIRS = tuple(Path(__file__).resolve().parent / name for name in ("e2e", "buildkit", "interop"))
# Golden files of the real Nydus toolchain, committed with their provenance (tests/fixtures/README.md).
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
NYDUS_FIXTURES = FIXTURES / "nydus"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/, tests/buildkit/ and tests/interop/ is end-to-end
    (``-m "not e2e"`` leaves them out).

    Slow tests run first (in collection order otherwise): the parallel workers then finish
    together instead of one of them starting a 30-second test at the end.
    """
    for item in items:
        if any(item.path.is_relative_to(d) for d in E2E_DIRS):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def in_ci() -> bool:
    return os.environ.get("NYDUS_EXPORTER_CI") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) unless ``condition`` holds."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


def nydus_fixture(relative: str) -> Path:
    """The committed golden file ``relative`` (under tests/fixtures/nydus/); a missing one is a
    failure, never a skip: the fixtures are part of the repository."""
    path = NYDUS_FIXTURES / relative
    if not path.is_file():
        pytest.fail(f"golden fixture missing from the repository: {path}")
    return path


@pytest.fixture(scope="session")
def nydus_fixtures() -> Path:
    if not NYDUS_FIXTURES.is_dir():
        pytest.fail(f"golden fixtures missing from the repository: {NYDUS_FIXTURES}")
    return NYDUS_FIXTURES
