"""The JSON views of pools and slots (the contract in docs/json.md), and the mirror's
freshness they report."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from necropool import git
from necropool.clock import now, rfc3339
from necropool.pool import Pool
from necropool.records import Record
from necropool.state import STATES, PoolState, Slot


def describe_slot(pool: Pool, slot: Slot, host: str | None = None,
                  path: str | None = None) -> Record:
    """A slot as ``status``/``allocate`` report it (the JSON contract). ``metadata`` is the
    lease's; an isolated slot's carries ``isolated_at`` and ``isolation_reason`` (as the
    guide reads them). ``host`` and ``path``: a slot of another host in the fleet, shown as
    the ledger has it (its id ``POOL-N@HOST``; the commit it was last cleaned to)."""
    from necropool.proc import hostname

    remote = host is not None and host != hostname()
    where = Path(path) if remote and path else pool.slot_dir(slot.number)
    branch, commit = (None, slot.commit) if remote else git.read_head(where / ".git")
    lease = slot.lease
    holder = lease.holder if lease else None
    metadata: dict[str, str | None] = dict(lease.metadata) if lease else {}
    if slot.isolated_at:
        metadata.update(isolated_at=rfc3339(slot.isolated_at),
                        isolation_reason=slot.isolation_reason)
    return Record({
        "slot_id": f"{pool.slot_id(slot.number)}@{host}" if remote else pool.slot_id(slot.number),
        "pool": pool.name, "path": str(where), "slot_host": host if remote else hostname(),
        "state": slot.state, "lease_id": lease.lease_id if lease else None,
        "owner": lease.owner if lease else None,
        "pid": holder.pid if holder else None, "host": holder.host if holder else None,
        "allocated_at": rfc3339(lease.allocated_at) if lease else None,
        "expires_at": rfc3339(lease.expires_at) if lease else None,
        "ttl_seconds": lease.ttl_seconds if lease else None,
        "metadata": metadata, "current_branch": branch, "current_commit": commit,
        "allocation_count": slot.allocation_count,
        "total_usage_seconds": round(slot.total_usage_seconds, 3),
        "last_allocated_at": rfc3339(slot.last_allocated_at),
        "last_released_at": rfc3339(slot.last_released_at),
        "needs_cleanup": slot.needs_cleanup, "error": slot.error,
        "isolated_at": rfc3339(slot.isolated_at), "isolation_reason": slot.isolation_reason,
        "last_rescue": slot.last_rescue,
    })


CLOCK_SLACK = 60  # seconds a fetch stamp may lie ahead of this host's clock


def mirror_freshness(pool: Pool) -> tuple[datetime | None, str | None]:
    """When the mirror last fetched, and why it is stale (None when it is not): its last
    fetch failed (the upstream is unreachable), its stamp is in the future, or, for a pool
    that fetches on allocate, it has not fetched for ``stale_mirror_hours``."""
    try:
        fetched = datetime.fromtimestamp(float(pool.paths.mirror_stamp.read_text()), UTC)
    except (OSError, ValueError, OverflowError):
        fetched = None
    try:
        failed = json.loads(pool.paths.mirror_failed.read_text())
        return fetched, f"last fetch failed at {failed['time']}: {failed['error']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    at, hours = now(), pool.settings.stale_mirror_hours
    if fetched is None:
        return None, "no record of a fetch (mirror.fetched missing or unreadable)"
    if fetched > at + timedelta(seconds=CLOCK_SLACK):
        return fetched, f"last fetch stamped {rfc3339(fetched)}, in the future"
    if pool.definition.fetch_on_allocate and fetched < at - timedelta(hours=hours):
        return fetched, f"not fetched since {rfc3339(fetched)} (over {hours:g} h)"
    return fetched, None


def summary(pool: Pool, host: str | None = None, with_slots: bool = True) -> dict[str, Any]:
    """``describe_pool`` of the pool's state, or for a pool only other hosts of the fleet
    have slots of, of the ledger's alone."""
    return describe_pool(pool, pool.read_state() if pool.local else PoolState(),
                         with_slots=with_slots, host=host)


def describe_pool(pool: Pool, current: PoolState, with_slots: bool = True,
                  host: str | None = None) -> dict[str, Any]:
    """A pool and its slots: with a ledger, every host's (or ``host``'s only), with the
    hosts' last signs of life."""
    from necropool.proc import hostname

    found: list[tuple[str | None, str | None, Slot]] = [
        (None, None, s) for _, s in sorted(current.slots.items())]
    hosts = [{"host": hostname(), "slots": len(found), "last_seen": None, "silent": False}]
    if not pool.local:
        current = PoolState(source="ledger")
    if pool.ledger:
        from necropool import fleet

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
        "fetch_on_allocate": pool.definition.fetch_on_allocate,
        "state_source": current.source,
    }
    fetched, stale = mirror_freshness(pool) if pool.local else (None, None)  # no mirror here
    data.update(mirror_fetched_at=rfc3339(fetched), mirror_stale=stale)
    data["hosts"] = hosts
    if with_slots:
        data["slots"] = [describe_slot(pool, s, h, p) for h, p, s in found]
    return data


def describe_hosts(pool: Pool, slots: list, seen: dict[str, datetime]) -> list[dict]:
    """Each host of a pool in the fleet: its slots, last sign of life (a state change or an
    auto-recover), and whether it has been silent past ``silent_host_hours``."""
    from necropool.ledger import silent_hosts

    silent = silent_hosts(seen, pool.settings.silent_host_hours)
    return [{"host": h, "slots": sum(1 for f in slots if f.host == h),
             "last_seen": rfc3339(t), "silent": h in silent} for h, t in sorted(seen.items())]
