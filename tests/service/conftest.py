"""A real daemon (in-process, unix socket) and its client, plus source images to export."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nydus_exporter.client.exporter import ExporterClient, open_channel
from nydus_exporter.service.config import ServiceConfig
from nydus_exporter.service.server import RunningServer, serve
from tests.e2e.test_export import write_two_platform_image


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes (tmp_path is too long)."""
    base = tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="nx-", dir=base if len(base) <= 40 else "/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def image(short_tmp: Path) -> Path:
    """A two-platform OCI layout (3 + 2 gzip layers, one layer shared) tagged ``t``."""
    return write_two_platform_image(short_tmp / "src")


def config_for(root: Path, **overrides: object) -> ServiceConfig:
    values: dict[str, object] = {
        "state_dir": root / "state",
        "allowed_roots": (root,),
        "max_concurrent_exports": 2,
        "grace_period": 5.0,
    }
    values.update(overrides)
    return ServiceConfig(**values).validated()  # type: ignore[arg-type]


@pytest.fixture
async def daemon(short_tmp: Path) -> AsyncIterator[RunningServer]:
    async with serve(config_for(short_tmp, http="127.0.0.1:0")) as running:
        yield running


@pytest.fixture
async def client(daemon: RunningServer) -> AsyncIterator[ExporterClient]:
    channel = open_channel(daemon.addresses[0])
    try:
        yield ExporterClient(channel)
    finally:
        await channel.close()
