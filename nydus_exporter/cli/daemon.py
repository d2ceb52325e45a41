"""Command-line glue for the daemon: ``nydus-exporter serve`` and ``nydus-exporter export --addr``.

``cli.py`` registers these: :func:`add_serve_command` adds ``serve``,
:func:`add_remote_export_arguments` adds ``--addr`` (and TLS flags) to ``export``;
:func:`run_serve` and :func:`run_remote_export` run them and return the exit code
(0 success, 1 an error with its message on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nydus_exporter.errors import ConfigError, ExporterError

if TYPE_CHECKING:
    from nydus_exporter.registry.sync import SyncRegistry


def add_serve_command(sub: Any) -> argparse.ArgumentParser:
    serve = sub.add_parser(
        "serve",
        help="run the exporter daemon (gRPC nydus.exporter.v1)",
        description="Serve nydus.exporter.v1.Exporter (plus grpc.health.v1 and reflection). "
        "Settings come from --config FILE (TOML), then NYDUS_EXPORTER_* environment variables, "
        "then these flags.",
    )
    serve.add_argument("--config", type=Path, dest="config_file", help="TOML configuration file")
    serve.add_argument("--state-dir", type=Path, help="spools, staging layouts, the layer cache")
    serve.add_argument(
        "--listen",
        action="append",
        help="unix:///PATH or tcp://HOST:PORT (repeatable; default: unix socket in the state dir)",
    )
    serve.add_argument("--http", help="HOST:PORT of the /metrics and /healthz endpoint")
    serve.add_argument("--tls-cert", type=Path, help="server certificate (PEM) for tcp:// listeners")
    serve.add_argument("--tls-key", type=Path, help="server key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA")
    serve.add_argument("--max-concurrent-exports", type=int, help="conversions at once (default: CPUs)")
    serve.add_argument("--job-deadline", type=float, help="seconds a job may run")
    serve.add_argument("--job-ttl", type=float, help="seconds finished jobs and idle instances are kept")
    serve.add_argument("--grace-period", type=float, help="SIGTERM: seconds running exports may take")
    serve.add_argument(
        "--allowed-root",
        action="append",
        type=Path,
        dest="allowed_roots",
        help="host directory clients may name (oci-layout, layer references); repeatable",
    )
    serve.add_argument(
        "--use-docker-config",
        action="store_true",
        default=None,
        help="fall back to the daemon's own docker config for registry credentials",
    )
    serve.add_argument(
        "--chunk-store",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default of the chunk-store output key (a client's chunk-store= wins)",
    )
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--log-format", choices=("json", "console"))
    return serve  # type: ignore[no-any-return]


def add_remote_export_arguments(export: argparse.ArgumentParser) -> None:
    group = export.add_argument_group("remote export (through a running daemon)")
    group.add_argument("--addr", help="daemon address: unix:///PATH or tcp://HOST:PORT")
    group.add_argument("--tls-ca", type=Path, help="CA that signed the daemon's certificate (tcp://)")
    group.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    group.add_argument("--tls-key", type=Path, help="client key for mutual TLS")
    group.add_argument("--tls-server-name", default="", help="name to check in the daemon's certificate")
    group.add_argument(
        "--by-reference",
        action="store_true",
        help="send tar layer paths instead of bytes (the daemon must allow them)",
    )
    group.add_argument("--idempotency-key", default="", help="resume a running or finished export")


def _config_from_args(args: argparse.Namespace) -> Any:
    from nydus_exporter.service.config import load_config

    overrides = {
        "state_dir": args.state_dir,
        "listen": tuple(args.listen) if args.listen else None,
        "http": args.http,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "max_concurrent_exports": args.max_concurrent_exports,
        "job_deadline": args.job_deadline,
        "job_ttl": args.job_ttl,
        "grace_period": args.grace_period,
        "allowed_roots": tuple(args.allowed_roots) if args.allowed_roots else None,
        "use_docker_config": args.use_docker_config,
        "chunk_store": args.chunk_store,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    return load_config(file=args.config_file, overrides=overrides)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from nydus_exporter.service.server import run_until_signalled

    try:
        config = _config_from_args(args)
        return asyncio.run(run_until_signalled(config))
    except ExporterError as exc:
        print(f"nydus-exporter: error: {exc}", file=sys.stderr)
        return 1


def run_remote_export(args: argparse.Namespace) -> int:
    """``export --addr``: stream SOURCE to the daemon as the buildkitd shim would."""
    import asyncio  # here: the other commands do not pay for it at start-up

    try:
        return asyncio.run(_remote_export(args))
    except ExporterError as exc:
        print(f"nydus-exporter: error: {exc}", file=sys.stderr)
        return 1


async def _remote_export(args: argparse.Namespace) -> int:
    from nydus_exporter.cli.remote_progress import RemoteProgressPrinter
    from nydus_exporter.client.exporter import (
        ClientTLS,
        ExporterClient,
        RemoteExportError,
        open_channel,
    )
    from nydus_exporter.oci.platform import Platform
    from nydus_exporter.pipeline.options import parse_output_text
    from nydus_exporter.pipeline.sources import open_source
    from nydus_exporter.registry.credentials import DockerConfigCredentials

    attrs = parse_output_text(args.output)
    attrs.setdefault("type", "nydus")
    if getattr(args, "threads", None) is not None:
        _warn("--threads applies to in-process exports only; the daemon chooses its own")
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    printer = RemoteProgressPrinter(getattr(args, "progress", "auto"))
    channel = open_channel(args.addr, tls=tls)
    try:
        client = ExporterClient(channel)
        try:
            resolved = await client.resolve(attrs)
            for warning in resolved.warnings:
                _warn(warning)
            platforms = [Platform.parse(p) for p in attrs.get("platform", "").split(",") if p.strip()]
            with contextlib.ExitStack() as stack:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="nydus-export-client-"))
                source = stack.enter_context(
                    open_source(
                        args.source,
                        workdir=Path(tmp),
                        config=getattr(args, "config", None),
                        whiteouts=getattr(args, "whiteouts", "oci"),
                        platforms=platforms or None,
                        registry=_source_registry(args.source, attrs, stack),
                    )
                )
                outcome = await client.export(
                    source,
                    resolved.instance_id,
                    idempotency_key=args.idempotency_key,
                    by_reference=args.by_reference,
                    on_event=printer,
                    credentials=DockerConfigCredentials(),
                )
            result = outcome.result
            if result.finalize_token:
                result = await client.finalize(
                    resolved.instance_id,
                    result.finalize_token,
                    on_event=printer,
                    credentials=DockerConfigCredentials(),
                )
            await client.release(resolved.instance_id)
        except RemoteExportError as exc:
            raise ConfigError(f"daemon: {exc}") from None
        finally:
            printer.close()
    finally:
        await channel.close()
    metadata = dict(result.response)
    if args.metadata_file is not None:
        args.metadata_file.write_text(json.dumps(metadata, indent=2) + "\n")
    print(result.root_descriptor.digest)
    return 0


def _source_registry(source: str, attrs: dict[str, str], stack: contextlib.ExitStack) -> SyncRegistry | None:
    """A ``docker://`` source is read here, on the client's side, and streamed to the daemon
    like any other, with the output's ``registry.*`` keys (credentials: as an in-process export)."""
    if not source.startswith("docker://"):
        return None
    from nydus_exporter.pipeline.export import registry_for
    from nydus_exporter.pipeline.options import parse_output

    return stack.enter_context(registry_for(source, parse_output(attrs).options))


def _warn(message: str) -> None:
    print(f"nydus-exporter: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nydus_exporter.cli.daemon serve ...`` (until cli.py registers the command)."""
    parser = argparse.ArgumentParser(prog="nydus-exporter")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_command(sub)
    args = parser.parse_args(argv)
    return run_serve(args)


if __name__ == "__main__":
    sys.exit(main())
