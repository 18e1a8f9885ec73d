"""Connections to the PostgreSQL ledger: one per thread and DSN, errors mapped to
necropool's (a ledger that cannot be reached is exit 75, retryable), and every wait on it
bounded by ``ledger_timeout``.

The bound holds on both ends of a link that stalls or breaks: each transaction sets
``statement_timeout``, ``lock_timeout`` and ``idle_in_transaction_session_timeout`` with
``SET LOCAL`` in its ``BEGIN`` round trip (so the server drops a stalled client's row locks,
and a transaction-mode PgBouncer sees no session state), TCP keepalives and
``tcp_user_timeout`` bound a dead peer, and a watchdog shuts this client's socket when a
transaction outlives the bound (a stall the kernel keeps acknowledging). No statement is
prepared (PgBouncer's transaction mode cannot keep them)."""

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from necropool.ground.errors import OperationFailed, TryAgain, UsageError
from necropool.ground.redact import redact

_local = threading.local()  # one connection per thread and DSN
DEFAULT_BOUND = 10.0
_bound = DEFAULT_BOUND  # seconds: the longest wait on the ledger (``configure``)


class LedgerDown(TryAgain):
    """The ledger cannot be reached or went away mid-operation: nothing was written that
    the server did not commit whole; try again."""


def configure(seconds: float) -> None:
    """Set the bound of every wait on the ledger (the ``ledger_timeout`` setting)."""
    global _bound
    _bound = seconds


def bound() -> float:
    return _bound


def connect(dsn: str) -> Any:
    """This thread's connection to the ledger at ``dsn`` (autocommit: ``transaction``
    begins each one)."""
    cache = getattr(_local, "conns", None)
    if cache is None:
        cache = _local.conns = {}
    conn = cache.get(dsn)
    if conn is not None and not conn.closed and not conn.broken:
        return conn
    try:
        import psycopg  # lazy: ~80 ms; only a PostgreSQL ledger (an optional extra)
    except ImportError:
        raise UsageError("the PostgreSQL ledger needs psycopg: "
                         "pip install 'necropool[postgres]'") from None
    idle = max(1, int(_bound / 2))
    with errors(dsn):
        conn = cache[dsn] = psycopg.connect(
            dsn, autocommit=True, prepare_threshold=None, application_name="necropool",
            connect_timeout=max(2, round(_bound)), keepalives=1, keepalives_idle=idle,
            keepalives_interval=max(1, idle // 3), keepalives_count=3,
            tcp_user_timeout=int(_bound * 1000))
    return conn


def disconnect() -> None:
    """Close this thread's connections."""
    for conn in getattr(_local, "conns", {}).values():
        conn.close()
    _local.conns = {}


@contextmanager
def transaction(dsn: str) -> Iterator[Any]:
    """A transaction on this thread's connection, every wait in it bounded (see above);
    rolled back when the block raises."""
    conn = connect(dsn)
    ms = int(_bound * 1000)
    with errors(dsn), _watchdog(conn):
        conn.execute(f"BEGIN; SET LOCAL TimeZone = 'UTC'; SET LOCAL statement_timeout = {ms}; "
                     f"SET LOCAL lock_timeout = {ms}; "
                     f"SET LOCAL idle_in_transaction_session_timeout = {ms}")
        try:
            yield conn
        except BaseException:
            if not conn.broken and not conn.closed:
                with suppress(Exception):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class _Watchdog:
    """One thread per process that shuts a connection's socket when its transaction
    outlives the bound: a read waiting for a reply that never comes then fails
    (``LedgerDown``) instead of hanging. It sleeps until the earliest deadline armed and is
    woken only when it had none, so short transactions cost it no wake-up."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.armed: dict[int, tuple[float, Any]] = {}  # token -> (deadline, connection)
        self.fired: set[int] = set()
        self.tokens = itertools.count()
        self.thread: threading.Thread | None = None
        self.until: float | None = None  # when the thread wakes next (None: when woken)

    def arm(self, conn: Any) -> int:
        with self.cond:
            token = next(self.tokens)
            deadline = time.monotonic() + _bound
            self.armed[token] = (deadline, conn)
            if self.thread is None or not self.thread.is_alive():  # first, or forked
                self.thread = threading.Thread(target=self._run, name="ledger-watchdog",
                                               daemon=True)
                self.thread.start()
            elif self.until is None or deadline < self.until:
                self.cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Whether the bound ran out (the socket was shut)."""
        with self.cond:
            self.armed.pop(token, None)
            if token in self.fired:
                self.fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self.cond:
            while True:
                at = time.monotonic()
                for token, (deadline, conn) in list(self.armed.items()):
                    if deadline <= at:
                        del self.armed[token]
                        self.fired.add(token)
                        _shut(conn)
                self.until = min((d for d, _ in self.armed.values()), default=None)
                self.cond.wait(None if self.until is None else self.until - at)


def _shut(conn: Any) -> None:
    with suppress(Exception):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        with sock:
            sock.shutdown(socket.SHUT_RDWR)


_dog = _Watchdog()


@contextmanager
def _watchdog(conn: Any) -> Iterator[None]:
    """The block's waits on ``conn`` bounded; a connection the watchdog shut is closed, so
    the next ``connect`` makes a new one."""
    token = _dog.arm(conn)
    try:
        yield
    except BaseException as exc:
        if _dog.disarm(token):
            import psycopg  # lazy: as in connect

            conn.close()
            raise psycopg.OperationalError(f"no answer within {_bound:g}s "
                                           "(ledger_timeout)") from exc
        raise
    if _dog.disarm(token):  # shut just as the block ended
        conn.close()


@contextmanager
def errors(dsn: str) -> Iterator[None]:
    """Database errors as necropool's: unreachable or gone away is ``LedgerDown`` (exit 75,
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
