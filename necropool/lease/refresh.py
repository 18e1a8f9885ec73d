"""The slot work that allocate, release and repair share: a slot we hold refreshed to the
mirror's tip (its holder's work saved first) and prepared for it, moved aside whole,
failed, or cleared of the processes still running in it."""

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from necropool.ground import proc
from necropool.ground.clock import now
from necropool.ground.errors import (
    Conflict,
    NotFound,
    OperationFailed,
    Skipped,
    explain,
    with_cause,
)
from necropool.ground.layout import ensure_inside, make_private, rename_into_place
from necropool.ground.locks import FileLock
from necropool.ground.proc import Holder
from necropool.pool import prepared
from necropool.pool.pool import Pool
from necropool.store.base import Event
from necropool.store.model import AVAILABLE, CLEANING, ERROR, Slot

if TYPE_CHECKING:  # the cleanup is imported when a slot is cleaned, not on start-up
    from necropool.slot.cleanup import Report


class PrepareFailed(OperationFailed):
    """The pool's prepare command failed in a slot: the slot is isolated (its reason names
    the log), and auto-recover retries it like a failure of the environment. ``cleaned``:
    the event of the cleanup that came before (the holder's work saved by then)."""

    cleaned: Event | None = None
    rescued: str | None = None

    def record_cleanup(self, pool: Pool) -> None:
        """Record the event of the cleanup that came before (it did its work)."""
        if self.cleaned:
            pool.event(self.cleaned[0], **self.cleaned[1])


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
    target = cleanup.Target(
        mirror=pool.paths.mirror, url=pool.definition.url, branch=pool.definition.branch,
        tip=tip, rescue_to=rescue_path(pool, slot.number, rescue_label),
        record=pool.paths.slot_record(slot.number),
        keep_ignored=pool.definition.keep_ignored, keep=tuple(pool.definition.keep),
        known_commit=slot.commit, include=tuple(pool.definition.include),
        include_from=pool.definition.include_from, fetch_tip=commit is not None)
    report = cleanup.clean(pool.checked_slot_dir(slot.number), target)
    if report.recloned and target.include:  # the fresh clone gets its files as any slot
        again = cleanup.clean(pool.checked_slot_dir(slot.number), replace(target, known_commit=tip))
        report.included, report.include_warnings = again.included, again.include_warnings
    cleaned: Event = ("cleanup", dict(
        slot_id=pool.slot_id(slot.number), lease_id=lease_id, commit=tip,
        duration_seconds=round(time.monotonic() - started, 3), **report.to_dict()))
    try:
        # without keep, what the command installed (ignored) may have gone with the rest
        kept = pool.definition.keep or pool.definition.keep_ignored
        ran = prepare(pool, slot.number, tip, again=bool(report.ignored) and not kept)
    except PrepareFailed as exc:
        exc.cleaned, exc.rescued = cleaned, report.rescued
        raise
    if ran:
        cleaned[1]["prepare_seconds"] = ran.duration_seconds
    return tip, report, cleaned


def unprepared(pool: Pool, slot: Slot) -> bool:
    """The pool prepares its slots, and this one is not prepared for its commit (allocate
    refreshes it first)."""
    command = pool.definition.prepare
    if not command:
        return False
    last = prepared.load(pool.paths, slot.number)
    return last is None or not last.fits(slot.commit, command,
                                         prepared.directory_of(pool.slot_dir(slot.number)))


def prepare(pool: Pool, number: int, commit: str, *,
            again: bool = False) -> prepared.Prepared | None:
    """Run the pool's prepare command in a slot we hold, just cleaned (or cloned) at
    ``commit``, unless it is prepared for it already (``again``: the cleanup removed
    ignored files and keeps none, what the command installed may have been among them).
    Reseals the slot (what the command wrote is the slot as handed out). Raises
    PrepareFailed."""
    from necropool.slot import lastclean  # lazy: as the cleanup
    from necropool.slot import prepare as command_in_slot  # lazy: as the cleanup

    command = pool.definition.prepare
    if not command:
        return None
    tree = pool.checked_slot_dir(number)
    directory = prepared.directory_of(tree)
    last = prepared.load(pool.paths, number)
    if last is not None and last.fits(commit, command, directory) and not again:
        return None
    ensure_inside(pool.paths.cache, pool.settings.root)
    outcome = command_in_slot.run(tree, command, pool.definition.prepare_timeout,
                                  pool.paths.cache,
                                  {"NECROPOOL_POOL": pool.name,
                                   "NECROPOOL_SLOT_ID": pool.slot_id(number),
                                   "NECROPOOL_SLOT_PATH": str(tree)})
    record = prepared.save(pool.paths, number, commit=commit, command=command,
                           seconds=outcome.seconds, error=outcome.error, directory=directory,
                           output=outcome.output)
    if outcome.error is not None:
        raise PrepareFailed(f"{prepared.PREPARE_FAILED}{command!r} {outcome.error} "
                            f"(log: {prepared.log_path(pool.paths, number)})")
    lastclean.seal(tree, pool.paths.slot_record(number), again=True)
    return record


def ready_new(pool: Pool, numbers: list[int]) -> None:
    """Give slots just made (``create``, ``add``) what a cleanup gives, the pool's
    ``include`` files and its ``prepare``, before anyone is handed them: each is claimed
    (``cleaning``, its lock held) for the while; one whose prepare fails is isolated."""
    if pool.definition.prepare or pool.definition.include:
        for number in numbers:
            _ready_free(pool, number)


def _ready_free(pool: Pool, number: int) -> None:
    lock = pool.slot_lock(number)
    if not lock.try_acquire():
        return  # someone else's: whoever hands it out refreshes it first

    def claim(slot: Slot) -> None:
        if slot.state != AVAILABLE:
            raise Skipped("taken meanwhile")
        slot.state, slot.worker = CLEANING, Holder.me()

    try:
        slot = pool.store.update_slot(number, claim)
        commit, _, cleaned = refresh(pool, slot, rescue_label="new")

        def ready(slot: Slot) -> None:
            slot.state, slot.worker, slot.commit = AVAILABLE, None, commit

        pool.store.update_slot(number, ready, lambda _: [cleaned])
    except Skipped:
        pass
    except Exception as exc:
        settle_failure(pool, number, exc)
    finally:
        lock.release(unlink=True)


def settle_failure(pool: Pool, number: int, exc: Exception, doing: str = "cleanup") -> str:
    """Put a slot we hold whose refresh failed into ``error`` and return why: a failed
    prepare isolated (the cleanup before it recorded, its rescue kept), any other failure
    as ``{doing} failed``."""
    if isinstance(exc, PrepareFailed):
        exc.record_cleanup(pool)
        fail_slot(pool, number, explain(exc), isolate=True, rescued=exc.rescued)
        return explain(exc)
    reason = f"{doing} failed: {explain(exc)}"
    fail_slot(pool, number, reason)
    return reason


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
    except PrepareFailed as exc:  # cleaned, the work saved: the slot goes all the same
        exc.record_cleanup(pool)
        return exc.rescued
    except Exception:
        return move_aside(pool, slot.number)
    pool.event(cleaned[0], **cleaned[1])
    return report.rescued


def fail_slot(pool: Pool, number: int, reason: str, isolate: bool = False,
              rescued: str | None = None) -> None:
    """Put a slot we hold into ``error`` with the reason (a slot deleted meanwhile stays so);
    with ``isolate`` (a failed prepare), isolated, so that auto-recover retries it later."""
    def failed(slot: Slot) -> None:
        nonlocal reason
        if isolate:
            reason = with_cause(reason, slot.isolation_reason)
            slot.isolated_at, slot.isolation_reason = now(), reason
        slot.state, slot.error, slot.worker, slot.lease = ERROR, reason, None, None
        slot.last_rescue = rescued or slot.last_rescue

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


ROUNDS = 5  # of ending what is in a slot: a process forking faster than that is refused


def clear_processes(pool: Pool, number: int, previous: Slot, lock: FileLock,
                     stop: bool) -> list[str]:
    """With the slot claimed (``cleaning``, or allocated to this process; its lock held):
    end the processes still in it
    when ``stop``; if any remain, give the slot back as it was and refuse. Returns the
    processes it ended (``pid 12 (sleep)``). The slot is looked at again after each round
    of ending: a process may have started a child in it between the look and its end."""
    busy = proc.processes_in(pool.slot_dir(number), pool.paths.readers)
    named = {pid: proc.describe([pid]) for pid in busy}  # (read before they are gone)
    for _ in range(ROUNDS if stop else 0):
        if not busy:
            break
        busy = proc.end(busy)
        if busy:  # these cannot be ended
            break
        busy = proc.processes_in(pool.slot_dir(number), pool.paths.readers)
        named.update({pid: proc.describe([pid]) for pid in busy if pid not in named})
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
