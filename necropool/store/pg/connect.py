"""Connections to the PostgreSQL ledger: one per thread and DSN, errors mapped to
necropool's (a ledger that cannot be reached is exit 75, retryable), and every wait on it
bounded by ``ledger_timeout``.

The bound holds on both ends of a link that stalls or breaks: each transaction sets
``statement_timeout``, ``lock_timeout`` and ``idle_in_transaction_session_timeout`` with
``SET LOCAL`` in its ``BEGIN`` round trip (so the server drops a stalled client's row locks,
and a transaction-mode PgBouncer sees no session state), TCP keepalives and
``tcp_user_timeout`` bound a dead peer, and each wait of this client for a reply is bounded
too (a stall the kernel keeps acknowledging). No statement is prepared (PgBouncer's
transaction mode cannot keep them).

Round trips are what a link's latency multiplies: a transaction's first statements go in its
``BEGIN``'s message and its last ones in its ``COMMIT``'s (``opened``, ``Opened.commit``),
bound here (libpq quotes the values) and sent with the simple query protocol, so a decision
with its event (a claim, a renewal, a lease's end) costs two round trips on an open
connection. Opening one costs what libpq's opening costs and no more (no session setting
follows): the TCP handshake, then the startup and the authentication's exchanges, after TLS,
which libpq's default ``sslmode=prefer`` first asks the server for (one round trip even where
it is refused; ``sslnegotiation=direct``, PostgreSQL 17+, skips it). The user's ``sslmode``
is never changed here."""

import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from necropool.ground.errors import OperationFailed, TryAgain, UsageError
from necropool.ground.redact import redact

if TYPE_CHECKING:  # psycopg itself is imported only when a ledger is used (~80 ms)
    import psycopg

    Connection: TypeAlias = psycopg.Connection[Any]
    Cursor: TypeAlias = psycopg.ClientCursor[dict[str, Any]]

# A statement and its parameters (bound here), or one without any.
Statement: TypeAlias = str | tuple[str, Sequence[Any]]

_local = threading.local()  # one connection per thread and DSN
DEFAULT_BOUND = 10.0
_bound = DEFAULT_BOUND  # seconds: the longest wait on the ledger (``configure``)
HOLD = 600.0  # seconds a ``hold`` transaction may stay idle between statements
_inherited: list[object] = []


def _forget_in_child() -> None:
    """A forked child (root's work as a pool's owner) must not speak on its parent's
    connections, one socket for two speakers, nor finalize them, which would end the
    parent's session: it keeps them aside, unused, and connects afresh."""
    _inherited.append(getattr(_local, "conns", None))
    _local.conns = {}


os.register_at_fork(after_in_child=_forget_in_child)


class LedgerDown(TryAgain):
    """The ledger cannot be reached or went away mid-operation: nothing was written that
    the server did not commit whole; try again."""


class LedgerRefused(UsageError):
    """The ledger refuses this configuration (a role or password it does not accept, a
    database it does not have, a URL that does not parse): trying again cannot help."""


# SQLSTATEs of a configuration the server refuses: class 28 (invalid authorization: role,
# password, pg_hba.conf), 3D000 (no such database), 42501 (no CONNECT right on it).
_REFUSED_STATES = ("28", "3D000", "42501")
# libpq gives no SQLSTATE for a connection that fails as it starts: the server's refusals
# of the same kinds, and libpq's own of the URL's options, told by their (English) text.
_REFUSED_TEXTS = re.compile(
    r"authentication failed|no pg_hba\.conf entry|(role|database) \".*\" does not exist|"
    r"is not permitted to log in|permission denied for database|no password supplied|"
    r"invalid (integer value|port number|connection option|\w+ value)|"
    r"missing \"=\" after|unterminated quoted string|invalid URI")


def configure(seconds: float) -> None:
    """Set the bound of every wait on the ledger (the ``ledger_timeout`` setting)."""
    global _bound
    _bound = seconds


def bound() -> float:
    return _bound


def connect(dsn: str) -> "Connection":
    """This thread's connection to the ledger at ``dsn`` (autocommit: ``transaction``
    begins each one)."""
    cache = getattr(_local, "conns", None)
    if cache is None:
        cache = _local.conns = {}
    conn = cache.get(dsn)
    if conn is not None and not conn.closed and not conn.broken:
        return cast("Connection", conn)
    try:
        connection = _connection_class()
    except ImportError:
        raise UsageError("the PostgreSQL ledger needs psycopg: "
                         "pip install 'necropool[postgres]'") from None
    idle = max(1, int(_bound / 2))
    with errors(dsn):
        conn = cache[dsn] = connection.connect(
            dsn, autocommit=True, prepare_threshold=None, application_name="necropool",
            connect_timeout=max(2, round(_bound)), keepalives=1, keepalives_idle=idle,
            keepalives_interval=max(1, idle // 3), keepalives_count=3,
            tcp_user_timeout=int(_bound * 1000))
    return cast("Connection", conn)


def one(cursor: "psycopg.Cursor[Any]") -> Any:
    """The row of a query that always returns one (``SELECT now()``, a count, a row that
    the same transaction has just locked or written)."""
    row = cursor.fetchone()
    assert row is not None, "the query returned no row"
    return row


def disconnect() -> None:
    """Close this thread's connections."""
    for conn in getattr(_local, "conns", {}).values():
        conn.close()
    _local.conns = {}


@contextmanager
def transaction(dsn: str, hold: bool = False) -> Iterator["Connection"]:
    """A transaction on this thread's connection (see ``opened``), for statements sent one
    at a time."""
    with opened(dsn, hold=hold) as txn:
        yield txn.conn


class Opened:
    """A transaction ``opened``: ``cursor`` stands on the result of the first statement sent
    with its ``BEGIN`` (dict rows; ``nextset`` moves to the next)."""

    def __init__(self, conn: "Connection", cursor: "Cursor", own: bool):
        self.conn, self.cursor, self.own = conn, cursor, own

    def commit(self, *statements: Statement) -> "Cursor":
        """Send ``statements`` and the ``COMMIT`` in one message: one round trip (in a
        savepoint, the statements alone: the enclosing transaction commits); the cursor
        returned stands on the first statement's result."""
        return send(self.conn, *statements, *(["COMMIT"] if self.own else []))


@contextmanager
def opened(dsn: str, *statements: Statement, hold: bool = False,
           whole: bool = False) -> Iterator[Opened]:
    """A transaction on this thread's connection, every wait in it bounded (see above),
    ``statements`` sent in its ``BEGIN``'s round trip; rolled back when the block raises,
    committed at its end (unless ``Opened.commit`` did). Inside this thread's transaction
    already (a pool held ``locked`` while its host's part is unregistered, say), a savepoint
    of it. ``hold``: the block may work locally for a while (a pool's maintenance under its
    lock, saving a slot's work, say): the server waits up to ``HOLD`` seconds between its
    statements instead of the bound. ``whole``: ``statements`` are the whole transaction
    (a read, a write that needs no answer first), its ``COMMIT`` sent with them: one round
    trip; the block only reads their results."""
    conn = connect(dsn)
    if conn.info.transaction_status.name != "IDLE":
        with errors(dsn), conn.transaction():
            yield Opened(conn, send(conn, *statements), own=False)
        return
    ms = int(_bound * 1000)
    idle = int(max(_bound, HOLD) * 1000) if hold else ms
    begin = ["BEGIN", "SET LOCAL TimeZone = 'UTC'", f"SET LOCAL statement_timeout = {ms}",
             f"SET LOCAL lock_timeout = {ms}",
             f"SET LOCAL idle_in_transaction_session_timeout = {idle}"]
    with errors(dsn):
        try:
            cursor = send(conn, *begin, *statements, *(["COMMIT"] if whole else []))
            for _ in begin:
                cursor.nextset()
            yield Opened(conn, cursor, own=True)
        except BaseException:
            if (not conn.broken and not conn.closed
                    and conn.info.transaction_status.name != "IDLE"):
                with suppress(Exception):
                    conn.execute("ROLLBACK")
            raise
        if conn.info.transaction_status.name != "IDLE":
            conn.execute("COMMIT")


def send(conn: "Connection", *statements: Statement) -> "Cursor":
    """``statements`` in one message (one round trip), their parameters bound here; the
    cursor returned stands on the first one's result (dict rows)."""
    import psycopg  # lazy: as in connect
    from psycopg.rows import dict_row

    cursor = psycopg.ClientCursor(conn, row_factory=dict_row)
    if statements:
        cursor.execute("; ".join(s if isinstance(s, str) else cursor.mogrify(*s)
                                 for s in statements))
    return cursor


def _connection_class() -> Any:
    """psycopg's connection, each wait on the server bounded by ``ledger_timeout``: a
    reply that never comes (a link that stalls, a proxy that holds it) fails the wait with
    ``LedgerDown`` instead of hanging, and the connection, its state unknown, is closed
    (the next ``connect`` makes a new one)."""
    global _Bounded
    if _Bounded is None:
        import psycopg  # lazy: ~80 ms; only a PostgreSQL ledger (an optional extra)

        class Bounded(psycopg.Connection[Any]):
            def wait(self, gen: Any, interval: float = 0.1,
                     timeout: float | None = None) -> Any:
                try:
                    return super().wait(gen, interval, _bound if timeout is None else timeout)
                except psycopg.errors._WaitTimeout:
                    self.close()
                    raise psycopg.OperationalError(f"no answer within {_bound:g}s "
                                                   "(ledger_timeout)") from None

        _Bounded = Bounded
    return _Bounded


_Bounded: Any = None


@contextmanager
def errors(dsn: str) -> Iterator[None]:
    """Database errors as necropool's: a configuration the ledger refuses is
    ``LedgerRefused`` (exit 2); unreachable or gone away is ``LedgerDown`` (exit 75,
    retryable), a serialization failure, deadlock or lock or statement timeout ``TryAgain``,
    anything else a failure; never with the password in the message."""
    try:
        yield
    except Exception as exc:
        import psycopg  # lazy: as in connect
        from psycopg import errors as pg

        if not isinstance(exc, psycopg.Error):
            raise
        detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else
                        type(exc).__name__, dsn)
        where = redact(dsn)
        if _refused(exc, psycopg):
            raise LedgerRefused(f"ledger {where} cannot be used as configured: {detail}") from None
        if isinstance(exc, pg.SerializationFailure | pg.DeadlockDetected | pg.LockNotAvailable
                      | pg.QueryCanceled):
            raise TryAgain(f"ledger {where}: {detail}") from None
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError
                      | pg.IdleInTransactionSessionTimeout):
            raise LedgerDown(f"ledger {where} is unavailable: {detail}") from None
        if isinstance(exc, pg.UndefinedTable):
            raise OperationFailed(f"ledger {where} has no necropool schema: run "
                                  "'necropool ledger init'") from None
        raise OperationFailed(f"ledger {where}: {detail}") from None


def _refused(exc: Exception, psycopg: Any) -> bool:
    """True when ``exc`` says the configuration is wrong, not that the ledger is away."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return bool(state.startswith(_REFUSED_STATES))
    if isinstance(exc, psycopg.ProgrammingError):  # the URL itself, parsed before connecting
        return True
    return isinstance(exc, psycopg.OperationalError) and bool(_REFUSED_TEXTS.search(str(exc)))
