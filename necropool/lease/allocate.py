"""Allocation: a free slot handed out under a new lease, waiting in a queue when none is.

The claim goes through the pool's store (``claim``, ``update_slot``), never holding the
whole state; a stale slot is refreshed outside it, claimed by this process with its slot
lock held, so a crashed allocator is visible at once.
"""

import os
import time
from dataclasses import dataclass, field, replace

from necropool.git import commands as git
from necropool.ground import proc, wakeup
from necropool.ground.errors import Conflict, OperationFailed, TryAgain, UsageError, explain
from necropool.ground.locks import FileLock, jitter
from necropool.ground.proc import Holder
from necropool.ground.users import lookup
from necropool.ground.validate import (
    check_metadata,
    check_ref_request,
    check_seconds,
    check_text,
)
from necropool.lease.refresh import clear_processes, refresh, settle_failure, unprepared
from necropool.pool import divergence
from necropool.pool.mirror import resolve_ref, update_mirror
from necropool.pool.pool import Pool
from necropool.slot import lastclean
from necropool.store.base import Event, LeaseLost, Marker, Note
from necropool.store.model import AVAILABLE, Lease, Slot, user_fields

ALLOCATION_POLICY = ("clean slots at the mirror's tip (or at the commit --ref names) first "
                     "(others are refreshed before they are handed out), then the most "
                     "recently released (warm build caches), then the lowest number")


@dataclass(frozen=True)
class AllocateRequest:
    """What an allocation asks for, checked once when made, the same from the API, the CLI
    and ``run``: who holds the slot (``holder``: a process whose death abandons it), for how
    long, with which metadata, how long to wait for one, whether to fetch first (None: the
    pool's setting), whether a slot of another host of the fleet will do, and at which
    ``ref`` (a branch, a tag, a full ref name such as ``refs/pull/123/head``, or a commit
    id; None: the pool's branch tip) the slot is to be detached."""

    owner: str | None = None
    holder: Holder | None = None
    ttl: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    wait: float = 0
    fetch: bool | None = None
    any_host: bool = False
    user: str | None = None  # as root: the local user the slot is handed to (lease.handover)
    ref: str | None = None

    def __post_init__(self) -> None:
        check_metadata(self.metadata)
        if self.ref is not None:
            check_ref_request(self.ref)
            if self.any_host:  # another host's slot is cleaned by that host, at its tip
                raise UsageError("--ref cannot be combined with --any-host: a slot of "
                                 "another host is handed out as its host cleaned it")
        if self.owner is not None:
            check_text(self.owner, "owner")
        check_seconds(self.ttl, "ttl")
        check_seconds(self.wait, "wait", zero=True)
        if self.user is not None and self.any_host:
            raise UsageError("--user and --any-host cannot be combined: another host's slot "
                             "is not this host's to hand over")


@dataclass
class Grant:
    """A slot handed out; ``lock`` is still held only for ``run``."""

    pool: Pool
    number: int
    lease: Lease
    slot: Slot  # as recorded when granted
    lock: FileLock | None = None
    fetch_error: str | None = None


def allocate(pool: Pool, request: AllocateRequest, *, keep_lock: bool = False) -> Grant:
    """Hand out a free slot of this host under a new lease (policy: ``ALLOCATION_POLICY``);
    ``request.any_host`` is the caller's to act on."""
    git.require()  # a slot to clean first must not go to error for want of git
    wait = request.wait
    pool.sweep()  # what a killed command left half-done (its claim skips ``transaction``)
    fetch = pool.definition.fetch_on_allocate if request.fetch is None else request.fetch
    fetch_error = update_mirror(pool) if fetch else None
    # an unknown ref is refused here, before any slot is claimed (what moves a clean slot
    # to its commit is loaded while git looks it up: 4 ms of imports against 2 of git)
    commit = (resolve_ref(pool, request.ref, meanwhile=_load_detach)
              if request.ref is not None else None)
    deadline = time.monotonic() + wait
    failed: set[int] = set()
    queue = FileLock(pool.paths.wait_lock)  # held by the waiter at the head of the queue
    wake = None  # the head's end of the wake-up FIFO
    none_free = TryAgain(f"no free slot in pool {pool.name!r}"
                         + (f" after waiting {wait:g}s" if wait else ""))
    try:
        while True:
            seen = _state_marker(pool) if wait > 0 else None  # no wait: no round trip
            if queue.held or wait <= 0 or not _others_waiting(queue):
                grant = _try_allocate(pool, request, keep_lock, failed, commit)
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


def _state_marker(pool: Pool) -> Marker | None:
    return pool.store.marker()


def _wait_for_change(pool: Pool, seen: Marker | None, deadline: float,
                     wake: int | None) -> bool:
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


def _try_allocate(pool: Pool, request: AllocateRequest, keep_lock: bool,
                  failed: set[int], commit: str | None = None) -> Grant | None:
    """Claim a free slot through the store: one at the mirror's tip (or at ``commit``, the
    ref's) first, handed out as it is, else one to refresh first (see ``_prepare``)."""
    want = commit or _known_tip(pool)
    holder = request.holder
    lease = Lease.new(request.owner or default_owner(), holder, request.ttl, request.metadata,
                      request.ref)
    if request.user is not None:
        lease = replace(lease, user=lookup(request.user))
    taken: list[tuple[FileLock, Slot]] = []  # the slot lock claimed, and the slot before
    touched: dict[int, str] = {}  # free slots at the tip changed since their cleanup

    def take(slot: Slot, check: bool = False) -> bool:
        """Lock the slot, if its host agrees that it is free (in a shared ledger, which
        may have gone back in time: ``pool.divergence``); with ``check``, only if it is
        provably as its cleanup left it (else it is cleaned first, as a stale one)."""
        lock = pool.slot_lock(slot.number)
        if not lock.try_acquire():
            return False
        if pool.ledger and divergence.judge(pool, slot):  # left to detect and auto-recover
            lock.release(unlink=True)
            return False
        if check and (why := lastclean.touched(pool.slot_dir(slot.number),
                                               pool.paths.slot_record(slot.number),
                                               files=False) or _busy(pool, slot)):
            lock.release(unlink=True)
            touched[slot.number] = why
            return False
        taken.append((lock, replace(slot)))
        return True

    def noted(slot: Slot) -> list[Event]:
        return [("allocate", dict(slot_id=pool.slot_id(slot.number), lease_id=lease.lease_id,
                                  owner=lease.owner, pid=holder.pid if holder else None,
                                  ref=lease.ref, commit=slot.commit if lease.ref else None,
                                  **user_fields(lease)))]

    skip = frozenset(failed)
    try:
        slot = pool.store.claim(lease, lambda s: not _stale(pool, s, want) and take(s, True),
                                skip, note=noted)
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
        slot = _prepare(pool, slot, before, lease, lock, noted, touched.get(before.number),
                        commit)
        if slot is None:
            failed.add(before.number)
            return None
    if not keep_lock:
        lock.release(unlink=True)
    return Grant(pool, slot.number, lease, slot, lock if keep_lock else None)


def _busy(pool: Pool, slot: Slot) -> str | None:
    """In a shared ledger, which may have gone back in time: processes at work in a free
    slot (then it is cleaned first, as one changed since its cleanup: they are ended and
    what is there saved), but for a slot given back from another host, whose holder may
    be at work still (left alone: ``busy_free_slots``). By their directories alone (a
    holder works in its slot; the cleanup's own check reads open files too): the full
    scan costs 20 times as much (``processes_in``)."""
    if not pool.ledger or (slot.worker is not None and not slot.worker.is_local()):
        return None
    busy = proc.processes_in(pool.slot_dir(slot.number), files=False)
    return f"processes in it ({proc.describe(busy)})" if busy else None


def _stale(pool: Pool, slot: Slot, want: str | None) -> bool:
    """Not as a fresh slot at the commit wanted (the mirror's tip, or the ref's), prepared
    for it: it is refreshed (or detached there) before it is handed out, with or without
    --no-fetch."""
    return (slot.needs_cleanup or (want is not None and slot.commit != want)
            or unprepared(pool, slot))


def _prepare(pool: Pool, slot: Slot, before: Slot, lease: Lease, lock: FileLock,
             noted: Note, touched: str | None = None, at: str | None = None) -> Slot | None:
    """Refresh a stale slot claimed under ``lease`` held by this process (its slot lock
    held too), then hand the lease to its holder; if this process dies meanwhile, ``detect``
    finds an abandoned allocation and ``auto-recover`` reclaims it. None when the slot
    cannot be had: given back as it was ``before`` (processes that cannot be ended still
    run in it), or failed; unlocked either way. ``touched``: what changed in a free slot
    since its cleanup; what is found there is saved as work of no holder. ``at``: the
    commit a ref names, where the slot goes instead of the tip: a clean slot provably as
    its cleanup left it is only checked out there (``_detached``)."""
    found: list[Event] = []
    # (a pool that prepares its slots has the ref's commit prepared too: the full refresh)
    if (at is not None and not before.needs_cleanup and before.worker is None
            and not pool.definition.prepare):
        touched = touched or lastclean.touched(pool.slot_dir(slot.number),
                                               pool.paths.slot_record(slot.number),
                                               files=False)
        if touched is None and _detached(pool, slot.number, at):
            return _hand_over(pool, slot.number, at, lease, lock, noted)
    # What a previous holder left running in it is ended first, or the slot is skipped; but
    # after a release from another host the holder may be at work still: it is left alone.
    remote = before.worker is not None and not before.worker.is_local()
    try:
        clear_processes(pool, slot.number, before, lock, stop=not remote)
    except Conflict:  # and Skipped: processes that cannot be ended
        return None
    label = lastclean.NO_HOLDER if touched else "allocate"
    try:
        commit, report, cleaned = refresh(pool, slot, rescue_label=label, commit=at)
    except Exception as exc:  # whatever went wrong, the slot ends in error
        if at is not None:  # unless the ref's commit is what fails: then at the tip again
            _give_back_at_tip(pool, slot, lease, lock, label, explain(exc))
        settle_failure(pool, slot.number, exc, "cleanup before allocation")
        lock.release(unlink=True)
        return None
    if touched:
        found.append(("tampered_free_slot", dict(
            slot_id=pool.slot_id(slot.number), evidence=f"{touched} changed since its cleanup",
            rescued=report.rescued)))
    return _hand_over(pool, slot.number, commit, lease, lock,
                      lambda granted: [*found, cleaned, *noted(granted)])


def _give_back_at_tip(pool: Pool, slot: Slot, lease: Lease, lock: FileLock, label: str,
                      why: str) -> None:
    """After the cleanup to the ref's commit failed: clean the slot to the pool's tip
    instead and give it back free, then refuse the allocation (the lease rolled back, the
    slot as any free one; no other slot is tried: the ref would fail there too). Returns
    (the caller puts the slot in error) only when that cleanup fails as well."""
    try:
        tip, report, cleaned = refresh(pool, slot, rescue_label=label)
    except Exception:
        return

    def free(current: Slot) -> None:
        if current.lease is None or current.lease.lease_id != lease.lease_id:
            raise LeaseLost(f"slot {pool.slot_id(slot.number)} was taken back meanwhile")
        current.state, current.lease, current.worker = AVAILABLE, None, None
        current.commit, current.needs_cleanup = tip, False
        if report.rescued:
            current.last_rescue = report.rescued
        lock.release(unlink=True)

    try:
        pool.store.update_slot(slot.number, free, lambda _: [cleaned])
    except LeaseLost:  # whoever took it back has it now
        lock.release(unlink=True)
    raise OperationFailed(f"cannot check out ref {lease.ref!r} in pool {pool.name!r}: {why}; "
                          "no slot was taken")


def _load_detach() -> None:
    from necropool.slot import detach  # noqa: F401  # lazy: only for --ref (see _detached)


def _detached(pool: Pool, number: int, commit: str) -> bool:
    """Check the slot out at ``commit`` and seal it there (``slot.detach``); False when
    that failed, and the full cleanup is to bring it there instead."""
    from necropool.slot import detach  # lazy: handing out a slot at the tip never loads it

    try:
        detach.detach(pool.checked_slot_dir(number), pool.paths.mirror, commit,
                      pool.paths.slot_record(number))
    except Exception:  # (what is wrong with the slot is the cleanup's to find and say)
        return False
    return True


def _hand_over(pool: Pool, number: int, commit: str, lease: Lease, lock: FileLock,
               note: Note) -> Slot | None:
    """Record the slot, now at ``commit``, as granted to ``lease`` (held by this process
    until now), with the events ``note`` makes; None (unlocked) when it was taken back
    meanwhile."""

    def ready(current: Slot) -> None:
        if current.lease is None or current.lease.lease_id != lease.lease_id:
            raise LeaseLost(f"slot {pool.slot_id(number)} was taken back meanwhile")
        current.commit, current.needs_cleanup, current.lease = commit, False, lease

    try:
        return pool.store.update_slot(number, ready, note)
    except LeaseLost:
        lock.release(unlink=True)
        return None
    except TryAgain as exc:  # the lease stands, held by this process: not "nothing written"
        lock.release(unlink=True)
        raise OperationFailed(f"slot {pool.slot_id(number)} was cleaned for lease "
                              f"{lease.lease_id} but the ledger did not record it handed out "
                              f"({exc.message}); auto-recover takes it back") from None


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
