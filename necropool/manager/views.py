"""The JSON views of pools (the contract in docs/json.md); a slot's is ``pool.describe_slot``."""

from datetime import datetime
from typing import TYPE_CHECKING, Any

from necropool.git import commands as git
from necropool.ground.clock import rfc3339
from necropool.ground.proc import hostname
from necropool.pool.mirror import mirror_freshness
from necropool.pool.pool import Pool, describe_slot
from necropool.store.model import STATES, PoolState, Slot

if TYPE_CHECKING:
    from necropool.store.pg.hosts import FleetSlot


def summary(pool: Pool, host: str | None = None, with_slots: bool = True) -> dict[str, Any]:
    """``describe_pool`` of the pool's state, or for a pool only other hosts of the fleet
    have slots of, of the ledger's alone."""
    return describe_pool(pool, pool.read_state() if pool.local else PoolState(),
                         with_slots=with_slots, host=host)


def describe_pool(pool: Pool, current: PoolState, with_slots: bool = True,
                  host: str | None = None) -> dict[str, Any]:
    """A pool and its slots: with a ledger, every host's (or ``host``'s only), with the
    hosts' last signs of life."""

    found: list[tuple[str | None, str | None, Slot]] = [
        (None, None, s) for _, s in sorted(current.slots.items())]
    hosts = [{"host": hostname(), "slots": len(found), "last_seen": None, "silent": False}]
    if not pool.local:
        current = PoolState(source="ledger")
    if pool.ledger:
        from necropool.fleet import remote as fleet  # lazy: a pool in a ledger only

        slots, seen = fleet.slots(pool, host)
        found = [(f.host, f.path, f.slot) for f in slots]
        hosts = describe_hosts(pool, slots, seen)
    counts = {s: 0 for s in STATES}
    for _, _, slot in found:
        counts[slot.state] += 1
    data: dict[str, Any] = {
        "pool": pool.name, "path": str(pool.paths.dir), "url": pool.definition.url,
        "branch": pool.definition.branch, "mirror_commit": git.read_ref(
            pool.paths.mirror, f"refs/heads/{pool.definition.branch}"),
        "num_slots": len(found), "counts": counts,
        "keep_ignored": pool.definition.keep_ignored,
        "keep": pool.definition.keep,
        "prepare": pool.definition.prepare,
        "prepare_timeout": pool.definition.prepare_timeout,
        "include": pool.definition.include,
        "include_from": pool.definition.include_from,
        "fetch_on_allocate": pool.definition.fetch_on_allocate,
        "ports_per_slot": pool.definition.ports_per_slot,
        "port_base": pool.definition.port_base,
        "state_source": current.source,
    }
    fetched, stale = mirror_freshness(pool) if pool.local else (None, None)  # no mirror here
    data.update(mirror_fetched_at=rfc3339(fetched), mirror_stale=stale)
    data["hosts"] = hosts
    if with_slots:
        data["slots"] = [describe_slot(pool, s, h, p) for h, p, s in found]
    return data


def describe_hosts(pool: Pool, slots: "list[FleetSlot]",
                   seen: dict[str, datetime]) -> list[dict[str, Any]]:
    """Each host of a pool in the fleet: its slots, last sign of life (a state change or an
    auto-recover), and whether it has been silent past ``silent_host_hours``."""
    from necropool.store.pg.hosts import silent_hosts  # lazy: a PostgreSQL ledger only

    silent = silent_hosts(seen, pool.settings.silent_host_hours)
    return [{"host": h, "slots": sum(1 for f in slots if f.host == h),
             "last_seen": rfc3339(t), "silent": h in silent} for h, t in sorted(seen.items())]
