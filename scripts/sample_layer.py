#!/usr/bin/env python3
"""Write a small deterministic sample layer tar (used by `make run`).

It holds a few directories, regular files of several sizes (empty, one block, one block + 1
byte, one larger than the 1 MiB default chunk size), a symlink, a hardlink, a file owned by
a non-root user and PAX ``SCHILY.xattr`` records. The bytes depend only on this script:
every run writes the same tar.

Usage: sample_layer.py OUT.tar   (``-`` writes to stdout)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
from typing import BinaryIO

MTIME = 1_700_000_000  # fixed, so the tar is reproducible


def pseudo_random(seed: bytes, size: int) -> bytes:
    """Incompressible but reproducible bytes."""
    return hashlib.shake_256(seed).digest(size)


def text_like(seed: bytes, size: int) -> bytes:
    """Compressible bytes: numbered lines with a little variety."""
    lines = bytearray()
    i = 0
    while len(lines) < size:
        lines += b"%s line %08d %s\n" % (seed, i, pseudo_random(seed + b"%d" % i, 6).hex().encode())
        i += 1
    return bytes(lines[:size])


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = MTIME
    return info


def write_sample_layer(out: BinaryIO) -> None:
    # A >1 MiB file half text, half noise so that both compressible and incompressible
    # chunks occur; the odd tail crosses a chunk boundary.
    big = text_like(b"libbig", 768 * 1024) + pseudo_random(b"libbig", 768 * 1024 + 123)
    files: list[tuple[str, int, int, int, bytes, dict[str, str]]] = [
        ("etc/hostname", 0o644, 0, 0, b"sample\n", {}),
        ("etc/app.conf", 0o640, 0, 0, text_like(b"conf", 3000), {}),
        (
            "usr/bin/tool",
            0o755,
            0,
            0,
            text_like(b"tool", 200 * 1024) + pseudo_random(b"tool", 100 * 1024),
            {},
        ),
        ("usr/lib/libbig.so", 0o644, 0, 0, big, {}),
        ("usr/share/block4096", 0o644, 0, 0, pseudo_random(b"4096", 4096), {}),
        ("usr/share/block4097", 0o644, 0, 0, pseudo_random(b"4097", 4097), {}),
        ("var/empty", 0o600, 0, 0, b"", {}),
        (
            "home/user/notes.txt",
            0o644,
            1000,
            1000,
            b"remember the milk\n",
            {"SCHILY.xattr.user.comment": "note"},
        ),
    ]
    dirs: list[tuple[str, int, int, int]] = [
        ("./", 0o755, 0, 0),
        ("etc", 0o755, 0, 0),
        ("usr", 0o755, 0, 0),
        ("usr/bin", 0o755, 0, 0),
        ("usr/lib", 0o755, 0, 0),
        ("usr/share", 0o755, 0, 0),
        ("var", 0o755, 0, 0),
        ("var/log", 0o1777, 0, 0),
        ("home", 0o755, 0, 0),
        ("home/user", 0o700, 1000, 1000),
    ]
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name, mode, uid, gid in dirs:
        entries.append((_info(name, tarfile.DIRTYPE, mode, uid, gid), None))
    for name, mode, uid, gid, data, pax in files:
        info = _info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        info.pax_headers = dict(pax)
        entries.append((info, data))
    link = _info("usr/lib/libbig.so.1", tarfile.SYMTYPE, 0o777)
    link.linkname = "libbig.so"
    entries.append((link, None))
    hard = _info("usr/bin/tool-hardlink", tarfile.LNKTYPE, 0o755)
    hard.linkname = "usr/bin/tool"
    entries.append((hard, None))
    # Depth-first order (each directory followed by its contents), as image builders write
    # layers; the hardlink sorts after its target.
    entries.sort(key=lambda e: [p for p in e[0].name.split("/") if p not in ("", ".")])
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for info, content in entries:
            tf.addfile(info, None if content is None else io.BytesIO(content))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", help="output tar path, or - for stdout")
    args = parser.parse_args(argv)
    if args.out == "-":
        write_sample_layer(sys.stdout.buffer)
    else:
        with open(args.out, "wb") as f:
            write_sample_layer(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
