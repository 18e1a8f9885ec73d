"""The default store: ``state.toml`` (and its ``.bak``) guarded by ``pool.lock``, history in
``events.jsonl``. Writes are atomic, fsynced and never follow a symlink (``statefile.save``,
``layout.write_atomic``); a write that leaves a slot free pokes the wake FIFO of the
allocation waiter at the head of the queue."""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from necropool.ground import wakeup
from necropool.ground.clock import now
from necropool.ground.errors import NotFound
from necropool.ground.layout import PoolPaths, fsync_dir
from necropool.ground.locks import FileLock
from necropool.ground.proc import Holder
from necropool.store import events, statefile
from necropool.store.base import LeaseLost, Note, Transactions
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
        self._saved = False  # by the block ``locked`` runs: its directory is synced after it

    def snapshot(self) -> PoolState:
        return statefile.load(self.paths)  # writes are atomic replaces: no lock needed

    @contextmanager
    def locked(self) -> Iterator[PoolState]:
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
            yield statefile.load(self.paths)
        finally:
            saved, self._saved = self._saved, False  # read while no other block can run
            lock.release()
            if saved:
                fsync_dir(self.paths.dir)

    def save(self, current: PoolState) -> None:
        """Waking the waiter only when a slot is free: other writes would make it take the
        pool lock for nothing."""
        statefile.save(self.paths, current, sync_dir=False)  # synced by ``locked``
        self._saved = True
        if any(slot.state == AVAILABLE for slot in current.slots.values()):
            wakeup.poke(self.paths.wake)

    def marker(self) -> tuple | None:
        """Changes whenever the state is written (each write replaces the file)."""
        try:
            st = os.stat(self.paths.state)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def claim(self, lease: Lease, take: Callable[[Slot], bool],
              skip: frozenset[int] = frozenset(), note: Note | None = None) -> Slot | None:
        """A pool with no slot free is seen without the lock (a waiter woken by a write
        that freed none, a busy pool's ``allocate``): the lock is for the claims that
        may succeed."""
        if not any(s.state == AVAILABLE and s.number not in skip
                   for s in self.snapshot().slots.values()):
            return None
        with self.locked() as current:
            for slot in sorted(current.slots.values(), key=allocation_order):
                if slot.state == AVAILABLE and slot.number not in skip and take(slot):
                    slot.state, slot.lease, slot.worker, slot.error = ALLOCATED, lease, None, None
                    slot.allocation_count += 1
                    slot.last_allocated_at = lease.allocated_at
                    self.save(current)
                    self._note(note, slot)
                    return slot
        return None  # nothing changed: no write, so waiters are not woken for nothing

    def _leased(self, current: PoolState, number: int, lease_id: str | None) -> Slot:
        slot = current.slots.get(number)
        if slot is None:
            raise NotFound(f"slot {self.paths.slot_id(number)} does not exist")
        if (slot.state != ALLOCATED or slot.lease is None
                or lease_id not in (None, slot.lease.lease_id)):
            raise LeaseLost(f"lease {lease_id} is not the current lease of slot "
                            f"{self.paths.slot_id(number)}")
        return slot

    def renew(self, number: int, lease_id: str, expires_at: datetime,
              ttl_seconds: float, note: Note | None = None) -> Slot:
        with self.transaction() as current:
            slot = self._leased(current, number, lease_id)
            assert slot.lease is not None  # checked by _leased
            slot.lease.expires_at, slot.lease.ttl_seconds = expires_at, ttl_seconds
        self._note(note, slot)
        return slot

    def end_lease(self, number: int, lease_id: str | None, worker: Holder | None = None,
                  check: Callable[[Slot], None] | None = None,
                  note: Note | None = None) -> Slot:
        with self.transaction() as current:
            slot = self._leased(current, number, lease_id)
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

    def heartbeat(self) -> None:
        """Nothing to record: one host's files have no fleet to report to."""

    def update_slot(self, number: int, change: Callable[[Slot], None],
                    note: Note | None = None) -> Slot:
        with self.transaction() as current:
            slot = current.slots.get(number)
            if slot is None:
                raise NotFound(f"slot {self.paths.slot_id(number)} does not exist")
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

    def read_events(self, since: datetime | None = None) -> list[dict]:
        return events.read(self.paths.events, since)

    def tail(self) -> events.Tail:
        return events.Tail(self.paths.events)

    def last_event(self, name: str) -> dict | None:
        return events.last(self.paths.events, name)

    def lease_events(self, lease_id: str) -> list[dict]:
        return [r for r in self.read_events() if r.get("lease_id") == lease_id]

    def rotate_events(self) -> None:
        """``events.jsonl`` past ``events.ROTATE_BYTES`` becomes ``events.jsonl.1``, under
        the pool lock."""
        with self.locked():
            events.rotate(self.paths.events)
