"""The store interface on both stores (TOML files, a PostgreSQL ledger): the lease operations
(claim one free slot, renew and end a lease fenced by its id), and the history."""

from datetime import timedelta

import pytest

from necropool.ground.clock import now
from necropool.ground.errors import NotFound
from necropool.store.base import LeaseLost
from necropool.store.model import ALLOCATED, AVAILABLE, CLEANING, Lease

pytestmark = pytest.mark.usefixtures("ledger")


def new_lease(lease_id: str) -> Lease:
    return Lease(lease_id=lease_id, owner="ci", allocated_at=now())


def test_claim_grants_each_free_slot_once_then_none(manager, pool):
    store = manager.get_pool(pool).store
    claimed = [store.claim(new_lease(f"l{i}"), take=lambda slot: True) for i in range(4)]
    assert sorted(s.number for s in claimed[:3]) == [1, 2, 3]
    assert claimed[3] is None, "three slots: the fourth claim finds none free"
    state = store.snapshot()
    assert {n: (s.state, s.lease.lease_id) for n, s in state.slots.items()} == {
        s.number: (ALLOCATED, s.lease.lease_id) for s in claimed[:3]}


def test_claim_skips_what_the_caller_cannot_take(manager, pool):
    store = manager.get_pool(pool).store
    slot = store.claim(new_lease("a"), take=lambda s: s.number != 1, skip=frozenset({2}))
    assert slot is not None and slot.number == 3
    assert store.snapshot().slots[1].state == AVAILABLE


def test_renew_and_end_are_fenced_by_the_lease_id(manager, pool):
    store = manager.get_pool(pool).store
    slot = store.claim(new_lease("mine"), take=lambda s: True)
    later = now() + timedelta(hours=1)
    with pytest.raises(LeaseLost):
        store.renew(slot.number, "someone-else", 3600)
    renewed = store.renew(slot.number, "mine", 3600)
    # a ledger takes the time from its own clock: the same within the call's duration
    assert abs(renewed.lease.expires_at - later) < timedelta(seconds=2)
    assert renewed.lease.ttl_seconds == 3600
    with pytest.raises(LeaseLost):
        store.end_lease(slot.number, "someone-else")
    before = store.end_lease(slot.number, "mine")
    assert before.lease.lease_id == "mine"
    after = store.snapshot().slots[slot.number]
    assert (after.state, after.lease) == (CLEANING, None)
    with pytest.raises(LeaseLost):  # ended: the same id no longer fences in
        store.renew(slot.number, "mine", 3600)


def test_events_are_appended_and_read_back_in_order(manager, pool):
    store = manager.get_pool(pool).store
    store.append_event("note", slot_id=f"{pool}-1", detail="first")
    store.append_event("note", slot_id=f"{pool}-2", detail="second")
    notes = [e for e in store.read_events() if e["event"] == "note"]
    assert [(e["pool"], e["detail"]) for e in notes] == [(pool, "first"), (pool, "second")]
    assert store.last_event("note")["detail"] == "second"
    assert store.last_event("no-such-event") is None


def test_end_lease_checks_first_and_update_slot_changes_one_slot(manager, pool):
    store = manager.get_pool(pool).store
    slot = store.claim(new_lease("mine"), take=lambda s: True)

    def refuse(leased):
        raise RuntimeError(f"not now: {leased.lease.lease_id}")

    with pytest.raises(RuntimeError, match="not now: mine"):
        store.end_lease(slot.number, None, check=refuse)
    assert store.snapshot().slots[slot.number].lease.lease_id == "mine", "refused: unchanged"
    assert store.end_lease(slot.number, None).lease.lease_id == "mine"  # None: whichever
    with pytest.raises(LeaseLost):
        store.end_lease(slot.number, None)
    saved = store.update_slot(slot.number, lambda s: setattr(s, "state", AVAILABLE))
    assert saved.state == store.snapshot().slots[slot.number].state == AVAILABLE
    with pytest.raises(NotFound):
        store.update_slot(99, lambda s: None)
