"""The daemon's receiving side of an Export stream (``service/intake.py``), without a server."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import warnings
from pathlib import Path

import pytest

from nydus_exporter.pipeline.options import ExportOptions
from nydus_exporter.service.budget import Budget, JobBudget
from nydus_exporter.service.cache import LayerCache
from nydus_exporter.service.config import ServiceConfig
from nydus_exporter.service.intake import ExportIntake, LayerSpec


def _intake(tmp_path: Path) -> ExportIntake:
    return ExportIntake(
        workdir=tmp_path / "job",
        platforms=[("linux/amd64", None)],
        metadata={},
        options=ExportOptions(),
        config=ServiceConfig(state_dir=tmp_path),
        cache=LayerCache(tmp_path / "cache"),
        metadata_budget=JobBudget(Budget(1 << 20, "total", "metadata"), 1 << 20, "limit", "metadata"),
    )


async def test_a_layer_cancelled_as_its_spool_opens_leaves_no_open_file(tmp_path: Path) -> None:
    # The Export task is cancelled (client gone, Cancel RPC) at its first await inside
    # layer_data; close() must still find, and close, every spool file that was opened.
    intake = _intake(tmp_path)
    await intake.platform_begin("linux/amd64", [LayerSpec(0, size=3)])
    task = asyncio.create_task(intake.layer_data("linux/amd64", 0, 0, b"abc"))
    await asyncio.sleep(0)  # the task runs up to its first await
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # whatever the cancelled step left running in a thread ends
    intake.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


async def test_a_received_layer_is_spooled_whole_in_one_file(tmp_path: Path) -> None:
    intake = _intake(tmp_path)
    await intake.platform_begin("linux/amd64", [LayerSpec(0, size=6)])
    await intake.layer_data("linux/amd64", 0, 0, b"abc")
    await intake.layer_data("linux/amd64", 0, 3, b"def")
    await intake.layer_end("linux/amd64", 0, "sha256:" + hashlib.sha256(b"abcdef").hexdigest())
    (spool,) = (tmp_path / "job" / "spool").glob("*.layer")
    assert spool.read_bytes() == b"abcdef"
    intake.close()
