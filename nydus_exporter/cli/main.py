"""The ``nydus-exporter`` command line.

Command modules are imported when their command runs, so `pack` does not pay for the
registry client or gRPC.

Exit codes: 0 success, 1 an :class:`ExporterError` (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from nydus_exporter import __version__
from nydus_exporter.cli.chunkstore import add_chunkstore_commands, run_chunkstore_command
from nydus_exporter.cli.daemon import (
    add_remote_export_arguments,
    add_serve_command,
    run_remote_export,
    run_serve,
)
from nydus_exporter.cli.progress import MODES
from nydus_exporter.cli.termination import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    terminate_as_exception,
)
from nydus_exporter.cli.tools import add_tool_commands, run_tool_command
from nydus_exporter.errors import ConfigError, ExporterError, naming
from nydus_exporter.layer.entry import DEFAULT_SPARSE_LIMIT
from nydus_exporter.pipeline import sizes
from nydus_exporter.rafs import codecs, layout


def parse_size(text: str) -> int:
    """``1048576``, ``0x100000``, ``1M``, ``1MiB``, ``512KiB``, ``16GiB`` -> bytes."""
    try:
        return sizes.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _chunk_size(text: str) -> int:
    size = parse_size(text)
    try:
        return codecs.check_chunk_size(size)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nydus-exporter", description="Build Nydus (RAFS v6) images from container layers."
    )
    parser.add_argument("--version", action="version", version=f"nydus-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    pack = sub.add_parser(
        "pack",
        help="convert one layer tar into a Nydus data blob",
        description="Convert one layer (tar, tar+gzip or tar+zstd; '-' for stdin) into a Nydus "
        "data blob with its bootstrap inlined, as `nydus-image create --type tar-rafs "
        "--blob-inline-meta --features blob-toc` writes it.",
    )
    pack.add_argument("layer", help="layer tar file, or - for standard input")
    pack.add_argument("-o", "--output", required=True, type=Path, help="blob file to write")
    pack.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=layout.DEFAULT_CHUNK_SIZE,
        help="power of two from 4KiB to 16MiB (default 1MiB)",
    )
    pack.add_argument("--compressor", choices=codecs.COMPRESSOR_NAMES, default="zstd")
    pack.add_argument("--digester", choices=codecs.DIGESTER_NAMES, default="blake3")
    pack.add_argument("--threads", type=int, default=None, help="worker threads (default: CPU count)")
    pack.add_argument(
        "--sparse-limit",
        type=parse_size,
        default=DEFAULT_SPARSE_LIMIT,
        help="largest apparent size of a sparse file in the layer; larger ones are refused "
        f"(default {DEFAULT_SPARSE_LIMIT >> 30}GiB)",
    )
    pack.add_argument("--json", action="store_true", help="print the result as JSON")

    export = sub.add_parser(
        "export",
        help="convert a whole image into a Nydus image",
        description="Convert SOURCE (oci:DIR[:TAG], oci-archive:FILE|-, docker-archive:FILE, "
        "tar:L1.tar,L2.tar,..., dir:PATH) into a Nydus image, in-process.",
    )
    export.add_argument("source")
    export.add_argument(
        "--output",
        required=True,
        help="exporter attrs as for buildctl: type=nydus,push=false,oci-layout=DIR[,name=REF]"
        "[,oci-mediatypes=true][,merge-manifest=true][,platform=linux/amd64,...][,sparse-limit=16GiB]",
    )
    export.add_argument("--config", type=Path, help="image config JSON for tar:/dir: sources")
    export.add_argument(
        "--whiteouts",
        choices=("oci", "overlayfs"),
        default="oci",
        help="how a dir: source spells whiteouts (overlayfs: an overlay upper dir)",
    )
    export.add_argument("--progress", choices=MODES, default="auto")
    export.add_argument("--metadata-file", type=Path, help="write the response keys as JSON")
    export.add_argument("--threads", type=int, default=None, help="worker threads per layer")
    export.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where chunk-store=true keeps its database (default: $XDG_STATE_HOME/nydus-exporter)",
    )
    add_remote_export_arguments(export)

    inspect = sub.add_parser("inspect", help="describe a bootstrap or data blob")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--files", action="store_true", help="list every file with its chunks")
    add_tool_commands(sub)
    add_serve_command(sub)
    add_chunkstore_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ExporterError as exc:
        print(f"nydus-exporter: error: {exc}", file=sys.stderr)
    except BrokenPipeError:
        pass
    except OSError as exc:
        # The machine, not the input: disk full, a missing or read-only output directory.
        print(f"nydus-exporter: error: {_os_error(exc)}", file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    code = run_tool_command(args)
    if code is None:
        code = run_chunkstore_command(args)
    if code is not None:
        return code
    if args.command == "export" and args.addr:
        return run_remote_export(args)
    if args.command in ("pack", "export"):
        from nydus_exporter.pipeline.batch_gc import batch_gc

        with batch_gc():
            return _writing(_pack if args.command == "pack" else _export, args)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {"serve": run_serve, "inspect": _inspect}
    command = commands.get(args.command)
    return command(args) if command is not None else 2


def _writing(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A command that writes output files: on Ctrl-C or SIGTERM its clean-ups must run."""
    try:
        with terminate_as_exception():
            return command(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    return f"{exc.filename}: {reason}"


def _pack(args: argparse.Namespace) -> int:
    from nydus_exporter.pipeline.pack import PackOptions, pack_layer_to_file

    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    options = PackOptions(
        chunk_size=args.chunk_size,
        compressor=args.compressor,
        digester=args.digester,
        threads=args.threads or os.cpu_count() or 1,
        sparse_limit=args.sparse_limit,
    )
    stream: BinaryIO
    if args.layer == "-":
        result = pack_layer_to_file(sys.stdin.buffer, args.output, options, on_warning=_warn)
    else:
        try:
            stream = open(args.layer, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"cannot open layer {args.layer}: {exc.strerror}") from None
        with stream:
            result = pack_layer_to_file(stream, args.output, options, on_warning=_warn)
    report: dict[str, Any] = {
        "blob": str(args.output),
        "digest": result.digest,
        "blob_id": result.blob_id,
        "size": result.size,
        "uncompressed_size": result.uncompressed_size,
        "chunk_count": result.chunk_count,
        "bootstrap_size": len(result.bootstrap),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from nydus_exporter.cli.progress import ProgressPrinter
    from nydus_exporter.pipeline.export import export
    from nydus_exporter.pipeline.options import parse_output, parse_output_text
    from nydus_exporter.pipeline.result import filter_response

    attrs = parse_output_text(args.output)
    if args.threads is not None:
        attrs.setdefault("threads", str(args.threads))
    parsed = parse_output(attrs)
    for warning in parsed.warnings:
        _warn(warning)
    options = parsed.options
    if args.metadata_file is not None and not args.metadata_file.parent.is_dir():
        # Found out before the export, not after it wrote the image.
        raise ConfigError(
            f"--metadata-file {args.metadata_file}: directory {args.metadata_file.parent} does not exist"
        )
    printer = ProgressPrinter(args.progress)
    try:
        result = export(
            args.source,
            options,
            config=args.config,
            whiteouts=args.whiteouts,
            progress=printer,
            state_dir=args.state_dir,
        )
    finally:
        printer.close()
    metadata = filter_response(result.metadata(), standard_keys=options.standard_response_keys)
    if args.metadata_file is not None:
        try:
            args.metadata_file.write_text(json.dumps(metadata, indent=2) + "\n")
        except OSError as exc:
            raise naming(exc, args.metadata_file) from exc
    print(result.descriptor.digest)
    return 0


def _warn(message: str) -> None:
    print(f"nydus-exporter: warning: {message}", file=sys.stderr)


def _inspect(args: argparse.Namespace) -> int:
    from nydus_exporter.tools.inspect import describe_file, render_text

    description = describe_file(args.file, files=args.files or args.json)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(render_text(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
