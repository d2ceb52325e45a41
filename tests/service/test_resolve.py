"""Resolve: every attr key of [contract §5.4], good and bad values, lenient bools, aliases."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nydus_exporter.client.exporter import ExporterClient, RemoteExportError
from nydus_exporter.service.server import RunningServer

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
LAYOUT = "@OUT@"  # replaced by an allowed oci-layout path

# (attrs beyond push=false,oci-layout=..., expected normalized subset or error code, message part)
GOOD: list[tuple[str, dict[str, str], dict[str, str]]] = [
    (
        "defaults",
        {},
        {
            "push": "false",
            "compressor": "zstd",
            "fs-version": "6",
            "chunk-size": "0x100000",
            "merge-manifest": "false",
            "oci-mediatypes": "false",
            "digester": "blake3",
            "standard-response-keys": "true",
            "registry.insecure": "false",
        },
    ),
    ("type", {"type": "nydus"}, {}),
    ("name list", {"name": "a.io/x:1, b.io/y/z:2"}, {"name": "a.io/x:1,b.io/y/z:2"}),
    ("oci-mediatypes", {"oci-mediatypes": "true"}, {"oci-mediatypes": "true"}),
    ("merge-manifest empty is true", {"merge-manifest": ""}, {"merge-manifest": "true"}),
    ("merge-manifest true", {"merge-manifest": "true"}, {"merge-manifest": "true"}),
    ("merge-manifest false", {"merge-manifest": "false"}, {"merge-manifest": "false"}),
    ("chunk-dedup", {"chunk-dedup": "true"}, {"chunk-dedup": "true"}),
    ("merge-manifest-mode legacy", {"merge-manifest-mode": "legacy"}, {"merge-manifest-mode": "legacy"}),
    (
        "merge-manifest-mode nydus-config",
        {"merge-manifest-mode": "nydus-config"},
        {"merge-manifest-mode": "artifact"},
    ),
    ("merge-manifest-source", {"merge-manifest-source": "registry"}, {"merge-manifest-source": "registry"}),
    ("merge-manifest-source build", {"merge-manifest-source": "build"}, {"merge-manifest-source": "build"}),
    ("compressor", {"compressor": "lz4_block"}, {"compressor": "lz4_block"}),
    ("compressor alias", {"nydus-compressor": "none"}, {"compressor": "none"}),
    ("compression=nydus is a no-op", {"compression": "nydus"}, {"compressor": "zstd"}),
    ("same value twice", {"compressor": "zstd", "nydus-compressor": "zstd"}, {"compressor": "zstd"}),
    ("fs-version", {"fs-version": "6"}, {"fs-version": "6"}),
    ("fs-version alias", {"nydus-fs-version": "6"}, {"fs-version": "6"}),
    ("chunk-size hex", {"chunk-size": "0x200000"}, {"chunk-size": "0x200000"}),
    ("chunk-size decimal", {"chunk-size": "4096"}, {"chunk-size": "0x1000"}),
    ("batch-size 0", {"batch-size": "0"}, {"batch-size": "0"}),
    ("digester", {"digester": "sha256"}, {"digester": "sha256"}),
    ("platform", {"platform": "linux/amd64,linux/arm64/v8"}, {"platform": "linux/amd64,linux/arm64/v8"}),
    ("registry.insecure empty is true", {"registry.insecure": ""}, {"registry.insecure": "true"}),
    ("registry.insecure", {"registry.insecure": "1"}, {"registry.insecure": "true"}),
    ("registry.timeout", {"registry.timeout": "2m"}, {"registry.timeout": "120s"}),
    ("registry.retry-deadline", {"registry.retry-deadline": "90"}, {"registry.retry-deadline": "90s"}),
    (
        "registry.tls-probe-timeout",
        {"registry.tls-probe-timeout": "500ms"},
        {"registry.tls-probe-timeout": "0.5s"},
    ),
    ("with-referrer false", {"with-referrer": "false"}, {"with-referrer": "false"}),
    ("name-canonical false", {"name-canonical": "false"}, {"name-canonical": "false"}),
    ("push-by-digest false", {"push-by-digest": "0"}, {"push-by-digest": "false"}),
    ("annotation", {"annotation.org.example": "v"}, {"annotation.org.example": "v"}),
    ("source-date-epoch", {"source-date-epoch": "1700000000"}, {"source-date-epoch": "1700000000"}),
    ("standard-response-keys", {"standard-response-keys": "false"}, {"standard-response-keys": "false"}),
    ("parallel-layers", {"parallel-layers": "3"}, {"parallel-layers": "3"}),
    ("sparse-limit default", {}, {"sparse-limit": str(16 << 30)}),
    ("sparse-limit", {"sparse-limit": "1GiB"}, {"sparse-limit": str(1 << 30)}),
]

BAD: list[tuple[str, dict[str, str], grpc.StatusCode, str]] = [
    ("type", {"type": "image"}, INVALID, "type='image'"),
    ("name", {"name": "UPPER/Case"}, INVALID, "UPPER/Case"),
    ("push", {"push": "maybe"}, INVALID, "push='maybe' is not a boolean"),
    ("oci-mediatypes", {"oci-mediatypes": "yes please"}, INVALID, "oci-mediatypes='yes please'"),
    ("merge-manifest-mode", {"merge-manifest-mode": "fancy"}, INVALID, "merge-manifest-mode='fancy'"),
    (
        "merge-manifest-source",
        {"merge-manifest-source": "nowhere"},
        INVALID,
        "merge-manifest-source='nowhere'",
    ),
    ("compressor", {"compressor": "brotli"}, INVALID, "compressor='brotli'"),
    ("conflicting aliases", {"compressor": "zstd", "nydus-compressor": "none"}, INVALID, "conflicts"),
    ("fs-version 5", {"fs-version": "5"}, PRECONDITION, "fs-version=5"),
    ("fs-version 7", {"fs-version": "7"}, INVALID, "fs-version='7'"),
    ("chunk-size not a number", {"chunk-size": "big"}, INVALID, "chunk-size='big' is not a number"),
    ("chunk-size not a power of two", {"chunk-size": "0x3000"}, INVALID, "chunk-size='0x3000' must be"),
    ("chunk-size too small", {"chunk-size": "512"}, INVALID, "chunk-size='512' must be a power of two"),
    ("batch-size unsupported", {"batch-size": "0x10000"}, PRECONDITION, "batch-size"),
    ("batch-size bad", {"batch-size": "0x10001"}, INVALID, "batch-size='0x10001' must be a power of two"),
    ("chunk-dict", {"chunk-dict": "a.io/dict:1"}, PRECONDITION, "chunk-dict"),
    (
        "prefetch-patterns relative",
        {"prefetch-patterns": "usr/bin"},
        INVALID,
        "'usr/bin' is not an absolute path",
    ),
    ("prefetch-patterns", {"prefetch-patterns": "/usr/bin"}, PRECONDITION, "prefetch-patterns"),
    ("digester", {"digester": "md5"}, INVALID, "digester='md5'"),
    ("platform", {"platform": "linux"}, INVALID, "invalid platform 'linux'"),
    ("registry.insecure", {"registry.insecure": "sometimes"}, INVALID, "registry.insecure='sometimes'"),
    (
        "registry.timeout",
        {"registry.timeout": "forever"},
        INVALID,
        "registry.timeout='forever' is not a duration",
    ),
    (
        "registry.retry-deadline",
        {"registry.retry-deadline": "0"},
        INVALID,
        "registry.retry-deadline='0' must be",
    ),
    ("with-referrer", {"with-referrer": "x"}, INVALID, "with-referrer='x'"),
    # Accepted keys do something: the image exporter's keys this builder lacks are refused.
    ("with-referrer true", {"with-referrer": "true"}, PRECONDITION, "with-referrer=true"),
    ("name-canonical true", {"name-canonical": "true"}, PRECONDITION, "name-canonical=true"),
    ("push-by-digest true", {"push-by-digest": ""}, PRECONDITION, "push-by-digest=true"),
    ("source-date-epoch", {"source-date-epoch": "yesterday"}, INVALID, "source-date-epoch='yesterday'"),
    ("standard-response-keys", {"standard-response-keys": "2"}, INVALID, "standard-response-keys='2'"),
    ("parallel-layers", {"parallel-layers": "0"}, INVALID, "parallel-layers='0'"),
    ("sparse-limit not a size", {"sparse-limit": "lots"}, INVALID, "sparse-limit='lots' is not a size"),
    ("sparse-limit above the daemon's", {"sparse-limit": "1TiB"}, INVALID, "above this daemon's limit"),
    ("oci-layout relative", {"oci-layout": "out"}, INVALID, "oci-layout='out' must be an absolute path"),
    ("oci-layout not allowed", {"oci-layout": "/etc/out"}, INVALID, "not under an allowed root"),
    ("push=false without oci-layout", {"oci-layout": None}, INVALID, "push=false needs oci-layout"),  # type: ignore[dict-item]
]


def _attrs(extra: dict[str, str | None], out: Path) -> dict[str, str]:
    attrs: dict[str, str | None] = {"push": "false", "oci-layout": str(out), **extra}
    return {k: v for k, v in attrs.items() if v is not None}


@pytest.mark.parametrize(("extra", "expected"), [(g[1], g[2]) for g in GOOD], ids=[g[0] for g in GOOD])
async def test_good_values(
    client: ExporterClient, short_tmp: Path, extra: dict[str, str], expected: dict[str, str]
) -> None:
    response = await client.resolve(_attrs(extra, short_tmp / "out"))  # type: ignore[arg-type]
    normalized = dict(response.normalized_attrs)
    for key, value in expected.items():
        assert normalized[key] == value, (key, normalized)
    assert "type" not in normalized
    assert response.instance_id and response.requires_finalize
    assert not [w for w in response.warnings if "unknown" in w]


@pytest.mark.parametrize(
    ("extra", "code", "message"), [(b[1], b[2], b[3]) for b in BAD], ids=[b[0] for b in BAD]
)
async def test_bad_values(
    client: ExporterClient, short_tmp: Path, extra: dict[str, str], code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(RemoteExportError) as info:
        await client.resolve(_attrs(extra, short_tmp / "out"))  # type: ignore[arg-type]
    assert info.value.code == code, info.value
    assert message in info.value.message


async def test_merge_manifest_is_lenient_with_a_warning(client: ExporterClient, short_tmp: Path) -> None:
    response = await client.resolve(_attrs({"merge-manifest": "yes-please"}, short_tmp / "out"))
    assert response.normalized_attrs["merge-manifest"] == "false"
    assert any("merge-manifest='yes-please' is not a boolean" in w for w in response.warnings)


async def test_unknown_keys_and_aliases_are_warnings(client: ExporterClient, short_tmp: Path) -> None:
    response = await client.resolve(
        _attrs({"frobnicate": "1", "nydus-compressor": "zstd"}, short_tmp / "out")
    )
    assert "unknown exporter key 'frobnicate' ignored" in response.warnings
    assert "nydus-compressor is an alias of compressor" in response.warnings
    assert "frobnicate" not in response.normalized_attrs


async def test_push_needs_a_name(client: ExporterClient) -> None:
    with pytest.raises(RemoteExportError) as info:
        await client.resolve({})  # push defaults to true
    assert info.value.code == INVALID
    assert "push=true needs name=REF" in info.value.message
    pushed = await client.resolve({"name": "registry.example/x:1"})
    assert pushed.normalized_attrs["push"] == "true" and pushed.requires_finalize
    merged = await client.resolve({"name": "registry.example/x:1", "merge-manifest": "true"})
    assert merged.normalized_attrs["merge-manifest-source"] == "registry"


async def test_resolve_allocates_distinct_instances_and_release_is_idempotent(
    client: ExporterClient, daemon: RunningServer, short_tmp: Path
) -> None:
    first = await client.resolve(_attrs({}, short_tmp / "out"))
    second = await client.resolve(_attrs({}, short_tmp / "out"))
    assert first.instance_id != second.instance_id
    assert await client.release(first.instance_id) is True
    assert await client.release(first.instance_id) is False
    assert first.instance_id not in daemon.jobs.instances and second.instance_id in daemon.jobs.instances


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("name", "example.com/" + "a" * 1_000_000 + ":1", "name longer than 255 characters"),
        ("name", "example.com/" + "A" * 1_000_000, "repository name must be lowercase"),
        ("compressor", "z" * 1_000_000, "expected one of"),
        ("oci-layout", "/etc/" + "x" * 1_000_000, "not under an allowed root"),
    ],
    ids=["long name", "long uppercase name", "long compressor", "long oci-layout"],
)
async def test_a_huge_value_is_quoted_as_an_excerpt(
    client: ExporterClient, short_tmp: Path, key: str, value: str, message: str
) -> None:
    """A 1 MB value must not be echoed whole: the status would outgrow gRPC's metadata limit."""
    with pytest.raises(RemoteExportError) as info:
        await client.resolve(_attrs({key: value}, short_tmp / "out"))
    assert info.value.code == INVALID, info.value
    assert message in info.value.message
    assert "more characters" in info.value.message
    assert len(info.value.message) < 1000
    # The daemon goes on serving.
    assert (await client.resolve(_attrs({}, short_tmp / "out"))).instance_id


@pytest.mark.parametrize("kind", ["missing", "directory"])
async def test_a_ca_file_that_cannot_be_read_is_refused_at_resolve(
    client: ExporterClient, short_tmp: Path, kind: str
) -> None:
    """Not later, when the export pushes: the message names the key and the path."""
    ca_file = short_tmp / f"ca-{kind}.pem"
    if kind == "directory":
        ca_file.mkdir()
    with pytest.raises(RemoteExportError) as info:
        await client.resolve(_attrs({"registry.ca-file": str(ca_file)}, short_tmp / "out"))
    assert info.value.code == INVALID, info.value
    assert f"registry.ca-file='{ca_file}' cannot be read" in info.value.message


async def test_a_readable_ca_file_is_accepted(client: ExporterClient, short_tmp: Path) -> None:
    ca_file = short_tmp / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    response = await client.resolve(_attrs({"registry.ca-file": str(ca_file)}, short_tmp / "out"))
    assert response.normalized_attrs["registry.ca-file"] == str(ca_file)


async def test_the_daemon_can_turn_the_chunk_store_on_by_default(short_tmp: Path) -> None:
    """``chunk_store = true`` (deploy/, make run): exports use the chunk store unless the client
    says chunk-store=false; without it the key keeps the CLI's default (off)."""
    from nydus_exporter.client.exporter import open_channel
    from nydus_exporter.service.server import serve
    from tests.service.conftest import config_for

    for daemon_default, client_value, expected in (
        (True, None, "true"),
        (True, "false", "false"),
        (False, None, "false"),
    ):
        state = short_tmp / f"d-{daemon_default}-{client_value}"
        state.mkdir()
        async with serve(config_for(state, chunk_store=daemon_default)) as running:
            async with open_channel(running.addresses[0]) as channel:
                response = await ExporterClient(channel).resolve(
                    _attrs({"chunk-store": client_value}, state / "out")
                )
        assert response.normalized_attrs["chunk-store"] == expected, (daemon_default, client_value)
