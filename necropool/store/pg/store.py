"""The shared ledger: pools' state in PostgreSQL, so that the hosts of a fleet share pools
(``ledger = "postgresql://..."``). One ``PgStore`` is one pool's slots on one host: their
directories are local, so every change but a lease's is made by the host that owns them.

Locking mirrors the TOML store's: the pool's row in ``hosts`` stands for ``pool.lock``.
A change of the host's state (``locked``/``transaction``) holds it ``FOR UPDATE``; a claim,
renew or end of one lease holds it ``FOR SHARE`` and locks its slot row, claims with
``SKIP LOCKED``, so claims run side by side and never wait on each other. Every change of a
row bumps its ``generation`` (the fencing token): a write fenced by an older one is refused.

Each decision (a claim, a renewal, the end of a lease, a slot given back) commits with its
event in one transaction. When the link breaks before the answer arrives, the store asks
the ledger what became of it before answering (the slot's row locked: the transaction that
was cut is over by then): done, or nothing written (``LedgerDown``, exit 75).

Lease times come from the server's clock (``now()``), never the client's. Times read are
moved into this client's clock (by the difference measured in the same transaction) and
moved back when written, so a client whose clock is off judges expiry as the server would.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from necropool.ground import wakeup
from necropool.ground.clock import follow_server, now, rfc3339
from necropool.ground.errors import Conflict, NotFound
from necropool.ground.layout import PoolPaths
from necropool.ground.proc import Holder
from necropool.store import journal
from necropool.store.base import LeaseLost, Marker, Note, Transactions
from necropool.store.model import Lease, PoolState, Slot, SlotState
from necropool.store.pg.connect import (
    LedgerDown,
    Opened,
    Statement,
    connect,
    errors,
    one,
    opened,
    send,
)
from necropool.store.pg.rows import ORDER, json_value, param, row_of, slot_of, text
from necropool.store.pg.schema import INCARNATION, VERSION, judge

if TYPE_CHECKING:
    from necropool.store.pg.connect import Connection

_CHECKED: set[str] = set()
def _shift(server_now: datetime) -> timedelta:
    """This client's clock minus the server's (``server_now`` read just now), in whole
    seconds: what a query's latency adds must not move a time back and forth between two
    reads. Times printed are then in the server's clock (``clock.follow_server``)."""
    shift = timedelta(seconds=round((now() - server_now).total_seconds()))
    follow_server(shift)
    return shift


class _InTransaction(threading.local):
    """What ``locked`` read, for ``save`` to write only what changed (per thread)."""

    def __init__(self) -> None:
        self.loaded: dict[int, tuple[int, dict[str, Any]]] = {}  # number -> generation, row
        self.shift: timedelta | None = None  # the clock shift, while ``locked``


class PgStore(Transactions):
    """One pool's slots on one host in the ledger; see ``store.Store`` for the contract."""

    def __init__(self, dsn: str, name: str, host: str, paths: PoolPaths):
        """``paths``: the pool's final paths (recorded in the ledger; its wake FIFO)."""
        self.dsn, self.name, self.host, self.paths = dsn, name, host, paths
        self._txn_state = _InTransaction()  # each thread's own: one store serves them all


    @contextmanager
    def _opened(self, *statements: Statement, hold: bool = False,
                whole: bool = False) -> Iterator[Opened]:
        """A transaction on this thread's connection, its waits bounded (``hold``, ``whole``:
        see ``connect.opened``), ``statements`` sent with its ``BEGIN``; the first of the
        process checks in that round trip that the schema is one this version understands."""
        check = self.dsn not in _CHECKED
        with opened(self.dsn, *([VERSION] if check else []), *statements, hold=hold,
                    whole=whole) as txn:
            if check:
                judge(one(txn.cursor)["version"], self.dsn)
                _CHECKED.add(self.dsn)
                txn.cursor.nextset()
            yield txn

    @contextmanager
    def _state(self, mode: str, hold: bool = False, whole: bool = False) -> Iterator[PoolState]:
        """The host's row locked (``FOR mode``), the clock read and the host's slots read,
        all in the transaction's first round trip (``hold``, ``whole``: see ``_opened``)."""
        with self._opened(
                (f"SELECT now() AS server_now FROM hosts WHERE pool = %s AND host = %s "
                 f"FOR {mode}", (self.name, self.host)),
                ("SELECT * FROM slots WHERE pool = %s AND host = %s ORDER BY number",
                 (self.name, self.host)), hold=hold, whole=whole) as txn:
            host = txn.cursor.fetchone()
            if host is None:
                raise NotFound(f"pool {self.name!r} has no slots of host {self.host!r} in the "
                               f"ledger ('necropool ledger import {self.name}' moves a local "
                               "pool's state there)")
            shift = _shift(host["server_now"])
            txn.cursor.nextset()
            current = PoolState(source="ledger")
            self._txn_state.loaded = {}
            for row in txn.cursor.fetchall():
                slot = current.slots[row["number"]] = slot_of(row, shift)
                values = row_of(slot, Path(row["path"]), shift)
                self._txn_state.loaded[slot.number] = (row["generation"], values)
            try:
                self._txn_state.shift = shift
                yield current
            finally:
                self._txn_state.shift = None

    def snapshot(self) -> PoolState:
        """One round trip."""
        with self._state("KEY SHARE", whole=True) as current:
            return current

    @contextmanager
    def locked(self) -> Iterator[PoolState]:
        """Held while its caller works on the pool (saving a slot's work, say): ``hold``."""
        with self._state("UPDATE", hold=True) as current:
            yield current

    def save(self, current: PoolState) -> None:
        """Write the rows that changed, each fenced by the generation read (the host's row
        is locked, so a mismatch means a writer that skipped the protocol). Outside
        ``locked``, in a transaction of its own."""
        if self._txn_state.shift is None:
            with self.locked():
                return self.save(current)
        conn, shift = connect(self.dsn), self._txn_state.shift  # ``locked``'s transaction
        with errors(self.dsn):
            for number in sorted(set(self._txn_state.loaded) - set(current.slots)):
                conn.execute("DELETE FROM slots WHERE pool = %s AND host = %s AND number = %s",
                             (self.name, self.host, number))
                del self._txn_state.loaded[number]
                journal.forget(self.paths, number)
            for number, slot in sorted(current.slots.items()):
                values = row_of(slot, self.paths.slot_dir(number), shift)
                if number not in self._txn_state.loaded:
                    self._insert(conn, number, values)
                    self._txn_state.loaded[number] = (1, values)
                    journal.remember(self.paths, number, slot)
                    continue
                generation, before = self._txn_state.loaded[number]
                changed = {k: v for k, v in values.items() if v != before[k]}
                if changed:
                    self._fenced(conn.execute(*self._update(number, generation, changed)),
                                 number)
                    self._txn_state.loaded[number] = (generation + 1, values)
                    journal.remember(self.paths, number, slot)
            conn.execute("UPDATE hosts SET last_seen = now() WHERE pool = %s AND host = %s",
                         (self.name, self.host))
        if any(slot.state == SlotState.AVAILABLE for slot in current.slots.values()):
            wakeup.poke(self.paths.wake)  # this host's waiters; others look every few seconds

    def marker(self) -> Marker:
        """One round trip (``allocate --wait`` asks after every wake-up)."""
        with self._opened(("SELECT count(*) AS n, coalesce(sum(generation), 0) AS g FROM slots "
                           "WHERE pool = %s AND host = %s", (self.name, self.host)),
                          whole=True) as txn:
            row = one(txn.cursor)
            return row["n"], row["g"]

    def _insert(self, conn: "Connection", number: int, values: dict[str, Any]) -> None:
        names = ", ".join(f'"{k}"' for k in values)
        marks = ", ".join(["%s"] * len(values))
        conn.execute(f"INSERT INTO slots (pool, host, number, {names}) "
                     f"VALUES (%s, %s, %s, {marks})",
                     (self.name, self.host, number, *map(param, values.items())))

    def _update(self, number: int, generation: int, changed: dict[str, Any]) -> Statement:
        """The statement that writes ``changed`` to the row, fenced by ``generation``."""
        sets = ", ".join(f'"{k}" = %s' for k in changed)
        return (f"UPDATE slots SET {sets}, generation = generation + 1 "
                "WHERE pool = %s AND host = %s AND number = %s AND generation = %s",
                (*map(param, changed.items()), self.name, self.host, number, generation))

    def _fenced(self, cursor: Any, number: int) -> None:
        """``Conflict`` unless the ``_update`` that ``cursor`` ran found its row."""
        if cursor.rowcount != 1:
            raise Conflict(f"slot {self.name}-{number} changed in the ledger under this "
                           "operation (generation fence): try again")

    def claim(self, lease: Lease, take: Callable[[Slot], bool],
              skip: frozenset[int] = frozenset(), note: Note | None = None,
              host: str | None = None) -> Slot | None:
        """One short transaction in two round trips: the first free slot's row asked for in
        its ``BEGIN``'s, the lease and its event written in its ``COMMIT``'s (another slot
        asked for in between only when ``take`` refuses one). ``host``: claim on that host's
        slots (the lease then has no local claim to take)."""
        host = host or self.host
        skipped = set(skip)
        chosen: list[dict[str, Any]] = []  # the row taken, once the server named it
        # The host's row shared (waiting out its maintenance, but for another host's, which
        # is skipped: try elsewhere), the first free slot's row taken, the clock read.
        # Another host's slots only while it vouches for them in this server's incarnation:
        # after a failover or restore, once it has checked them against its own memory.
        vouched = f" AND h.vouched = {INCARNATION}" if host != self.host else ""
        wait = " SKIP LOCKED" if host != self.host else ""

        def first_free() -> Statement:
            return ("SELECT now() AS server_now, s.* FROM hosts h JOIN slots s "
                    "USING (pool, host) WHERE h.pool = %s AND h.host = %s "
                    "AND s.state = 'available' AND s.number <> ALL(%s::integer[])"
                    f"{vouched} ORDER BY {ORDER} LIMIT 1 FOR SHARE OF h{wait} "
                    "FOR UPDATE OF s SKIP LOCKED", (self.name, host, sorted(skipped)))

        try:
            with self._opened(first_free()) as txn:
                row = txn.cursor.fetchone()
                while True:
                    if row is None:
                        return None
                    shift = _shift(row["server_now"])
                    if take(slot_of(row, shift)):
                        break
                    skipped.add(row["number"])
                    row = send(txn.conn, first_free()).fetchone()
                chosen.append(row)
                # The events are written with the grant, so they are made from the slot as
                # claimed (the row as read, under the lease), not from the row the grant returns.
                claimed = replace(slot_of(row, shift), state=SlotState.ALLOCATED, lease=lease)
                holder = lease.holder
                granted = slot_of(one(txn.commit((
                    "UPDATE slots SET state = 'allocated', lease_id = %s, owner = %s, "
                    "holder_pid = %s, holder_start = %s, holder = %s, allocated_at = now(), "
                    "expires_at = now() + make_interval(secs => %s), ttl_seconds = %s, "
                    "metadata = %s, ref = %s, lease_user = %s, worker = NULL, error = NULL, "
                    "allocation_count = allocation_count + 1, last_allocated_at = now(), "
                    "generation = generation + 1 "
                    "WHERE pool = %s AND host = %s AND number = %s RETURNING *",
                    (lease.lease_id, text(lease.owner), holder.pid if holder else None,
                     holder.start if holder else None,
                     json_value(holder.to_dict() if holder else None), lease.ttl_seconds,
                     lease.ttl_seconds, json_value(lease.metadata), text(lease.ref),
                     json_value(lease.user.to_dict() if lease.user else None),
                     self.name, host, row["number"])), *self._noted(note, claimed))), shift)
        except LedgerDown:
            if not chosen:  # nothing was asked to change
                raise
            now_row = self._settled(chosen[0]["number"], host)
            if now_row["lease_id"] != lease.lease_id:
                raise
            granted = slot_of(now_row, _shift(now_row["server_now"]))
        self._remember(granted, host)
        return granted

    def _remember(self, slot: Slot, host: str) -> None:
        """This host's memory of its slot as just written (``store.journal``)."""
        if host == self.host:
            journal.remember(self.paths, slot.number, slot)

    def _settled(self, number: int, host: str) -> dict[str, Any]:
        """Slot ``number``'s row once a transaction that changed it lost its link: locked,
        so that transaction has ended (committed, or rolled back by the server)."""
        with self._opened(self._row(number, host), whole=True) as txn:
            return self._found(txn, number)

    def _noted(self, note: Note | None, slot: Slot) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements that write the decision's events."""
        return [self._event(name, fields) for name, fields in (note(slot) if note else [])]

    def _event(self, name: str, fields: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        return ("INSERT INTO events (pool, host, name, fields) VALUES (%s, %s, %s, %s)",
                (self.name, self.host, name,
                 json_value({k: v for k, v in fields.items() if v is not None})))

    def _row(self, number: int, host: str) -> Statement:
        """Slot ``number``'s row, locked for its transaction (the host's row shared), with
        the server's time (``server_now``), sent with the transaction's ``BEGIN``."""
        return ("SELECT now() AS server_now, s.* FROM hosts h JOIN slots s USING (pool, host) "
                "WHERE h.pool = %s AND h.host = %s AND s.number = %s "
                "FOR SHARE OF h FOR UPDATE OF s", (self.name, host, number))

    def _found(self, txn: Opened, number: int) -> dict[str, Any]:
        """The row ``_row`` asked for in ``txn``'s first round trip; ``NotFound`` without."""
        row = txn.cursor.fetchone()
        if row is None:
            raise NotFound(f"slot {self.name}-{number} does not exist")
        return row

    def _leased(self, txn: Opened, number: int, lease_id: str | None) -> dict[str, Any]:
        """The row, if it has the lease ``lease_id`` (None: any lease); else ``LeaseLost``."""
        row = self._found(txn, number)
        if row["state"] != "allocated" or lease_id not in (None, row["lease_id"]):
            raise LeaseLost(f"lease {lease_id} is not the current lease of slot "
                            f"{self.name}-{number}")
        return row

    def renew(self, number: int, lease_id: str, ttl_seconds: float | None = None,
              note: Note | None = None, host: str | None = None) -> Slot:
        """Two round trips: the row read and locked in the ``BEGIN``'s, the new expiry (the
        server's ``now()``, the same all through the transaction, plus the TTL) and its
        event written in the ``COMMIT``'s. A renewal whose answer was lost is settled by
        the row's generation: moved on under the same lease, it was made."""
        host = host or self.host
        seen: list[dict[str, Any]] = []
        try:
            with self._opened(self._row(number, host)) as txn:
                row = self._leased(txn, number, lease_id)
                shift = _shift(row["server_now"])
                leased = slot_of(row, shift)
                assert leased.lease is not None  # checked by _leased
                ttl = leased.lease.renewal_ttl(ttl_seconds)
                seen.append(row)
                renewed = replace(leased, lease=replace(
                    leased.lease, ttl_seconds=ttl,
                    expires_at=row["server_now"].astimezone(UTC) + timedelta(seconds=ttl) + shift))
                renewed = slot_of(one(txn.commit((
                    "UPDATE slots SET expires_at = now() + make_interval(secs => %s), "
                    "ttl_seconds = %s, generation = generation + 1 "
                    "WHERE pool = %s AND host = %s AND number = %s RETURNING *",
                    (ttl, ttl, self.name, host, number)), *self._noted(note, renewed))), shift)
        except LedgerDown:
            if not seen:
                raise
            now_row = self._settled(number, host)
            if (now_row["lease_id"] != lease_id
                    or now_row["generation"] == seen[0]["generation"]):
                raise
            renewed = slot_of(now_row, _shift(now_row["server_now"]))
        self._remember(renewed, host)
        return renewed

    def end_lease(self, number: int, lease_id: str | None, worker: Holder | None = None,
                  check: Callable[[Slot], None] | None = None, note: Note | None = None,
                  host: str | None = None, uncleaned: bool = False) -> Slot:
        """Two round trips: the row read and locked in the ``BEGIN``'s, the end and its
        event written in the ``COMMIT``'s. ``uncleaned`` (a lease of another host's slot
        ended from here): the slot goes back free, marked for the cleanup its host does
        before handing it out again, ``worker`` (this process, on another host than the
        slot's) saying who ended it. An end whose answer was lost is settled by its event
        (written with it): the lease gone and the event there, it was made."""
        host = host or self.host
        seen: list[dict[str, Any]] = []
        try:
            with self._opened(self._row(number, host)) as txn:
                row = self._leased(txn, number, lease_id)
                previous = slot_of(row, _shift(row["server_now"]))
                if check is not None:
                    check(previous)
                seen.append(row)
                txn.commit((
                    "UPDATE slots SET state = %s, needs_cleanup = needs_cleanup OR %s, "
                    "worker = %s, total_usage_seconds = total_usage_seconds "
                    "+ greatest(0, extract(epoch FROM now() - allocated_at)), "
                    "last_released_at = now(), lease_id = NULL, owner = NULL, "
                    "holder_pid = NULL, holder_start = NULL, holder = NULL, "
                    "allocated_at = NULL, expires_at = NULL, ttl_seconds = NULL, "
                    "metadata = NULL, ref = NULL, lease_user = NULL, "
                    "generation = generation + 1 "
                    "WHERE pool = %s AND host = %s AND number = %s",
                    ("available" if uncleaned else "cleaning", uncleaned,
                     json_value(worker.to_dict() if worker else None), self.name, host,
                     number)), *self._noted(note, previous))
        except LedgerDown:
            if not seen or note is None:
                raise
            ended = seen[0]["lease_id"]
            if self._settled(number, host)["lease_id"] == ended:
                raise  # rolled back: nothing written
            name = note(previous)[0][0]
            if not any(e["event"] == name for e in self.lease_events(ended)):
                raise LeaseLost(f"lease {ended} of slot {self.name}-{number} was ended "
                                "by another operation meanwhile") from None
        if host == self.host and previous.lease is not None:
            journal.ended(self.paths, number, previous.lease.lease_id)
        return previous

    def update_slot(self, number: int, change: Callable[[Slot], None],
                    note: Note | None = None) -> Slot:
        """One row, locked and fenced by its generation; only the columns ``change`` changed
        are written. Its worker's write: when the link broke and the row's generation has
        not moved (or the row was never read), it is made again once (``change`` runs
        twice; the changes made here are idempotent)."""
        for attempt in (1, 2):
            seen: list[int] = []
            try:
                slot = self._update_slot(number, change, note, seen)
                break
            except LedgerDown:
                if attempt == 2:
                    raise
                if seen:
                    row = self._settled(number, self.host)
                    if row["generation"] != seen[0]:
                        slot = slot_of(row, _shift(row["server_now"]))
                        break
        self._remember(slot, self.host)
        if slot.state == SlotState.AVAILABLE:
            wakeup.poke(self.paths.wake)
        return slot

    def _update_slot(self, number: int, change: Callable[[Slot], None], note: Note | None,
                     seen: list[int]) -> Slot:
        """Two round trips: the row read and locked in the ``BEGIN``'s, the change and its
        event written in the ``COMMIT``'s (the fence cannot fail on a row locked since it
        was read: it guards against a writer that skipped the protocol)."""
        with self._opened(self._row(number, self.host)) as txn:
            row = self._found(txn, number)
            shift = _shift(row["server_now"])
            slot = slot_of(row, shift)
            before = row_of(slot, self.paths.slot_dir(number), shift)
            change(slot)
            values = row_of(slot, self.paths.slot_dir(number), shift)
            changed = {k: v for k, v in values.items() if v != before[k]}
            seen.append(row["generation"])
            writes = [self._update(number, row["generation"], changed)] if changed else []
            written = txn.commit(*writes, *self._noted(note, slot))
            if changed:
                self._fenced(written, number)
        return slot

    def heartbeat(self, vouch: bool = False) -> None:
        """``vouch``: this host's slots may go to other hosts' claims (``allocate
        --any-host``) until the server's incarnation changes (``schema.INCARNATION``)."""
        vouched = f", vouched = {INCARNATION}" if vouch else ""
        with self._opened((f"UPDATE hosts SET last_seen = now(){vouched} WHERE pool = %s AND "
                           "host = %s", (self.name, self.host)), whole=True):
            pass

    def append_event(self, name: str, **fields: Any) -> None:
        with self._opened(self._event(name, fields), whole=True):
            pass

    def _events(self, where: str = "", params: tuple[Any, ...] = (), order: str = "id",
                since: datetime | None = None) -> list[dict[str, Any]]:
        """Events of the pool, each with its ``id`` (the ledger's order): one round trip, two
        with ``since`` (moved into the server's clock by the shift read first)."""
        def query(where: str, params: tuple[Any, ...]) -> Statement:
            return (f"SELECT id, at, host, name, fields FROM events WHERE pool = %s {where} "
                    f"ORDER BY {order}", (self.name, *params))

        clock = "SELECT now() AS server_now"
        with self._opened(clock, *([query(where, params)] if since is None else []),
                          whole=since is None) as txn:
            shift = _shift(one(txn.cursor)["server_now"])
            if since is None:
                txn.cursor.nextset()
                rows = txn.cursor.fetchall()
            else:
                rows = send(txn.conn, query(where + " AND at >= %s",
                                            (*params, since - shift))).fetchall()
        return [{"time": rfc3339(r["at"].astimezone(UTC) + shift), "event": r["name"],
                 "pool": self.name, "host": r["host"], **r["fields"], "id": r["id"]}
                for r in rows]

    def read_events(self, since: datetime | None = None) -> list[dict[str, Any]]:
        return [_public(r) for r in self._events(since=since)]

    def rotate_events(self, retention_days: float | None = None) -> None:
        """The pool's events older than ``retention_days`` (by the server's clock; None:
        kept whole) deleted, but for what the history is still asked for: every event of
        a lease whose holder's work was saved (``rescued`` names its holder from them),
        of a lease still held (a late holder is told its story), and each host's newest
        ``auto_recover`` (``list``). Served by the index on (pool, at): a run with nothing
        to prune reads nothing."""
        if retention_days is None:
            return
        with self._opened((
                "DELETE FROM events e WHERE pool = %s "
                "AND at < now() - make_interval(secs => %s) AND NOT ("
                " (fields ? 'lease_id' AND (EXISTS (SELECT 1 FROM events r WHERE "
                "  r.pool = e.pool AND r.fields->>'lease_id' = e.fields->>'lease_id' "
                "  AND r.fields ? 'rescued') OR EXISTS (SELECT 1 FROM slots s WHERE "
                "  s.pool = e.pool AND s.lease_id = e.fields->>'lease_id')))"
                " OR (name = 'auto_recover' AND id = (SELECT max(id) FROM events x WHERE "
                "  x.pool = e.pool AND x.host = e.host AND x.name = 'auto_recover')))",
                (self.name, retention_days * 86400)), whole=True):
            pass

    def tail(self) -> "LedgerTail":
        return LedgerTail(self)

    def last_event(self, name: str) -> dict[str, Any] | None:
        found = self._events("AND name = %s AND host = %s", (name, self.host),
                             "id DESC LIMIT 1")
        return _public(found[0]) if found else None

    def lease_events(self, lease_id: str) -> list[dict[str, Any]]:
        """Through the index on the lease id: never the pool's whole history."""
        return [_public(r) for r in self._events("AND fields->>'lease_id' = %s", (lease_id,))]


class LedgerTail:
    """The pool's events in the ledger not returned before, each once. An event's id is
    taken when it is inserted but the event shows when its transaction commits, so a later
    id can show first: the ids seen in the last ``SETTLE`` seconds are kept and the range
    below them asked again, so an event committed up to that long after a later one is
    still returned (necropool's transactions last milliseconds)."""

    SETTLE = 30.0

    def __init__(self, store: PgStore):
        self.store = store
        self.floor = 0  # every event up to this id has been returned or never will show
        self.seen: dict[int, float] = {}  # ids above the floor returned, when first seen

    def new(self, since: datetime | None = None) -> list[dict[str, Any]]:
        found = self.store._events("AND id > %s", (self.floor,), since=since)
        at = time.monotonic()
        fresh = [r for r in found if r["id"] not in self.seen]
        self.seen.update((r["id"], at) for r in fresh)
        settled = [i for i, when in self.seen.items() if at - when >= self.SETTLE]
        if settled:
            self.floor = max(settled)
            self.seen = {i: when for i, when in self.seen.items() if i > self.floor}
        return [_public(r) for r in fresh]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "id"}
