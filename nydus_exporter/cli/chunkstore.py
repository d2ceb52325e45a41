"""The ``gc`` subcommand: trim the chunk store of a state directory.

Wired into the main parser like the other tool commands::

    add_chunkstore_commands(sub)            # in build_parser()
    code = run_chunkstore_command(args)     # in main(): None when args.command is not ours
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from nydus_exporter.chunkstore import DEFAULT_MAX_BLOBS
from nydus_exporter.errors import ConfigError

STATE_DIR_HELP = (
    "state directory holding the chunk store (default: $XDG_STATE_HOME/nydus-exporter, "
    "else ~/.local/state/nydus-exporter)"
)


def add_chunkstore_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gc = sub.add_parser(
        "gc",
        help="trim the persistent chunk store",
        description="Evict the least recently used blobs of the chunk store beyond --max-blobs "
        "(chunks of blobs pushed by earlier builds, used for cross-build dedup) and return "
        "the freed space to the file system. Safe while daemons use the same state directory.",
    )
    gc.add_argument("--state-dir", type=Path, default=None, help=STATE_DIR_HELP)
    gc.add_argument(
        "--max-blobs", type=int, default=DEFAULT_MAX_BLOBS,
        help=f"blobs to keep (default {DEFAULT_MAX_BLOBS}; 0 empties the store)",
    )  # fmt: skip
    gc.add_argument(
        "--verify", action="store_true", help="also check every record's checksum (reads the whole store)"
    )
    gc.add_argument("--json", action="store_true", help="print the report as JSON")

    chunkdict = sub.add_parser(
        "chunkdict",
        help="publish the chunk store's view of a repository as a chunk-dict image",
        description="chunkdict push REF: push a Nydus image made of the blobs the chunk store "
        "knows in REF's repository (verified there, not uploaded again), for chunk-dict=REF "
        "(or nydusify --chunk-dict bootstrap:registry:REF) on other replicas.",
    )
    chunkdict.add_argument("action", choices=("push",))
    chunkdict.add_argument("reference", help="HOST/REPOSITORY:TAG of the dictionary image")
    chunkdict.add_argument("--state-dir", type=Path, default=None, help=STATE_DIR_HELP)
    chunkdict.add_argument("--insecure", action="store_true", help="plain HTTP / unverified TLS")
    chunkdict.add_argument("--chunk-size", type=lambda v: int(v, 0), default=0x100000)
    chunkdict.add_argument("--compressor", default="zstd")
    chunkdict.add_argument("--digester", default="blake3")


def run_chunkstore_command(args: argparse.Namespace) -> int | None:
    """Run ``args.command`` if it is ``gc`` or ``chunkdict``; ``None`` otherwise."""
    if args.command == "chunkdict":
        return _chunkdict_push(args)
    if args.command != "gc":
        return None
    if args.max_blobs < 0:
        raise ConfigError("--max-blobs must not be negative")
    from nydus_exporter.chunkstore.store import ChunkStore, default_state_dir

    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    with ChunkStore.open(state_dir, max_blobs=max(1, args.max_blobs)) as store:
        report = store.gc(max_blobs=args.max_blobs, verify=args.verify)
        stats = store.stats()
        moved = [str(p) for p in store.moved_aside]
    if args.json:
        out = {**asdict(report), "db_bytes": stats["db_bytes"], "moved_aside": moved}
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    for path in moved:
        print(f"nydus-exporter: warning: corrupt chunk store moved aside to {path}", file=sys.stderr)
    print(
        f"evicted {report.evicted_blobs} blobs ({report.evicted_chunks} chunks), dropped "
        f"{report.dropped_blobs} bad records; {report.blobs} blobs ({report.chunks} chunks) left, "
        f"{stats['db_bytes']} bytes"
    )
    return 0


def _chunkdict_push(args: argparse.Namespace) -> int:
    import tempfile

    from nydus_exporter.chunkstore.store import ChunkStore, default_state_dir
    from nydus_exporter.oci.reference import parse_reference
    from nydus_exporter.pipeline.chunkdict_image import push_chunk_dict
    from nydus_exporter.registry.sync import SyncRegistry

    ref = parse_reference(args.reference).with_default_tag()
    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    insecure = [ref.api_host] if args.insecure else []
    with (
        ChunkStore.open(state_dir) as store,
        SyncRegistry(insecure_hosts=insecure) as registry,
        tempfile.TemporaryDirectory(prefix="nydus-chunkdict-") as work,
    ):
        pushed = push_chunk_dict(
            registry,
            store,
            ref,
            Path(work),
            chunk_size=args.chunk_size,
            digester=args.digester,
            compressor=args.compressor,
        )
    print(f"{ref}: {pushed.manifest.digest} ({pushed.blobs} blobs, {pushed.chunks} chunks)")
    return 0
