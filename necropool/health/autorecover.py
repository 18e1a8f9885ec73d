"""Auto-recover: detect, then ``plan`` the steps that heal what was found, then ``apply``
them, each re-checked under the pool lock as it runs; one step's failure stops no other.
``AutoRecovery`` is its typed result and ``COUNTERS`` the one list of its counters (the
manager sums them, the CLI prints them)."""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from necropool.git import commands as git
from necropool.ground.clock import now
from necropool.ground.errors import Conflict, OperationFailed, Skipped, explain, retry_due
from necropool.ground.layout import PoolPaths, ensure_inside, make_private
from necropool.ground.locks import FileLock
from necropool.ground.results import Record
from necropool.health.detect import Anomaly, Findings, detect, holder_dead, live_allocation
from necropool.health.repair import Recovery, rebuild_mirror, recover
from necropool.lease.release import EXPIRE, FORCE_RELEASE, RECLAIM, release
from necropool.lease.renew import Busy, Release, Renewed
from necropool.pool import divergence, rescued
from necropool.pool.pool import Pool
from necropool.slot import gitdir as slotgit
from necropool.slot.integrity import Verifier
from necropool.store.model import ALLOCATED, AVAILABLE, CLEANING, ERROR, Slot

COUNTERS = ("long_allocated_released", "expired_released", "abandoned_released",
            "corrupted_recovered", "corrupted_isolated", "orphaned_locks_cleaned",
            "stray_paths_moved", "slots_adopted", "rescued_pruned", "tampered_cleaned",
            "isolated_retried", "prepares_retried", "ledger_reconciled")


def zero_counters() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


@dataclass
class Action:
    """One step of an auto-recover run, planned or done."""

    target: str
    action: str
    status: str | None = None  # planned, done, deferred, skipped or failed
    error: str | None = None
    rescued: str | None = None
    actions: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "action": self.action, "status": self.status,
                "error": self.error, "rescued": self.rescued, "actions": self.actions}


@dataclass
class AutoRecovery:
    """What ``auto_recover`` did to one pool (or planned, with ``dry_run``)."""

    pool: str
    dry_run: bool
    counters: dict[str, int] = field(default_factory=zero_counters)
    errors: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    detected: dict[str, list[Record]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "dry_run": self.dry_run, **self.counters,
                "errors": self.errors, "actions": [a.to_dict() for a in self.actions],
                "detected": self.detected}


@dataclass
class Step:
    """One planned action: what ``run`` does to ``target``, counted in ``counter`` when it
    is done. ``status`` set beforehand: decided without acting (``deferred``). A failed step
    with ``on_failure`` runs it, and counts ``failure_counter`` when it returns True."""

    counter: str | None
    target: str
    action: str
    run: Callable[[], Any] | None = None
    status: str | None = None
    error: str | None = None
    on_failure: Callable[[], bool] | None = None
    failure_counter: str | None = None


def auto_recover(pool: Pool, *, max_allocation_hours: float | None = None,
                 recover_corrupted: bool = True, cleanup_orphaned_locks: bool = True,
                 force_release_long_allocated: bool = False, dry_run: bool = False,
                 found: Findings | None = None) -> AutoRecovery:
    """Detect, then heal: abandoned slots and expired leases released (work saved), corrupted
    ones recovered or isolated, orphaned locks removed, strays adopted or moved aside. Live
    holders of unexpired leases are never touched; long allocations without a TTL only with
    ``force_release_long_allocated``. ``found``: act on that earlier judgement instead of
    detecting now (each action still re-checks it)."""
    if not dry_run:
        git.require()  # without git every slot would be found corrupted and isolated
        pool.sweep()
        pool.store.rotate_events(pool.settings.event_retention_days)
    if found is None:
        found = detect(pool, max_allocation_hours=max_allocation_hours, remember=not dry_run)
    steps = plan(pool, found, recover_corrupted=recover_corrupted,
                 cleanup_orphaned_locks=cleanup_orphaned_locks,
                 force_release_long_allocated=force_release_long_allocated)
    result = apply(pool, steps, dry_run=dry_run)
    result.detected = found.to_dict()
    if not dry_run:
        pool.event("auto_recover", errors=len(result.errors), actions=len(result.actions))
        # its slots as the ledger has them (or reconciled): other hosts may hand them out
        pool.store.heartbeat(vouch=result.counters["ledger_reconciled"]
                             == len(found.items["ledger_divergences"]))
    return result


def plan(pool: Pool, found: Findings, *, recover_corrupted: bool = True,
         cleanup_orphaned_locks: bool = True,
         force_release_long_allocated: bool = False) -> list[Step]:
    """The steps that heal what ``found`` holds, in order; nothing is done here. Each step
    re-checks, as it runs, that its slot is still as it was judged."""
    judged = found.judged.slots if found.judged else {}
    verifier = Verifier()  # one for every repair of this run: shared packs checked once
    steps: list[Step] = []

    def step(counter: str | None, target: str, action: str, fn: Callable[..., Any],
             *args: Any, **kwargs: Any) -> Step:
        steps.append(Step(counter, target, action, partial(fn, *args, **kwargs)))
        return steps[-1]

    items = found.items
    for a, number in _numbered(items["ledger_divergences"]):  # first: the ledger's lease
        if number in found.divergences:  # may not be the slot's; nothing else judged it
            step("ledger_reconciled", str(a.slot_id), "reconcile the ledger with this host",
                 divergence.reconcile, pool, found.divergences[number])
    for a in found.elsewhere["abandoned_slots"]:  # held from this host: its holder died
        if a.host and a.number is not None and a.lease_id:
            step("abandoned_released", str(a.slot_id), "end the lease (holder dead here; "
                 "its host cleans the slot)", _reclaim_remote, pool, a.host, a.number,
                 a.lease_id)
    corrupted = {a.number for a in items["corrupted_slots"] if a.number is not None}
    mirror_broken = any(a.path == str(pool.paths.mirror) for a in items["corrupted_slots"])
    if any(a.path == str(pool.paths.state) for a in items["corrupted_slots"]):
        step(None, "state.toml", "rewrite from the last good state", _rewrite_state, pool)
    for a in items["stray_paths"]:
        path = Path(str(a.path))
        if _orphan_slot(pool, path):  # a slot whose state entry was lost (crash in add)
            step("slots_adopted", str(path), "adopt as a slot and recover", _adopt, pool,
                 int(path.name))
        else:
            action = "move aside" if os.path.lexists(path) else "recreate"
            step("stray_paths_moved", str(path), action, _move_stray, pool, path)
    if recover_corrupted and mirror_broken:
        step(None, "mirror", "rebuild mirror from upstream", rebuild_mirror, pool)
    if cleanup_orphaned_locks:
        for a in items["orphaned_locks"]:
            step("orphaned_locks_cleaned", str(a.path), "remove stale lock", _remove_lock,
                 pool, a)
    for a, number in _numbered(items["abandoned_slots"]):
        if number in corrupted:
            continue
        if a.lease_id:
            step("abandoned_released", str(a.slot_id), "release (holder dead)", release,
                 pool, number, lease_id=a.lease_id, ending=RECLAIM)
        else:
            step("abandoned_released", str(a.slot_id), "recover (worker dead)",
                 _recover_or_raise, pool, number, verifier=verifier, judged=judged.get(number))
    for a, number in _numbered(items["expired_leases"]):  # the holder's own promise
        if number not in corrupted:
            step("expired_released", str(a.slot_id), "release (lease expired)", release,
                 pool, number, lease_id=a.lease_id, ending=EXPIRE)
    if force_release_long_allocated:
        for a, number in _numbered(items["long_allocated_slots"]):
            if number not in corrupted:
                step("long_allocated_released", str(a.slot_id), "force release", release,
                     pool, number, lease_id=a.lease_id, ending=FORCE_RELEASE)
    # isolated by a full disk, an I/O error, git missing, a failed prepare: retried
    retried = (("isolated_slots", "isolated_retried", "isolated by the environment"),
               ("failed_prepares", "prepares_retried", "prepare failed"))
    for kind, counter, why in retried if recover_corrupted else ():
        for a, number in _numbered(items[kind]):
            slot = judged.get(number)
            if slot is not None and slot.isolated_at and retry_due(
                    slot.isolation_reason, (now() - slot.isolated_at).total_seconds()):
                step(counter, str(a.slot_id), f"recover ({why}: retried)", _recover_or_raise,
                     pool, number, verifier=verifier, judged=slot)
    for a, number in _numbered(items["tampered_free_slots"]):  # before anyone gets it
        step("tampered_cleaned", str(a.slot_id), "clean (changed while free; work saved as "
             "no holder's)", _recover_or_raise, pool, number, verifier=verifier,
             judged=judged.get(number))
    if recover_corrupted:
        abandoned = {n for _, n in _numbered(items["abandoned_slots"] + items["expired_leases"])}
        for a, number in _numbered(items["corrupted_slots"]):
            slot = judged.get(number)
            if slot is not None and live_allocation(slot, abandoned):
                steps.append(Step(None, str(a.slot_id), "recover", status="deferred",
                                  error="allocated to a live holder: recovered once released"))
                continue
            repair = step("corrupted_recovered", str(a.slot_id), "recover", _recover_or_raise,
                          pool, number, force=bool(_dead_lease(found, number)),
                          verifier=verifier, judged=slot)
            repair.on_failure = partial(_isolate_failed, pool, number)
            repair.failure_counter = "corrupted_isolated"
    if days := pool.settings.rescued_retention_days:
        for item in rescued.older(pool, days * 86400, detail=False):  # no history read
            step("rescued_pruned", item["path"], f"delete rescued work older than {days:g} days",
                 rescued.discard, pool, [item])
    return steps


def apply(pool: Pool, steps: list[Step], *, dry_run: bool = False) -> AutoRecovery:
    """Run the steps in order (with ``dry_run``, only count them as planned); one step's
    failure stops no other."""
    result = AutoRecovery(pool=pool.name, dry_run=dry_run)
    for planned in steps:
        entry = Action(planned.target, planned.action, planned.status, planned.error)
        result.actions.append(entry)
        if entry.status is not None or planned.run is None:
            continue
        if dry_run:  # counted as planned, so the counters show the plan
            entry.status = "planned"
        else:
            _run(planned, entry, result)
        if planned.counter and entry.status in ("planned", "done"):
            result.counters[planned.counter] += 1
    return result


def _run(planned: Step, entry: Action, result: AutoRecovery) -> None:
    """Do one step, recording its outcome in ``entry`` (and ``result``'s errors)."""
    assert planned.run is not None
    try:
        outcome = planned.run()
    except (Renewed, Busy) as exc:  # the holder came back in time, or lives on (its lock
        entry.status, entry.error = "deferred", exc.message  # held): not yet
        return
    except Skipped as exc:  # the slot changed since it was judged: not an error
        entry.status, entry.error = "skipped", exc.message
        return
    except Exception as exc:  # one action's failure, expected or not, stops no other
        entry.status, entry.error = "failed", explain(exc)
        result.errors.append(f"{planned.target}: {planned.action}: {explain(exc)}")
        if planned.on_failure is not None and planned.on_failure() \
                and planned.failure_counter:
            result.counters[planned.failure_counter] += 1
        return
    entry.status = "done"
    if isinstance(outcome, str):  # a reconciliation: what it did
        entry.actions = [outcome]
    elif isinstance(outcome, Recovery):
        entry.rescued, entry.error, entry.actions = (outcome.rescued, outcome.error,
                                                     outcome.actions)
    elif isinstance(outcome, Release):
        entry.rescued = outcome.rescued


def _numbered(anomalies: list[Anomaly]) -> list[tuple[Anomaly, int]]:
    """The anomalies of a slot, with its number (not those of the pool's other paths)."""
    return [(a, a.number) for a in anomalies if a.number is not None]


def _dead_lease(found: Findings, number: int) -> bool:
    return any(a.number == number
               for a in found.items["abandoned_slots"] + found.items["expired_leases"])


def _reclaim_remote(pool: Pool, host: str, number: int, lease_id: str) -> dict[str, Any]:
    """End a lease of ``host``'s slot whose holder lived, and died, on this host."""
    from necropool.fleet import remote as fleet  # lazy: a pool in a ledger only

    return fleet.release(pool, host, number, lease_id, reason="reclaim")


def _recover_or_raise(pool: Pool, number: int, force: bool = False,
                      verifier: Verifier | None = None, judged: Slot | None = None) -> Recovery:
    outcome = recover(pool, number, force=force, verifier=verifier, judged=judged)
    if not outcome.recovered:
        raise OperationFailed(outcome.error or "recovery failed")
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
    """Write back what was read from a backup copy or rebuilt (and the schema stub)."""
    with pool.transaction():
        pass


def _remove_lock(pool: Pool, anomaly: Anomaly) -> None:
    """Remove a lock file only if it is still stale, judged again under the pool lock."""
    path = Path(str(anomaly.path))
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
        slot = current.slots.get(anomaly.number) if anomaly.number else None
        if slot is None or slot.state == CLEANING or (slot.state == ALLOCATED
                                                      and not holder_dead(pool, slot)):
            raise Conflict(f"{path} is in a slot in use: left for its holder")
        if path in slotgit.stale_git_locks(pool.slot_dir(slot.number)):
            path.unlink(missing_ok=True)


def _orphan_slot(pool: Pool, path: Path) -> bool:
    return (path.parent == pool.paths.slots and path.name.isdigit() and int(path.name) >= 1
            and not path.is_symlink() and (path / ".git").is_dir())


def _adopt(pool: Pool, number: int) -> Recovery:
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
        make_private(target)
    for directory in (pool.paths.locks, pool.paths.slots, pool.paths.rescued):
        directory.mkdir(exist_ok=True)
