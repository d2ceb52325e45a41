"""The interop tools (``bin/rafs-*``, built by ``make interop-tools`` from ``tests/interop/``,
a Cargo workspace on the real nydus crates) and their outputs as test values.

``rafs_check`` runs ``bin/rafs-check``: the RAFS loader of nydusd (``nydus-rafs``) with its
validation, then the filesystem nydusd serves, reading every file through the real storage
layer (``nydus-storage``, localfs backend). Its JSON tree becomes a
:class:`tests.helpers.treesnap.Snapshot`, so it compares with ``diff_snapshots`` against the
kernel's view of the same image.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import PROJECT_ROOT, require
from tests.helpers.treesnap import EntrySnap, Snapshot

BIN = PROJECT_ROOT / "bin"
TOOLS = ("rafs-check", "rafs-ref-build", "rafs-ref-merge", "rafs-mount")
TOOLS_REASON = "needs the interop tools in bin/ (run `make interop-tools`; it needs cargo)"


def tool(name: str) -> Path:
    """The path of an interop tool; skips locally and fails in CI when it is not built."""
    path = BIN / name
    require(path.is_file() and os.access(path, os.X_OK), f"{TOOLS_REASON}: {path} is missing")
    return path


def run_tool(
    name: str, args: Sequence[str | os.PathLike[str]], *, timeout: float = 600, stdin: str = ""
) -> str:
    """Run a tool; its stdout, or AssertionError with its stderr when it fails."""
    argv = [str(tool(name)), *(str(a) for a in args)]
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed (exit {res.returncode}):\n{res.stderr.strip()}")
    return res.stdout


@dataclass(frozen=True)
class CheckResult:
    """What ``rafs-check`` reports: the blob table nydusd loaded and the tree it served."""

    blobs: list[dict[str, Any]]
    tree: Snapshot
    inos: dict[bytes, int]  # path -> st_ino as nydusd reports it (hardlink identity)
    stored_mtimes: dict[bytes, tuple[int, int]]  # path -> the inode's own (mtime, nsec)

    def zero_mtimes_as_stored(self) -> Snapshot:
        """The tree with the mount-time mtimes ``Rafs`` serves for inodes that store 0 put back
        to 0 (see ``nydus_rafs::fs::Rafs::get_inode_entry``)."""
        return {
            path: dataclasses.replace(entry, mtime=0, mtime_nsec=0)
            if self.stored_mtimes.get(path) == (0, 0)
            else entry
            for path, entry in self.tree.items()
        }


def rafs_check(bootstrap: Path, blob_dir: Path) -> CheckResult:
    doc = json.loads(run_tool("rafs-check", [bootstrap, "--blob-dir", blob_dir]))
    entries = doc["entries"]
    return CheckResult(
        blobs=doc["blobs"],
        tree=snapshot_of(entries),
        inos=_inos(entries),
        stored_mtimes={
            bytes.fromhex(e["path"]): (int(e["stored_mtime"][0]), int(e["stored_mtime"][1])) for e in entries
        },
    )


def _inos(entries: list[dict[str, Any]]) -> dict[bytes, int]:
    return {bytes.fromhex(e["path"]): int(e["ino"]) for e in entries}


def snapshot_of(entries: list[dict[str, Any]]) -> Snapshot:
    """The JSON entries of ``rafs-check`` / ``rafs-mount`` as a treesnap Snapshot."""
    snap: Snapshot = {}
    members: dict[int, list[bytes]] = {}
    for e in entries:
        path = bytes.fromhex(e["path"])
        kind = e["kind"]
        if kind == "reg" and e["read_size"] != e["size"]:
            raise AssertionError(f"{path!r}: stat size {e['size']} but {e['read_size']} bytes read")
        if kind != "dir":
            members.setdefault(int(e["ino"]), []).append(path)
        snap[path] = EntrySnap(
            kind=kind,
            mode=int(e["mode"]),
            uid=int(e["uid"]),
            gid=int(e["gid"]),
            # treesnap's size is the content size of regular files only.
            size=int(e["size"]) if kind == "reg" else 0,
            sha256=e.get("sha256"),
            target=bytes.fromhex(e["target"]) if "target" in e else None,
            xattrs={bytes.fromhex(k): bytes.fromhex(v) for k, v in e["xattrs"].items()},
            rdev=(int(e["rdev"][0]), int(e["rdev"][1])) if kind in ("chr", "blk") else (0, 0),
            mtime=int(e["mtime"]),
            mtime_nsec=int(e["mtime_nsec"]),
            nlink=int(e["nlink"]),
        )
    group = 0
    for paths in members.values():
        if len(paths) > 1:
            group += 1
            for path in paths:
                snap[path] = dataclasses.replace(snap[path], link_group=group)
    return snap
