"""Leases: renewing one, why a lease is gone (for the holder that comes back late), and
``Release``, what ending one did."""

from dataclasses import dataclass, field
from typing import Any

from necropool.ground.clock import now, rfc3339
from necropool.ground.errors import Conflict, Skipped
from necropool.ground.validate import check_seconds
from necropool.pool.pool import Pool
from necropool.store.base import Event, LeaseLost, Store
from necropool.store.model import Lease, Slot


@dataclass
class Release:
    """What ``release`` did: the slot cleaned to ``commit`` (unless not asked to), the work
    it saved, the upstream fetch's error if it failed (the slot is cleaned regardless)."""

    slot_id: str
    pool: str
    lease_id: str
    cleaned: bool = False
    commit: str | None = None
    cleanup: dict[str, Any] | None = None
    rescued: str | None = None
    fetch_error: str | None = None
    ended: list[str] = field(default_factory=list)  # processes --force ended

    def to_dict(self) -> dict[str, Any]:
        return {"slot_id": self.slot_id, "pool": self.pool, "lease_id": self.lease_id,
                "cleaned": self.cleaned, "commit": self.commit, "cleanup": self.cleanup,
                "rescued": self.rescued, "fetch_error": self.fetch_error, "ended": self.ended}


def renew(pool: Pool, number: int, lease_id: str, ttl: float | None = None) -> Slot:
    """Extend a lease by ``ttl`` (default: the lease's own TTL) from now. An expired lease
    nobody has reclaimed yet may be renewed; a wrong or ended one is a conflict that says
    what became of it."""
    check_seconds(ttl, "ttl")
    pool.sweep()

    def noted(renewed: Slot) -> list[Event]:
        assert renewed.lease is not None and renewed.lease.expires_at is not None
        return [("renew", dict(slot_id=pool.slot_id(number), lease_id=lease_id,
                               ttl_seconds=renewed.lease.ttl_seconds,
                               expires_at=rfc3339(renewed.lease.expires_at)))]

    try:  # the lease checked where it is renewed, in one transaction (no read before)
        return pool.store.renew(number, lease_id, ttl, note=noted)
    except LeaseLost:
        raise Conflict(lease_gone(pool, number, lease_id)) from None


class Renewed(Skipped):
    """The holder renewed the lease between the expiry's detection and its reclaim."""


class Busy(Skipped):
    """The slot's lock is held by a live process (a stopped ``run``, say): not reclaimed
    while it lives, and nothing is wrong meanwhile."""


def expired(lease: Lease | None) -> bool:
    return bool(lease and lease.expires_at and lease.expires_at < now())


def was_released(store: Store, lease_id: str) -> bool:
    """True when the history has the lease ended by a release (its holder's): a release
    retried after its answer was lost is then done, not stale."""
    return any(e.get("event") == "release" for e in store.lease_events(lease_id))


def lease_gone(pool: Pool, number: int, lease_id: str, sid: str | None = None) -> str:
    """Why ``lease_id`` is not the slot's lease, from the history: who ended it, when, and
    where the holder's work went (``sid``: the slot's id, when it is another host's)."""
    sid = sid or pool.slot_id(number)
    ended = rescued = None
    for record in pool.store.lease_events(lease_id):
        if record.get("event") in ENDINGS:
            ended, rescued = record, record.get("rescued")
        elif record.get("event") == "cleanup" and ended is not None:
            rescued = record.get("rescued")
    if ended is None:
        return f"lease {lease_id} is not the current lease of slot {sid}"
    how = ENDINGS[ended["event"]]
    if rescued:
        saved = f"; the holder's work was saved to {rescued}"
    elif ended.get("slot_host"):  # ended from another host: cleaned when its host next can
        saved = (f"; host {ended['slot_host']} saves the holder's work under rescued/ "
                 "when it next cleans the slot")
    else:
        saved = "; it held no uncommitted or unpushed work"
    return f"lease {lease_id} of slot {sid} {how} at {ended['time']}{saved}"


# the events that end a lease, as ``renew`` explains them to a late holder
ENDINGS = {"release": "was released", "reclaim": "was reclaimed (its holder died)",
           "expire": "expired and was reclaimed by auto-recover",
           "force_release": "was force-released (allocated too long)",
           "recover": "was taken back by recover",
           "takeover": "was ended by a takeover of its holder's silent host"}
