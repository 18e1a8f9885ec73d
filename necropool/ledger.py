"""The PostgreSQL ledger's administration: its schema (created and migrated by necropool,
versioned, safe to run twice and from two hosts at once), a host's registration of its
slots, moving a pool's state in (``import``) and out (``export``), and the fleet-wide view.
"""

import contextlib
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from necropool.clock import now
from necropool.config import Settings
from necropool.errors import Conflict, NotFound, OperationFailed
from necropool.layout import PoolPaths, write_atomic
from necropool.pgconn import connect, errors
from necropool.proc import hostname
from necropool.redact import redact
from necropool.state import ALLOCATED, PoolState, Slot

# Each entry takes the schema from the version before it to its own (index + 1).
MIGRATIONS = (
    """
    CREATE TABLE pools (
        pool text PRIMARY KEY,
        url text NOT NULL,
        branch text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE hosts (
        pool text NOT NULL REFERENCES pools ON DELETE CASCADE,
        host text NOT NULL,
        root text NOT NULL,
        registered_at timestamptz NOT NULL DEFAULT now(),
        last_seen timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pool, host)
    );
    CREATE TABLE slots (
        pool text NOT NULL,
        host text NOT NULL,
        number integer NOT NULL CHECK (number >= 1),
        path text NOT NULL,
        state text NOT NULL CHECK (state IN ('available', 'allocated', 'cleaning', 'error')),
        generation bigint NOT NULL DEFAULT 1,
        lease_id text UNIQUE,
        owner text,
        holder_pid integer,
        holder_start bigint,
        holder jsonb,
        allocated_at timestamptz,
        expires_at timestamptz,
        ttl_seconds double precision,
        metadata jsonb,
        worker jsonb,
        created_at timestamptz,
        "commit" text,
        needs_cleanup boolean NOT NULL DEFAULT false,
        allocation_count integer NOT NULL DEFAULT 0,
        total_usage_seconds double precision NOT NULL DEFAULT 0,
        last_allocated_at timestamptz,
        last_released_at timestamptz,
        error text,
        isolated_at timestamptz,
        isolation_reason text,
        last_rescue text,
        PRIMARY KEY (pool, host, number),
        FOREIGN KEY (pool, host) REFERENCES hosts ON DELETE CASCADE,
        CHECK ((state = 'allocated') = (lease_id IS NOT NULL AND allocated_at IS NOT NULL))
    );
    CREATE INDEX slots_free ON slots (pool, host) WHERE state = 'available';
    CREATE TABLE events (
        id bigserial PRIMARY KEY,
        pool text NOT NULL,
        host text NOT NULL,
        at timestamptz NOT NULL DEFAULT now(),
        name text NOT NULL,
        fields jsonb NOT NULL
    );
    CREATE INDEX events_pool ON events (pool, id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_LOCK = 0x6E6563726F  # pg_advisory_xact_lock key: one migrator at a time


def _version(conn) -> int | None:
    """The ledger's schema version; None before ``init``."""
    if conn.execute("SELECT to_regclass('necropool_schema')").fetchone()[0] is None:
        return None
    row = conn.execute("SELECT max(version) FROM necropool_schema").fetchone()
    return row[0] or 0


def migrate(dsn: str) -> dict[str, Any]:
    """Create or bring the schema up to this version's; a no-op when it is current."""
    conn = connect(dsn)
    with errors(dsn), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS necropool_schema (version integer PRIMARY "
                     "KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        before = _version(conn) or 0
        if before > SCHEMA_VERSION:
            raise OperationFailed(newer(dsn, before))
        for version in range(before + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO necropool_schema (version) VALUES (%s)", (version,))
    return {"ledger": redact(dsn), "version": SCHEMA_VERSION, "was": before,
            "migrated": before != SCHEMA_VERSION}


def newer(dsn: str, version: int) -> str:
    return (f"ledger {redact(dsn)} has schema version {version}, newer than this necropool's "
            f"{SCHEMA_VERSION}: upgrade necropool")


def status(dsn: str) -> dict[str, Any]:
    """The schema version and what the ledger holds, by pool."""
    conn = connect(dsn)
    with errors(dsn), conn.transaction():
        version = _version(conn)
        pools: list[dict[str, Any]] = []
        if version:
            rows = conn.execute(
                "SELECT p.pool, p.url, count(DISTINCT h.host), count(s.number), "
                "count(s.number) FILTER (WHERE s.state = 'allocated') FROM pools p "
                "LEFT JOIN hosts h USING (pool) LEFT JOIN slots s USING (pool, host) "
                "GROUP BY p.pool, p.url ORDER BY p.pool").fetchall()
            pools = [{"pool": p, "url": redact(u), "hosts": h, "slots": n, "allocated": a}
                     for p, u, h, n, a in rows]
    return {"ledger": redact(dsn), "version": version, "current": SCHEMA_VERSION,
            "up_to_date": version == SCHEMA_VERSION, "pools": pools}


def pool_names(dsn: str) -> list[str]:
    """The pools the ledger defines."""
    conn = connect(dsn)
    with errors(dsn), conn.transaction():
        check_schema(conn, dsn)
        return [name for (name,) in conn.execute("SELECT pool FROM pools ORDER BY pool")]


def check_schema(conn, dsn: str) -> None:
    version = _version(conn)
    if version is None:
        raise OperationFailed(f"ledger {redact(dsn)} has no necropool schema: run "
                              "'necropool ledger init'")
    if version > SCHEMA_VERSION:
        raise OperationFailed(newer(dsn, version))
    if version < SCHEMA_VERSION:
        raise OperationFailed(f"ledger {redact(dsn)} has schema version {version}: run "
                              "'necropool ledger migrate'")


def register(dsn: str, pool: str, host: str, root: str, url: str, branch: str,
             replace_leased: bool = False) -> None:
    """Enter this host's part of a pool (its slots are then written by its store). A pool
    of the same name elsewhere in the fleet must be of the same repository; this host's
    leftover rows (a pool deleted while the ledger was away, or an import cut short) are
    replaced, unless leased and not ``replace_leased``."""
    conn = connect(dsn)
    with errors(dsn), conn.transaction():
        check_schema(conn, dsn)
        conn.execute("INSERT INTO pools (pool, url, branch) VALUES (%s, %s, %s) "
                     "ON CONFLICT (pool) DO NOTHING", (pool, url, branch))
        known = conn.execute("SELECT url, branch FROM pools WHERE pool = %s FOR SHARE",
                             (pool,)).fetchone()
        if tuple(known) != (url, branch):
            raise Conflict(f"pool {pool!r} in the ledger is of {redact(known[0])} branch "
                           f"{known[1]}, not {redact(url)} branch {branch}")
        leased = conn.execute("SELECT count(*) FROM slots WHERE pool = %s AND host = %s AND "
                              "state = 'allocated'", (pool, host)).fetchone()[0]
        if leased and not replace_leased:
            raise Conflict(f"the ledger holds {leased} lease(s) of pool {pool!r} on host "
                           f"{host!r}: release them before creating it again")
        conn.execute("DELETE FROM hosts WHERE pool = %s AND host = %s", (pool, host))
        conn.execute("INSERT INTO hosts (pool, host, root) VALUES (%s, %s, %s)",
                     (pool, host, root))


def definition(dsn: str, pool: str) -> tuple[str, str, datetime]:
    """A pool's url, branch and creation time, as the ledger has them."""
    conn = connect(dsn)
    with errors(dsn):
        row = conn.execute("SELECT url, branch, created_at FROM pools WHERE pool = %s",
                           (pool,)).fetchone()
    if row is None:
        raise NotFound(f"pool {pool!r} is neither here nor in the ledger {redact(dsn)}")
    return row[0], row[1], row[2].astimezone(UTC)


def unregister(dsn: str, pool: str, host: str) -> None:
    """Remove this host's part of a pool (and the pool, when no host is left)."""
    conn = connect(dsn)
    with errors(dsn), conn.transaction():
        conn.execute("DELETE FROM hosts WHERE pool = %s AND host = %s", (pool, host))
        conn.execute("DELETE FROM pools p WHERE pool = %s AND NOT EXISTS "
                     "(SELECT 1 FROM hosts h WHERE h.pool = p.pool)", (pool,))


@dataclass
class FleetSlot:
    """A slot anywhere in the fleet, as the ledger has it."""

    host: str
    path: str
    slot: Slot


def fleet(dsn: str, pool: str, host: str | None = None) -> tuple[list[FleetSlot], dict]:
    """Every slot of ``pool`` (on ``host`` only, if given), by host and number, and each
    host's last sign of life, in this client's clock."""
    from psycopg.rows import dict_row  # lazy: as in pgconn.connect

    from necropool.ledger_rows import slot_of

    conn = connect(dsn)
    with errors(dsn), conn.transaction():
        shift = now() - conn.execute("SELECT now()").fetchone()[0]
        where, params = ("AND host = %s", (pool, host)) if host else ("", (pool,))
        rows = conn.cursor(row_factory=dict_row).execute(
            f"SELECT * FROM slots WHERE pool = %s {where} ORDER BY host, number",
            params).fetchall()
        seen = conn.execute(f"SELECT host, last_seen FROM hosts WHERE pool = %s {where}",
                            params).fetchall()
    slots = [FleetSlot(r["host"], r["path"], slot_of(r, shift)) for r in rows]
    return slots, {h: (t.astimezone(UTC) + shift) for h, t in seen}


def silent_hosts(last_seen: dict[str, datetime], hours: float) -> dict[str, datetime]:
    """Hosts with no sign of life (a state change, an auto-recover) for ``hours``."""
    limit = now().timestamp() - hours * 3600
    return {h: t for h, t in last_seen.items() if t.timestamp() < limit}


def mark(paths: PoolPaths, dsn: str) -> None:
    """Note in the pool's directory that its state is in the ledger ``dsn``: the TOML store
    then refuses to rebuild a state it does not have."""
    write_atomic(paths.in_ledger, (redact(dsn) + "\n").encode())


def import_pool(settings: Settings, name: str, dsn: str) -> dict[str, Any]:
    """Move a local pool's state into the ledger, leases and all, under the pool lock (so
    nothing changes meanwhile); its ``state.toml`` is kept as ``state.toml.imported``."""
    from necropool.pool import Pool
    from necropool.store_pg import PgStore

    pool = Pool(replace(settings, ledger_override="local"), name)
    if os.path.lexists(pool.paths.in_ledger):
        raise Conflict(f"pool {name!r} is already in a ledger ({redact(dsn)})")
    with pool.locked() as current:
        if current.source not in ("state.toml", "state.toml.bak"):
            raise Conflict(f"pool {name!r}: its state is {current.source}, not a saved one: "
                           "run 'necropool auto-recover' first")
        register(dsn, name, hostname(), str(settings.root), pool.definition.url,
                 pool.definition.branch, replace_leased=True)  # the local state is the truth
        store = PgStore(dsn, name, hostname(), pool.paths)
        store.save(current)
        mark(pool.paths, dsn)
        os.replace(pool.paths.state, pool.paths.dir / "state.toml.imported")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pool.paths.state_backup)
    store.append_event("import", host=hostname(), slots=len(current.slots))
    return {"pool": name, "host": hostname(), "ledger": redact(dsn),
            "slots": len(current.slots), "leases": _leases(current)}


def export_pool(settings: Settings, name: str, dsn: str) -> dict[str, Any]:
    """Move this host's part of a pool from the ledger back to its ``state.toml``, leases
    and all, in one ledger transaction that also removes it there."""
    from necropool.pool import Pool
    from necropool.store_toml import TomlStore

    pool = Pool(replace(settings, ledger_override=dsn), name)
    with pool.locked() as current:
        TomlStore(pool.paths, name, settings.lock_timeout).save(current)
        unregister(dsn, name, hostname())
        os.unlink(pool.paths.in_ledger)
        with contextlib.suppress(FileNotFoundError):  # the state before the import
            os.unlink(pool.paths.dir / "state.toml.imported")
    return {"pool": name, "host": hostname(), "ledger": redact(dsn),
            "slots": len(current.slots), "leases": _leases(current)}


def _leases(current: PoolState) -> int:
    return sum(1 for s in current.slots.values() if s.state == ALLOCATED)
