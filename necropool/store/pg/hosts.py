"""A host's part of a pool in the ledger: its registration, the pool's definition as the
ledger has it, every host's slots (the fleet's view) and their signs of life."""

from dataclasses import dataclass
from datetime import UTC, datetime

from necropool.ground.clock import now
from necropool.ground.errors import Conflict, NotFound
from necropool.ground.layout import PoolPaths, write_atomic
from necropool.ground.redact import redact
from necropool.store.model import Slot
from necropool.store.pg.connect import one, transaction
from necropool.store.pg.schema import INCARNATION, check_schema


def register(dsn: str, pool: str, host: str, root: str, url: str, branch: str,
             replace_leased: bool = False) -> None:
    """Enter this host's part of a pool (its slots are then written by its store). A pool
    of the same name elsewhere in the fleet must be of the same repository; this host's
    leftover rows (a pool deleted while the ledger was away, or an import cut short) are
    replaced, unless leased and not ``replace_leased``."""
    with transaction(dsn) as conn:
        check_schema(conn, dsn)
        conn.execute("INSERT INTO pools (pool, url, branch) VALUES (%s, %s, %s) "
                     "ON CONFLICT (pool) DO NOTHING", (pool, url, branch))
        known = one(conn.execute("SELECT url, branch FROM pools WHERE pool = %s FOR SHARE",
                                 (pool,)))
        if tuple(known) != (url, branch):
            raise Conflict(f"pool {pool!r} in the ledger is of {redact(known[0])} branch "
                           f"{known[1]}, not {redact(url)} branch {branch}")
        leased = one(conn.execute("SELECT count(*) FROM slots WHERE pool = %s AND host = %s "
                                  "AND state = 'allocated'", (pool, host)))[0]
        if leased and not replace_leased:
            raise Conflict(f"the ledger holds {leased} lease(s) of pool {pool!r} on host "
                           f"{host!r}: release them before creating it again")
        conn.execute("DELETE FROM hosts WHERE pool = %s AND host = %s", (pool, host))
        conn.execute("INSERT INTO hosts (pool, host, root, vouched) VALUES "
                     f"(%s, %s, %s, {INCARNATION})", (pool, host, root))


def definition(dsn: str, pool: str) -> tuple[str, str, datetime]:
    """A pool's url, branch and creation time, as the ledger has them."""
    with transaction(dsn) as conn:
        row = conn.execute("SELECT url, branch, created_at FROM pools WHERE pool = %s",
                           (pool,)).fetchone()
    if row is None:
        raise NotFound(f"pool {pool!r} is neither here nor in the ledger {redact(dsn)}")
    return row[0], row[1], row[2].astimezone(UTC)


def unregister(dsn: str, pool: str, host: str) -> None:
    """Remove this host's part of a pool (and the pool, when no host is left)."""
    with transaction(dsn) as conn:
        conn.execute("DELETE FROM hosts WHERE pool = %s AND host = %s", (pool, host))
        conn.execute("DELETE FROM pools p WHERE pool = %s AND NOT EXISTS "
                     "(SELECT 1 FROM hosts h WHERE h.pool = p.pool)", (pool,))


@dataclass
class FleetSlot:
    """A slot anywhere in the fleet, as the ledger has it."""

    host: str
    path: str
    slot: Slot


def fleet(dsn: str, pool: str,
          host: str | None = None) -> tuple[list[FleetSlot], dict[str, datetime]]:
    """Every slot of ``pool`` (on ``host`` only, if given), by host and number, and each
    host's last sign of life, in this client's clock."""
    from psycopg.rows import dict_row  # lazy: as in pgconn.connect

    from necropool.store.pg.rows import slot_of  # lazy: with psycopg's rows, above
    from necropool.store.pg.store import _shift  # lazy: as rows

    with transaction(dsn) as conn:
        shift = _shift(one(conn.execute("SELECT now()"))[0])
        where, params = ("AND host = %s", (pool, host)) if host else ("", (pool,))
        rows = conn.cursor(row_factory=dict_row).execute(
            f"SELECT * FROM slots WHERE pool = %s {where} ORDER BY host, number",
            params).fetchall()
        seen = conn.execute(f"SELECT host, last_seen FROM hosts WHERE pool = %s {where}",
                            params).fetchall()
    slots = [FleetSlot(r["host"], r["path"], slot_of(r, shift)) for r in rows]
    return slots, {h: (t.astimezone(UTC) + shift) for h, t in seen}


def free_elsewhere(dsn: str, pool: str, host: str) -> dict[str, int]:
    """How many free, clean slots each other host of ``pool`` that vouches for them has
    (counted in SQL, through the claim's index: not the whole fleet read)."""
    with transaction(dsn) as conn:
        return dict(conn.execute(
            "SELECT host, count(*) FROM slots s JOIN hosts h USING (pool, host) "
            "WHERE pool = %s AND host <> %s AND state = 'available' AND NOT needs_cleanup "
            f"AND h.vouched = {INCARNATION} GROUP BY host", (pool, host)).fetchall())


def slot_path(dsn: str, pool: str, host: str, number: int) -> str:
    """Where a host's slot is on its disk, as the ledger has it."""
    with transaction(dsn) as conn:
        row = conn.execute("SELECT path FROM slots WHERE pool = %s AND host = %s AND "
                           "number = %s", (pool, host, number)).fetchone()
    if row is None:
        raise NotFound(f"slot {pool}-{number}@{host} does not exist")
    return str(row[0])


def silent_hosts(last_seen: dict[str, datetime], hours: float) -> dict[str, datetime]:
    """Hosts with no sign of life (a state change, an auto-recover) for ``hours``."""
    limit = now().timestamp() - hours * 3600
    return {h: t for h, t in last_seen.items() if t.timestamp() < limit}


def mark(paths: PoolPaths, dsn: str) -> None:
    """Note in the pool's directory that its state is in the ledger ``dsn``: the TOML store
    then refuses to rebuild a state it does not have."""
    write_atomic(paths.in_ledger, (redact(dsn) + "\n").encode())
