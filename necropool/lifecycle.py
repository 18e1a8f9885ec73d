"""Allocation lifecycle: allocate, release, run, and the slot refresh they share.

Transitions go through the pool's store (``claim``, ``end_lease``, ``update_slot``), never
holding the whole state; long work (cleanup) runs outside them with the slot claimed
(``cleaning``, or allocated to this process) and its slot lock held, so a crashed worker is
visible at once.
"""

import contextlib
import os
import time
from dataclasses import dataclass, replace

from necropool import proc, wakeup
from necropool.clock import now
from necropool.errors import (
    Conflict,
    NotFound,
    OperationFailed,
    Skipped,
    TryAgain,
    explain,
)
from necropool.layout import ensure_inside
from necropool.leases import Release, Renewed, expired, lease_gone
from necropool.locks import FileLock, jitter
from necropool.mirror import update_mirror
from necropool.pool import Pool, get_slot
from necropool.proc import Holder
from necropool.state import AVAILABLE, ERROR, Lease, Slot
from necropool.store import LeaseLost
from necropool.validate import check_metadata, check_seconds, check_text

ALLOCATION_POLICY = ("clean slots at the mirror's tip first (others are refreshed before "
                     "they are handed out), then the most recently released (warm build "
                     "caches), then the lowest number")


@dataclass
class Grant:
    """A slot handed out; ``lock`` is still held only for ``run``."""

    pool: Pool
    number: int
    lease: Lease
    slot: Slot  # as recorded when granted
    lock: FileLock | None = None
    fetch_error: str | None = None


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
    """Put a slot we hold into ``error`` with the reason (a slot deleted meanwhile stays so)."""
    def failed(slot: Slot) -> None:
        slot.state, slot.error, slot.worker, slot.lease = ERROR, reason, None, None

    with contextlib.suppress(NotFound):
        pool.store.update_slot(number, failed)
    pool.event("failure", slot_id=pool.slot_id(number), error=reason)


def allocate(pool: Pool, *, owner: str | None = None, holder: Holder | None = None,
             ttl: float | None = None, metadata: dict | None = None, wait: float = 0,
             fetch: bool | None = None, keep_lock: bool = False) -> Grant:
    """Hand out a free slot under a new lease (policy: ``ALLOCATION_POLICY``)."""
    metadata = check_metadata(metadata or {})
    if owner is not None:
        check_text(owner, "owner")
    check_seconds(ttl, "ttl")
    check_seconds(wait, "wait", zero=True)
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
    """Claim a free slot through the store: one at the mirror's tip first, handed out as it
    is, else one to refresh first (see ``_prepare``)."""
    tip = _known_tip(pool)
    lease = Lease.new(owner or default_owner(), holder, ttl, metadata)
    taken: list[tuple[FileLock, Slot]] = []  # the slot lock claimed, and the slot before

    def take(slot: Slot) -> bool:
        lock = pool.slot_lock(slot.number)
        if lock.try_acquire():
            taken.append((lock, replace(slot)))
            return True
        return False

    skip = frozenset(failed)
    try:
        slot = pool.store.claim(lease, lambda s: not _stale(s, tip) and take(s), skip)
        stale = slot is None
        if stale:  # held by this process while it is refreshed
            slot = pool.store.claim(replace(lease, holder=Holder.me()), take, skip)
    except BaseException:  # e.g. no space: the claim never happened, leave no lock file
        for lock, _ in taken:
            lock.release(unlink=True)
        raise
    if slot is None:
        return None  # nothing changed: no write, so waiters are not woken for nothing
    lock, before = taken[-1]
    if stale:
        slot = _prepare(pool, slot, before, lease, lock)
        if slot is None:
            failed.add(before.number)
            return None
    if not keep_lock:
        lock.release(unlink=True)
    pool.event("allocate", slot_id=pool.slot_id(slot.number), lease_id=lease.lease_id,
               owner=lease.owner, pid=holder.pid if holder else None)
    return Grant(pool, slot.number, lease, slot, lock if keep_lock else None)


def _stale(slot: Slot, tip: str | None) -> bool:
    """Not as a fresh slot at the mirror's tip: it is refreshed before it is handed out,
    with or without --no-fetch."""
    return slot.needs_cleanup or (tip is not None and slot.commit != tip)


def _prepare(pool: Pool, slot: Slot, before: Slot, lease: Lease, lock: FileLock) -> Slot | None:
    """Refresh a stale slot claimed under ``lease`` held by this process (its slot lock
    held too), then hand the lease to its holder; if this process dies meanwhile, ``detect``
    finds an abandoned allocation and ``auto-recover`` reclaims it. None when the slot
    cannot be had: given back as it was ``before`` (processes that cannot be ended still
    run in it), or failed; unlocked either way."""
    try:  # what a previous holder left running in it is ended first, or it is skipped
        clear_processes(pool, slot.number, before, lock, stop=True)
    except Skipped:
        return None
    try:
        commit = refresh(pool, slot, rescue_label="allocate")[0]
    except Exception as exc:  # whatever went wrong, the slot ends in error
        fail_slot(pool, slot.number, f"cleanup before allocation failed: {explain(exc)}")
        lock.release(unlink=True)
        return None

    def ready(current: Slot) -> None:
        if current.lease is None or current.lease.lease_id != lease.lease_id:
            raise LeaseLost(f"slot {pool.slot_id(slot.number)} was taken back meanwhile")
        current.commit, current.needs_cleanup, current.lease = commit, False, lease

    try:
        return pool.store.update_slot(slot.number, ready)
    except LeaseLost:
        lock.release(unlink=True)
        return None


def _known_tip(pool: Pool) -> str | None:
    """The mirror's branch tip (after any fetch), or None if the mirror cannot say (left to
    detect)."""
    try:
        return pool.tip()
    except OperationFailed:
        return None


def default_owner() -> str:
    """$USER, else the account name of this process's user."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user:
        return user
    import pwd  # lazy: only without $USER or $LOGNAME; release never loads it

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def release(pool: Pool, number: int, *, lease_id: str | None = None, clean: bool = True,
            fetch: bool | None = None, held: FileLock | None = None,
            reason: str = "release", expired_only: bool = False, stop: bool = False) -> Release:
    """End a lease; clean the slot (saving any work first) unless ``clean`` is False.
    ``expired_only``: only if the lease has expired (judged again as the store ends it).
    The cleanup first fetches the upstream when ``fetch`` (default: the pool's
    ``fetch_on_allocate``), so the slot comes back at the newest tip. Processes still
    working in the slot (a holder's background jobs) make it refuse, the lease kept,
    unless ``stop``: then they are ended first (SIGTERM, then SIGKILL)."""
    pool.sweep()  # what a killed command left half-done (the lease ends through the store)
    lock = held or pool.slot_lock(number)

    def check(slot: Slot) -> None:
        if expired_only and not expired(slot.lease):
            assert slot.lease is not None  # end_lease checks on a leased slot
            raise Renewed(f"lease {slot.lease.lease_id} of slot {pool.slot_id(number)} "
                          "was renewed since it expired: left to its holder")
        if not lock.held and not lock.try_acquire():
            raise Conflict(f"slot {pool.slot_id(number)} is held by a running process")

    try:
        previous = pool.store.end_lease(number, lease_id, Holder.me(), check)
    except LeaseLost:  # Skipped (a conflict): whoever judged the slot earlier leaves it
        if lease_id:
            raise Skipped("stale " + lease_gone(pool, number, lease_id)) from None
        state = get_slot(pool.read_state(), pool, number).state
        raise Skipped(f"slot {pool.slot_id(number)} is not allocated (it is {state})") from None
    except BaseException:  # e.g. the state write failed: leave no lock file behind
        if lock is not held and lock.held:
            lock.release(unlink=True)
        raise
    lease, at = previous.lease, now()
    assert lease is not None  # end_lease ends a lease
    clear_processes(pool, number, previous, lock, stop)
    pool.event(reason, slot_id=pool.slot_id(number), lease_id=lease.lease_id, owner=lease.owner,
               usage_seconds=round((at - lease.allocated_at).total_seconds(), 3))
    result = Release(slot_id=pool.slot_id(number), pool=pool.name, lease_id=lease.lease_id)
    if not clean:
        _give_back(pool, number, lock, needs_cleanup=True)
        return result
    fetch = pool.definition.fetch_on_allocate if fetch is None else fetch
    if fetch:
        result.fetch_error = update_mirror(pool)
    try:
        tip, report = refresh(pool, previous, rescue_label=lease.lease_id, lease_id=lease.lease_id)
    except Exception as exc:  # whatever went wrong, the slot ends in error, its work intact
        fail_slot(pool, number, f"cleanup failed: {explain(exc)}")
        lock.release(unlink=True)
        raise OperationFailed(f"slot {pool.slot_id(number)} could not be cleaned and is now "
                              f"in error until recovered: {explain(exc)}") from None
    _give_back(pool, number, lock, commit=tip, rescued=report.rescued)
    result.cleaned, result.commit, result.rescued = True, tip, report.rescued
    result.cleanup = report.to_dict()
    return result


def _give_back(pool: Pool, number: int, lock: FileLock, *, needs_cleanup: bool = False,
               commit: str | None = None, rescued: str | None = None) -> None:
    """Make a slot we clean ``available`` again: cleaned to ``commit``, or left as it is
    (``needs_cleanup``). Unlocked before the state write: a waiter woken by that write
    must find the slot free, or it would wait for a further change that never comes."""
    def available(slot: Slot) -> None:
        slot.state, slot.worker, slot.needs_cleanup = AVAILABLE, None, needs_cleanup
        if commit:
            slot.commit = commit
        if rescued:
            slot.last_rescue = rescued
        lock.release(unlink=True)

    pool.store.update_slot(number, available)


def clear_processes(pool: Pool, number: int, previous: Slot, lock: FileLock,
                     stop: bool) -> None:
    """With the slot claimed (``cleaning``, or allocated to this process; its lock held):
    end the processes still in it
    when ``stop``; if any remain, give the slot back as it was and refuse."""
    busy = proc.processes_in(pool.slot_dir(number))
    if busy and stop:
        busy = proc.end(busy)
    if not busy:
        return
    def as_before(slot: Slot) -> None:
        vars(slot).update(vars(previous))
        lock.release(unlink=True)

    pool.store.update_slot(number, as_before)
    what = proc.describe(busy)
    if stop:
        raise Skipped(f"slot {pool.slot_id(number)}: processes that cannot be ended still run "
                      f"in it ({what}): left as it was")
    raise Conflict(f"slot {pool.slot_id(number)}: processes still run in it ({what}): end "
                   "them, or pass --force to end them and release")
