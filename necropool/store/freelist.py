"""Which slots are free (``state/free``), with what orders them, so that a claim reads one
short file and the files of the slots it considers rather than every slot's file.

The list is a hint; the slot files are the truth. It is kept a superset of the free slots:
a slot enters it before its file says ``available`` and leaves it only after its file says
otherwise, and a claim reads the file of each candidate and drops one that is not free. A
killed process therefore leaves at most entries too many, never a free slot missing.

A power loss, though, may keep any write that was not fsynced or lose it. Rather than one
more fsync under the pool lock per transaction, the list records the boot it was written
in: a list from another boot, or missing, or unreadable, is rebuilt from every slot file
(once, under the lock, ``TomlStore``).

Format: ``boot <id>``, then one line per free slot: ``<n> <needs_cleanup 0|1> <released>``
(epoch seconds of its last release, 0 when never).
"""

import functools
import os
from pathlib import Path

from necropool.ground.layout import PoolPaths, write_atomic
from necropool.store.model import AVAILABLE, Slot, allocation_key

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

Free = dict[int, tuple[bool, float]]  # slot -> (needs_cleanup, released)


@functools.cache
def boot_id() -> str | None:
    """This boot's id; None where the system has none (then no list is ever trusted)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def path(paths: PoolPaths) -> Path:
    return paths.state_dir / "free"


def read(paths: PoolPaths) -> Free | None:
    """The list, or None when it cannot be trusted (missing, unreadable, another boot's)."""
    try:
        fd = os.open(path(paths), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        lines = fh.read().decode(errors="replace").splitlines()
    boot = boot_id()
    if not lines or boot is None or lines[0] != f"boot {boot}":
        return None
    free: Free = {}
    try:
        for line in lines[1:]:
            number, needs_cleanup, released = line.split()
            free[int(number)] = (needs_cleanup == "1", float(released))
    except ValueError:
        return None
    return free


def write(paths: PoolPaths, free: Free) -> None:
    """Atomically, without an fsync (see the module's docstring)."""
    lines = [f"boot {boot_id()}"]
    lines += [f"{n} {int(needs)} {released!r}" for n, (needs, released) in sorted(free.items())]
    write_atomic(path(paths), ("\n".join(lines) + "\n").encode(), sync_dir=False, sync=False)


def entry(slot: Slot) -> tuple[bool, float]:
    return slot.needs_cleanup, (slot.last_released_at.timestamp()
                                if slot.last_released_at else 0.0)


def of(slots: list[Slot]) -> Free:
    """The list as it is for these slots."""
    return {s.number: entry(s) for s in slots if s.state == AVAILABLE}


def in_order(free: Free) -> list[int]:
    """The free slots in allocation order (``model.allocation_order``)."""
    return sorted(free, key=lambda n: allocation_key(n, *free[n]))
