"""SIGTERM ends a CLI command the way Ctrl-C does: as an exception in the main thread.

Python's default for SIGTERM kills the process on the spot, so ``finally`` blocks and
``except BaseException`` clean-ups never run (a half-written ``.tmp`` output stays behind).
Inside :func:`terminate_as_exception` SIGTERM raises :class:`Terminated` instead, which
unwinds like ``KeyboardInterrupt``; the CLI then exits with 128 + SIGTERM, as a shell reports
a process killed by it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException so that ``except Exception`` handlers do not swallow it."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
