"""The state model of a pool: slots, their states and leases, and their TOML form
(schema-versioned). Reading and writing the files is ``statefile``."""

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from necropool.ground.clock import now
from necropool.ground.errors import UsageError
from necropool.ground.proc import Holder
from necropool.ground.users import HolderUser
from necropool.ground.validate import utf8_safe

SCHEMA_VERSION = 2  # 1: one state.toml for every slot; 2: a file per slot (statefile)


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
    user: HolderUser | None = None  # the local user the slot was handed to (``--user``)
    ref: str | None = None  # the ref the holder asked for (``allocate --ref``)

    @classmethod
    def new(cls, owner: str, holder: Holder | None, ttl: float | None,
            metadata: dict[str, str], ref: str | None = None) -> "Lease":
        """A fresh lease from now (a random id; expiring after ``ttl`` seconds if given)."""
        at = now()
        return cls(lease_id=os.urandom(8).hex(), owner=owner, allocated_at=at,
                   expires_at=at + timedelta(seconds=ttl) if ttl else None, holder=holder,
                   metadata=metadata, ttl_seconds=ttl or None, ref=ref)

    def renewal_ttl(self, ttl: float | None) -> float:
        """The TTL a renewal gives: ``ttl``, else the lease's own; UsageError without
        either."""
        renewal = ttl or self.ttl_seconds
        if not renewal:
            raise UsageError(f"lease {self.lease_id} has no TTL: pass --ttl to give it one")
        return renewal

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "lease_id": self.lease_id, "owner": self.owner, "allocated_at": self.allocated_at,
            "expires_at": self.expires_at, "ttl_seconds": self.ttl_seconds,
            "metadata": self.metadata, "ref": self.ref}
        if self.holder:
            data["holder"] = self.holder.to_dict()
        if self.user:
            data["user"] = self.user.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Lease":
        holder = data.get("holder")
        return cls(
            lease_id=_str(data["lease_id"]),
            owner=_str(data.get("owner", "")),
            allocated_at=_time(data["allocated_at"]),
            expires_at=_time(data["expires_at"]) if "expires_at" in data else None,
            holder=Holder.from_dict(holder) if holder else None,
            metadata={str(k): _str(v) for k, v in data.get("metadata", {}).items()},
            ttl_seconds=float(data["ttl_seconds"]) if "ttl_seconds" in data else None,
            user=HolderUser.from_dict(data["user"]) if data.get("user") else None,
            ref=_str(data["ref"]) if data.get("ref") is not None else None,
        )


def user_fields(lease: Lease | None) -> dict[str, Any]:
    """An event's fields naming the user a lease's slot was handed to (none without one)."""
    if lease is None or lease.user is None:
        return {}
    return {"user": lease.user.name, "user_uid": lease.user.uid}


@dataclass
class Slot:
    """One slot's entry in the state: its state, lease and statistics."""

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

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k not in ("number", "lease", "worker")}
        if self.lease:
            data["lease"] = self.lease.to_dict()
        if self.worker:
            data["worker"] = self.worker.to_dict()
        return _drop_none(data)

    @classmethod
    def from_dict(cls, number: int, data: object) -> "Slot":
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


def allocation_order(slot: Slot) -> tuple[bool, float, int]:
    """Which free slot is handed out first: clean ones first, then the most recently
    released, then by number."""
    released = slot.last_released_at.timestamp() if slot.last_released_at else 0.0
    return allocation_key(slot.number, slot.needs_cleanup, released)


def allocation_key(number: int, needs_cleanup: bool, released: float) -> tuple[bool, float, int]:
    """``allocation_order`` from what the free list keeps of a slot (``released``: epoch
    seconds, 0 when never released)."""
    return (needs_cleanup, -released, number)


@dataclass
class PoolState:
    """Every slot of a pool, and where the state was read from."""

    slots: dict[int, Slot] = field(default_factory=dict)
    source: str = "state.toml"  # or "state.toml.bak", "rebuilt", "new" (statefile.SOURCES)
    problems: dict[int, str] = field(default_factory=dict)  # slot -> why its entry was unreadable


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    """Without None values; strings made valid UTF-8 (a message may quote a file name that
    is not), or writing the state would fail."""
    return {utf8_safe(k): _safe(v) for k, v in data.items() if v is not None}


def _safe(value: Any) -> Any:
    if isinstance(value, dict):
        return _drop_none(value)
    if isinstance(value, str):
        return utf8_safe(value)
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _time(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"expected a UTC time, got {value!r}")
    return value
