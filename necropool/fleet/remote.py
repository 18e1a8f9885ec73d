"""A pool across the fleet, through its ledger: every host's slots, a lease taken on any
host (``allocate --any-host``), and a lease of another host's slot renewed or ended from
here. Work on a slot's directory (cleanup, recovery) stays with the host whose disk has it:
a lease ended from elsewhere leaves the slot free but marked for cleanup, which its host
does before handing it out again."""

from dataclasses import dataclass
from datetime import timedelta

from necropool.ground.clock import now
from necropool.ground.errors import Conflict, NotFound, UsageError
from necropool.ground.proc import Holder, hostname
from necropool.ground.validate import parse_slot_id
from necropool.pool.pool import Pool
from necropool.store.base import LeaseLost
from necropool.store.model import ALLOCATED, AVAILABLE, Lease, Slot
from necropool.store.pg.hosts import FleetSlot, fleet
from necropool.store.pg.store import PgStore

HOST_SEP = "@"


def split_ref(ref: str) -> tuple[str, str | None]:
    """``web-3@host`` into the slot id and the host (None: no host named)."""
    if isinstance(ref, str) and HOST_SEP in ref and "/" not in ref:
        slot_id, host = ref.rsplit(HOST_SEP, 1)
        if not host or any(c.isspace() or c in "/\0" for c in host):
            raise UsageError(f"invalid slot {ref!r}: expected <pool>-<number>[@<host>]")
        return slot_id, host
    return ref, None


def slot_id(pool: Pool, number: int, host: str) -> str:
    """A slot's id as the fleet shows it: with its host when that is not this one."""
    local = pool.slot_id(number)
    return local if host == hostname() else f"{local}{HOST_SEP}{host}"


def store_of(pool: Pool) -> PgStore:
    if not isinstance(pool.store, PgStore):
        raise UsageError(f"pool {pool.name!r} is not in a shared ledger: another host's "
                         "slots need one (--ledger, NECROPOOL_LEDGER, or ledger in the config)")
    return pool.store


def slots(pool: Pool, host: str | None = None) -> tuple[list[FleetSlot], dict]:
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
             metadata: dict) -> Remote | None:
    """A lease on a free, clean slot of another host (the host with most such slots first);
    None when there is none."""
    store = store_of(pool)
    found, _ = slots(pool)
    free: dict[str, int] = {}
    for f in found:
        if f.host != store.host and f.slot.state == AVAILABLE and not f.slot.needs_cleanup:
            free[f.host] = free.get(f.host, 0) + 1
    lease = Lease.new(owner, holder, ttl, metadata)
    for host in sorted(free, key=lambda h: (-free[h], h)):
        slot = store.claim(lease, take=lambda s: not s.needs_cleanup, host=host)
        if slot is not None:
            path = next(f.path for f in found if f.host == host and f.slot.number == slot.number)
            store.append_event("allocate", slot_id=slot_id(pool, slot.number, host),
                               lease_id=lease.lease_id, owner=owner, slot_host=host)
            return Remote(host, path, slot)
    return None


def find(pool: Pool, host: str, number: int) -> FleetSlot:
    for f in slots(pool, host)[0]:
        if f.slot.number == number:
            return f
    raise NotFound(f"slot {slot_id(pool, number, host)} does not exist")


def release(pool: Pool, host: str, number: int, lease_id: str | None) -> dict:
    """End the lease of another host's slot (the current one, unless ``lease_id`` names
    it): the slot is free again, marked for cleanup by its own host."""
    sid = slot_id(pool, number, host)
    current = find(pool, host, number).slot
    if current.state != ALLOCATED or current.lease is None:
        raise Conflict(f"slot {sid} is not allocated (it is {current.state})")
    lease_id = lease_id or current.lease.lease_id
    try:
        ended = store_of(pool).end_lease(number, lease_id, host=host, uncleaned=True)
    except LeaseLost:
        raise Conflict(f"stale lease {lease_id} of slot {sid}: it is no longer its lease") \
            from None
    store_of(pool).append_event("release", slot_id=sid, lease_id=lease_id,
                                owner=ended.lease.owner if ended.lease else None,
                                slot_host=host)
    return {"slot_id": sid, "pool": pool.name, "lease_id": lease_id, "cleaned": False,
            "commit": None, "cleanup": None, "rescued": None, "fetch_error": None, "ended": []}


def renew(pool: Pool, host: str, number: int, lease_id: str, ttl: float | None) -> Remote:
    """Extend a lease of another host's slot (by its own TTL unless ``ttl``)."""
    found = find(pool, host, number)
    lease = found.slot.lease
    if lease is None or lease.lease_id != lease_id:
        raise Conflict(f"lease {lease_id} is not the current lease of slot "
                       f"{slot_id(pool, number, host)}")
    ttl = ttl or lease.ttl_seconds
    if not ttl:
        raise UsageError(f"lease {lease_id} has no TTL: pass --ttl to give it one")
    try:
        slot = store_of(pool).renew(number, lease_id, now() + timedelta(seconds=ttl), ttl,
                                    host=host)
    except LeaseLost:
        raise Conflict(f"lease {lease_id} is not the current lease of slot "
                       f"{slot_id(pool, number, host)}") from None
    return Remote(host, found.path, slot)


def resolve(pool_ref: str) -> tuple[str, int, str | None]:
    """``web-3@host``: pool name, number and host (None for this host)."""
    ref, host = split_ref(pool_ref)
    name, number = parse_slot_id(ref)
    return name, number, None if host in (None, hostname()) else host
