"""Durable pool state: ``state.toml`` (slots, leases, statistics), schema-versioned.

Every write goes to ``state.toml.bak`` and then ``state.toml``, each atomically, so a
damaged main file falls back to an identical copy; when both are unreadable the state
is rebuilt from the slot directories on disk (every slot then needs recovery).
"""

import os
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

import tomli_w

from necropool.clock import now
from necropool.errors import OperationFailed, UsageError
from necropool.layout import PoolPaths, write_atomic
from necropool.proc import Holder
from necropool.validate import utf8_safe

SCHEMA_VERSION = 1


class SlotState(StrEnum):
    """A slot's states; each equals its string (``slot.state == SlotState.ERROR``)."""

    AVAILABLE = "available"
    ALLOCATED = "allocated"
    CLEANING = "cleaning"
    ERROR = "error"


AVAILABLE, ALLOCATED, CLEANING, ERROR = (SlotState.AVAILABLE, SlotState.ALLOCATED,
                                         SlotState.CLEANING, SlotState.ERROR)
STATES = tuple(SlotState)


@dataclass
class Lease:
    """A slot's allocation: ``lease_id`` is its fencing token."""

    lease_id: str
    owner: str
    allocated_at: datetime
    expires_at: datetime | None = None
    holder: Holder | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    ttl_seconds: float | None = None  # what ``renew`` extends by when given no new TTL

    @classmethod
    def new(cls, owner: str, holder: Holder | None, ttl: float | None,
            metadata: dict[str, str]) -> "Lease":
        """A fresh lease from now (a random id; expiring after ``ttl`` seconds if given)."""
        at = now()
        return cls(lease_id=os.urandom(8).hex(), owner=owner, allocated_at=at,
                   expires_at=at + timedelta(seconds=ttl) if ttl else None, holder=holder,
                   metadata=metadata, ttl_seconds=ttl or None)

    def to_dict(self) -> dict:
        data = {"lease_id": self.lease_id, "owner": self.owner, "allocated_at": self.allocated_at,
                "expires_at": self.expires_at, "ttl_seconds": self.ttl_seconds,
                "metadata": self.metadata}
        if self.holder:
            data["holder"] = self.holder.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Lease":
        holder = data.get("holder")
        return cls(
            lease_id=_str(data["lease_id"]),
            owner=_str(data.get("owner", "")),
            allocated_at=_time(data["allocated_at"]),
            expires_at=_time(data["expires_at"]) if "expires_at" in data else None,
            holder=Holder.from_dict(holder) if holder else None,
            metadata={str(k): _str(v) for k, v in data.get("metadata", {}).items()},
            ttl_seconds=float(data["ttl_seconds"]) if "ttl_seconds" in data else None,
        )


@dataclass
class Slot:
    """One slot's entry in ``state.toml``: its state, lease and statistics."""

    number: int
    state: SlotState = AVAILABLE
    created_at: datetime | None = None
    commit: str | None = None  # the commit the slot was last cleaned to
    needs_cleanup: bool = False
    lease: Lease | None = None
    worker: Holder | None = None  # who is cleaning or repairing it
    allocation_count: int = 0
    total_usage_seconds: float = 0.0
    last_allocated_at: datetime | None = None
    last_released_at: datetime | None = None
    error: str | None = None
    isolated_at: datetime | None = None
    isolation_reason: str | None = None
    last_rescue: str | None = None

    def to_dict(self) -> dict:
        data = {k: v for k, v in vars(self).items() if k not in ("number", "lease", "worker")}
        if self.lease:
            data["lease"] = self.lease.to_dict()
        if self.worker:
            data["worker"] = self.worker.to_dict()
        return _drop_none(data)

    @classmethod
    def from_dict(cls, number: int, data: dict) -> "Slot":
        if not isinstance(data, dict):
            raise ValueError("entry is not a table")
        raw = data.get("state")
        if raw not in STATES:
            raise ValueError(f"unknown state {raw!r}")
        state = SlotState(raw)
        times = ("created_at", "last_allocated_at", "last_released_at", "isolated_at")
        texts = ("commit", "error", "isolation_reason", "last_rescue")
        slot = cls(number=number, state=state)
        for key in times:
            if key in data:
                setattr(slot, key, _time(data[key]))
        for key in texts:
            if key in data:
                setattr(slot, key, _str(data[key]))
        slot.needs_cleanup = bool(data.get("needs_cleanup", False))
        slot.allocation_count = int(data.get("allocation_count", 0))
        slot.total_usage_seconds = float(data.get("total_usage_seconds", 0.0))
        if "lease" in data:
            slot.lease = Lease.from_dict(data["lease"])
        if "worker" in data:
            slot.worker = Holder.from_dict(data["worker"])
        if state == ALLOCATED and slot.lease is None:
            raise ValueError("allocated without a lease")
        return slot


def allocation_order(slot: Slot) -> tuple:
    """Which free slot is handed out first: clean ones first, then the most recently
    released, then by number."""
    released = slot.last_released_at.timestamp() if slot.last_released_at else 0.0
    return (slot.needs_cleanup, -released, slot.number)


@dataclass
class PoolState:
    """Every slot of a pool, and where the state was read from."""

    slots: dict[int, Slot] = field(default_factory=dict)
    source: str = "state.toml"  # or "state.toml.bak", "rebuilt", "new"
    problems: dict[int, str] = field(default_factory=dict)  # slot -> why its entry was unreadable

    def to_toml(self) -> bytes:
        body = {"schema_version": SCHEMA_VERSION,
                "slots": {str(n): s.to_dict() for n, s in sorted(self.slots.items())}}
        return tomli_w.dumps(body).encode()


def _drop_none(data):
    """Without None values; strings made valid UTF-8 (a message may quote a file name that
    is not), or writing the state would fail."""
    if isinstance(data, dict):
        return {utf8_safe(k): _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, str):
        return utf8_safe(data)
    return data


def _str(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _time(value) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"expected a UTC time, got {value!r}")
    return value


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
        return state
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


def rebuild(paths: PoolPaths, why: str) -> PoolState:
    """State from what is on disk: every slot directory becomes a slot in ``error``. One
    provably idle (see ``_idle``) needs recovery; any other may still have a holder at
    work, so it is isolated, its work left as it is, until an operator recovers it."""
    state = PoolState(source="rebuilt")
    try:
        names = os.listdir(paths.slots)
    except OSError:
        names = []
    for name in names:
        if name.isdigit() and int(name) >= 1:
            number = int(name)
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
    # only a rebuild needs them (lockmaint also imports this module)
    from necropool import git
    from necropool.locks import lock_free
    from necropool.proc import describe, processes_in

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
