"""``nydus-exporter export --addr`` and ``serve`` argument handling (service_cli)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.cli.daemon import add_remote_export_arguments, add_serve_command, run_remote_export
from nydus_exporter.service.server import RunningServer
from tests.registry_fixtures import RegistryServer


def export_parser() -> argparse.ArgumentParser:
    """The ``export`` arguments of cli.py, plus what service_cli adds."""
    parser = argparse.ArgumentParser()
    parser.add_argument("source")
    parser.add_argument("--output", required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--whiteouts", default="oci")
    parser.add_argument("--progress", default="plain")
    parser.add_argument("--metadata-file", type=Path)
    parser.add_argument("--threads", type=int)
    add_remote_export_arguments(parser)
    return parser


async def test_remote_export_cli_matches_in_process(
    daemon: RunningServer, image: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta_remote = short_tmp / "remote.json"
    args = export_parser().parse_args(
        [
            f"oci:{image}:t",
            "--addr",
            daemon.addresses[0],
            "--metadata-file",
            str(meta_remote),
            "--output",
            f"type=nydus,push=false,oci-layout={short_tmp / 'remote'},name=example.com/a:1",
        ]
    )
    assert await asyncio.to_thread(run_remote_export, args) == 0
    meta_local = short_tmp / "local.json"
    assert (
        cli.main(
            [
                "export",
                f"oci:{image}:t",
                "--progress",
                "quiet",
                "--metadata-file",
                str(meta_local),
                "--output",
                f"type=nydus,push=false,oci-layout={short_tmp / 'local'},name=example.com/a:1",
            ]
        )
        == 0
    )
    remote, local = json.loads(meta_remote.read_text()), json.loads(meta_local.read_text())
    assert remote["containerimage.digest"] == local["containerimage.digest"]
    out = capsys.readouterr()
    assert remote["containerimage.digest"] in out.out
    assert "converting" in out.err  # the daemon's progress rows are shown


async def test_remote_export_reports_the_daemons_error(
    daemon: RunningServer, image: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = export_parser().parse_args(
        [
            f"oci:{image}:t",
            "--addr",
            daemon.addresses[0],
            "--output",
            "type=nydus,push=false,oci-layout=/etc/nope",
        ]
    )
    assert await asyncio.to_thread(run_remote_export, args) == 1
    assert "INVALID_ARGUMENT: oci-layout='/etc/nope' is not under an allowed root" in capsys.readouterr().err


def test_serve_flags_parse() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_serve_command(sub)
    args = parser.parse_args(
        [
            "serve",
            "--listen",
            "unix:///tmp/x.sock",
            "--listen",
            "tcp://127.0.0.1:0",
            "--allowed-root",
            "/srv",
            "--max-concurrent-exports",
            "4",
        ]
    )
    assert args.listen == ["unix:///tmp/x.sock", "tcp://127.0.0.1:0"]
    assert args.allowed_roots == [Path("/srv")] and args.max_concurrent_exports == 4


@pytest.mark.slow
async def test_remote_export_of_a_docker_source_matches_in_process(
    daemon: RunningServer, image: Path, short_tmp: Path, registry: RegistryServer, repo_name: str
) -> None:
    """``export docker://… --addr``: the client reads the source from the registry and streams
    its layers; the image is the one an in-process export of the same source makes."""
    source = f"docker://{registry.host}/{repo_name}:src"
    copy = ["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{image}:t", source]
    assert (await asyncio.to_thread(subprocess.run, copy, check=False)).returncode == 0
    output = "type=nydus,push=false,oci-layout={},name=example.com/a:1,oci-mediatypes=true"
    args = export_parser().parse_args(
        [
            source,
            "--addr",
            daemon.addresses[0],
            "--metadata-file",
            str(short_tmp / "remote.json"),
            "--output",
            output.format(short_tmp / "remote"),
        ]
    )
    assert await asyncio.to_thread(run_remote_export, args) == 0
    argv = ["export", source, "--progress", "quiet", "--metadata-file", str(short_tmp / "local.json")]
    assert await asyncio.to_thread(cli.main, [*argv, "--output", output.format(short_tmp / "local")]) == 0
    remote = json.loads((short_tmp / "remote.json").read_text())
    local = json.loads((short_tmp / "local.json").read_text())
    assert remote["containerimage.digest"] == local["containerimage.digest"]
    top = remote["containerimage.digest"].removeprefix("sha256:")
    index = json.loads((short_tmp / "remote" / "blobs" / "sha256" / top).read_bytes())
    assert len(index["manifests"]) == 2  # both platforms of the source
