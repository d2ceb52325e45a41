"""registry.timeout / registry.retry-deadline: a registry that never answers fails an export
within the configured bound, in-process and in the daemon's publish step (issue 13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.errors import ConfigError, RegistryUnavailableError
from nydus_exporter.pipeline.export import export
from nydus_exporter.pipeline.options import parse_output
from nydus_exporter.service.config import load_config
from nydus_exporter.service.publish import sync_registry
from tests.helpers import tarbuild as tb
from tests.registry_fixtures import FaultProxy


def _layer(tmp_path: Path) -> str:
    path = tmp_path / "layer.tar"
    path.write_bytes(tb.tar_of(tb.file("hello", b"hello\n")))
    return f"tar:{path}"


@pytest.mark.parametrize(
    ("value", "seconds"), [("30s", 30.0), ("2m", 120.0), ("45", 45.0), ("1.5", 1.5), ("500ms", 0.5)]
)
def test_durations(value: str, seconds: float) -> None:
    attrs = {
        "push": "false",
        "oci-layout": "/tmp/x",
        "registry.timeout": value,
        "registry.retry-deadline": value,
    }
    parsed = parse_output(attrs)
    assert parsed.options.registry_timeout == seconds
    assert parsed.options.registry_retry_deadline == seconds
    assert parsed.normalized["registry.timeout"] == f"{seconds:g}s"


@pytest.mark.parametrize("value", ["", "soon", "0", "-5s", "1d", "nan"])
def test_bad_durations_name_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"registry\.retry-deadline="):
        parse_output({"push": "false", "oci-layout": "/tmp/x", "registry.retry-deadline": value})


def test_export_to_a_never_answering_registry_fails_at_the_deadline(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    fault_proxy.hang = True
    parsed = parse_output(
        {
            "name": f"{fault_proxy.host}/{repo_name}:v1",
            "registry.timeout": "500ms",
            "registry.retry-deadline": "1s",
        }
    )
    assert parsed.warnings == ()
    with pytest.raises(RegistryUnavailableError) as caught:
        export(_layer(tmp_path), parsed.options, workdir=tmp_path)
    message = str(caught.value)
    assert fault_proxy.host in message
    assert "timed out" in message
    assert "retry deadline of 1s exceeded" in message


@pytest.mark.parametrize("given", [{}, {"registry.retry-deadline": "1s"}], ids=["config", "key"])
def test_daemon_publish_uses_the_configured_limits(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path, given: dict[str, str]
) -> None:
    """The daemon's config sets the defaults (env/TOML ``registry_timeout``,
    ``registry_retry_deadline``); a client's key wins over them."""
    fault_proxy.hang = True
    config = load_config(
        env={
            "NYDUS_EXPORTER_STATE_DIR": str(tmp_path / "state"),
            "NYDUS_EXPORTER_REGISTRY_TIMEOUT": "0.5",
            "NYDUS_EXPORTER_REGISTRY_RETRY_DEADLINE": "1" if not given else "600",
        }
    )
    options = parse_output({"name": f"{fault_proxy.host}/{repo_name}:v1", **given}).options

    async def no_credentials(host: str, challenge: object) -> None:
        return None

    loop = asyncio.new_event_loop()
    try:
        with (
            sync_registry(config, options, no_credentials, loop) as registry,
            pytest.raises(RegistryUnavailableError) as caught,
        ):
            registry.ping(fault_proxy.host)
    finally:
        loop.close()
    assert fault_proxy.host in str(caught.value)
    assert "retry deadline of 1s exceeded" in str(caught.value)


@pytest.mark.parametrize("command", ["check", "unpack", "cat"])
def test_reading_tools_take_the_registry_limits_as_flags(
    fault_proxy: FaultProxy, repo_name: str, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """check, unpack and cat read docker:// images: a never-answering registry fails them at
    the deadline their flags set, with the same message as an export."""
    fault_proxy.hang = True
    image = f"docker://{fault_proxy.host}/{repo_name}:v1"
    args = {"check": [image], "unpack": [image, "-o", str(tmp_path / "out.tar")], "cat": [image, "/hello"]}
    limits = ["--registry-timeout", "500ms", "--registry-retry-deadline", "1s"]
    assert cli.main([command, *args[command], *limits]) != 0
    err = capsys.readouterr().err
    assert fault_proxy.host in err
    assert "retry deadline of 1s exceeded" in err
    assert not (tmp_path / "out.tar").exists()


def test_a_bad_duration_flag_names_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["unpack", "oci:x", "-o", "-", "--registry-timeout", "soon"])
    assert "argument --registry-timeout: 'soon' is not a duration" in capsys.readouterr().err
