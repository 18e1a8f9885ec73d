"""The store alone: a pool's state of N slots (half of them leased) made without cloning
anything, and the median cost of each operation of a lease cycle on it."""

import statistics
import time
from datetime import timedelta
from pathlib import Path

from necropool.ground.clock import now
from necropool.ground.layout import PoolPaths
from necropool.ground.proc import Holder
from necropool.store.model import ALLOCATED, AVAILABLE, Lease, Slot
from necropool.store.toml import TomlStore

COMMIT = "0" * 40


def make_pool(work: Path, slots: int) -> TomlStore:
    """A pool directory with ``slots`` slots in its state, every other one leased (what
    the store reads and writes; no mirror, no working copies)."""
    paths = PoolPaths(work, "bench")
    paths.dir.mkdir(parents=True)
    paths.definition.write_text("# the store only checks that the pool exists\n")
    store = TomlStore(paths, "bench", lock_timeout=30.0)
    at = now() - timedelta(hours=1)
    with store.locked() as current:
        for n in range(1, slots + 1):
            slot = Slot(number=n, created_at=at, commit=COMMIT, allocation_count=n)
            if n % 2 == 0:
                slot.state = ALLOCATED
                slot.lease = Lease.new("bench", Holder.me(), 3600.0, {"job": f"j{n}"})
                slot.last_allocated_at = at
            current.slots[n] = slot
        store.save(current)
    return store


def lease_cycles(work: Path, sizes: tuple[int, ...], cycles: int) -> dict[int, dict[str, float]]:
    """For a pool of each size: the median milliseconds of ``claim``, ``end_lease`` and
    ``update_slot`` (the slot made available again, as a release's cleanup ends) over
    ``cycles`` cycles, of all three as ``transaction``, and the CPU milliseconds of a
    transaction (``cpu``: what the store computes, without waiting for the disk). The
    pools take turns, cycle by cycle, so that a busy machine weighs on each alike."""
    stores = {size: make_pool(work / f"pool{size}", size) for size in sizes}
    ops = ("claim", "end_lease", "update_slot")
    times = {size: {op: [] for op in ops} for size in sizes}
    cpu = dict.fromkeys(sizes, 0.0)

    def available(slot: Slot) -> None:
        slot.state, slot.worker = AVAILABLE, None

    for _ in range(cycles):
        for size, store in stores.items():
            lease = Lease.new("bench", Holder.me(), 600.0, {})
            cpu_start, start = time.process_time(), time.perf_counter()
            slot = store.claim(lease, lambda s: True)
            claimed = time.perf_counter()
            assert slot is not None
            store.end_lease(slot.number, lease.lease_id)
            ended = time.perf_counter()
            store.update_slot(slot.number, available)
            done = time.perf_counter()
            cpu[size] += time.process_time() - cpu_start
            spans = (claimed - start, ended - claimed, done - ended)
            for op, elapsed in zip(ops, spans, strict=True):
                times[size][op].append(elapsed)
    result = {}
    for size in sizes:
        row = {op: statistics.median(t) * 1000 for op, t in times[size].items()}
        row["transaction"] = statistics.median(
            [t for op in ops for t in times[size][op]]) * 1000
        row["cpu"] = cpu[size] * 1000 / (3 * cycles)
        result[size] = {k: round(v, 2) for k, v in row.items()}
    return result
