"""Waking the allocation waiter at the head of a pool's queue when the state changes, through
a FIFO (``wake.fifo``): the waiter sleeps in the kernel instead of polling the pool.

Every state write pokes the FIFO; a poke with no waiter fails at once (nobody has it open),
so writes cost a failed ``open`` and waiters cost nothing while they wait.
"""

import os
import select
import stat
from pathlib import Path


def open_for_waiting(path: Path) -> int | None:
    """The FIFO at ``path``, made if missing and opened for reading (read-write, so it never
    reports end-of-file between writers); None when it cannot be used (callers then poll).
    Opened before the waiter reads the state, so no poke after that read is lost."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # e.g. a symlink planted in its place: never followed
        return None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def wait(fd: int, timeout: float) -> None:
    """Sleep until a poke or ``timeout`` seconds; swallow the pokes."""
    readable, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if readable:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass


def poke(path: Path) -> None:
    """Wake the waiter, if there is one (never blocks, never writes to anything but a FIFO)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # no FIFO, or nobody waiting (ENXIO)
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b"\0")
    except BlockingIOError:
        pass  # the pipe is full of pokes: the waiter will wake anyway
    except BrokenPipeError:
        pass  # the waiter closed its end since we opened ours: nobody left to wake
    finally:
        os.close(fd)
