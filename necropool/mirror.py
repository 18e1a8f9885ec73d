"""Keeping a pool's mirror up to date with its upstream: one fetch for every caller waiting at
the same time, none when a local upstream's refs already are the mirror's, and a failed fetch
kept for ``detect`` instead of stopping allocation."""

import contextlib
import json
import time

from necropool import git
from necropool.clock import now, rfc3339
from necropool.errors import OperationFailed
from necropool.layout import ensure_inside, write_atomic
from necropool.locks import FileLock
from necropool.pool import Pool


def update_mirror(pool: Pool) -> str | None:
    """Bring the mirror up to the upstream, once for all callers waiting at the same time.
    An upstream on a local path whose refs already are the mirror's is not fetched, and the
    mirror lock is not taken: that check counts as a fetch. A failed fetch (after retries)
    is returned, not raised: slots then go to the mirror's current tip, so an unreachable
    upstream never stops allocation."""
    requested = time.time()
    if _current(pool):
        _checked(pool, requested)
        return None
    lock = FileLock(pool.paths.mirror_lock)
    lock.acquire(pool.settings.git_timeout, "mirror lock")
    try:
        last = _last_fetch(pool)
        if requested <= last <= time.time():
            return None  # another process started a fetch after we asked: it covers us
        # (a stamp in the future, from a clock set back or a careless hand, counts as stale)
        started = time.time()
        try:
            ensure_inside(pool.paths.mirror, pool.settings.root)  # a symlink is not fetched into
            git.fetch_mirror(pool.paths.mirror, timeout=pool.settings.git_timeout,
                             backend=pool.definition.fetch_backend)
        except OperationFailed as exc:
            pool.event("fetch_failed", error=exc.message)
            _note_failure(pool, exc.message)
            return exc.message
        write_atomic(pool.paths.mirror_stamp, f"{started}\n".encode())
        pool.paths.mirror_failed.unlink(missing_ok=True)
        return None
    finally:
        lock.release()


def _last_fetch(pool: Pool) -> float:
    """When the last fetch (or check) that brought the mirror up to date started."""
    try:
        return float(pool.paths.mirror_stamp.read_text())
    except (OSError, ValueError):
        return 0.0


def _current(pool: Pool) -> bool:
    """True when the upstream is on a local path and its refs are the mirror's."""
    url = pool.definition.url
    if not url.startswith(("/", "file://")):
        return False
    try:
        ensure_inside(pool.paths.mirror, pool.settings.root)
        return git.mirror_current(pool.paths.mirror, url, timeout=pool.settings.git_timeout)
    except OperationFailed:
        return False  # left to the fetch to report


def _checked(pool: Pool, started: float) -> None:
    """The mirror was found current: the fetch stamp moves up (at most once a minute: it
    tells ``status`` and ``detect`` how fresh the mirror is, in hours) and a failed fetch
    is forgotten. Best effort: a lost stamp only costs a later fetch."""
    with contextlib.suppress(OSError):
        if not 0 <= started - _last_fetch(pool) < 60:
            write_atomic(pool.paths.mirror_stamp, f"{started}\n".encode())
        if pool.paths.mirror_failed.exists():
            pool.paths.mirror_failed.unlink(missing_ok=True)


def _note_failure(pool: Pool, message: str) -> None:
    """Keep the failed fetch's time and error for ``detect`` (stale_mirrors) until a fetch
    works; best effort, like the event."""
    with contextlib.suppress(OSError):
        write_atomic(pool.paths.mirror_failed, json.dumps(
            {"time": rfc3339(now()), "error": message}).encode())
