"""The blocking bridge to the registry client never waits on its own loop.

Code can end up running on the client's loop thread without asking for it: the garbage
collector finalizes whatever it collects on the thread that happens to allocate, and that is
often the loop's. These tests put a closer (and a blocking call) there deliberately, so a
deadlock shows up every run, not one run in ten.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

import pytest

from nydus_exporter.errors import FormatError
from nydus_exporter.image.registry import RegistryRepository
from tests.registry.util import blob_file, digest_of
from tests.registry_fixtures import RegistryServer

T = TypeVar("T")
STUCK = 60.0  # seconds: far beyond any of these operations; reaching it means a deadlock

pytestmark = pytest.mark.timeout(3 * STUCK)
_deadlocked: set[int] = set()  # stores whose loop is stuck: closing them would hang too


@pytest.fixture
def store(registry: RegistryServer, repo_name: str) -> Iterator[RegistryRepository]:
    opened = RegistryRepository(None, registry.ref(repo_name, "latest"))
    yield opened
    if id(opened) not in _deadlocked:
        opened.close()


def on_loop(store: RegistryRepository, call: Callable[[], T]) -> T:
    """Run ``call`` on the client's loop thread and return its result (fail on a deadlock)."""

    async def run() -> T:
        return call()

    future = asyncio.run_coroutine_threadsafe(run(), store.registry.loop)
    try:
        return future.result(STUCK)
    except FutureTimeout:
        _deadlocked.add(id(store))
        pytest.fail("the registry client's loop thread is deadlocked")


def test_failed_open_finalized_on_the_loop_thread_does_not_deadlock(store: RegistryRepository) -> None:
    gc.disable()  # the only collection is the one below, on the loop thread
    try:
        try:
            store.open_blob(digest_of(b"no such blob"))
        except FormatError as exc:
            assert "not found" in str(exc)
            # The error's traceback holds the half-built stream; in a reference cycle it
            # lives until the next collection.
            trap: list[object] = [exc]
            trap.append(trap)
        else:
            pytest.fail("opening a missing blob succeeded")
        del trap
        on_loop(store, gc.collect)
    finally:
        gc.enable()
    # The loop still serves.
    assert store.registry.blob_exists(store.reference, digest_of(b"no such blob")) is None


def test_stream_closed_on_the_loop_thread_does_not_deadlock(
    store: RegistryRepository, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 3 << 20)
    store.registry.push_blob(store.reference, blob.digest, blob.size, blob.path)
    stream = store.open_blob(blob.digest)
    assert stream.read(10) == blob.data[:10]
    on_loop(store, stream.close)
    assert stream.closed
    with store.open_blob(blob.digest) as again:  # the loop still serves
        assert again.read() == blob.data


def test_blocking_call_on_the_loop_thread_is_refused(store: RegistryRepository) -> None:
    with pytest.raises(RuntimeError, match="own loop thread"):
        on_loop(store, lambda: store.registry.blob_exists(store.reference, digest_of(b"x")))
    assert store.registry.blob_exists(store.reference, digest_of(b"x")) is None
