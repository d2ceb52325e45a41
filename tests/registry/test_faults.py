"""Temporary failures are retried (in one layer), permanent ones fail at once, nothing hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nydus_exporter.errors import RegistryError, RegistryUnavailableError
from nydus_exporter.registry import RetryPolicy, Timeouts, retry
from nydus_exporter.registry.client import UploadParts
from tests.registry.util import blob_file, client, digest_of
from tests.registry_fixtures import FaultProxy, RegistryServer


async def test_server_errors_are_retried(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 20_000)
    async with client() as c:
        await c.ping(fault_proxy.host)
        fault_proxy.fail(3, 500)
        result = await c.push_blob(fault_proxy.ref(repo_name), blob.digest, blob.size, blob.path)
        assert c.stats.retries == 3
    assert result.outcome == "uploaded"
    assert [s for _, _, s in fault_proxy.log].count(500) == 3
    assert registry.stored_blob(blob.digest).read_bytes() == blob.data


class _RecordedWaits:
    """Stands in for the retry layer's ``asyncio``: records each backoff instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the registry client waited before its retries, in order (none slept for real)."""
    recorded = _RecordedWaits()
    monkeypatch.setattr(retry, "asyncio", recorded)
    return recorded.waits


async def test_too_many_requests_honours_retry_after(
    fault_proxy: FaultProxy, repo_name: str, backoffs: list[float]
) -> None:
    async with client() as c:
        await c.ping(fault_proxy.host)
        fault_proxy.throttle(1, "7")
        assert await c.blob_exists(fault_proxy.ref(repo_name), digest_of(b"x")) is None
        assert c.stats.retries == 1
    assert backoffs == [7.0]  # the backoff base is 1 ms: only Retry-After explains the wait


async def test_retries_give_up_with_unavailable(fault_proxy: FaultProxy, repo_name: str) -> None:
    async with client(retry=RetryPolicy(attempts=3, backoff_base=0.001)) as c:
        await c.ping(fault_proxy.host)
        fault_proxy.fail(10, 503)
        with pytest.raises(
            RegistryUnavailableError, match=r"HTTP 503 \(UNAVAILABLE: injected fault\).*after 3 attempts"
        ):
            await c.get_manifest(fault_proxy.ref(repo_name, "v1"))
    assert [s for _, _, s in fault_proxy.log].count(503) == 3


async def test_client_errors_fail_at_once_with_codes(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 1000)
    wrong = digest_of(b"something else")
    async with client() as c:
        with pytest.raises(RegistryError, match=r"HTTP 400 \(DIGEST_INVALID") as caught:
            await c.push_blob(fault_proxy.ref(repo_name), wrong, blob.size, blob.path)
        assert c.stats.retries == 0
    assert caught.value.codes == ("DIGEST_INVALID",)
    assert (caught.value.status, caught.value.method, caught.value.temporary) == (400, "PUT", False)
    assert "_state" in caught.value.url and "REDACTED" in caught.value.url  # upload state token hidden
    async with client() as c:
        with pytest.raises(RegistryError, match=r"HTTP 400 \(MANIFEST_INVALID"):
            await c.put_manifest(
                registry.ref(repo_name, "bad"),
                b'{"schemaVersion": 2, "layers": 7}',
                "application/vnd.oci.image.manifest.v1+json",
            )


@pytest.mark.parametrize("nth", [1, 3], ids=["first-chunk", "third-chunk"])
async def test_dropped_chunk_resumes_from_registry_offset(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path, nth: int
) -> None:
    # The front-end buffers bodies (nginx's default), so the registry never saw the broken
    # chunk: the upload status says where to go on, and only that chunk is sent again.
    blob = blob_file(tmp_path, 1_000_000)
    fault_proxy.drop_body_after(100_000, nth=nth, forward=False)
    async with client(uploads=UploadParts(threshold=100_000, part_size=256_000)) as c:
        result = await c.push_blob(fault_proxy.ref(repo_name), blob.digest, blob.size, blob.path)
    methods = [(m, s) for m, _, s in fault_proxy.log]
    assert ("PATCH", -1) in methods
    assert ("GET", 204) in methods  # asked the upload status
    assert [m for m, _ in methods].count("POST") == 1  # same session: resumed, not restarted
    assert fault_proxy.upload_bytes == blob.size  # nothing the registry had was sent twice
    assert result.outcome == "uploaded"
    assert registry.stored_blob(blob.digest).read_bytes() == blob.data


async def test_truncated_chunk_restarts_the_session(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    # distribution 2.8 keeps a truncated chunk's bytes but cancels the session when asked for
    # its status ("upload resumed at wrong offset", BLOB_UPLOAD_INVALID): start over.
    blob = blob_file(tmp_path, 1_000_000)
    fault_proxy.drop_body_after(100_000, nth=3, forward=True)
    async with client(uploads=UploadParts(threshold=100_000, part_size=256_000)) as c:
        await c.push_blob(fault_proxy.ref(repo_name), blob.digest, blob.size, blob.path)
    assert [m for m, _, _ in fault_proxy.log].count("POST") == 2
    assert registry.stored_blob(blob.digest).read_bytes() == blob.data


async def test_dropped_monolithic_put_is_retried(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    blob = blob_file(tmp_path, 500_000)
    fault_proxy.drop_body_after(200_000, forward=True)
    async with client() as c:
        result = await c.push_blob(fault_proxy.ref(repo_name), blob.digest, blob.size, blob.path)
    assert result.outcome == "uploaded"
    assert registry.stored_blob(blob.digest).read_bytes() == blob.data


@pytest.mark.slow
async def test_never_answering_registry_fails_within_deadline(
    fault_proxy: FaultProxy, repo_name: str
) -> None:
    fault_proxy.hang = True
    policy = RetryPolicy(attempts=100, backoff_base=0.01, deadline=1.5)
    async with client(retry=policy, timeouts=Timeouts(connect=0.5, read=0.5)) as c:
        with pytest.raises(RegistryUnavailableError, match="timed out") as caught:
            async with asyncio.timeout(60):  # a hang fails here instead of at pytest's timeout
                await c.blob_exists(fault_proxy.ref(repo_name), digest_of(b"x"))
        # The deadline ended it, long before the 100 attempts: each one waited for a read timeout.
        assert "retry deadline of 1.5s exceeded" in str(caught.value)
        assert 1 <= c.stats.retries < 10
    assert caught.value.temporary and caught.value.status is None


async def test_secrets_never_in_errors(
    make_fault_proxy: Callable[[RegistryServer], FaultProxy],
    registry_basic: RegistryServer,
    repo_name: str,
    tmp_path: Path,
) -> None:
    from nydus_exporter.registry import Credentials, StaticCredentials

    proxy = make_fault_proxy(registry_basic)
    assert registry_basic.username and registry_basic.password
    secret = registry_basic.password
    store = StaticCredentials({proxy.host: Credentials(registry_basic.username, secret)})
    blob = blob_file(tmp_path, 300_000)
    errors: list[RegistryError] = []
    async with client(
        credentials=store,
        retry=RetryPolicy(attempts=2, backoff_base=0.001),
        uploads=UploadParts(threshold=100_000, part_size=100_000),
    ) as c:
        await c.ping(proxy.host)
        arrangements: tuple[Callable[[], None], ...] = (
            lambda: proxy.fail(5, 500),
            lambda: proxy.throttle(5, "0"),
            lambda: proxy.fail(1, 400, methods=("PATCH",)),
        )
        for arrange in arrangements:
            arrange()
            with pytest.raises(RegistryError) as caught:
                await c.push_blob(proxy.ref(repo_name), blob.digest, blob.size, blob.path)
            errors.append(caught.value)
            proxy._faults.clear()
        with pytest.raises(RegistryError) as caught:
            await c.push_blob(proxy.ref(repo_name), digest_of(b"other"), blob.size, blob.path)
        errors.append(caught.value)
    import base64

    basic = base64.b64encode(f"{registry_basic.username}:{secret}".encode()).decode()
    for error in errors:
        seen = [str(error), repr(error), error.url, str(error.__cause__ or ""), repr(error.args)]
        for text in seen:
            assert secret not in text and basic not in text
    assert secret not in repr(store) and secret not in repr(Credentials("u", secret))
