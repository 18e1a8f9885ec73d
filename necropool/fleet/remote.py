"""A pool across the fleet, through its ledger: every host's slots, a lease taken on any
host (``allocate --any-host``), and a lease of another host's slot renewed or ended from
here. Work on a slot's directory (cleanup, recovery) stays with the host whose disk has it:
a lease ended from elsewhere leaves the slot free but marked for cleanup, which its host
does before handing it out again."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from necropool.ground.errors import Conflict, NotFound, UsageError
from necropool.ground.proc import Holder
from necropool.ground.slotref import SlotRef
from necropool.lease.renew import lease_gone, was_released
from necropool.pool.pool import Pool
from necropool.store.base import Event, LeaseLost
from necropool.store.model import ALLOCATED, Lease, Slot
from necropool.store.pg.hosts import FleetSlot, fleet, free_elsewhere, slot_path
from necropool.store.pg.store import PgStore


def slot_id(pool: Pool, number: int, host: str) -> str:
    """A slot's id as the fleet shows it: with its host when that is not this one."""
    return str(SlotRef.of(pool.name, number, host))


def store_of(pool: Pool) -> PgStore:
    if not isinstance(pool.store, PgStore):
        raise UsageError(f"pool {pool.name!r} is not in a shared ledger: another host's "
                         "slots need one (--ledger, NECROPOOL_LEDGER, or ledger in the config)")
    return pool.store


def slots(pool: Pool, host: str | None = None) -> tuple[list[FleetSlot], dict[str, datetime]]:
    """Every slot of the pool in the fleet (on ``host`` only, if given), and each host's
    last sign of life."""
    return fleet(store_of(pool).dsn, pool.name, host)


@dataclass
class Remote:
    """A slot of another host, as a lease operation left it."""

    host: str
    path: str
    slot: Slot


def allocate(pool: Pool, *, owner: str, holder: Holder | None, ttl: float | None,
             metadata: dict[str, str]) -> Remote | None:
    """A lease on a free, clean slot of another host (the host with most such slots first);
    None when there is none."""
    store = store_of(pool)
    free = free_elsewhere(store.dsn, pool.name, store.host)
    lease = Lease.new(owner, holder, ttl, metadata)
    for host in sorted(free, key=lambda h: (-free[h], h)):
        def noted(slot: Slot, host: str = host) -> list[Event]:
            return [("allocate", dict(slot_id=slot_id(pool, slot.number, host),
                                      lease_id=lease.lease_id, owner=owner, slot_host=host))]

        slot = store.claim(lease, take=lambda s: not s.needs_cleanup, host=host, note=noted)
        if slot is not None:
            return Remote(host, slot_path(store.dsn, pool.name, host, slot.number), slot)
    return None


def find(pool: Pool, host: str, number: int) -> FleetSlot:
    for f in slots(pool, host)[0]:
        if f.slot.number == number:
            return f
    raise NotFound(f"slot {slot_id(pool, number, host)} does not exist")


def release(pool: Pool, host: str, number: int, lease_id: str | None,
            reason: str = "release") -> dict[str, Any]:
    """End the lease ``lease_id`` of another host's slot: the slot is free again, marked
    for cleanup by its own host, which applies its own rules there (work saved, a process
    still in the slot left alone). Only the lease's holder can name it: no lease id, no
    release from afar (the holder may be working; only its host can tell). ``reason``:
    the event's name (``reclaim``: the holder, on this host, died). A lease whose slot
    was handed to a local user of its host (``--user``) is refused (UsageError, nothing
    changed): only that host, as root, can take the tree back before it is cleaned."""
    sid = slot_id(pool, number, host)
    if not lease_id:
        raise UsageError(f"slot {sid} is on another host: releasing it from here needs its "
                         "lease id (--lease-id), or release it on its own host")
    current = find(pool, host, number).slot
    if current.state != ALLOCATED or current.lease is None:
        if was_released(store_of(pool), lease_id):  # repeated, nobody's lease since: done
            return _released_result(pool, sid, lease_id)
        raise Conflict("stale " + lease_gone(pool, number, lease_id, sid))

    def noted(ended: Slot) -> list[Event]:
        return [(reason, dict(slot_id=sid, lease_id=lease_id,
                                 owner=ended.lease.owner if ended.lease else None,
                                 slot_host=host))]

    def not_handed(leased: Slot) -> None:  # judged on the row locked for the end
        if leased.lease is not None and leased.lease.user is not None:
            raise UsageError(f"slot {sid} is handed to local user {leased.lease.user.name!r} "
                             f"on host {host}: release it there")

    try:
        store_of(pool).end_lease(number, lease_id, Holder.me(), check=not_handed, host=host,
                                 uncleaned=True, note=noted)
    except LeaseLost:
        raise Conflict("stale " + lease_gone(pool, number, lease_id, sid)) from None
    return _released_result(pool, sid, lease_id)


def _released_result(pool: Pool, sid: str, lease_id: str) -> dict[str, Any]:
    return {"slot_id": sid, "pool": pool.name, "lease_id": lease_id, "cleaned": False,
            "commit": None, "cleanup": None, "rescued": None, "fetch_error": None, "ended": []}


def renew(pool: Pool, host: str, number: int, lease_id: str, ttl: float | None) -> Remote:
    """Extend a lease of another host's slot (by its own TTL unless ``ttl``)."""
    found = find(pool, host, number)  # (its path, which the renewed slot does not carry)
    try:  # fenced where it is renewed: LeaseLost unless ``lease_id`` is its lease
        slot = store_of(pool).renew(number, lease_id, ttl, host=host)
    except LeaseLost:
        raise Conflict(f"lease {lease_id} is not the current lease of slot "
                       f"{slot_id(pool, number, host)}") from None
    return Remote(host, found.path, slot)

