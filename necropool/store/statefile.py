"""``state.toml`` on disk: every write goes to ``state.toml.bak`` and then ``state.toml``,
each atomically, so a damaged main file falls back to an identical copy; when both are
unreadable the state is rebuilt from the slot directories (``rebuild``)."""

import os
import tomllib
from pathlib import Path

from necropool.ground.errors import OperationFailed, UsageError
from necropool.ground.layout import PoolPaths, write_atomic
from necropool.store.model import ERROR, SCHEMA_VERSION, PoolState, Slot
from necropool.store.rebuild import behind_the_log, rebuild


class StateError(OperationFailed):
    """A state file this version must not touch (for example from a newer necropool)."""


def _parse(raw: bytes) -> PoolState:
    data = tomllib.loads(raw.decode())
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ValueError("schema_version missing")
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state was written by a newer necropool (schema_version {version}); "
            f"this version understands {SCHEMA_VERSION}: upgrade necropool"
        )
    slots_table = data.get("slots", {})
    if not isinstance(slots_table, dict):
        raise ValueError("slots is not a table")
    state = PoolState()
    for key, entry in slots_table.items():
        if not key.isdigit() or int(key) < 1:
            continue
        number = int(key)
        try:
            state.slots[number] = Slot.from_dict(number, entry)
        except (ValueError, KeyError, TypeError) as exc:
            state.problems[number] = f"state entry unreadable: {exc}"
            state.slots[number] = Slot(number=number, state=ERROR,
                                       error=state.problems[number])
    return state


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def load(paths: PoolPaths) -> PoolState:
    """Read the state: main file, then its copy, then a rebuild from the slot directories."""
    reasons = []
    for path in (paths.state, paths.state_backup):
        try:
            raw = _read(path)
        except OSError as exc:
            reasons.append(f"{path.name}: {exc.strerror}")
            continue
        if raw is None:
            reasons.append(f"{path.name}: missing")
            continue
        try:
            state = _parse(raw)
        except StateError:
            raise
        except (ValueError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            reasons.append(f"{path.name}: {exc}")
            continue
        state.source = path.name
        return behind_the_log(paths, state) if path == paths.state_backup else state
    if os.path.lexists(paths.in_ledger):
        raise UsageError(f"pool {paths.name!r} keeps its state in a shared ledger "
                         f"({_ledger_of(paths)}): pass --ledger or set NECROPOOL_LEDGER "
                         f"('necropool ledger export {paths.name}' brings it back here)")
    return rebuild(paths, "; ".join(reasons))


def _ledger_of(paths: PoolPaths) -> str:
    try:
        return paths.in_ledger.read_text(errors="replace").strip()[:200]
    except OSError:
        return "unreadable"


def save(paths: PoolPaths, state: PoolState, sync_dir: bool = True) -> None:
    """Write both copies atomically, the backup first; the main file durably (its fsync
    before the rename: whatever happens, it is a whole valid state, old or new). The backup
    is for a main file damaged later, not by a crash, so it is not fsynced itself (one
    fsync less under the pool lock; ext4 with its defaults commits it with the main file):
    a power loss may leave it empty, and the next write replaces it. One directory fsync
    makes both renames durable; ``sync_dir=False`` leaves it to the caller."""
    data = state.to_toml()
    write_atomic(paths.state_backup, data, sync_dir=False, sync=False)
    write_atomic(paths.state, data, sync_dir=sync_dir)
