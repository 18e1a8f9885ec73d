"""The host's own memory of its slots' leases in a shared ledger: the lease each slot of
this host last had as this host wrote it, and the leases it saw end. A ledger restored
from an earlier dump (an asynchronous failover) forgets what was decided since; the host,
whose disk the slots are on, does not: ``pool.divergence`` compares the two before a slot
is handed out and when ``detect`` runs.

One small file per slot (``records/<n>.lease.json``, the pool's alone, out of any holder's
reach), replaced atomically, not flushed: it guards against the ledger going back, not
against this host losing power (then its holders are gone too).
"""

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from necropool.ground.layout import PoolPaths, write_atomic
from necropool.store.model import Lease, Slot

KEEP_ENDED = 16  # leases remembered as ended, per slot: a restore goes back minutes, not days


@dataclass
class Memory:
    """What this host knows of one slot's leases."""

    lease: Lease | None = None  # the slot's lease as this host last wrote it
    ended: list[str] = field(default_factory=list)  # leases it saw end, newest last

    def to_json(self) -> bytes:
        lease = self.lease.to_dict() if self.lease else None
        return json.dumps({"lease": lease, "ended": self.ended[-KEEP_ENDED:]},
                          default=lambda t: t.isoformat() if isinstance(t, datetime) else str(t)
                          ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Memory":
        data = json.loads(raw)
        # a null is a field the lease lacks, whichever (``to_dict`` writes them all)
        lease = {k: v for k, v in (data.get("lease") or {}).items() if v is not None}
        for key in ("allocated_at", "expires_at"):
            if key in lease:
                lease[key] = datetime.fromisoformat(lease[key])
        return cls(Lease.from_dict(lease) if lease else None,
                   [str(e) for e in data.get("ended", [])])


def path(paths: PoolPaths, number: int) -> Path:
    return paths.records / f"{number}.lease.json"


def recall(paths: PoolPaths, number: int) -> Memory:
    """The slot's memory; an empty one when there is none (a slot never leased here, a
    host that ran an older necropool) or it cannot be read (never trusted then)."""
    try:
        fd = os.open(path(paths, number), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            return Memory.from_json(fh.read())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Memory()


def _store(paths: PoolPaths, number: int, memory: Memory) -> None:
    paths.records.mkdir(mode=0o700, exist_ok=True)
    write_atomic(path(paths, number), memory.to_json(), sync_dir=False, sync=False)


def remember(paths: PoolPaths, number: int, slot: Slot) -> None:
    """The slot as this host just wrote it to the ledger: its lease, or none (the one it
    had ended). Nothing to write when neither has a lease (a slot being made, say)."""
    memory = recall(paths, number)
    if memory.lease is None and slot.lease is None:
        return
    now_id = slot.lease.lease_id if slot.lease else None
    if memory.lease is not None and memory.lease.lease_id != now_id:
        memory.ended.append(memory.lease.lease_id)
    memory.lease = slot.lease
    _store(paths, number, memory)


def ended(paths: PoolPaths, number: int, lease_id: str) -> None:
    """Lease ``lease_id`` of the slot ended (here, or as the ledger's history says)."""
    memory = recall(paths, number)
    if memory.lease is not None and memory.lease.lease_id == lease_id:
        memory.lease = None
    if lease_id not in memory.ended:
        memory.ended.append(lease_id)
    _store(paths, number, memory)


def forget(paths: PoolPaths, number: int) -> None:
    """The slot is gone (removed from the pool)."""
    path(paths, number).unlink(missing_ok=True)

