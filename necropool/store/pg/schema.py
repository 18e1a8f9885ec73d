"""The PostgreSQL ledger's schema: created and migrated by necropool, versioned, safe to run
twice and from two hosts at once; what the ledger holds, by pool."""

from typing import TYPE_CHECKING, Any

from necropool.ground.errors import OperationFailed
from necropool.ground.redact import redact
from necropool.store.pg.connect import one, transaction

if TYPE_CHECKING:
    from necropool.store.pg.connect import Connection

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
    # The claim served by an index in allocation order (``rows.ORDER``); a lease's history
    # (a lost answer settled, a late holder told) without reading the pool's.
    """
    CREATE INDEX slots_claim ON slots
        (pool, host, needs_cleanup, last_released_at DESC NULLS LAST, number)
        WHERE state = 'available';
    DROP INDEX slots_free;
    CREATE INDEX events_lease ON events (pool, (fields->>'lease_id'));
    """,
    # The ref a lease asked for (``allocate --ref``).
    """
    ALTER TABLE slots ADD COLUMN ref text;
    """,
    # A host vouches for its slots (checked against its own memory) in one incarnation of
    # the server: ``allocate --any-host`` takes only vouched slots. Events pruned by age
    # (``event_retention_days``) through an index.
    """
    ALTER TABLE hosts ADD COLUMN vouched text;
    CREATE INDEX events_at ON events (pool, at);
    """,
    # The local user a lease's slot was handed to (``allocate --user``: ``HolderUser``).
    """
    ALTER TABLE slots ADD COLUMN lease_user jsonb;
    """,
)
# The server as it runs now: another database (a restore) or another server process (a
# failover, a restart) is another incarnation, in which no host has vouched yet.
INCARNATION = ("(SELECT oid::text FROM pg_database WHERE datname = current_database()) "
               "|| '@' || pg_postmaster_start_time()::text")
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_LOCK = 0x6E6563726F  # pg_advisory_xact_lock key: one migrator at a time


def _version(conn: "Connection") -> int | None:
    """The ledger's schema version; None before ``init``."""
    if one(conn.execute("SELECT to_regclass('necropool_schema')"))[0] is None:
        return None
    row = one(conn.execute("SELECT max(version) FROM necropool_schema"))
    return row[0] or 0


def migrate(dsn: str) -> dict[str, Any]:
    """Create or bring the schema up to this version's; a no-op when it is current (read
    first: a role without DDL rights may run it then)."""
    with transaction(dsn) as conn:
        before = _version(conn)
    if before == SCHEMA_VERSION:
        return {"ledger": redact(dsn), "version": SCHEMA_VERSION, "was": before,
                "migrated": False}
    with transaction(dsn) as conn:
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
    with transaction(dsn) as conn:
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
    with transaction(dsn) as conn:
        check_schema(conn, dsn)
        return [name for (name,) in conn.execute("SELECT pool FROM pools ORDER BY pool")]


# The version in a transaction's first round trip (``judge`` it): a ledger without the
# schema fails it (``connect.errors``: "run 'necropool ledger init'").
VERSION = "SELECT coalesce(max(version), 0) AS version FROM necropool_schema"


def check_schema(conn: "Connection", dsn: str) -> None:
    judge(_version(conn), dsn)


def judge(version: int | None, dsn: str) -> None:
    """Refuse a ledger whose schema is not this version's."""
    if version is None:
        raise OperationFailed(f"ledger {redact(dsn)} has no necropool schema: run "
                              "'necropool ledger init'")
    if version > SCHEMA_VERSION:
        raise OperationFailed(newer(dsn, version))
    if version < SCHEMA_VERSION:
        raise OperationFailed(f"ledger {redact(dsn)} has schema version {version}: run "
                              "'necropool ledger migrate'")
