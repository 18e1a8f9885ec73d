"""Which slots are free (``state/free``), in allocation order, so that a claim reads one
short file and the file of the slot it takes rather than every slot's file.

The list is a hint; the slot files are the truth. It is kept a superset of the free slots:
a slot enters it before its file says ``available`` and leaves it only after its file says
otherwise, and a claim reads the file of each candidate and drops one that is not free. A
killed process therefore leaves at most entries too many, never a free slot missing.

A power loss, though, may keep any write that was not fsynced or lose it. Rather than one
more fsync under the pool lock per transaction, the list records the boot it was written
in: a list from another boot, or missing, or unreadable, is rebuilt from every slot file
(once, under the lock, ``TomlStore``).

Format: ``boot <id>``, then one line per free slot, ``<key> <n>``, sorted. The key is
``model.allocation_order`` written so that byte order is allocation order (whether the
slot needs a cleanup, the time of its last release counted down from a far future, its
number, each of fixed width): keeping the list sorted is a binary search over bytes, and a
claim parses only the lines it considers, usually the first. What remains linear (reading
and writing ~16 KB for 500 free slots) is done in C: a fraction of a millisecond,
against the two fsyncs of the slot's write (``bench/run.py --only store``).
"""

import bisect
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from necropool.ground.layout import PoolPaths, write_atomic
from necropool.store.model import AVAILABLE, Slot

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_FAR = 10**17 - 1  # microseconds since 1970: year 5138


@functools.cache
def boot_id() -> str | None:
    """This boot's id; None where the system has none (then no list is ever trusted)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def path(paths: PoolPaths) -> Path:
    return paths.state_dir / "free"


def line(slot: Slot) -> bytes:
    released = slot.last_released_at.timestamp() if slot.last_released_at else 0.0
    countdown = _FAR - max(0, min(_FAR, round(released * 1_000_000)))
    return b"%d%017d%010d %d" % (slot.needs_cleanup, countdown, slot.number, slot.number)


@dataclass
class FreeList:
    """The lines of the list, sorted."""

    lines: list[bytes]

    def first_outside(self, skip: frozenset[int]) -> int | None:
        """The first free slot not in ``skip``, parsing no further; ``ValueError`` for a
        line that is not one of ours (the list cannot be trusted)."""
        for entry in self.lines:
            key, _, number = entry.partition(b" ")
            if len(key) != 28 or not key.isdigit():
                raise ValueError(f"not a line of the free list: {entry[:80]!r}")
            if int(number) not in skip:
                return int(number)
        return None

    def without(self, number: int) -> "FreeList":
        """Every line of slot ``number`` gone (a list left by a crash may hold two)."""
        tail = b" %d" % number
        return FreeList([entry for entry in self.lines if not entry.endswith(tail)])

    def updated(self, slots: list[Slot]) -> "FreeList":
        """These slots' lines as their state says: in the list if free, else not."""
        result = self
        for slot in slots:
            result = result.without(slot.number)
            if slot.state == AVAILABLE:
                bisect.insort(result.lines, line(slot))
        return result

def of(slots: list[Slot]) -> FreeList:
    """The list as it is for these slots."""
    return FreeList(sorted(line(s) for s in slots if s.state == AVAILABLE))


def read(paths: PoolPaths) -> FreeList | None:
    """The list, or None when it cannot be trusted (missing, unreadable, another boot's)."""
    try:
        fd = os.open(path(paths), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        lines = fh.read().split(b"\n")
    boot = boot_id()
    if boot is None or lines[0] != b"boot " + boot.encode() or lines[-1] != b"":
        return None
    return FreeList(lines[1:-1])  # each line is checked only if parsed (first_outside)


def write(paths: PoolPaths, free: FreeList) -> None:
    """Atomically, without an fsync (see the module's docstring)."""
    data = b"\n".join([b"boot " + (boot_id() or "none").encode(), *free.lines, b""])
    write_atomic(path(paths), data, sync_dir=False, sync=False)
