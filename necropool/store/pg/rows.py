"""A slot as a row of the ledger's ``slots`` table and back: times moved between the
server's clock and this client's, JSON columns, text that PostgreSQL cannot hold (NUL)."""

import json
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from necropool.ground.clock import now
from necropool.ground.proc import Holder
from necropool.ground.users import HolderUser
from necropool.store.model import Lease, Slot, SlotState

# The time columns of ``slots`` (moved between the clocks).
TIMES = ("allocated_at", "expires_at", "created_at", "last_allocated_at", "last_released_at",
         "isolated_at")
# The free slot handed out first: ``state.allocation_order`` in SQL.
ORDER = "needs_cleanup, last_released_at DESC NULLS LAST, number"


def json_value(value: Any) -> Any:
    """A value for a jsonb column (NUL, which jsonb cannot hold, replaced)."""
    from psycopg.types.json import Jsonb  # lazy: as in pgconn.connect

    if value is None:
        return None
    return Jsonb(json.loads(json.dumps(value, default=str).replace("\\u0000", "\\ufffd")))


def text(value: str | None) -> str | None:
    return value.replace("\0", "\ufffd") if value is not None else None


def row_of(slot: Slot, path: Path, shift: timedelta) -> dict[str, Any]:
    """The column values of ``slot`` (times moved back to the server's clock)."""
    lease = slot.lease
    holder = lease.holder if lease else None
    values: dict[str, Any] = {
        "path": str(path), "state": str(slot.state),
        "lease_id": lease.lease_id if lease else None,
        "owner": text(lease.owner) if lease else None,
        "holder_pid": holder.pid if holder else None,
        "holder_start": holder.start if holder else None,
        "holder": holder.to_dict() if holder else None,
        "allocated_at": lease.allocated_at if lease else None,
        "expires_at": lease.expires_at if lease else None,
        "ttl_seconds": lease.ttl_seconds if lease else None,
        "metadata": lease.metadata if lease else None,
        "ref": text(lease.ref) if lease else None,
        "lease_user": lease.user.to_dict() if lease and lease.user else None,
        "worker": slot.worker.to_dict() if slot.worker else None,
        "created_at": slot.created_at, "commit": slot.commit,
        "needs_cleanup": slot.needs_cleanup, "allocation_count": slot.allocation_count,
        "total_usage_seconds": slot.total_usage_seconds,
        "last_allocated_at": slot.last_allocated_at, "last_released_at": slot.last_released_at,
        "error": text(slot.error), "isolated_at": slot.isolated_at,
        "isolation_reason": text(slot.isolation_reason), "last_rescue": text(slot.last_rescue),
    }
    for key in TIMES:
        if values[key] is not None:
            values[key] = values[key] - shift
    return values


def slot_of(row: dict[str, Any], shift: timedelta) -> Slot:
    """A row as a Slot, its times moved into this client's clock."""
    times = {key: row[key].astimezone(UTC) + shift if row[key] is not None else None
             for key in TIMES}
    lease = None
    if row["lease_id"] is not None:
        lease = Lease(lease_id=row["lease_id"], owner=row["owner"] or "",
                      allocated_at=times["allocated_at"] or now(),
                      expires_at=times["expires_at"],
                      holder=Holder.from_dict(row["holder"]) if row["holder"] else None,
                      metadata=row["metadata"] or {}, ttl_seconds=row["ttl_seconds"],
                      ref=row["ref"], user=HolderUser.from_dict(row["lease_user"])
                      if row["lease_user"] else None)
    return Slot(number=row["number"], state=SlotState(row["state"]),
                created_at=times["created_at"], commit=row["commit"],
                needs_cleanup=row["needs_cleanup"], lease=lease,
                worker=Holder.from_dict(row["worker"]) if row["worker"] else None,
                allocation_count=row["allocation_count"],
                total_usage_seconds=row["total_usage_seconds"],
                last_allocated_at=times["last_allocated_at"],
                last_released_at=times["last_released_at"], error=row["error"],
                isolated_at=times["isolated_at"], isolation_reason=row["isolation_reason"],
                last_rescue=row["last_rescue"])



def param(item: tuple[str, Any]) -> Any:
    key, value = item
    return json_value(value) if key in ("holder", "metadata", "worker", "lease_user") else value

