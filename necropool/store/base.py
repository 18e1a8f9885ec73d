"""The store interface: everything that reads or writes a pool's state (slots, leases,
statistics, events) goes through one ``Store``. ``toml.TomlStore`` (a file per slot under
``pool.lock``, ``events.jsonl``) is the default; a second backend (a shared ledger) is a
new module implementing this protocol.

The state methods (``snapshot`` to ``save``) are enough for any change; the slot
operations (``claim``, ``renew``, ``end_lease``, ``update_slot``) are the ones a row-level
ledger does natively (claim with ``FOR UPDATE SKIP LOCKED``, renew and end fenced by the
lease id, one row's update), and the TOML store with the one slot's file (and its list of
free slots): neither reads the whole pool for them.
Allocation and release use only the slot operations: they never hold the whole state.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any, Protocol

from necropool.ground.errors import Conflict
from necropool.ground.proc import Holder
from necropool.store import events
from necropool.store.model import Lease, PoolState, Slot

# Opaque: a value that changes whenever a pool's state is written (compared, never read).
Marker = tuple[object, ...]


class Transactions:
    """``transaction`` from a store's ``locked`` and ``save`` (the same for every store)."""

    def locked(self) -> AbstractContextManager[PoolState]:
        raise NotImplementedError

    def save(self, current: PoolState) -> None:
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[PoolState]:
        with self.locked() as current:
            yield current
            self.save(current)


# The events a decision records, made from the slot it was taken on (a claimed slot's id is
# known only then): each a name and fields. The store writes them with the decision, in one
# transaction: a decision is in the history exactly when it was made.
Event = tuple[str, dict[str, Any]]
Note = Callable[[Slot], list[Event]]


class LeaseLost(Conflict):
    """A lease operation fenced out: the lease id is no longer the slot's lease."""


class Store(Protocol):
    def snapshot(self) -> PoolState:
        """A consistent view of every slot, without taking the lock."""
        ...

    def locked(self) -> AbstractContextManager[PoolState]:
        """Hold the state lock for the block and yield the state; nothing is written."""
        ...

    def transaction(self) -> AbstractContextManager[PoolState]:
        """Read-modify-write under the lock: what the block changes is saved at its end
        (not when it raises)."""
        ...

    def save(self, current: PoolState) -> None:
        """Write ``current`` (only while holding the lock, inside ``locked``)."""
        ...

    def marker(self) -> Marker | None:
        """A value that changes whenever the state is written (for waiters)."""
        ...

    def claim(self, lease: Lease, take: Callable[[Slot], bool],
              skip: frozenset[int] = frozenset(), note: Note | None = None) -> Slot | None:
        """Grant ``lease`` on one available slot not in ``skip``, in allocation order, for
        which ``take`` (the caller's local claim, e.g. its slot lock) succeeds; None when
        there is none. Atomic with respect to every other claim. ``note`` (here and below):
        the event recorded with the change."""
        ...

    def renew(self, number: int, lease_id: str, ttl_seconds: float | None = None,
              note: Note | None = None) -> Slot:
        """Extend slot ``number``'s lease to ``ttl_seconds`` from now (None: the lease's own
        TTL; ``UsageError`` when it has none), fenced: ``LeaseLost`` unless ``lease_id`` is
        still its lease. ``note`` sees the slot renewed."""
        ...

    def end_lease(self, number: int, lease_id: str | None, worker: Holder | None = None,
                  check: Callable[[Slot], None] | None = None,
                  note: Note | None = None) -> Slot:
        """End the slot's lease, fenced like ``renew`` (``lease_id`` None: whichever lease
        it has): its usage counted, the slot ``cleaning`` by ``worker``; returns the slot as
        it was before. ``check`` (the caller's last word, e.g. its slot lock) sees the
        leased slot before anything is written and may raise to leave it as it is.
        ``LeaseLost`` when the slot has no such lease, ``NotFound`` when there is no slot."""
        ...

    def update_slot(self, number: int, change: Callable[[Slot], None],
                    note: Note | None = None) -> Slot:
        """Apply ``change`` to one slot and save it, atomic with respect to every other
        operation on that slot (what its worker records: cleaned, failed, given back);
        returns the slot as saved. ``change`` runs before the write: a local lock the write
        makes moot is released there, so nobody woken by it finds the lock still held.
        ``NotFound`` when there is no slot."""
        ...

    def heartbeat(self, vouch: bool = False) -> None:
        """A sign of life of this host (``auto-recover`` gives one each run), for a fleet
        view that reports silent hosts. ``vouch``: the host found its slots as the store
        has them (``pool.divergence``), so other hosts may hand them out."""
        ...

    def append_event(self, name: str, **fields: Any) -> None:
        """Add one event to the pool's history."""
        ...

    def read_events(self, since: datetime | None = None) -> list[events.Event]:
        """The pool's history, oldest first (``since``: only events at or after it)."""
        ...

    def tail(self) -> "events.Source":
        """The pool's history, then what is added to it, for ``events.watch``."""
        ...

    def last_event(self, name: str) -> events.Event | None:
        """The newest event of one kind, if any."""
        ...

    def lease_events(self, lease_id: str) -> list[dict[str, Any]]:
        """The pool's events of one lease, oldest first (what a late holder is told)."""
        ...

    def rotate_events(self, retention_days: float | None = None) -> None:
        """Keep the history from growing without end (``auto-recover`` asks each run;
        ``retention_days``: the ``event_retention_days`` setting, for a store that keeps
        its history by age)."""
        ...
