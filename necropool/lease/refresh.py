"""The slot work that allocate, release and repair share: a slot we hold refreshed to the
mirror's tip (its holder's work saved first), moved aside whole, failed, or cleared of the
processes still running in it."""

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from necropool.ground import proc
from necropool.ground.clock import now
from necropool.ground.errors import Conflict, NotFound, Skipped
from necropool.ground.layout import ensure_inside, make_private, rename_into_place
from necropool.ground.locks import FileLock
from necropool.pool.pool import Pool
from necropool.store.base import Event
from necropool.store.model import ERROR, Slot

if TYPE_CHECKING:  # the cleanup is imported when a slot is cleaned, not on start-up
    from necropool.slot.cleanup import Report



def rescue_path(pool: Pool, number: int, label: str) -> Path:
    ensure_inside(pool.paths.rescued, pool.settings.root)  # never write through a symlink
    stamp = now().strftime("%Y%m%dT%H%M%S%fZ")
    return pool.paths.rescued / f"{pool.slot_id(number)}-{stamp}-{label}.bundle"


def refresh(pool: Pool, slot: Slot, *, rescue_label: str, lease_id: str | None = None,
            commit: str | None = None) -> tuple[str, "Report", Event]:
    """Clean a slot we hold to the mirror's tip, or to ``commit`` (a ref a lease asked
    for), outside the pool lock; return that commit, the cleanup's report and its event,
    which the caller records with the slot's next write (a history that cannot be written
    never fails the cleanup). ``lease_id``: the lease that ended, named in the event."""
    from necropool.slot import cleanup  # lazy: handing out a clean slot never loads it

    started = time.monotonic()
    tip = commit or pool.tip()
    ensure_inside(pool.paths.records, pool.settings.root)
    report = cleanup.clean(pool.checked_slot_dir(slot.number), cleanup.Target(
        mirror=pool.paths.mirror, url=pool.definition.url, branch=pool.definition.branch,
        tip=tip, rescue_to=rescue_path(pool, slot.number, rescue_label),
        record=pool.paths.slot_record(slot.number),
        keep_ignored=pool.definition.keep_ignored, keep=tuple(pool.definition.keep),
        known_commit=slot.commit, fetch_tip=commit is not None))
    return tip, report, ("cleanup", dict(
        slot_id=pool.slot_id(slot.number), lease_id=lease_id, commit=tip,
        duration_seconds=round(time.monotonic() - started, 3), **report.to_dict()))


def move_aside(pool: Pool, number: int) -> str:
    """Move a slot's working copy, whole, under ``rescued/`` (one cleanup could not save
    from); return where it went."""
    keep = pool.paths.rescued / f"{pool.slot_id(number)}-{now():%Y%m%dT%H%M%S%fZ}.broken"
    pool.paths.rescued.mkdir(mode=0o700, exist_ok=True)
    ensure_inside(keep.parent, pool.settings.root)
    rename_into_place(pool.checked_slot_dir(number), keep)
    make_private(keep)
    return str(keep)


def save_work(pool: Pool, slot: Slot, label: str) -> str | None:
    """Save what a holder left in a slot we hold before it is thrown away: its work into a
    bundle (the cleanup's rescue), or if cleanup fails, the working copy moved aside whole.
    Returns where it went (None when there was nothing to save)."""
    if not os.path.isdir(pool.checked_slot_dir(slot.number)):
        return None
    try:
        _, report, cleaned = refresh(pool, slot, rescue_label=label)
    except Exception:
        return move_aside(pool, slot.number)
    pool.event(cleaned[0], **cleaned[1])
    return report.rescued


def fail_slot(pool: Pool, number: int, reason: str) -> None:
    """Put a slot we hold into ``error`` with the reason (a slot deleted meanwhile stays so)."""
    def failed(slot: Slot) -> None:
        slot.state, slot.error, slot.worker, slot.lease = ERROR, reason, None, None

    with contextlib.suppress(NotFound):
        pool.store.update_slot(number, failed)
    pool.event("failure", slot_id=pool.slot_id(number), error=reason)


def refuse_busy(pool: Pool, number: int) -> None:
    """Refuse (``Conflict``) while processes still work in the slot."""
    if busy := proc.processes_in(pool.slot_dir(number), pool.paths.readers):
        raise _busy(pool, number, busy)


def _busy(pool: Pool, number: int, busy: list[int]) -> Conflict:
    return Conflict(f"slot {pool.slot_id(number)}: processes still run in it "
                    f"({proc.describe(busy)}): end them, or pass --force to end them "
                    "and release")


def clear_processes(pool: Pool, number: int, previous: Slot, lock: FileLock,
                     stop: bool) -> list[str]:
    """With the slot claimed (``cleaning``, or allocated to this process; its lock held):
    end the processes still in it
    when ``stop``; if any remain, give the slot back as it was and refuse. Returns the
    processes it ended (``pid 12 (sleep)``)."""
    busy = proc.processes_in(pool.slot_dir(number), pool.paths.readers)
    named = {pid: proc.describe([pid]) for pid in busy}  # (read before they are gone)
    if busy and stop:
        busy = proc.end(busy)
    if not busy:
        return list(named.values())

    def as_before(slot: Slot) -> None:
        vars(slot).update(vars(previous))
        lock.release(unlink=True)

    pool.store.update_slot(number, as_before)
    if stop:
        raise Skipped(f"slot {pool.slot_id(number)}: processes that cannot be ended still run "
                      f"in it ({proc.describe(busy)}): left as it was")
    raise _busy(pool, number, busy)
