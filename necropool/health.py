"""Health: detect anomalies, recover, isolate, auto-recover, and lock maintenance.

Nothing here takes a slot from a live holder: every judgement that a holder or worker is
gone is made under the pool lock from a non-blocking slot-lock probe or a pid + start-time
check, and every repair first claims the slot (``cleaning`` + its lock).
"""

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from necropool import cleanup, events, git, lifecycle
from necropool.clock import now, rfc3339
from necropool.errors import Conflict, OperationFailed, Skipped, explain
from necropool.integrity import Verifier
from necropool.layout import (
    PoolPaths,
    ensure_inside,
    is_temp,
    remove_tree,
    temp_name,
    trash_name,
    write_atomic,
)
from necropool.locks import FileLock
from necropool.names import check_text
from necropool.pool import Pool, get_slot, mirror_freshness, resolve_slot
from necropool.proc import Holder
from necropool.records import Record
from necropool.state import ALLOCATED, AVAILABLE, CLEANING, ERROR, PoolState, Slot

KINDS = ("long_allocated_slots", "expired_leases", "abandoned_slots", "corrupted_slots",
         "orphaned_locks", "stray_paths", "isolated_slots", "stale_mirrors")


@dataclass
class Anomaly:
    kind: str
    pool: str
    evidence: str
    slot_id: str | None = None
    path: str | None = None
    number: int | None = None
    lease_id: str | None = None

    def to_dict(self) -> dict:
        data = {"kind": self.kind, "pool": self.pool, "slot_id": self.slot_id,
                "path": self.path, "evidence": self.evidence, "lease_id": self.lease_id}
        return Record(data)


@dataclass
class Findings:
    pool: str
    items: dict[str, list[Anomaly]] = field(default_factory=lambda: {k: [] for k in KINDS})
    judged: PoolState | None = None  # the state the slots were judged in (under the lock)

    def add(self, kind: str, **fields) -> None:
        self.items[kind].append(Anomaly(kind=kind.removesuffix("s"), pool=self.pool, **fields))

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.items.values())

    def to_dict(self) -> dict:
        return {k: [a.to_dict() for a in v] for k, v in self.items.items()}


def _lock_free(lock_path: Path) -> bool:
    probe = FileLock(lock_path)
    if probe.try_acquire(create=False):
        probe.release()
        return True
    return not lock_path.exists()


def _live_allocation(slot: Slot, abandoned: set[int]) -> bool:
    """Allocated, and its holder not proven gone."""
    return slot.state == ALLOCATED and slot.number not in abandoned


def _holder_dead(slot: Slot) -> str | None:
    holder = slot.lease.holder if slot.lease else None
    if holder and holder.is_dead():
        return f"holder pid {holder.pid} on {holder.host} is no longer running"
    return None


def detect(pool: Pool, *, max_allocation_hours: float | None = None, deep: bool = False,
           remember: bool = True) -> Findings:
    """Every anomaly of one pool; a healthy pool yields none. With ``remember``, what the
    integrity checks proved is kept in ``verified.json`` to spare the next run the work."""
    hours = max_allocation_hours or pool.settings.max_allocation_hours
    verifier = Verifier(cache=pool.paths.verified if remember else None)
    found = Findings(pool.name)
    paths = pool.paths
    with pool.locked() as current:
        judged = _judge_slots(pool, current, hours, found)
        _check_lock_files(pool, current, found)
    found.judged = current
    if current.source != "state.toml":
        found.add("corrupted_slots", path=str(paths.state),
                  evidence=f"state.toml unreadable; using {current.source}")
    mirror_problems = _verify_mirror(pool, verifier, deep)
    if mirror_problems:
        found.add("corrupted_slots", path=str(paths.mirror),
                  evidence="mirror: " + "; ".join(mirror_problems[:3]))
    elif stale := mirror_freshness(pool)[1]:
        found.add("stale_mirrors", path=str(paths.mirror), evidence=stale)
    abandoned = {a.number for a in found.items["abandoned_slots"]}
    for number in judged:
        slot = current.slots[number]
        problems = [current.problems[number]] if number in current.problems else []
        problems = problems or _verify_slot(pool, number, verifier, deep)
        if not problems and slot.state == ERROR:  # not isolated, yet never allocated: heal it
            problems = [f"in error: {slot.error or 'no reason recorded'}"]
        if problems:
            found.add("corrupted_slots", slot_id=pool.slot_id(number), number=number,
                      path=str(pool.slot_dir(number)), evidence="; ".join(problems[:3]),
                      lease_id=slot.lease.lease_id if slot.lease else None)
        elif slot.state != CLEANING and not _live_allocation(slot, abandoned):
            # a live holder's git lock files are its own business (libgit2 writers, say)
            for lock in cleanup.stale_git_locks(pool.slot_dir(number)):
                found.add("orphaned_locks", slot_id=pool.slot_id(number), number=number,
                          path=str(lock), evidence="git lock file with no git process behind it")
    _find_strays(pool, current, found)
    verifier.save()
    return found


def _judge_slots(pool: Pool, current: PoolState, hours: float, found: Findings) -> list[int]:
    """Classify allocations (under the pool lock); return the slots safe to verify."""
    limit = now() - timedelta(hours=hours)
    to_verify = []
    for number, slot in sorted(current.slots.items()):
        sid, where = pool.slot_id(number), str(pool.slot_dir(number))
        lock_free = _lock_free(pool.paths.slot_lock(number))
        if slot.state == CLEANING:
            if lock_free:
                who = f"pid {slot.worker.pid}" if slot.worker else "its worker"
                found.add("abandoned_slots", slot_id=sid, number=number, path=where,
                          evidence=f"stuck in cleaning: {who} is gone (slot lock free)")
                to_verify.append(number)
            continue
        if slot.state == ERROR and slot.isolated_at and number not in current.problems:
            found.add("isolated_slots", slot_id=sid, number=number, path=where,
                      evidence=slot.isolation_reason or slot.error or "isolated")
            continue
        to_verify.append(number)
        if slot.state != ALLOCATED:
            continue
        lease = slot.lease
        dead = _holder_dead(slot) if lock_free else None
        if dead:
            found.add("abandoned_slots", slot_id=sid, number=number, path=where,
                      evidence=dead, lease_id=lease.lease_id)
        elif lease.expires_at and lease.expires_at < now():
            found.add("expired_leases", slot_id=sid, number=number, path=where,
                      lease_id=lease.lease_id,
                      evidence=f"lease expired at {rfc3339(lease.expires_at)}")
        elif lease.allocated_at < limit:
            found.add("long_allocated_slots", slot_id=sid, number=number, path=where,
                      lease_id=lease.lease_id,
                      evidence=f"allocated since {rfc3339(lease.allocated_at)} "
                               f"(over {hours:g} h)")
    return to_verify


def _check_lock_files(pool: Pool, current: PoolState, found: Findings) -> None:
    if pool.paths.locks.is_symlink():
        return  # never look through it; _find_strays reports the link itself
    try:
        names = sorted(os.listdir(pool.paths.locks))
    except OSError:
        return
    ids = {pool.slot_id(n): n for n in current.slots}
    for name in names:
        path = pool.paths.locks / name
        if is_temp(name):
            continue
        if not name.endswith(".lock") or path.is_symlink() or not path.is_file():
            found.add("stray_paths", path=str(path), evidence="not a lock file")
            continue
        number = ids.get(name[:-5])
        if number is None:
            if _lock_free(path):
                found.add("orphaned_locks", path=str(path),
                          evidence="lock of a slot that does not exist")
        elif current.slots[number].state != CLEANING and _lock_free(path):
            found.add("orphaned_locks", slot_id=name[:-5], number=number, path=str(path),
                      evidence="slot lock that no live process holds")


def _verify_mirror(pool: Pool, verifier: Verifier, deep: bool) -> list[str]:
    problems = verifier.verify(pool.paths.mirror, bare=True, branch=pool.definition.branch)
    if not problems and deep:
        problems = _fsck(pool.paths.mirror)
    return problems


def _verify_slot(pool: Pool, number: int, verifier: Verifier, deep: bool) -> list[str]:
    path = pool.slot_dir(number)
    problems = verifier.verify(path)
    if not problems and deep:
        problems = _fsck(path)
    return problems


def _fsck(path: Path) -> list[str]:
    proc = git.run(["fsck", "--full", "--no-dangling", "--no-progress"], path, check=False)
    if proc.returncode == 0:
        return []
    lines = proc.stderr.decode(errors="replace").splitlines() or ["git fsck failed"]
    return [f"git fsck: {lines[0]}"]


def _find_strays(pool: Pool, current: PoolState, found: Findings) -> None:
    paths = pool.paths
    for name in sorted(os.listdir(paths.dir)):
        path = paths.dir / name
        if is_temp(name):
            continue
        if name not in PoolPaths.KNOWN:
            found.add("stray_paths", path=str(path), evidence="not part of the pool layout")
        elif path.is_symlink():
            found.add("stray_paths", path=str(path),
                      evidence=f"symlink to {os.readlink(path)} replaces {name}")
    for directory in (paths.locks, paths.slots):  # without them nothing can be allocated
        if not os.path.lexists(directory):
            found.add("stray_paths", path=str(directory),
                      evidence=f"{directory.name}/ is missing (auto-recover recreates it)")
    try:
        entries = sorted(os.listdir(paths.slots))
    except OSError:
        return
    for name in entries:
        path = paths.slots / name
        if is_temp(name):
            continue
        if path.is_symlink():
            found.add("stray_paths", path=str(path),
                      evidence=f"symlink to {os.readlink(path)} in place of a slot")
        elif not (name.isdigit() and int(name) in current.slots):
            found.add("stray_paths", path=str(path), evidence="directory that no slot owns")


# --- repair -----------------------------------------------------------------------------------

def rebuild_mirror(pool: Pool) -> None:
    """Clone the upstream afresh and swap it in for a broken mirror."""
    settings = pool.settings
    lock = FileLock(pool.paths.mirror_lock).acquire(settings.git_timeout, "mirror lock")
    try:
        tmp = pool.paths.dir / temp_name("mirror")
        try:
            git.clone_mirror(pool.definition.url, tmp, timeout=settings.git_timeout,
                             backend=pool.definition.fetch_backend)
            if Verifier().verify(tmp, bare=True, branch=pool.definition.branch):
                raise OperationFailed("the rebuilt mirror does not verify either")
            old = pool.paths.dir / trash_name("old-mirror")
            if os.path.lexists(pool.paths.mirror):
                os.rename(pool.paths.mirror, old)
            os.rename(tmp, pool.paths.mirror)
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
        if slot.state == ALLOCATED and not force and not _holder_dead(slot):
            raise Conflict(f"slot {pool.slot_id(number)} is allocated to a holder that may be "
                           "alive: pass --force to recover it anyway")
        lock = pool.slot_lock(number)
        if not lock.try_acquire():
            raise Conflict(f"slot {pool.slot_id(number)} is held by a live process")
        previous = Slot(**vars(slot))
        slot.state, slot.worker, slot.lease = CLEANING, Holder.me(), None
    lifecycle.clear_processes(pool, number, previous, lock, stop=True)
    return previous, lock


def _unchanged(judged: Slot, slot: Slot) -> bool:
    """Same state, same lease and same worker as when judged."""
    def lease(s: Slot) -> str | None:
        return s.lease.lease_id if s.lease else None

    return (slot.state, lease(slot), slot.worker) == (judged.state, lease(judged), judged.worker)


class RecoveryResult(Record):
    """What ``recover`` did; false when the slot was not recovered, so the guide's
    ``success = manager.recover_slot(...)`` / ``if success:`` idiom holds."""

    def __bool__(self) -> bool:
        return bool(self.get("recovered"))


def recover(pool: Pool, number: int, force: bool = False,
            verifier: Verifier | None = None, judged: Slot | None = None) -> dict:
    """The repair ladder: end processes left in the slot, clear locks and clean; verify;
    re-clone from the mirror (rebuilding the mirror first if it is broken); verify again.
    Ends ``available`` or ``error``. Passing one ``verifier`` to several recoveries checks
    each shared pack file once; ``judged``, the slot as it was when the repair was decided:
    if it changed since, nothing is done (``Skipped``)."""
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
    result = RecoveryResult(
        slot_id=pool.slot_id(number), pool=pool.name, recovered=ok,
        state=AVAILABLE if ok else ERROR, previous_state=previous.state, actions=actions,
        rescued=rescued, error=None if ok else reason)
    return result


def _finish(pool, number, ok, reason, commit, rescued, lock: FileLock) -> None:
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
            slot.state, slot.error = ERROR, reason
            slot.isolated_at, slot.isolation_reason = now(), reason
        if rescued:
            slot.last_rescue = rescued


def _repair(pool: Pool, slot: Slot, actions: list[str], verifier: Verifier):
    """Returns (ok, reason, commit, rescued). The verifier's cache is keyed by inode, size
    and mtime, so a rebuilt mirror's new packs are checked afresh."""
    number, path = slot.number, pool.checked_slot_dir(slot.number)
    label = slot.lease.lease_id if slot.lease else "recover"
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
            tip, report = lifecycle.refresh(pool, slot, rescue_label=label)
            rescued = report.rescued
            actions.append("cleaned" + (f" (work saved to {rescued})" if rescued else ""))
            cleaned = True
        except Exception as exc:  # the working copy is moved aside whole below
            actions.append(f"cleanup failed: {explain(exc)}")
    problems = verifier.verify(path)
    if cleaned and not problems:
        return True, None, tip, rescued
    if os.path.lexists(path):
        if not cleaned and _has_entries(path):  # uncleaned: its .git may hold commits
            rescued = lifecycle.move_aside(pool, number)
            actions.append(f"moved the broken working copy to {rescued}")
        else:
            remove_tree(path, pool.settings.root)
    tmp = pool.paths.slots / temp_name("reclone")
    try:
        commit = git.clone_slot(pool.paths.mirror, tmp, pool.definition.url,
                                pool.definition.branch)
        os.rename(tmp, path)
    except (OperationFailed, OSError) as exc:
        remove_tree(tmp, pool.settings.root)
        return False, f"re-clone failed: {exc}", None, rescued
    actions.append("re-cloned from the mirror")
    problems = verifier.verify(path)
    if problems:
        return False, "still broken after re-clone: " + "; ".join(problems[:2]), None, rescued
    return True, None, commit, rescued


def _has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


def isolate(pool: Pool, number: int, reason: str | None = None) -> dict:
    """Put a slot in ``error`` so it is never allocated until recovered."""
    reason = "isolated by operator" if reason is None else check_text(reason, "reason", 1024)
    with pool.transaction() as current:
        slot = get_slot(current, pool, number)
        if slot.state == CLEANING and not _lock_free(pool.paths.slot_lock(number)):
            raise Conflict(f"slot {pool.slot_id(number)} is being cleaned by a live worker")
        previous = slot.state
        slot.state, slot.error = ERROR, reason
        slot.isolated_at, slot.isolation_reason = now(), reason
    pool.event("isolate", slot_id=pool.slot_id(number), reason=reason, previous_state=previous)
    return {"slot_id": pool.slot_id(number), "pool": pool.name, "state": ERROR,
            "previous_state": previous, "isolated_at": rfc3339(slot.isolated_at),
            "isolation_reason": reason}


# --- auto-recover -----------------------------------------------------------------------------

def auto_recover(pool: Pool, *, max_allocation_hours: float | None = None,
                 recover_corrupted: bool = True, cleanup_orphaned_locks: bool = True,
                 force_release_long_allocated: bool = False, dry_run: bool = False,
                 found: Findings | None = None) -> dict:
    """Detect, then heal: abandoned slots and expired leases released (work saved), corrupted
    ones recovered or isolated, orphaned locks removed, strays adopted or moved aside. Live
    holders of unexpired leases are never touched; long allocations without a TTL only with
    ``force_release_long_allocated``. ``found``: act on that earlier judgement instead of
    detecting now (each action still re-checks it)."""
    if not dry_run:
        pool.sweep()
        with pool.locked():
            events.rotate(pool.paths.events)
    if found is None:
        found = detect(pool, max_allocation_hours=max_allocation_hours, remember=not dry_run)
    judged = found.judged.slots  # every action re-checks under the lock that it still holds
    verifier = Verifier()  # one for every repair of this run: shared packs checked once
    result = {"pool": pool.name, "dry_run": dry_run, "long_allocated_released": 0,
              "expired_released": 0, "abandoned_released": 0, "corrupted_recovered": 0,
              "corrupted_isolated": 0,
              "orphaned_locks_cleaned": 0, "stray_paths_moved": 0, "slots_adopted": 0,
              "errors": [], "actions": []}

    def act(counter: str | None, target: str, action: str, fn, *args, **kwargs):
        entry = {"target": target, "action": action, "status": None, "error": None,
                 "rescued": None, "actions": None}
        result["actions"].append(entry)
        if dry_run:  # counted as planned, so the counters show the plan
            entry["status"] = "planned"
            if counter:
                result[counter] += 1
            return None
        try:
            outcome = fn(*args, **kwargs)
        except lifecycle.Renewed as exc:  # the holder came back in time: nothing to do
            entry.update(status="deferred", error=exc.message)
            return None
        except Skipped as exc:  # the slot changed since it was judged: not an error
            entry.update(status="skipped", error=exc.message)
            return None
        except Exception as exc:  # one action's failure, expected or not, stops no other
            entry.update(status="failed", error=explain(exc))
            result["errors"].append(f"{target}: {action}: {explain(exc)}")
            return None
        entry["status"] = "done"
        if isinstance(outcome, dict):
            entry.update({k: outcome.get(k) for k in ("rescued", "error", "actions")})
        if counter:
            result[counter] += 1
        return outcome

    items = found.items
    corrupted = {a.number for a in items["corrupted_slots"] if a.number is not None}
    mirror_broken = any(a.path == str(pool.paths.mirror) for a in items["corrupted_slots"])
    if any(a.path == str(pool.paths.state) for a in items["corrupted_slots"]):
        act(None, "state.toml", "rewrite from the last good state", _rewrite_state, pool)
    for a in items["stray_paths"]:
        path = Path(a.path)
        if _orphan_slot(pool, path):  # a slot whose state entry was lost (crash in add)
            act("slots_adopted", a.path, "adopt as a slot and recover", _adopt, pool,
                int(path.name))
            continue
        action = "move aside" if os.path.lexists(a.path) else "recreate"
        act("stray_paths_moved", a.path, action, _move_stray, pool, path)
    if recover_corrupted and mirror_broken:
        act(None, "mirror", "rebuild mirror from upstream", rebuild_mirror, pool)
    if cleanup_orphaned_locks:
        for a in items["orphaned_locks"]:
            act("orphaned_locks_cleaned", a.path, "remove stale lock", _remove_lock, pool, a)
    for a in items["abandoned_slots"]:
        if a.number in corrupted:
            continue
        if a.lease_id:
            act("abandoned_released", a.slot_id, "release (holder dead)", lifecycle.release,
                pool, a.number, lease_id=a.lease_id, reason="reclaim", stop=True)
        else:
            act("abandoned_released", a.slot_id, "recover (worker dead)", _recover_or_raise,
                pool, a.number, verifier=verifier, judged=judged.get(a.number))
    for a in items["expired_leases"]:  # the holder's own promise: reclaim if not renewed
        if a.number not in corrupted:
            act("expired_released", a.slot_id, "release (lease expired)", lifecycle.release,
                pool, a.number, lease_id=a.lease_id, reason="expire", expired_only=True,
                stop=True)
    if force_release_long_allocated:
        for a in items["long_allocated_slots"]:
            if a.number not in corrupted:
                act("long_allocated_released", a.slot_id, "force release", lifecycle.release,
                    pool, a.number, lease_id=a.lease_id, reason="force_release", stop=True)
    if recover_corrupted:
        abandoned = {a.number for a in items["abandoned_slots"] + items["expired_leases"]}
        for a in items["corrupted_slots"]:
            if a.number is None:
                continue
            slot = judged.get(a.number)
            if slot is not None and _live_allocation(slot, abandoned):
                result["actions"].append({"target": a.slot_id, "action": "recover",
                                          "status": "deferred", "rescued": None, "actions": None,
                                          "error": "allocated to a live holder: recovered "
                                                   "once released"})
                continue
            outcome = act("corrupted_recovered", a.slot_id, "recover", _recover_or_raise,
                          pool, a.number, force=bool(_dead_lease(found, a.number)),
                          verifier=verifier, judged=slot)
            if (outcome is None and not dry_run and result["actions"][-1]["status"] == "failed"
                    and _isolate_failed(pool, a.number)):
                result["corrupted_isolated"] += 1
    result["detected"] = found.to_dict()
    if not dry_run:
        pool.event("auto_recover", errors=len(result["errors"]), actions=len(result["actions"]))
    return result


def _dead_lease(found: Findings, number: int) -> bool:
    return any(a.number == number
               for a in found.items["abandoned_slots"] + found.items["expired_leases"])


def _recover_or_raise(pool: Pool, number: int, force: bool = False,
                      verifier: Verifier | None = None, judged: Slot | None = None) -> dict:
    outcome = recover(pool, number, force=force, verifier=verifier, judged=judged)
    if not outcome["recovered"]:
        raise OperationFailed(outcome.get("error") or "recovery failed")
    return outcome


def _isolate_failed(pool: Pool, number: int) -> bool:
    """A slot that could not be recovered stays (or becomes) error, marked isolated.
    A slot a live holder or worker still has is left alone (False)."""
    with pool.transaction() as current:
        slot = current.slots.get(number)
        if slot is None or slot.state not in (ERROR, AVAILABLE):
            return False
        reason = slot.error or "automatic recovery failed"
        slot.state, slot.error = ERROR, reason
        slot.isolated_at = slot.isolated_at or now()
        slot.isolation_reason = slot.isolation_reason or reason
    return True


def _rewrite_state(pool: Pool) -> None:
    """Write the state loaded from the backup (or rebuilt) back as ``state.toml``."""
    with pool.transaction():
        pass


def _remove_lock(pool: Pool, anomaly: Anomaly) -> None:
    """Remove a lock file only if it is still stale, judged again under the pool lock."""
    path = Path(anomaly.path)
    with pool.locked() as current:
        if path.parent == pool.paths.locks:
            slot = current.slots.get(anomaly.number) if anomaly.number else None
            if slot is not None and slot.state == CLEANING:
                raise Conflict(f"{path.name} now guards a slot being cleaned")
            lock = FileLock(path)
            if not lock.try_acquire(create=False):
                if path.exists():
                    raise Conflict(f"{path.name} is held by a live process")
                return
            lock.release(unlink=True)
            return
        slot = current.slots.get(anomaly.number)
        if slot is None or slot.state == CLEANING or (slot.state == ALLOCATED
                                                      and not _holder_dead(slot)):
            raise Conflict(f"{path} is in a slot in use: left for its holder")
        if path in cleanup.stale_git_locks(pool.slot_dir(anomaly.number)):
            path.unlink(missing_ok=True)


def _orphan_slot(pool: Pool, path: Path) -> bool:
    return (path.parent == pool.paths.slots and path.name.isdigit() and int(path.name) >= 1
            and not path.is_symlink() and (path / ".git").is_dir())


def _adopt(pool: Pool, number: int) -> dict:
    """Register a slot directory that has no state entry, then repair it like any other."""
    with pool.transaction() as current:
        if number in current.slots:  # registered since it was judged a stray
            raise Skipped(f"slot {pool.slot_id(number)} exists already")
        current.slots[number] = Slot(number=number, state=ERROR, created_at=now(),
                                     error="adopted: directory without a state entry")
    pool.event("adopt", slot_id=pool.slot_id(number))
    return _recover_or_raise(pool, number)


def _move_stray(pool: Pool, path: Path) -> None:
    """Never delete what we did not make: symlinks are unlinked (their targets untouched),
    anything else is moved under ``rescued/``; a lone ``locks`` or ``slots`` is recreated.
    Nothing is reached through a symlink (the stray's directory or ``rescued`` itself)."""
    ensure_inside(path.parent, pool.settings.root)
    if path.is_symlink():
        path.unlink()
    elif path.parent == pool.paths.dir and path.name in PoolPaths.KNOWN:
        pass  # a known entry that was a symlink and has been replaced since
    elif os.path.lexists(path):
        pool.paths.rescued.mkdir(exist_ok=True)
        rel = path.relative_to(pool.paths.dir)
        target = pool.paths.rescued / f"stray-{'-'.join(rel.parts)}-{now():%Y%m%dT%H%M%S%fZ}"
        ensure_inside(target.parent, pool.settings.root)
        os.rename(path, target)
    for directory in (pool.paths.locks, pool.paths.slots, pool.paths.rescued):
        directory.mkdir(exist_ok=True)


# --- lock maintenance (the guide's lock_manager API) -----------------------------------------

class LockManager:
    """Slot lock files across all pools of a root."""

    def __init__(self, settings, pools):
        self.settings = settings
        self._pools = pools  # callable returning the open pools

    def detect_stale_locks(self, max_age_hours: float | None = None) -> list[str]:
        """Slot lock files that no live process holds and older than ``max_age_hours``
        (default: the config's ``stale_lock_hours``; 0 for any age)."""
        if max_age_hours is None:
            max_age_hours = self.settings.stale_lock_hours
        cutoff = time.time() - max_age_hours * 3600 if max_age_hours else None
        stale = []
        for pool in self._pools():
            if pool.paths.locks.is_symlink():
                continue  # not ours to clean: detect reports the link
            try:
                names = sorted(os.listdir(pool.paths.locks))
            except OSError:
                continue
            with pool.locked() as current:
                cleaning = {pool.slot_id(n) for n, s in current.slots.items()
                            if s.state == CLEANING}
                for name in names:
                    path = pool.paths.locks / name
                    if not name.endswith(".lock") or name[:-5] in cleaning:
                        continue
                    try:
                        if cutoff and path.stat().st_mtime > cutoff:
                            continue
                    except OSError:
                        continue
                    if _lock_free(path):
                        stale.append(str(path))
        return stale

    def cleanup_stale_locks(self, max_age_hours: float | None = None) -> int:
        removed = 0
        for path in self.detect_stale_locks(max_age_hours):
            lock = FileLock(Path(path))
            if lock.try_acquire(create=False):
                lock.release(unlink=True)
                removed += 1
        return removed

    def force_unlock(self, slot: "str | Pool", number: int | None = None) -> bool:
        """Remove a slot's lock file even if held: the holder's lock stops guarding anything.
        ``slot`` is a slot id or path (the guide's ``force_unlock(slot_id)``), or a pool
        with ``number``. False when there was no lock file."""
        pool = slot
        if number is None:
            pool, number = resolve_slot(self.settings, slot)
        path = pool.paths.slot_lock(number)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        pool.event("force_unlock", slot_id=pool.slot_id(number))
        return True
