"""Repair: recover a slot (the repair ladder), isolate one, rebuild a broken mirror.

Nothing here takes a slot from a live holder: every repair first claims the slot
(``cleaning`` + its lock) under the pool lock, refusing live holders and workers.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from necropool.git import commands as git
from necropool.ground.clock import now, rfc3339
from necropool.ground.errors import Conflict, OperationFailed, Skipped, explain, with_cause
from necropool.ground.layout import (
    remove_tree,
    rename_into_place,
    temp_name,
    trash_name,
    write_atomic,
)
from necropool.ground.locks import FileLock, lock_free
from necropool.ground.proc import Holder
from necropool.ground.results import Record
from necropool.ground.validate import check_text
from necropool.health.detect import holder_dead
from necropool.lease.refresh import PrepareFailed, clear_processes, move_aside, refresh
from necropool.pool.mirror import make_mirror
from necropool.pool.pool import Pool, get_slot
from necropool.slot.cleanup import fresh_clone
from necropool.slot.integrity import Verifier
from necropool.slot.lastclean import NO_HOLDER, seal
from necropool.store.model import ALLOCATED, AVAILABLE, CLEANING, ERROR, Slot, SlotState


def rebuild_mirror(pool: Pool) -> None:
    """Clone the upstream afresh and swap it in for a broken mirror."""
    settings = pool.settings
    lock = FileLock(pool.paths.mirror_lock).acquire(settings.git_timeout, "mirror lock")
    try:
        tmp = pool.paths.dir / temp_name("mirror")
        try:
            make_mirror(pool.definition.url, tmp, timeout=settings.git_timeout,
                        backend=pool.definition.fetch_backend, credentials=pool.paths.credentials)
            if Verifier().verify(tmp, bare=True, branch=pool.definition.branch):
                raise OperationFailed("the rebuilt mirror does not verify either")
            old = pool.paths.dir / trash_name("old-mirror")
            if os.path.lexists(pool.paths.mirror):
                os.rename(pool.paths.mirror, old)
            rename_into_place(tmp, pool.paths.mirror)
            write_atomic(pool.paths.mirror_stamp, f"{time.time()}\n".encode())
            pool.paths.mirror_failed.unlink(missing_ok=True)
        finally:
            remove_tree(tmp, settings.root)
        remove_tree(old, settings.root)
    finally:
        lock.release()
    pool.event("mirror_rebuilt")


def _claim(pool: Pool, number: int, force: bool,
           judged: Slot | None = None) -> tuple[Slot, FileLock]:
    """Take a slot for repair under the pool lock, refusing live holders and workers, and
    (given how it was ``judged``) a slot whose state or lease changed since; then end the
    processes left running in it."""
    with pool.transaction() as current:
        slot = get_slot(current, pool, number)
        if judged is not None and not _unchanged(judged, slot):
            raise Skipped(f"slot {pool.slot_id(number)} changed since it was judged "
                          f"(now {slot.state}): left alone")
        if slot.state == ALLOCATED and not force and not holder_dead(pool, slot):
            raise Conflict(f"slot {pool.slot_id(number)} is allocated to a holder that may be "
                           "alive: pass --force to recover it anyway")
        lock = pool.slot_lock(number)
        if not lock.try_acquire():
            raise Conflict(f"slot {pool.slot_id(number)} is held by a live process")
        previous = Slot(**vars(slot))
        slot.state, slot.worker, slot.lease = CLEANING, Holder.me(), None
    clear_processes(pool, number, previous, lock, stop=True)
    return previous, lock


def _unchanged(judged: Slot, slot: Slot) -> bool:
    """Same state, same lease and same worker as when judged."""
    def lease(s: Slot) -> str | None:
        return s.lease.lease_id if s.lease else None

    return (slot.state, lease(slot), slot.worker) == (judged.state, lease(judged), judged.worker)


class _Truthy(Record):
    """A recovery as a dict, false when the slot was not recovered, so the health API's
    ``success = manager.recover_slot(...)`` / ``if success:`` idiom holds."""

    def __bool__(self) -> bool:
        return bool(self.get("recovered"))


@dataclass
class Recovery:
    """What ``recover`` did."""

    slot_id: str
    pool: str
    recovered: bool
    previous_state: SlotState
    actions: list[str] = field(default_factory=list)
    rescued: str | None = None
    error: str | None = None

    def __bool__(self) -> bool:
        return self.recovered

    def to_dict(self) -> Record:
        return _Truthy(slot_id=self.slot_id, pool=self.pool, recovered=self.recovered,
                       state=AVAILABLE if self.recovered else ERROR,
                       previous_state=self.previous_state, actions=self.actions,
                       rescued=self.rescued, error=self.error)


@dataclass
class Isolation:
    """What ``isolate`` did."""

    slot_id: str
    pool: str
    previous_state: SlotState
    isolated_at: str | None
    isolation_reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"slot_id": self.slot_id, "pool": self.pool, "state": ERROR,
                "previous_state": self.previous_state, "isolated_at": self.isolated_at,
                "isolation_reason": self.isolation_reason}


def recover(pool: Pool, number: int, force: bool = False,
            verifier: Verifier | None = None, judged: Slot | None = None) -> Recovery:
    """The repair ladder: end processes left in the slot, clear locks and clean; verify;
    re-clone from the mirror (rebuilding the mirror first if it is broken); verify again.
    Ends ``available`` or ``error``. Passing one ``verifier`` to several recoveries checks
    each shared pack file once; ``judged``, the slot as it was when the repair was decided:
    if it changed since, nothing is done (``Skipped``)."""
    git.require()
    previous, lock = _claim(pool, number, force, judged)
    actions: list[str] = []
    rescued = None
    try:
        ok, reason, commit, rescued = _repair(pool, previous, actions, verifier or Verifier())
    except Exception as exc:  # whatever went wrong, the slot ends in error, not cleaning
        ok, reason, commit = False, explain(exc), None
    _finish(pool, number, ok, reason, commit, rescued, lock)
    pool.event("recover", slot_id=pool.slot_id(number), ok=ok, actions=actions, error=reason,
               rescued=rescued, lease_id=previous.lease.lease_id if previous.lease else None)
    return Recovery(slot_id=pool.slot_id(number), pool=pool.name, recovered=ok,
                    previous_state=previous.state, actions=actions, rescued=rescued,
                    error=None if ok else reason)


def _finish(pool: Pool, number: int, ok: bool, reason: str | None, commit: str | None,
            rescued: str | None, lock: FileLock) -> None:
    """Record the outcome and let go of the slot: the lock first, inside the transaction,
    so a waiter woken by this write finds the slot free."""
    with pool.transaction() as current:
        lock.release(unlink=True)
        slot = current.slots.get(number)
        if slot is None:
            return
        slot.worker, slot.lease = None, None
        if ok:
            slot.state, slot.commit, slot.needs_cleanup = AVAILABLE, commit, False
            slot.error = slot.isolated_at = slot.isolation_reason = None
        else:
            reason = with_cause(reason or "recovery failed", slot.isolation_reason)  # retried
            # when the environment caused it
            slot.state, slot.error = ERROR, reason
            slot.isolated_at, slot.isolation_reason = now(), reason
        if rescued:
            slot.last_rescue = rescued


def _repair(pool: Pool, slot: Slot, actions: list[str],
            verifier: Verifier) -> tuple[bool, str | None, str | None, str | None]:
    """Returns (ok, reason, commit, rescued). The verifier's cache is keyed by inode, size
    and mtime, so a rebuilt mirror's new packs are checked afresh."""
    number, path = slot.number, pool.checked_slot_dir(slot.number)
    label = slot.lease.lease_id if slot.lease else NO_HOLDER if slot.state == AVAILABLE \
        else "recover"
    rescued = None
    if verifier.verify(pool.paths.mirror, bare=True, branch=pool.definition.branch):
        rebuild_mirror(pool)
        actions.append("rebuilt the mirror from upstream")
    if path.is_symlink():
        path.unlink()
        actions.append("removed a symlink in place of the slot")
    cleaned = False
    if (path / ".git").is_dir():
        try:
            tip, report, event = refresh(pool, slot, rescue_label=label)
            rescued = report.rescued
            actions.append("cleaned" + (f" (work saved to {rescued})" if rescued else ""))
            cleaned = True
        except PrepareFailed as exc:  # clean, its work saved: a re-clone would not help
            exc.record_cleanup(pool)
            actions.append("cleaned, but " + exc.message)
            return False, exc.message, None, exc.rescued
        except Exception as exc:  # the working copy is moved aside whole below
            actions.append(f"cleanup failed: {explain(exc)}")
        else:
            pool.event(event[0], **event[1])
    problems = verifier.verify(path)
    if cleaned and not problems:
        return True, None, tip, rescued
    if os.path.lexists(path):
        if not cleaned and _has_entries(path):  # uncleaned: its .git may hold commits
            rescued = move_aside(pool, number)
            actions.append(f"moved the broken working copy to {rescued}")
        else:
            remove_tree(path, pool.settings.root)
    try:
        tmp, commit = fresh_clone(pool.paths.mirror, pool.paths.slots, pool.definition.url,
                                  pool.definition.branch)
    except (OperationFailed, OSError) as exc:
        return False, f"re-clone failed: {exc}", None, rescued
    try:
        rename_into_place(tmp, path)
        seal(path, pool.paths.slot_record(number))
    except OSError as exc:
        remove_tree(tmp, pool.settings.root)
        return False, f"re-clone failed: {exc}", None, rescued
    actions.append("re-cloned from the mirror")
    problems = verifier.verify(path)
    if problems:
        return False, "still broken after re-clone: " + "; ".join(problems[:2]), None, rescued
    if pool.definition.prepare or pool.definition.include:  # what a cleanup would give it
        try:
            commit, _, event = refresh(pool, slot, rescue_label=label)
        except PrepareFailed as exc:
            return False, exc.message, None, rescued
        except Exception as exc:
            return False, f"cleanup after the re-clone failed: {explain(exc)}", None, rescued
        pool.event(event[0], **event[1])
        actions.append("cleaned after the re-clone (include, prepare)")
    return True, None, commit, rescued


def _has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


def isolate(pool: Pool, number: int, reason: str | None = None) -> Isolation:
    """Put a slot in ``error`` so it is never allocated until recovered."""
    reason = "isolated by operator" if reason is None else check_text(reason, "reason", 1024)
    with pool.transaction() as current:
        slot = get_slot(current, pool, number)
        if slot.state == CLEANING and not lock_free(pool.paths.slot_lock(number)):
            raise Conflict(f"slot {pool.slot_id(number)} is being cleaned by a live worker")
        previous = slot.state
        slot.state, slot.error = ERROR, reason
        slot.isolated_at, slot.isolation_reason = now(), reason
    pool.event("isolate", slot_id=pool.slot_id(number), reason=reason, previous_state=previous)
    return Isolation(slot_id=pool.slot_id(number), pool=pool.name, previous_state=previous,
                     isolated_at=rfc3339(slot.isolated_at), isolation_reason=reason)
