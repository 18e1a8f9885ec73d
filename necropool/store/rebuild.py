"""A pool's state rebuilt from what is on disk, when both copies of its state (or of one
slot's file) are lost: no slot is handed out that a holder may still be using."""

import os

from necropool.git import commands as git
from necropool.ground.clock import now
from necropool.ground.errors import OperationFailed
from necropool.ground.layout import PoolPaths
from necropool.ground.locks import lock_free
from necropool.ground.proc import describe, processes_in
from necropool.store.model import ERROR, PoolState, Slot


def rebuild(paths: PoolPaths, why: str) -> PoolState:
    """State from what is on disk: every slot directory becomes a slot in ``error``
    (``rebuilt_slot``)."""
    state = PoolState(source="rebuilt")
    try:
        names = os.listdir(paths.slots)
    except OSError:
        names = []
    for name in names:
        if name.isdigit() and int(name) >= 1:
            slot = rebuilt_slot(paths, int(name), why)
            state.slots[slot.number] = slot
            if slot.isolated_at is None:
                state.problems[slot.number] = slot.error or why
    return state


def rebuilt_slot(paths: PoolPaths, number: int, why: str) -> Slot:
    """A slot whose state is lost, in ``error``. One provably idle (see ``_busy``) needs
    recovery; any other may still have a holder at work, so it is isolated, its work left
    as it is, until an operator recovers it."""
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
