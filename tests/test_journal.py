"""The host's memory of its slots' leases (``store.journal``) reads back every lease it
wrote: a lease it cannot read back would look, to the failover check, like one the ledger
granted elsewhere, and be adopted again on every detect (a dry run then writes)."""

from dataclasses import replace

import pytest

from necropool.ground.config import PoolSpec, load_settings
from necropool.ground.layout import PoolPaths
from necropool.ground.proc import Holder
from necropool.ground.users import HolderUser
from necropool.manager.facade import PoolManager
from necropool.pool import divergence
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


@pytest.mark.parametrize("lease", LEASES.values(), ids=LEASES.keys())
def test_a_lease_granted_in_a_ledger_reads_back_as_the_host_remembers_it(
        ledger_dsn, root, upstream, monkeypatch, lease):
    """Each of the lease's fields is in the ledger, its user too (``allocate --user``): the
    lease read back equals the one granted and the one in the host's memory, so the
    failover check sees no divergence."""
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    manager = PoolManager(load_settings())
    manager.create_pool(PoolSpec(name="web", url=str(upstream), num_slots=1))
    pool = manager.get_pool("web")
    granted = pool.store.claim(lease, take=lambda slot: True)
    assert granted is not None and granted.lease is not None
    assert (granted.lease.user, granted.lease.ref) == (lease.user, lease.ref)
    read = pool.store.snapshot().slots[1]
    assert read.lease == granted.lease == journal.recall(pool.paths, 1).lease
    assert divergence.judge(pool, read) is None
    pool.store.end_lease(1, lease.lease_id)
    assert pool.store.snapshot().slots[1].lease is None
    assert journal.recall(pool.paths, 1).ended == [lease.lease_id]
