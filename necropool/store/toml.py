"""The default store: a file per slot in ``state/`` (``statefile``) and the list of free
slots (``freelist``), guarded by ``pool.lock``; history in ``events.jsonl``.

A lease transaction (``claim``, ``renew``, ``end_lease``, ``update_slot``) reads and writes
only the slot it changes (and the free list when the slot enters or leaves it): its cost
does not grow with the pool (``bench/run.py --only store``: one transaction at 1,000 slots
costs what it costs at 5). ``locked`` and ``save`` read every slot and write those that
changed, for the rarer changes of the whole pool (add, remove, repair, recover).

Writes are atomic, fsynced and never follow a symlink (``statefile.write_copies``,
``layout.write_atomic``); a write that frees a slot pokes the wake FIFO of the allocation
waiter at the head of the queue. A pool still in a schema 1 ``state.toml`` is
read from it and converted by its first write."""

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from necropool.ground import wakeup
from necropool.ground.clock import now
from necropool.ground.errors import NotFound, OperationFailed
from necropool.ground.layout import PoolPaths, fsync_dir
from necropool.ground.locks import FileLock
from necropool.ground.proc import Holder
from necropool.store import events, freelist, statefile
from necropool.store.base import LeaseLost, Marker, Note, Transactions
from necropool.store.model import (
    ALLOCATED,
    AVAILABLE,
    CLEANING,
    Lease,
    PoolState,
    Slot,
    allocation_order,
)


class TomlStore(Transactions):
    """A pool's state in its directory; see ``store.Store`` for the contract."""

    def __init__(self, paths: PoolPaths, name: str, lock_timeout: float):
        self.paths, self.name, self.lock_timeout = paths, name, lock_timeout
        self._saved = False  # by the block ``_lock`` runs: its directory is synced after it
        self._entries: statefile.Entries | None = None  # what ``locked`` read, for ``save``

    def snapshot(self) -> PoolState:
        """Each slot as its last write left it (writes are atomic replaces: no lock
        needed); a change of several slots at once may be seen half made."""
        return statefile.load(self.paths)[0]

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """What the block saves is durable when it ends; the directory fsync that makes it
        so (one of a write's three) comes after the lock is let go, so the next writer does
        not wait for it. Whoever reads the state meanwhile and acts on it does so through a
        write of its own, whose directory fsync makes this one durable too."""
        lock = FileLock(self.paths.pool_lock)
        try:
            lock.acquire(self.lock_timeout, f"lock of pool {self.name}")
        except FileNotFoundError:
            raise NotFound(f"pool {self.name!r} does not exist") from None
        try:
            if not self.paths.definition.exists():
                raise NotFound(f"pool {self.name!r} does not exist")
            yield
        finally:
            saved, self._saved = self._saved, False  # read while no other block can run
            self._entries = None
            lock.release()
            if saved:
                fsync_dir(self.paths.state_dir)

    @contextmanager
    def locked(self) -> Iterator[PoolState]:
        with self._lock():
            current, self._entries = statefile.load(self.paths)
            yield current

    def save(self, current: PoolState) -> None:
        """The slots that differ from what ``locked`` read, and the files of the slots
        that are gone; outside ``locked`` (a new pool, one brought back from a ledger),
        and when the state was not read from ``state/``, every slot: that write converts
        a schema 1 ``state.toml`` (or a rebuilt state) to ``state/``."""
        entries = self._entries
        full = entries is None or statefile.version(self.paths) != "ok"
        if full:
            changed = dict(current.slots)
            gone = set(statefile.slot_numbers(self.paths)) - set(current.slots)
        else:
            assert entries is not None  # not full
            changed = {n: s for n, s in current.slots.items()
                       if entries.get(n) is None or entries[n] != s.to_dict()}
            gone = set(entries) - set(current.slots)
        self._write(changed, gone, freelist.of(list(current.slots.values())))
        if full:
            statefile.convert(self.paths)
        self._entries = {n: s.to_dict() for n, s in current.slots.items()}

    def _write(self, changed: dict[int, Slot], gone: set[int],
               final: freelist.FreeList | None = None,
               listed: freelist.FreeList | None = None) -> None:
        """Write the ``changed`` slots and remove the ``gone`` ones, the free list a
        superset of the free slots all along (``freelist``): grown before the slot files,
        trimmed after them. ``final``: the whole list after the write, when the caller
        knows it; otherwise it is the list on disk (``listed``, if the caller just read
        it; rebuilt if it cannot be trusted) with these slots' changes. Waking the waiter
        only when a slot is free: other writes would make it take the pool lock for
        nothing."""
        self._make_state_dir()
        before = listed if listed is not None else freelist.read(self.paths)
        grown = (before if before is not None else self._free_from_files()).updated(
            [s for s in changed.values() if s.state == AVAILABLE])
        if grown != before:
            freelist.write(self.paths, grown)
        for number in gone:
            statefile.remove_copies(statefile.slot_file(self.paths, number))
        for slot in changed.values():
            statefile.write_slot(self.paths, slot)
        self._saved = True
        if final is None:
            final = grown.updated([s for s in changed.values() if s.state != AVAILABLE])
            for number in gone:
                final = final.without(number)
        if final != grown:
            freelist.write(self.paths, final)
        if final.lines:
            wakeup.poke(self.paths.wake)

    def _make_state_dir(self) -> None:
        """``state/``, made if missing; never a symlink planted in its place."""
        try:
            os.mkdir(self.paths.state_dir, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(self.paths.state_dir).st_mode):
                raise OperationFailed(f"refusing to write the state through "
                                      f"{self.paths.state_dir}: not a directory") from None

    def _free_from_files(self) -> freelist.FreeList:
        """The free list from every slot file (when it cannot be trusted: O(pool))."""
        slots = [read.slot for n in statefile.slot_numbers(self.paths)
                 if (read := statefile.read_slot(self.paths, n)) is not None]
        return freelist.of(slots)

    def marker(self) -> Marker | None:
        """Changes whenever a slot becomes free (or stops being free): each such write
        replaces the free list. Waiters wait for a free slot; other writes do not concern
        them."""
        try:
            st = os.stat(freelist.path(self.paths))
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    @contextmanager
    def _one(self, number: int) -> Iterator[Slot]:
        """Slot ``number`` under the lock, written when the block ends (not when it
        raises): its file alone, or, for a pool not yet in ``state/``, the whole state
        (which converts it)."""
        with self._lock():
            if statefile.version(self.paths) is not None:
                read = statefile.read_slot(self.paths, number)
                if read is None:
                    raise NotFound(f"slot {self.paths.slot_id(number)} does not exist")
                listed = freelist.of([read.slot])
                yield read.slot
                if freelist.of([read.slot]) == listed:  # its line in the list stays as it is
                    statefile.write_slot(self.paths, read.slot)
                    self._saved = True
                else:
                    self._write({number: read.slot}, set())
            else:
                current, self._entries = statefile.load(self.paths)
                slot = current.slots.get(number)
                if slot is None:
                    raise NotFound(f"slot {self.paths.slot_id(number)} does not exist")
                yield slot
                self.save(current)

    def claim(self, lease: Lease, take: Callable[[Slot], bool],
              skip: frozenset[int] = frozenset(), note: Note | None = None) -> Slot | None:
        """A pool with no slot free is seen without the lock (a waiter woken by a write
        that freed none, a busy pool's ``allocate``): the lock is for the claims that
        may succeed. Under it, the free list gives the candidates in allocation order and
        only their files are read."""
        if self._none_free(skip):
            return None
        with self._lock():
            if statefile.version(self.paths) is not None:
                claimed = self._claim_free(lease, take, skip)
                if claimed is not None:
                    self._note(note, claimed)
                return claimed
            current, self._entries = statefile.load(self.paths)
            for slot in sorted(current.slots.values(), key=allocation_order):
                if slot.state == AVAILABLE and slot.number not in skip and take(slot):
                    _grant(slot, lease)
                    self.save(current)
                    self._note(note, slot)
                    return slot
            return None  # nothing changed: no write, so waiters are not woken for nothing

    def _none_free(self, skip: frozenset[int]) -> bool:
        """True when the free list (trusted, and the state in ``state/``) names no slot
        outside ``skip``."""
        free = freelist.read(self.paths)
        try:
            if free is None or free.first_outside(skip) is not None:
                return False
        except ValueError:
            return False
        return statefile.version(self.paths) is not None

    def _claim_free(self, lease: Lease, take: Callable[[Slot], bool],
                    skip: frozenset[int]) -> Slot | None:
        self._make_state_dir()
        free = freelist.read(self.paths)
        while True:
            if free is None:
                free = self._free_from_files()
                freelist.write(self.paths, free)
            try:
                number = free.first_outside(skip)
            except ValueError:  # not a list this store wrote: rebuilt
                free = None
                continue
            if number is None:
                return None
            read = statefile.read_slot(self.paths, number)
            if read is None or read.slot.state != AVAILABLE:
                free = free.without(number)  # left by a process killed between two writes
                freelist.write(self.paths, free)
                continue
            if take(read.slot):
                _grant(read.slot, lease)
                self._write({number: read.slot}, set(), listed=free)
                return read.slot
            skip = skip | {number}

    def _leased(self, slot: Slot, lease_id: str | None) -> Slot:
        if (slot.state != ALLOCATED or slot.lease is None
                or lease_id not in (None, slot.lease.lease_id)):
            raise LeaseLost(f"lease {lease_id} is not the current lease of slot "
                            f"{self.paths.slot_id(slot.number)}")
        return slot

    def renew(self, number: int, lease_id: str, ttl_seconds: float | None = None,
              note: Note | None = None) -> Slot:
        with self._one(number) as slot:
            lease = self._leased(slot, lease_id).lease
            assert lease is not None  # checked by _leased
            ttl = lease.renewal_ttl(ttl_seconds)
            lease.expires_at, lease.ttl_seconds = now() + timedelta(seconds=ttl), ttl
        self._note(note, slot)
        return slot

    def end_lease(self, number: int, lease_id: str | None, worker: Holder | None = None,
                  check: Callable[[Slot], None] | None = None,
                  note: Note | None = None) -> Slot:
        with self._one(number) as slot:
            self._leased(slot, lease_id)
            if check is not None:
                check(slot)
            previous = Slot(**vars(slot))
            at = now()
            slot.total_usage_seconds += max(0.0, (at - previous.lease.allocated_at)
                                            .total_seconds()) if previous.lease else 0.0
            slot.last_released_at, slot.lease = at, None
            slot.state, slot.worker = CLEANING, worker
        self._note(note, previous)
        return previous

    def heartbeat(self, vouch: bool = False) -> None:
        """Nothing to record: one host's files have no fleet to report to."""

    def update_slot(self, number: int, change: Callable[[Slot], None],
                    note: Note | None = None) -> Slot:
        with self._one(number) as slot:
            change(slot)
        self._note(note, slot)
        return slot

    def _note(self, note: Note | None, slot: Slot) -> None:
        """The event of a change just saved (appended after the state: what the history
        says happened, happened)."""
        for name, fields in note(slot) if note is not None else []:
            self.append_event(name, **fields)

    def append_event(self, name: str, **fields: Any) -> None:
        events.append(self.paths.events, name, pool=self.name, **fields)

    def read_events(self, since: datetime | None = None) -> list[events.Event]:
        return events.read(self.paths.events, since)

    def tail(self) -> events.Tail:
        return events.Tail(self.paths.events)

    def last_event(self, name: str) -> events.Event | None:
        return events.last(self.paths.events, name)

    def lease_events(self, lease_id: str) -> list[dict[str, Any]]:
        return [r for r in self.read_events() if r.get("lease_id") == lease_id]

    def rotate_events(self, retention_days: float | None = None) -> None:
        """``events.jsonl`` past ``events.ROTATE_BYTES`` becomes ``events.jsonl.1``, under
        the pool lock (bounded by size: ``retention_days`` is for the ledger)."""
        with self._lock():
            events.rotate(self.paths.events)


def _grant(slot: Slot, lease: Lease) -> None:
    slot.state, slot.lease, slot.worker, slot.error = ALLOCATED, lease, None, None
    slot.allocation_count += 1
    slot.last_allocated_at = lease.allocated_at
