"""A pool's state rebuilt from what is on disk, when both copies of its state (or of one
slot's file) are lost: no slot is handed out that a holder may still be using. A lease the
event log shows open (its last ``allocate`` or ``renew`` without a later end) is kept, under
its own ``lease_id``, so its holder can still renew and release it."""

import os
from typing import Any

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
    """State from what is on disk: every slot directory becomes a slot in ``error``
    (``rebuilt_slot``)."""
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
            slot = rebuilt_slot(paths, number, why)
            state.slots[number] = slot
            if slot.isolated_at is None:
                state.problems[number] = slot.error or why
    return state


def rebuilt_slot(paths: PoolPaths, number: int, why: str) -> Slot:
    """A slot whose state is lost, in ``error``. One provably idle (see ``_busy``) needs
    recovery; any other may still have a holder at work, so it is isolated, its work left
    as it is, until an operator recovers it. A lease the event log shows open is kept
    instead (``open_leases``)."""
    lease = open_leases(paths).get(number)
    if lease is not None:
        return _leased(number, lease)
    busy = _busy(paths, number)
    if busy is None:
        return Slot(number=number, state=ERROR,
                    error=f"state rebuilt from disk ({why}): run recover")
    reason = (f"state rebuilt from disk ({why}); isolated, as a holder may still "
              f"work in it ({busy}): recover it once its work is done")
    return Slot(number=number, state=ERROR, error=reason, isolated_at=now(),
                isolation_reason=reason)


def _busy(paths: PoolPaths, number: int) -> str | None:
    """Why a slot may still be in use, or None when it is provably idle: no process in it,
    its slot lock free, and its tree as a cleanup leaves it (no change, untracked or
    ignored file, local branch or stash)."""
    path = paths.slot_dir(number)
    if os.path.islink(path) or not os.path.isdir(path / ".git"):
        return None  # nothing a holder can work in: recovery re-clones it
    pids = processes_in(path, paths.readers)
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


def _lease_of(record: dict[str, Any], earlier: Lease | None) -> Lease:
    """A lease as the log tells it: no holder (a pid alone could name another process now)
    and no expiry, so nothing reclaims it behind its holder's back; ``detect`` reports it
    once it has been held past the allocation hours."""
    try:
        at = parse_rfc3339(str(record["time"]))
    except (KeyError, ValueError):
        at = now()
    owner, ref = record.get("owner"), record.get("ref")
    return Lease(lease_id=record["lease_id"],
                 owner=owner if isinstance(owner, str) else earlier.owner if earlier else "",
                 allocated_at=earlier.allocated_at if earlier else at,
                 metadata={"rebuilt_from": "events.jsonl"},
                 ref=ref if isinstance(ref, str) else earlier.ref if earlier else None)


def _leased(number: int, lease: Lease) -> Slot:
    return Slot(number=number, state=ALLOCATED, lease=lease,
                last_allocated_at=lease.allocated_at)
