"""Taking over a silent host: an explicit, audited act, never done by itself. While a host
gives signs of life only it judges its own processes; once it is silent past
``silent_host_hours``, ``take_over`` ends the leases its processes held on other hosts'
slots (those hosts clean the slots, the work saved, before handing them out again) and
withdraws its vouch for its own slots, so that no other host's ``allocate --any-host``
takes them: their trees are on its disk, where nobody else can see what is in them. Its
own slots' leases are left as they are: back, the host reclaims them itself (work saved
under each lease) and vouches again once it has checked them."""

from datetime import UTC, timedelta
from typing import Any

from necropool.ground.clock import rfc3339
from necropool.ground.errors import Conflict, NotFound
from necropool.ground.proc import Holder, hostname
from necropool.ground.slotref import SlotRef
from necropool.store.pg.connect import transaction
from necropool.store.pg.rows import json_value
from necropool.store.pg.schema import check_schema


def take_over(dsn: str, host: str, by: str, silent_hours: float,
              pool: str | None = None, force: bool = False) -> dict[str, Any]:
    """Take over ``host``'s part of ``pool`` (every pool: None) from this host, ``by``
    whom; refused (``Conflict``) while ``host`` gave a sign of life within
    ``silent_hours``, unless ``force``. One transaction: all of it, or nothing."""
    with transaction(dsn) as conn:
        check_schema(conn, dsn)
        parts = conn.execute(
            "SELECT pool, last_seen, now() FROM hosts WHERE host = %s AND "
            "(%s::text IS NULL OR pool = %s) ORDER BY pool FOR UPDATE",
            (host, pool, pool)).fetchall()
        if not parts:
            raise NotFound(f"host {host!r} has no part of "
                           + (f"pool {pool!r}" if pool else "any pool") + " in the ledger")
        bound = timedelta(hours=silent_hours)
        alive = [(p, seen) for p, seen, now in parts if now - seen < bound]
        if alive and not force:
            name, seen = alive[0]
            raise Conflict(f"host {host!r} gave a sign of life at {rfc3339(seen.astimezone(UTC))} "
                           f"(pool {name}), within silent_host_hours ({silent_hours:g} h): "
                           "it judges its own holders; --force takes it over all the same")
        me = hostname()
        done = [_take_pool(conn, name, host, me, by, seen, force) for name, seen, _ in parts]
    return {"host": host, "by": by, "forced": bool(alive), "pools": done}


def _take_pool(conn: Any, pool: str, host: str, me: str, by: str, seen: Any,
               force: bool) -> dict[str, Any]:
    ended = conn.execute(
        "WITH old AS (SELECT host, number, lease_id, owner FROM slots WHERE pool = %s AND "
        "host <> %s AND state = 'allocated' AND holder->>'host' = %s FOR UPDATE) "
        "UPDATE slots s SET state = 'available', needs_cleanup = true, worker = %s, "
        "total_usage_seconds = total_usage_seconds "
        "+ greatest(0, extract(epoch FROM now() - allocated_at)), last_released_at = now(), "
        "lease_id = NULL, owner = NULL, holder_pid = NULL, holder_start = NULL, "
        "holder = NULL, allocated_at = NULL, expires_at = NULL, ttl_seconds = NULL, "
        "metadata = NULL, generation = generation + 1 FROM old WHERE s.pool = %s AND "
        "s.host = old.host AND s.number = old.number "
        "RETURNING old.host, old.number, old.lease_id, old.owner",
        (pool, host, host, json_value(Holder.me().to_dict()), pool)).fetchall()
    leases = []
    for slot_host, number, lease_id, owner in sorted(ended):
        sid = str(SlotRef.of(pool, number, slot_host))
        leases.append({"slot_id": sid, "lease_id": lease_id, "owner": owner})
        _event(conn, pool, me, {"slot_id": sid, "lease_id": lease_id, "owner": owner,
                                "slot_host": slot_host, "holder_host": host, "by": by})
    conn.execute("UPDATE hosts SET vouched = NULL WHERE pool = %s AND host = %s",
                 (pool, host))
    at = rfc3339(seen.astimezone(UTC))
    _event(conn, pool, me, {"silent_host": host, "last_seen": at, "by": by, "force": force,
                            "leases": len(leases)})
    return {"pool": pool, "last_seen": at, "leases_ended": leases}


def _event(conn: Any, pool: str, me: str, fields: dict[str, Any]) -> None:
    conn.execute("INSERT INTO events (pool, host, name, fields) VALUES (%s, %s, 'takeover', "
                 "%s)", (pool, me, json_value(fields)))
