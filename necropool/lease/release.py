"""Release: a lease ended through the pool's store, then the slot cleaned (its holder's work
saved first) outside the pool lock, with its slot lock held, and given back."""

from dataclasses import dataclass

from necropool.git import commands as git
from necropool.ground import proc
from necropool.ground.clock import now
from necropool.ground.errors import OperationFailed, Skipped, TryAgain, explain
from necropool.ground.locks import FileLock
from necropool.ground.proc import Holder
from necropool.lease.refresh import (
    PrepareFailed,
    clear_processes,
    refresh,
    refuse_busy,
    settle_failure,
)
from necropool.lease.renew import Busy, Release, Renewed, expired, lease_gone, was_released
from necropool.pool.mirror import update_mirror
from necropool.pool.pool import Pool, get_slot
from necropool.store.base import Event, LeaseLost
from necropool.store.model import ALLOCATED, AVAILABLE, Slot, user_fields


@dataclass(frozen=True)
class Ending:
    """Why a lease ends (the event's name) and what that permits: ``stop`` ends the
    processes still working in the slot (SIGTERM, then SIGKILL; without it they make the
    release refuse, the lease kept); ``expired_only`` ends the lease only if it has expired,
    judged again as the store ends it (a holder may renew meanwhile)."""

    reason: str = "release"
    stop: bool = False
    expired_only: bool = False


RELEASE = Ending()  # the holder's own release
FORCED = Ending(stop=True)  # release --force, and run's when its command is done
RECLAIM = Ending("reclaim", stop=True)  # auto-recover: the holder died
EXPIRE = Ending("expire", stop=True, expired_only=True)  # auto-recover: the lease ran out
FORCE_RELEASE = Ending("force_release", stop=True)  # auto-recover, long allocations


def release(pool: Pool, number: int, *, lease_id: str | None = None, clean: bool = True,
            fetch: bool | None = None, held: FileLock | None = None,
            ending: Ending = RELEASE) -> Release:
    """End a lease (as ``ending`` says: see ``Ending``); clean the slot (saving any work
    first) unless ``clean`` is False. The cleanup first fetches the upstream when ``fetch``
    (default: the pool's ``fetch_on_allocate``), so the slot comes back at the newest tip.
    ``held``: the slot lock, when the caller holds it already (``run``)."""
    reason, expired_only, stop = ending.reason, ending.expired_only, ending.stop
    if clean:
        git.require()
    pool.sweep()  # what a killed command left half-done (the lease ends through the store)
    lock = held or pool.slot_lock(number)

    def check(slot: Slot) -> None:
        if expired_only and not expired(slot.lease):
            assert slot.lease is not None  # end_lease checks on a leased slot
            raise Renewed(f"lease {slot.lease.lease_id} of slot {pool.slot_id(number)} "
                          "was renewed since it expired: left to its holder")
        if not lock.held and not lock.try_acquire():
            raise Busy(f"slot {pool.slot_id(number)} is held by a running process")
        if not stop:  # refused before anything is written
            refuse_busy(pool, number)

    def noted(previous: Slot) -> list[Event]:
        assert previous.lease is not None  # end_lease ends a lease
        used = (now() - previous.lease.allocated_at).total_seconds()
        fields = dict(slot_id=pool.slot_id(number), lease_id=previous.lease.lease_id,
                      owner=previous.lease.owner, usage_seconds=round(used, 3),
                      **user_fields(previous.lease))
        if stop:  # what --force is about to end, named while they live
            fields["ended"] = [proc.describe([pid]) for pid in proc.processes_in(
                pool.slot_dir(number), pool.paths.readers)] or None
        return [(reason, fields)]

    try:
        previous = pool.store.end_lease(number, lease_id, Holder.me(), check, note=noted)
    except LeaseLost:  # Skipped (a conflict): whoever judged the slot earlier leaves it
        state = get_slot(pool.read_state(), pool, number).state
        if (lease_id and reason == "release" and state != ALLOCATED
                and was_released(pool.store, lease_id)):
            # this release repeated (its answer lost), nobody else's lease since: it is done
            return Release(slot_id=pool.slot_id(number), pool=pool.name, lease_id=lease_id)
        if lease_id:
            raise Skipped("stale " + lease_gone(pool, number, lease_id)) from None
        raise Skipped(f"slot {pool.slot_id(number)} is not allocated (it is {state})") from None
    except BaseException:  # e.g. the state write failed: leave no lock file behind
        if lock is not held and lock.held:
            lock.release(unlink=True)
        raise
    lease = previous.lease
    assert lease is not None  # end_lease ends a lease
    ended = clear_processes(pool, number, previous, lock, stop) if stop else []
    result = Release(slot_id=pool.slot_id(number), pool=pool.name, lease_id=lease.lease_id,
                     ended=ended)
    if not clean:
        _give_back(pool, number, lock, needs_cleanup=True)
        return result
    fetch = pool.definition.fetch_on_allocate if fetch is None else fetch
    if fetch:
        result.fetch_error = update_mirror(pool)
    try:
        tip, report, cleaned = refresh(pool, previous, rescue_label=lease.lease_id,
                                       lease_id=lease.lease_id)
    except PrepareFailed as exc:  # cleaned, the work saved: only its prepare failed
        settle_failure(pool, number, exc)
        lock.release(unlink=True)
        raise OperationFailed(f"slot {pool.slot_id(number)} was cleaned"
                              + (f" (work saved to {exc.rescued})" if exc.rescued else "")
                              + f" but is isolated: {explain(exc)}") from None
    except Exception as exc:  # whatever went wrong, the slot ends in error, its work intact
        settle_failure(pool, number, exc)
        lock.release(unlink=True)
        raise OperationFailed(f"slot {pool.slot_id(number)} could not be cleaned and is now "
                              f"in error until recovered: {explain(exc)}") from None
    _give_back(pool, number, lock, commit=tip, rescued=report.rescued, event=cleaned)
    result.cleaned, result.commit, result.rescued = True, tip, report.rescued
    result.cleanup = report.to_dict()
    return result


def _give_back(pool: Pool, number: int, lock: FileLock, *, needs_cleanup: bool = False,
               commit: str | None = None, rescued: str | None = None,
               event: Event | None = None) -> None:
    """Make a slot we clean ``available`` again: cleaned to ``commit``, or left as it is
    (``needs_cleanup``), recording ``event`` (the cleanup's) with it. Unlocked before the
    state write: a waiter woken by that write must find the slot free, or it would wait for
    a further change that never comes. The lease has ended by then: a ledger gone away is
    not "nothing written" (75) but a release left for auto-recover to finish."""
    def available(slot: Slot) -> None:
        slot.state, slot.worker, slot.needs_cleanup = AVAILABLE, None, needs_cleanup
        if commit:
            slot.commit = commit
        if rescued:
            slot.last_rescue = rescued
        lock.release(unlink=True)

    try:
        pool.store.update_slot(number, available, (lambda _: [event]) if event else None)
    except TryAgain as exc:
        raise OperationFailed(f"the lease of slot {pool.slot_id(number)} ended, but the slot "
                              f"could not be recorded free ({exc.message}): auto-recover "
                              "finishes it") from None
