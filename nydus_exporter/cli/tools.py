"""The verification subcommands of ``nydus-exporter``: ``check``, ``unpack``, ``cat``, ``mount``,
``umount``.

``nydus_exporter.cli.main`` wires them in with::

    add_tool_commands(sub)                 # in build_parser(), after the other subcommands
    code = run_tool_command(args)          # in main(), inside its ExporterError handler
    if code is not None:
        return code

Errors are raised as :class:`~nydus_exporter.errors.ExporterError` for ``cli.main`` to print;
``check`` prints every problem and returns 1 when there are any. :func:`main` runs these
subcommands alone (same error handling), e.g. ``python -m nydus_exporter.cli.tools check ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nydus_exporter.image.registry import RegistryOptions

TOOL_COMMANDS = ("check", "unpack", "cat", "mount", "umount")
_IMAGE_HELP = (
    "the Nydus image: oci:DIR[:TAG] (an OCI image layout; TAG may be the name given to export, "
    "e.g. oci:out:sample:1) or docker://HOST/REPO[:TAG|@DIGEST] (a registry)"
)


def _duration(text: str) -> float:
    from nydus_exporter.pipeline.options import parse_duration  # not on every command's start-up

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure",
        "--registry-insecure",
        dest="insecure",
        action="store_true",
        help="reach the registry of a docker:// image over plain HTTP, or HTTPS without certificate checks",
    )
    parser.add_argument("--ca-file", type=Path, help="extra trusted CA certificates (PEM) for the registry")
    # The same bounds as export's registry.* keys, in the same spelling (30s, 2m, 45).
    parser.add_argument(
        "--registry-timeout", type=_duration, metavar="DURATION", help="connect and read stall timeout"
    )
    parser.add_argument(
        "--registry-retry-deadline",
        type=_duration,
        metavar="DURATION",
        help="how long temporary registry failures are retried without progress",
    )
    parser.add_argument(
        "--registry-tls-probe-timeout",
        type=_duration,
        metavar="DURATION",
        help="TLS handshake timeout of the HTTPS attempt before plain HTTP (registry-insecure hosts)",
    )


def _registry_options(args: argparse.Namespace) -> RegistryOptions | None:
    from nydus_exporter.pipeline.registry_limits import RegistryLimits

    limits = RegistryLimits(
        args.registry_timeout, args.registry_retry_deadline, args.registry_tls_probe_timeout
    )
    if not args.insecure and args.ca_file is None and limits == RegistryLimits():
        return None  # the defaults; and no registry module import for oci: images
    from nydus_exporter.image.registry import RegistryOptions

    return RegistryOptions(insecure=args.insecure, ca_file=args.ca_file, **limits.client_kwargs())


def add_tool_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    check = sub.add_parser(
        "check",
        help="verify a Nydus image end to end",
        description="Verify the manifest, config, every blob (ToC, ci, every chunk), the bootstrap "
        "layer and the merged bootstrap of IMAGE; with --source, also that the merged tree equals the "
        "source image's layers applied with OCI overlay semantics. Exit 1 when a problem is found.",
    )
    check.add_argument("image", help=_IMAGE_HELP)
    check.add_argument(
        "--platform", help="os/arch[/variant] of the image to check (default: the only one, else the host's)"
    )
    check.add_argument(
        "--source",
        help="the image it was built from, as for export: oci:DIR[:TAG], oci-archive:FILE, "
        "docker-archive:FILE, tar:L1.tar,L2.tar,..., dir:PATH",
    )
    check.add_argument(
        "--config", type=Path, help="image config JSON of a tar:/dir: source (unused for the tree)"
    )
    check.add_argument(
        "--whiteouts", choices=("oci", "overlayfs"), default="oci", help="how a dir: source spells whiteouts"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_registry_options(check)

    unpack = sub.add_parser(
        "unpack",
        help="write the merged filesystem of a Nydus image as a tar",
        description="Write the merged filesystem of IMAGE as a PAX tar (xattrs, nanosecond mtimes, "
        "hardlinks, devices), streaming file content from the blobs.",
    )
    unpack.add_argument("image", help=_IMAGE_HELP)
    unpack.add_argument("-o", "--output", required=True, help="tar file to write, or - for standard output")
    unpack.add_argument("--platform", help="os/arch[/variant] (default: the only one, else the host's)")
    _add_registry_options(unpack)

    cat = sub.add_parser(
        "cat",
        help="print one file of a Nydus image, fetching only its chunks",
        description="Write the content of PATH in IMAGE to standard output, reading only the manifest, "
        "the config, the bootstrap layer and the byte ranges of the file's chunks (HTTP Range requests on "
        "a registry), each chunk verified against its digest. Symlinks are followed inside the image.",
    )
    cat.add_argument("image", help=_IMAGE_HELP)
    cat.add_argument("path", help="absolute path of a regular file in the image")
    cat.add_argument("--platform", help="os/arch[/variant] (default: the only one, else the host's)")
    cat.add_argument(
        "--stats", action="store_true", help="report on standard error what was read (bytes, range requests)"
    )
    _add_registry_options(cat)

    mount = sub.add_parser(
        "mount",
        help="mount a Nydus image with the kernel EROFS driver (root)",
        description="Mount IMAGE read-only at MOUNTPOINT through loop devices: the merged bootstrap and "
        "one uncompressed image per blob (cached in the state directory). Needs root.",
    )
    mount.add_argument("image", help=_IMAGE_HELP)
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument("--platform", help="os/arch[/variant] (default: the only one, else the host's)")
    mount.add_argument(
        "--state-dir", type=Path, help="cache and mount records (default: ~/.local/state/nydus-exporter)"
    )

    umount = sub.add_parser(
        "umount",
        help="unmount a `nydus-exporter mount` and detach its loop devices (root)",
    )
    umount.add_argument("mountpoint", type=Path)
    umount.add_argument("--state-dir", type=Path, help="the state directory given to mount")


def run_tool_command(args: argparse.Namespace) -> int | None:
    """Run ``args.command`` if it is one of :data:`TOOL_COMMANDS`; ``None`` otherwise."""
    if args.command == "check":
        return _check(args)
    if args.command == "unpack":
        return _unpack(args)
    if args.command == "cat":
        return _cat(args)
    if args.command == "mount":
        return _mount(args)
    if args.command == "umount":
        return _umount(args)
    return None


def _warn(message: str) -> None:
    print(f"nydus-exporter: warning: {message}", file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    from nydus_exporter.tools.check import check_image

    report = check_image(
        args.image,
        platform=args.platform,
        source=args.source,
        source_config=args.config,
        whiteouts=args.whiteouts,
        registry=_registry_options(args),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        where = f" ({report.platform})" if report.platform else ""
        for note in report.notes:
            print(f"note: {note}")
        for problem in report.problems:
            print(f"problem: {problem}")
        counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
        status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{report.image}{where} {report.manifest or ''}: {status} [{counts}]")
    return 0 if report.ok else 1


def _unpack(args: argparse.Namespace) -> int:
    from nydus_exporter.tools.unpack import unpack_image

    result = unpack_image(
        args.image, args.output, platform=args.platform, warn=_warn, registry=_registry_options(args)
    )
    if args.output != "-":
        print(f"{args.output}: {result.entries} entries, {result.files} files, {result.bytes} bytes")
    return 0


def _cat(args: argparse.Namespace) -> int:
    from nydus_exporter.tools.cat import cat_file

    result = cat_file(
        args.image, args.path, sys.stdout.buffer, platform=args.platform, registry=_registry_options(args)
    )
    if args.stats:
        read = result.reads
        print(
            f"nydus-exporter: cat {result.path}: {result.size} bytes in {result.chunks} chunk(s); read "
            f"{read.total_bytes} bytes: {read.document_bytes} in {read.documents} document(s) "
            f"(manifests, config), {read.stream_bytes} in {read.streams} stream(s) (bootstrap layer), "
            f"{read.range_bytes} in {read.range_reads} range request(s) (chunks)",
            file=sys.stderr,
        )
        if result.registry is not None:
            net = result.registry
            print(
                f"nydus-exporter: registry: {net.requests} HTTP request(s), "
                f"{net.bytes_downloaded} blob bytes downloaded, {net.retries} retries",
                file=sys.stderr,
            )
    return 0


def _mount(args: argparse.Namespace) -> int:
    from nydus_exporter.tools.mount import mount_image

    result = mount_image(args.image, args.mountpoint, platform=args.platform, state_dir=args.state_dir)
    cached = f", {len(result.reused)} blob image(s) from the cache" if result.reused else ""
    print(f"mounted {args.image} at {result.mountpoint} ({' '.join(result.loops)}{cached})")
    return 0


def _umount(args: argparse.Namespace) -> int:
    from nydus_exporter.tools.mount import umount_image

    loops = umount_image(args.mountpoint, state_dir=args.state_dir)
    print(f"unmounted {args.mountpoint} (detached {' '.join(loops) or 'no loop devices'})")
    return 0
