"""The host's memory of its slots' leases (``store.journal``) reads back every lease it
wrote: a lease it cannot read back would look, to the failover check, like one the ledger
granted elsewhere, and be adopted again on every detect (a dry run then writes)."""

from dataclasses import replace

import pytest

from necropool.ground.layout import PoolPaths
from necropool.ground.proc import Holder
from necropool.ground.users import HolderUser
from necropool.store import journal
from necropool.store.model import Lease, Slot, SlotState

LEASES = {
    "plain": Lease.new("ci", None, None, {}),
    "ttl, holder, metadata": Lease.new("ci", Holder.me(), 60, {"job": "42"}),
    "ref": Lease.new("ci", None, None, {}, ref="refs/pull/7/head"),
    "user": replace(Lease.new("ci", None, None, {}), user=HolderUser("nobody", 65534, 65534)),
}


@pytest.mark.parametrize("lease", LEASES.values(), ids=LEASES.keys())
def test_a_remembered_lease_is_recalled_as_written(tmp_path, lease):
    paths = PoolPaths(tmp_path, "web")
    paths.dir.mkdir(parents=True)
    slot = Slot(number=1, state=SlotState.ALLOCATED, lease=lease)
    journal.remember(paths, 1, slot)
    assert journal.recall(paths, 1).lease == lease
    journal.remember(paths, 1, slot)  # the same lease again: still one lease, none ended
    memory = journal.recall(paths, 1)
    assert memory.lease == lease and memory.ended == []
