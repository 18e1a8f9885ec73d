"""Allocation lifecycle: allocate, release, run, and the slot refresh they share.

Transitions happen under the pool lock; long work (cleanup) runs outside it with the slot
in ``cleaning`` and its slot lock held by the worker, so a crashed worker is visible at once.
"""

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import timedelta

from necropool import git, proc, wakeup
from necropool.clock import MAX_DURATION, now, rfc3339
from necropool.errors import (
    Conflict,
    OperationFailed,
    Skipped,
    TryAgain,
    UsageError,
    explain,
)
from necropool.layout import ensure_inside, write_atomic
from necropool.leases import Release, Renewed, expired, lease_gone
from necropool.locks import FileLock, jitter
from necropool.pool import Pool, get_slot
from necropool.proc import Holder
from necropool.state import (
    ALLOCATED,
    AVAILABLE,
    CLEANING,
    ERROR,
    Lease,
    PoolState,
    Slot,
    allocation_order,
)
from necropool.validate import check_metadata, check_text

ALLOCATION_POLICY = ("clean slots first, then the most recently released "
                     "(warm build caches), then the lowest number")


@dataclass
class Grant:
    """A slot handed out; ``lock`` is still held only for ``run``."""

    pool: Pool
    number: int
    lease: Lease
    slot: Slot  # as recorded when granted
    lock: FileLock | None = None
    fetch_error: str | None = None


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
    import json

    with contextlib.suppress(OSError):
        write_atomic(pool.paths.mirror_failed, json.dumps(
            {"time": rfc3339(now()), "error": message}).encode())


def _claim_free(pool: Pool, current: PoolState, skip: set[int]) -> tuple[Slot, FileLock] | None:
    for slot in sorted(current.slots.values(), key=allocation_order):
        if slot.state != AVAILABLE or slot.number in skip:
            continue
        lock = pool.slot_lock(slot.number)
        if lock.try_acquire():
            return slot, lock
    return None


def rescue_path(pool: Pool, number: int, label: str):
    ensure_inside(pool.paths.rescued, pool.settings.root)  # never write through a symlink
    stamp = now().strftime("%Y%m%dT%H%M%S%fZ")
    return pool.paths.rescued / f"{pool.slot_id(number)}-{stamp}-{label}.bundle"


def refresh(pool: Pool, slot: Slot, *, rescue_label: str, lease_id: str | None = None):
    """Clean a slot we hold to the mirror's tip (outside the pool lock); return the tip and
    the cleanup's report. ``lease_id``: the lease that ended, named in the event."""
    from necropool import cleanup

    started = time.monotonic()
    tip = pool.tip()
    ensure_inside(pool.paths.records, pool.settings.root)
    report = cleanup.clean(
        pool.checked_slot_dir(slot.number), mirror=pool.paths.mirror, url=pool.definition.url,
        branch=pool.definition.branch, tip=tip, keep_ignored=pool.definition.keep_ignored,
        rescue_to=rescue_path(pool, slot.number, rescue_label),
        record=pool.paths.slot_record(slot.number), known_commit=slot.commit)
    pool.event("cleanup", slot_id=pool.slot_id(slot.number), lease_id=lease_id, commit=tip,
               duration_seconds=round(time.monotonic() - started, 3), **report.to_dict())
    return tip, report


def move_aside(pool: Pool, number: int) -> str:
    """Move a slot's working copy, whole, under ``rescued/`` (one cleanup could not save
    from); return where it went."""
    keep = pool.paths.rescued / f"{pool.slot_id(number)}-{now():%Y%m%dT%H%M%S%fZ}.broken"
    pool.paths.rescued.mkdir(exist_ok=True)
    ensure_inside(keep.parent, pool.settings.root)
    os.rename(pool.checked_slot_dir(number), keep)
    return str(keep)


def save_work(pool: Pool, slot: Slot, label: str) -> str | None:
    """Save what a holder left in a slot we hold before it is thrown away: its work into a
    bundle (the cleanup's rescue), or if cleanup fails, the working copy moved aside whole.
    Returns where it went (None when there was nothing to save)."""
    if not os.path.isdir(pool.checked_slot_dir(slot.number)):
        return None
    try:
        return refresh(pool, slot, rescue_label=label)[1].rescued
    except Exception:
        return move_aside(pool, slot.number)


def fail_slot(pool: Pool, number: int, reason: str) -> None:
    """Put a slot we hold into ``error`` with the reason."""
    with pool.transaction() as current:
        slot = current.slots.get(number)
        if slot is not None:
            slot.state, slot.error, slot.worker, slot.lease = ERROR, reason, None, None
    pool.event("failure", slot_id=pool.slot_id(number), error=reason)


def allocate(pool: Pool, *, owner: str | None = None, holder: Holder | None = None,
             ttl: float | None = None, metadata: dict | None = None, wait: float = 0,
             fetch: bool | None = None, keep_lock: bool = False) -> Grant:
    """Hand out a free slot under a new lease (policy: ``ALLOCATION_POLICY``)."""
    metadata = check_metadata(metadata or {})
    if owner is not None:
        check_text(owner, "owner")
    for what, seconds in (("ttl", ttl), ("wait", wait)):
        if seconds is not None and not 0 <= seconds <= MAX_DURATION:
            raise UsageError(f"invalid {what} {seconds!r}: use 0 to {MAX_DURATION:g} seconds")
    pool.sweep()  # what a killed command left half-done (its claim skips ``transaction``)
    fetch = pool.definition.fetch_on_allocate if fetch is None else fetch
    fetch_error = update_mirror(pool) if fetch else None
    deadline = time.monotonic() + wait
    failed: set[int] = set()
    queue = FileLock(pool.paths.wait_lock)  # held by the waiter at the head of the queue
    wake = None  # the head's end of the wake-up FIFO
    none_free = TryAgain(f"no free slot in pool {pool.name!r}"
                         + (f" after waiting {wait:g}s" if wait else ""))
    try:
        while True:
            seen = _state_marker(pool)
            if queue.held or wait <= 0 or not _others_waiting(queue):
                grant = _try_allocate(pool, owner, holder, ttl, metadata, keep_lock, failed)
                if grant is not None:
                    grant.fetch_error = fetch_error
                    return grant
            if wait <= 0:
                raise none_free
            if not queue.held:
                try:  # join the queue: the kernel wakes waiters in turn
                    queue.acquire(max(0.0, deadline - time.monotonic()), "allocation queue")
                except TryAgain:
                    raise none_free from None
                wake = wakeup.open_for_waiting(pool.paths.wake)
                continue
            if not _wait_for_change(pool, seen, deadline, wake):
                raise none_free
    finally:
        if wake is not None:
            os.close(wake)
        queue.release()


def _others_waiting(queue: FileLock) -> bool:
    """True when another allocation is already waiting: then we queue behind it."""
    if queue.try_acquire():
        queue.release()
        return False
    return True


def _state_marker(pool: Pool) -> tuple | None:
    return pool.store.marker()


def _wait_for_change(pool: Pool, seen: tuple | None, deadline: float, wake: int | None) -> bool:
    """Sleep until the state changes (a release, say) or the deadline passes, woken through
    the FIFO that every state write pokes (and checking every 5 s all the same); without the
    FIFO, a stat every 10 ms at most. Never the pool lock: waiters cost the pool nothing."""
    delay = 0.002
    while (remaining := deadline - time.monotonic()) > 0:
        if wake is not None:
            wakeup.wait(wake, min(5.0, remaining))
        else:
            time.sleep(min(delay * jitter(), remaining))
            delay = min(delay * 1.5, 0.01)
        if _state_marker(pool) != seen:
            return True
    return False


def _try_allocate(pool, owner, holder, ttl, metadata, keep_lock, failed) -> Grant | None:
    tip = _known_tip(pool)
    at = now()
    lease = Lease(lease_id=os.urandom(8).hex(), owner=owner or default_owner(),
                  allocated_at=at, expires_at=at + timedelta(seconds=ttl) if ttl else None,
                  holder=holder, metadata=metadata, ttl_seconds=ttl or None)
    with pool.locked() as current:
        claimed = _claim_free(pool, current, failed)
        if claimed is None:
            return None  # nothing changed: no write, so waiters are not woken for nothing
        slot, lock = claimed
        stale = slot.needs_cleanup or (tip is not None and slot.commit != tip)
        previous = Slot(**vars(slot))
        if stale:
            slot.state, slot.worker = CLEANING, Holder.me()
        else:
            _grant(slot, lease)
        try:
            pool.save(current)
        except BaseException:  # e.g. no space: the claim never happened, leave no lock file
            lock.release(unlink=True)
            raise
    if stale:
        try:  # what a previous holder left running in it is ended first, or it is skipped
            clear_processes(pool, slot.number, previous, lock, stop=True)
        except Skipped:
            failed.add(slot.number)
            return None
        try:
            slot.commit = refresh(pool, slot, rescue_label="allocate")[0]
        except Exception as exc:  # whatever went wrong, the slot ends in error
            fail_slot(pool, slot.number, f"cleanup before allocation failed: {explain(exc)}")
            lock.release(unlink=True)
            failed.add(slot.number)
            return None
        with pool.transaction() as current:
            commit, slot = slot.commit, get_slot(current, pool, slot.number)
            slot.commit, slot.needs_cleanup = commit, False
            _grant(slot, lease)
    if not keep_lock:
        lock.release(unlink=True)
    pool.event("allocate", slot_id=pool.slot_id(slot.number), lease_id=lease.lease_id,
               owner=lease.owner, pid=holder.pid if holder else None)
    return Grant(pool, slot.number, lease, slot, lock if keep_lock else None)


def _known_tip(pool: Pool) -> str | None:
    """The mirror's branch tip (after any fetch): a slot behind it is moved up before it is
    handed out, with or without --no-fetch. None if the mirror cannot say (left to detect)."""
    try:
        return pool.tip()
    except OperationFailed:
        return None


def _grant(slot: Slot, lease: Lease) -> None:
    slot.state, slot.lease, slot.worker, slot.error = ALLOCATED, lease, None, None
    slot.allocation_count += 1
    slot.last_allocated_at = lease.allocated_at


def default_owner() -> str:
    """$USER, else the account name of this process's user."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user:
        return user
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def release(pool: Pool, number: int, *, lease_id: str | None = None, clean: bool = True,
            fetch: bool | None = None, held: FileLock | None = None,
            reason: str = "release", expired_only: bool = False, stop: bool = False) -> Release:
    """End a lease; clean the slot (saving any work first) unless ``clean`` is False.
    ``expired_only``: only if the lease has expired (judged again under the pool lock).
    The cleanup first fetches the upstream when ``fetch`` (default: the pool's
    ``fetch_on_allocate``), so the slot comes back at the newest tip. Processes still
    working in the slot (a holder's background jobs) make it refuse, the lease kept,
    unless ``stop``: then they are ended first (SIGTERM, then SIGKILL)."""
    lock = None
    try:
        with pool.transaction() as current:
            slot = get_slot(current, pool, number)
            # Skipped (a conflict): whoever judged the slot earlier (auto-recover) leaves it
            if lease_id and (slot.lease is None or lease_id != slot.lease.lease_id):
                raise Skipped("stale " + lease_gone(pool, number, lease_id))
            lease = slot.lease
            if slot.state != ALLOCATED or lease is None:
                raise Skipped(f"slot {pool.slot_id(number)} is not allocated (it is {slot.state})")
            if expired_only and not expired(lease):
                raise Renewed(f"lease {lease.lease_id} of slot {pool.slot_id(number)} "
                              "was renewed since it expired: left to its holder")
            lock = held or pool.slot_lock(number)
            if not lock.held and not lock.try_acquire():
                raise Conflict(f"slot {pool.slot_id(number)} is held by a running process")
            previous = Slot(**vars(slot))
            at = now()
            slot.total_usage_seconds += max(0.0, (at - lease.allocated_at).total_seconds())
            slot.last_released_at, slot.lease = at, None
            slot.state, slot.worker = CLEANING, Holder.me()
    except BaseException:  # e.g. the state write failed: leave no lock file behind
        if lock is not None and lock is not held and lock.held:
            lock.release(unlink=True)
        raise
    clear_processes(pool, number, previous, lock, stop)
    pool.event(reason, slot_id=pool.slot_id(number), lease_id=lease.lease_id, owner=lease.owner,
               usage_seconds=round((at - lease.allocated_at).total_seconds(), 3))
    result = Release(slot_id=pool.slot_id(number), pool=pool.name, lease_id=lease.lease_id)
    if not clean:
        with pool.transaction() as current:
            slot = get_slot(current, pool, number)
            slot.state, slot.worker, slot.needs_cleanup = AVAILABLE, None, True
            lock.release(unlink=True)  # before the write that wakes waiters (see below)
        return result
    fetch = pool.definition.fetch_on_allocate if fetch is None else fetch
    if fetch:
        result.fetch_error = update_mirror(pool)
    try:
        tip, report = refresh(pool, slot, rescue_label=lease.lease_id, lease_id=lease.lease_id)
    except Exception as exc:  # whatever went wrong, the slot ends in error, its work intact
        fail_slot(pool, number, f"cleanup failed: {explain(exc)}")
        lock.release(unlink=True)
        raise OperationFailed(f"slot {pool.slot_id(number)} could not be cleaned and is now "
                              f"in error until recovered: {explain(exc)}") from None
    with pool.transaction() as current:
        slot = get_slot(current, pool, number)
        slot.state, slot.worker, slot.commit, slot.needs_cleanup = AVAILABLE, None, tip, False
        if report.rescued:
            slot.last_rescue = report.rescued
        # Unlock before the state write: a waiter woken by that write must find the slot
        # free, or it would wait for a further state change that never comes.
        lock.release(unlink=True)
    result.cleaned, result.commit, result.rescued = True, tip, report.rescued
    result.cleanup = report.to_dict()
    return result


def clear_processes(pool: Pool, number: int, previous: Slot, lock: FileLock,
                     stop: bool) -> None:
    """With the slot claimed (``cleaning``, its lock held): end the processes still in it
    when ``stop``; if any remain, give the slot back as it was and refuse."""
    busy = proc.processes_in(pool.slot_dir(number))
    if busy and stop:
        busy = proc.end(busy)
    if not busy:
        return
    with pool.transaction() as current:
        current.slots[number] = previous
        lock.release(unlink=True)
    what = proc.describe(busy)
    if stop:
        raise Skipped(f"slot {pool.slot_id(number)}: processes that cannot be ended still run "
                      f"in it ({what}): left as it was")
    raise Conflict(f"slot {pool.slot_id(number)}: processes still run in it ({what}): end "
                   "them, or pass --force to end them and release")
