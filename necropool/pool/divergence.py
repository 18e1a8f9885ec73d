"""A shared ledger that disagrees with the host about the host's own slots: what a ledger
restored from an earlier dump (an asynchronous failover) forgets. The host is the truth for
its slots: it remembers the leases it wrote (``store.journal``) and it sees their trees and
processes.

``judge`` compares one slot's row with that memory. It adopts what the ledger learned from
elsewhere (a lease granted or ended from another host, which its history records) and
returns a ``Divergence`` for what the ledger cannot have learned: a lease the host holds
that the ledger lost, a lease the ledger holds that the host ended. ``reconcile`` moves the
row to the safe side: the host's lease back, else the slot free only when nothing is in it
(no process, its tree as its cleanup sealed it), else isolated. (A free slot on which both
agree, with processes in it, is a released holder's leftovers: ``allocate`` ends them and
cleans it first, saving what is there, as it does without a ledger.)
"""

from dataclasses import dataclass, replace

from necropool.ground import proc
from necropool.ground.clock import now
from necropool.ground.errors import Skipped
from necropool.pool.pool import Pool
from necropool.slot import lastclean
from necropool.store import journal
from necropool.store.base import Event
from necropool.store.model import ALLOCATED, AVAILABLE, CLEANING, ERROR, Lease, Slot

# The events that end a lease (``lease.renew.ENDINGS`` says each one's words).
LEASE_ENDS = frozenset({"release", "reclaim", "expire", "force_release", "recover", "takeover"})

RECREATE, END = "recreate", "end"  # the host's lease written back; the ledger's ended


@dataclass
class Divergence:
    """Slot ``number``'s row disagrees with its host: ``remedy`` is RECREATE (``lease``,
    the host's, written back in place of ``ledger_lease``) or END (``ledger_lease`` ended,
    the slot free if nothing is in it, else isolated)."""

    number: int
    evidence: str
    remedy: str
    lease: Lease | None
    ledger_lease: str | None


def _ended_in_history(pool: Pool, lease_id: str) -> bool:
    """True when the ledger's history has the lease ended (from another host, say)."""
    return any(e.get("event") in LEASE_ENDS for e in pool.store.lease_events(lease_id))


def judge(pool: Pool, slot: Slot) -> Divergence | None:
    """Slot ``slot`` (this host's, as the ledger has it) against the host's memory; None
    when they agree (the memory brought up to what the ledger learned from elsewhere).
    One history query at most, only where they differ."""
    number, paths = slot.number, pool.paths
    memory = journal.recall(paths, number)
    theirs = slot.lease.lease_id if slot.state == ALLOCATED and slot.lease else None
    mine = memory.lease
    if theirs is not None and theirs == (mine.lease_id if mine else None):
        return None
    if theirs is not None and theirs in memory.ended:
        if mine is not None and not _ended_in_history(pool, mine.lease_id):
            return Divergence(number, f"the ledger has lease {theirs}, which this host ended; "
                              f"this host granted lease {mine.lease_id} since",
                              RECREATE, mine, theirs)
        return Divergence(number, f"the ledger has lease {theirs}, which this host ended",
                          END, None, theirs)
    if mine is not None and not _ended_in_history(pool, mine.lease_id):
        if slot.state == CLEANING:
            return None  # this host's worker is at it (the lease ended here since)
        held = f"lease {theirs}" if theirs else f"it {slot.state}"
        return Divergence(number, f"this host granted lease {mine.lease_id}, which the ledger "
                          f"does not have (the ledger has {held})", RECREATE, mine, theirs)
    if mine is not None:
        journal.ended(paths, number, mine.lease_id)  # ended from elsewhere: adopted
    if theirs is not None:
        journal.remember(paths, number, slot)  # granted from elsewhere: adopted
    return None


def reconcile(pool: Pool, found: Divergence) -> str:
    """Move the slot's row to the safe side of ``found``, fenced by the ledger's lease as
    it was judged (``Skipped`` if it moved since); returns what was done. Never cleans: a
    lease written back is the holder's to release, whose work is saved then under it; a
    slot left with anything in it is isolated (``recover`` saves what is there)."""
    number, sid = found.number, pool.slot_id(found.number)
    outcome: list[str] = []

    def change(slot: Slot) -> None:
        theirs = slot.lease.lease_id if slot.state == ALLOCATED and slot.lease else None
        if theirs != found.ledger_lease:
            raise Skipped(f"slot {sid} changed in the ledger since it was judged")
        if found.remedy == RECREATE and found.lease is not None:
            slot.state, slot.lease, slot.worker = ALLOCATED, replace(found.lease), None
            slot.error = slot.isolated_at = slot.isolation_reason = None
            outcome.append(f"lease {found.lease.lease_id} written back")
            return
        slot.lease, slot.worker = None, None
        why = (busy and f"processes run in it ({proc.describe(busy)})") or lastclean.touched(
            pool.slot_dir(number), pool.paths.slot_record(number))
        if why:
            slot.state, slot.isolated_at = ERROR, now()
            slot.error = slot.isolation_reason = (f"ledger divergence ({found.evidence}); "
                                                  f"{why}: isolated")
            outcome.append("isolated")
        else:
            slot.state = AVAILABLE
            outcome.append("free again (untouched since its cleanup)")

    def noted(slot: Slot) -> list[Event]:
        return [("ledger_reconciled", dict(
            slot_id=sid, lease_id=slot.lease.lease_id if slot.lease else None,
            ledger_lease=found.ledger_lease, evidence=found.evidence, action=outcome[-1]))]

    busy = proc.processes_in(pool.slot_dir(number), pool.paths.readers)
    pool.store.update_slot(number, change, noted)
    return outcome[-1]
