"""Making a pool's mirror (a local upstream's object files taken as they are, any other
cloned by git) and keeping it up to date with its upstream: one fetch for every caller
waiting at the same time, none when a local upstream's refs already are the mirror's, and a
failed fetch kept for ``detect`` instead of stopping allocation."""

import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from necropool.git import commands as git
from necropool.git.localclone import clone_local
from necropool.ground.clock import now, rfc3339
from necropool.ground.errors import NotFound, OperationFailed
from necropool.ground.layout import ensure_inside, write_atomic
from necropool.ground.locks import FileLock
from necropool.ground.progress import Progress
from necropool.ground.validate import check_ref_request, is_commit_id
from necropool.pool.pool import Pool


def make_mirror(url: str, dest: Path, *, timeout: float, backend: str,
                credentials: Path | None, progress: Progress | None = None) -> None:
    """Make ``dest`` the bare mirror of the upstream: a plain repository on a local path
    by hard links to (or copies of) its object files, as ``git clone --local`` would, in
    seconds where git's repack of it takes minutes; any other upstream by git's clone."""
    if not clone_local(url, dest, progress):
        git.clone_mirror(url, dest, timeout=timeout, backend=backend,
                         credentials=credentials, progress=progress)


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
            _own_config(pool)
            git.fetch_mirror(pool.paths.mirror, timeout=pool.settings.git_timeout,
                             backend=pool.definition.fetch_backend,
                             credentials=pool.paths.credentials)
        except OperationFailed as exc:
            pool.event("fetch_failed", error=exc.message)
            _note_failure(pool, exc.message)
            return exc.message
        write_atomic(pool.paths.mirror_stamp, f"{started}\n".encode())
        pool.paths.mirror_failed.unlink(missing_ok=True)
        return None
    finally:
        lock.release()


def resolve_ref(pool: Pool, ref: str, meanwhile: Callable[[], None] | None = None) -> str:
    """The commit ``ref`` names (a branch, a tag, a full ref name such as
    ``refs/pull/123/head``, or a commit id), in the mirror; when the mirror lacks it, it is
    fetched from the upstream by its exact name first. ``NotFound`` when the upstream does
    not serve it either. ``meanwhile`` is done while git first looks (``git.commit_of``)."""
    check_ref_request(ref)
    ensure_inside(pool.paths.mirror, pool.settings.root)
    commit = git.commit_of(pool.paths.mirror, ref, meanwhile)
    if commit is not None:
        return commit
    lock = FileLock(pool.paths.mirror_lock)
    lock.acquire(pool.settings.git_timeout, "mirror lock")
    try:
        _own_config(pool)
        for name in _fetchable(ref):
            if git.fetch_into_mirror(pool.paths.mirror, name, timeout=pool.settings.git_timeout,
                                     credentials=pool.paths.credentials):
                break
    finally:
        lock.release()
    commit = git.commit_of(pool.paths.mirror, ref)
    if commit is None:
        raise NotFound(f"ref {ref!r} is neither in the mirror of pool {pool.name!r} nor served by "
                       f"its upstream {pool.definition.url}")
    return commit


def _fetchable(ref: str) -> list[str]:
    """What a fetch by name may ask the upstream for: a full ref name as it is, a short
    one as a branch or a tag, a full commit id as an object (an abbreviated one names
    nothing upstream)."""
    if ref.startswith("refs/"):
        return [ref]
    names = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    if is_commit_id(ref) and len(ref) in (40, 64):
        return [ref, *names]
    return names


def _own_config(pool: Pool) -> None:
    """Put the mirror's config back as necropool wrote it before git runs there: the
    mirror is within a holder's reach, and a key added to its config (an upload-pack
    command, a credential helper) would run at the next fetch."""
    if git.put_back_mirror_config(pool.paths.mirror, pool.definition.url,
                                  pool.definition.branch):
        pool.event("mirror_config_restored")


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
        _own_config(pool)  # (``ls-remote`` may run there)
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
