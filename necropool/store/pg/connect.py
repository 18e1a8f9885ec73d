"""Connections to the PostgreSQL ledger: one per thread and DSN, errors mapped to
necropool's (a ledger that cannot be reached is exit 75, retryable), and every wait on it
bounded by ``ledger_timeout``.

The bound holds on both ends of a link that stalls or breaks: each transaction sets
``statement_timeout``, ``lock_timeout`` and ``idle_in_transaction_session_timeout`` with
``SET LOCAL`` in its ``BEGIN`` round trip (so the server drops a stalled client's row locks,
and a transaction-mode PgBouncer sees no session state), TCP keepalives and
``tcp_user_timeout`` bound a dead peer, and each wait of this client for a reply is bounded
too (a stall the kernel keeps acknowledging). No statement is prepared (PgBouncer's
transaction mode cannot keep them)."""

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from necropool.ground.errors import OperationFailed, TryAgain, UsageError
from necropool.ground.redact import redact

if TYPE_CHECKING:  # psycopg itself is imported only when a ledger is used (~80 ms)
    import psycopg

    Connection: TypeAlias = psycopg.Connection[Any]

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
    """A transaction on this thread's connection, every wait in it bounded (see above);
    rolled back when the block raises. Inside this thread's transaction already (a pool
    held ``locked`` while its host's part is unregistered, say), a savepoint of it.
    ``hold``: the block may work locally for a while (a pool's maintenance under its lock,
    saving a slot's work, say): the server waits up to ``HOLD`` seconds between its
    statements instead of the bound."""
    conn = connect(dsn)
    if conn.info.transaction_status.name != "IDLE":
        with errors(dsn), conn.transaction():
            yield conn
        return
    ms = int(_bound * 1000)
    idle = int(max(_bound, HOLD) * 1000) if hold else ms
    with errors(dsn):
        conn.execute(f"BEGIN; SET LOCAL TimeZone = 'UTC'; SET LOCAL statement_timeout = {ms}; "
                     f"SET LOCAL lock_timeout = {ms}; "
                     f"SET LOCAL idle_in_transaction_session_timeout = {idle}")
        try:
            yield conn
        except BaseException:
            if not conn.broken and not conn.closed:
                with suppress(Exception):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


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
