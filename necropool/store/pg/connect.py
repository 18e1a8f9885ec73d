"""Connections to the PostgreSQL ledger: one per thread and DSN, errors mapped to
necropool's (a ledger that cannot be reached is exit 75, retryable)."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from necropool.ground.errors import OperationFailed, TryAgain, UsageError
from necropool.ground.redact import redact

_local = threading.local()  # one connection per thread and DSN
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


def connect(dsn: str):
    """This thread's connection to the ledger at ``dsn`` (autocommit; UTC)."""
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
    with errors(dsn):
        conn = cache[dsn] = psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                                            options="-c TimeZone=UTC")
    return conn


def disconnect() -> None:
    """Close this thread's connections."""
    for conn in getattr(_local, "conns", {}).values():
        conn.close()
    _local.conns = {}


@contextmanager
def errors(dsn: str) -> Iterator[None]:
    """Database errors as necropool's: unreachable or gone away is ``LedgerDown`` (exit 75,
    retryable), a serialization failure or deadlock ``TryAgain``, anything else a failure;
    never with the password in the message."""
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
        if isinstance(exc, pg.SerializationFailure | pg.DeadlockDetected | pg.LockNotAvailable):
            raise TryAgain(f"ledger {where}: {detail}") from None
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            raise LedgerDown(f"ledger {where} is unavailable: {detail}") from None
        if isinstance(exc, pg.UndefinedTable):
            raise OperationFailed(f"ledger {where} has no necropool schema: run "
                                  "'necropool ledger init'") from None
        raise OperationFailed(f"ledger {where}: {detail}") from None
