"""A pool's state rebuilt from what is on disk, when both copies of ``state.toml`` are lost,
or checked against the event log when only the backup is left (it is not fsynced: after a
power loss it may be a write behind): no slot is handed out that a holder may still be using.
A lease the log shows open (its last ``allocate`` or ``renew`` without a later end) is kept,
under its own ``lease_id``, so its holder can still renew and release it."""

import os

from necropool.git import commands as git
from necropool.ground.clock import now, parse_rfc3339
from necropool.ground.errors import OperationFailed
from necropool.ground.layout import PoolPaths
from necropool.ground.locks import lock_free
from necropool.ground.proc import describe, processes_in
from necropool.store import events
from necropool.store.model import ALLOCATED, ERROR, Lease, PoolState, Slot

OPENS = frozenset({"allocate", "renew"})
ENDS = frozenset({"release", "reclaim", "expire", "force_release", "recover", "remove"})


def rebuild(paths: PoolPaths, why: str) -> PoolState:
    """State from what is on disk: every slot directory becomes a slot in ``error``. One
    provably idle (see ``_idle``) needs recovery; any other may still have a holder at
    work, so it is isolated, its work left as it is, until an operator recovers it."""
    state = PoolState(source="rebuilt")
    try:
        names = os.listdir(paths.slots)
    except OSError:
        names = []
    leases = open_leases(paths)
    for name in names:
        if name.isdigit() and int(name) >= 1:
            number = int(name)
            if number in leases:
                state.slots[number] = _leased(number, leases[number])
                continue
            busy = _busy(paths, number)
            if busy is None:
                reason = f"state rebuilt from disk ({why}): run recover"
                state.problems[number] = reason
                state.slots[number] = Slot(number=number, state=ERROR, error=reason)
            else:
                reason = (f"state rebuilt from disk ({why}); isolated, as a holder may still "
                          f"work in it ({busy}): recover it once its work is done")
                state.slots[number] = Slot(number=number, state=ERROR, error=reason,
                                           isolated_at=now(),
                                           isolation_reason=reason)
    return state


def _busy(paths: PoolPaths, number: int) -> str | None:
    """Why a slot may still be in use, or None when it is provably idle: no process in it,
    its slot lock free, and its tree as a cleanup leaves it (no change, untracked or
    ignored file, local branch or stash)."""
    path = paths.slot_dir(number)
    if os.path.islink(path) or not os.path.isdir(path / ".git"):
        return None  # nothing a holder can work in: recovery re-clones it
    pids = processes_in(path)
    if pids:
        return f"processes in it: {describe(pids)}"
    try:
        if not lock_free(paths.slot_lock(number)):
            return "its slot lock is held"
    except OSError:
        return "its slot lock cannot be tested"
    try:
        changes = git.run(["--no-optional-locks", "status", "--porcelain", "--ignored", "-z"],
                          path).stdout
        refs = git.run(["for-each-ref", "refs/heads", "refs/stash"], path).stdout
    except (OperationFailed, OSError):
        return "its tree cannot be read"
    if changes or refs:
        return "its tree has changes, files or local branches"
    return None


def open_leases(paths: PoolPaths) -> dict[int, Lease]:
    """Per slot, the lease the event log shows still open: its newest ``allocate`` or
    ``renew`` with no later end of that lease (release, reclaim, expiry, recover, remove)."""
    prefix = paths.name + "-"
    found: dict[int, Lease] = {}
    for record in events.read(paths.events):
        slot_id, kind = str(record.get("slot_id", "")), record.get("event")
        number = slot_id[len(prefix):]
        if not slot_id.startswith(prefix) or not number.isdigit():
            continue
        if kind in OPENS and isinstance(record.get("lease_id"), str):
            earlier = found.get(int(number))
            if kind == "allocate" or earlier is None or earlier.lease_id != record["lease_id"]:
                found[int(number)] = _lease_of(record, earlier)
        elif kind in ENDS:
            found.pop(int(number), None)
    return found


def _lease_of(record: dict, earlier: Lease | None) -> Lease:
    """A lease as the log tells it: no holder (a pid alone could name another process now)
    and no expiry, so nothing reclaims it behind its holder's back; ``detect`` reports it
    once it has been held past the allocation hours."""
    try:
        at = parse_rfc3339(str(record["time"]))
    except (KeyError, ValueError):
        at = now()
    owner = record.get("owner")
    return Lease(lease_id=record["lease_id"],
                 owner=owner if isinstance(owner, str) else earlier.owner if earlier else "",
                 allocated_at=earlier.allocated_at if earlier else at,
                 metadata={"rebuilt_from": "events.jsonl"})


def _leased(number: int, lease: Lease) -> Slot:
    return Slot(number=number, state=ALLOCATED, lease=lease,
                last_allocated_at=lease.allocated_at)


def behind_the_log(paths: PoolPaths, backup: PoolState) -> PoolState:
    """The backup state, with every slot the event log shows leased under another lease
    than the backup says (the backup is older than the log) given that lease back; a slot
    the backup does not know yet (added after it) is taken as the log tells, or isolated."""
    for number, lease in open_leases(paths).items():
        slot = backup.slots.get(number)
        if slot is not None and slot.lease is not None and slot.lease.lease_id == lease.lease_id:
            continue
        if slot is None and not os.path.isdir(paths.slot_dir(number)):
            continue
        kept = _leased(number, lease)
        if slot is not None:
            kept.created_at, kept.commit = slot.created_at, slot.commit
            kept.allocation_count = slot.allocation_count
            kept.total_usage_seconds = slot.total_usage_seconds
        backup.slots[number] = kept
    return backup
