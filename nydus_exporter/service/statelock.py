"""One daemon per state directory: an exclusive ``flock`` held for the daemon's life.

A second daemon on the same state directory would delete the first one's job directories
at start (leftovers of a crash, as far as it knows) and share its layer cache and spools.
So :func:`lock_state_dir` takes ``<state>/daemon.lock`` with a non-blocking exclusive
``flock`` and writes the holder's pid into it; a second daemon gets
:class:`StateDirLockedError` naming the directory and that pid. The kernel drops the lock
when the holder exits, however it exits, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from nydus_exporter.service.errors import StateDirLockedError

LOCK_FILE = "daemon.lock"


def lock_state_dir(state_dir: Path) -> int:
    """Lock ``state_dir``; returns the descriptor holding the lock (close it to release)."""
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateDirLockedError(
                f"state directory {state_dir} is in use by another daemon (pid {holder})"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
