"""One simulated host's allocators for bench/fleet.py: THREADS threads, each with its own
ledger connection (pgconn keeps one per thread) and its own Pool (a PgStore keeps the rows
it read for ``transaction`` on itself: one per thread), cycling claim / hold / release on
the slots of this host (NECROPOOL_HOME, NECROPOOL_HOST and NECROPOOL_LEDGER come from the
environment).

    python bench/fleet_worker.py cycles --threads N --hold-ms MS --go FILE --ready FILE
                                        --seconds S --journal FILE --out FILE
    python bench/fleet_worker.py probe --cycles N --out FILE

A cycle is the lease protocol at the store level, git cleanup left out (its cost is
measured by bench/run.py; here it would only measure git on 2 cores): claim through
``store.claim`` (the slot lock as the local claim, dropped once granted, as ``allocate``
does), a holder marker ``.bench-holder-<lease>`` written in the slot and no other live one
there (else a double hold), a hold, the marker removed, ``store.end_lease`` under the slot
lock, then the slot made available in a host-wide ``store.transaction()`` as ``release``
does. Every claim and end is appended to the journal (one write each, so a SIGKILL loses
none that returned). A ledger that goes away (``LedgerDown``, exit 75) is retried; a claim
whose reply was lost is found again by its lease id.
"""

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

from necropool.ground.clock import now
from necropool.ground.config import load_settings
from necropool.ground.errors import TryAgain
from necropool.ground.locks import _portalocker
from necropool.ground.proc import Holder
from necropool.pool.pool import Pool
from necropool.store.base import LeaseLost
from necropool.store.model import AVAILABLE, CLEANING, Lease, Slot

POOL = "web"
MARKER = ".bench-holder-"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Allocator:
    """One thread's cycles; counters are summed by the process."""

    def __init__(self, journal: int, hold: float):
        self.pool = Pool(load_settings(), POOL)
        self.store = self.pool.store
        self.me = Holder.me()
        self.journal, self.hold = journal, hold
        self.timings: dict[str, list[float]] = {"claim": [], "end": [], "release": []}
        self.counts = dict.fromkeys(
            ("cycles", "claim_retries", "claims_found_after_lost_reply", "none_free",
             "double_holds", "stale_markers", "leases_lost", "end_retries",
             "release_retries", "lock_busy"), 0)
        self.exit_codes: set[int] = set()
        self.errors: list[str] = []
        self.doubles: list[str] = []

    def note(self, line: str) -> None:
        os.write(self.journal, (line + "\n").encode())

    def retry(self, exc: TryAgain, counter: str) -> None:
        self.counts[counter] += 1
        self.exit_codes.add(exc.exit_code)
        if len(self.errors) < 5:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.05)

    def claim(self) -> tuple[Slot, Lease]:
        lease = Lease(lease_id=os.urandom(8).hex(), owner="fleetbench", allocated_at=now(),
                      holder=self.me)
        self.note(f"T {lease.lease_id}")  # tried: granted or not, the journal knows it
        while True:
            taken: list = []

            def take(slot: Slot, taken: list = taken) -> bool:
                lock = self.pool.slot_lock(slot.number)
                if lock.try_acquire():
                    taken.append(lock)
                    return True
                return False

            started = time.perf_counter()
            try:
                slot = self.store.claim(lease, take)
            except TryAgain as exc:
                for lock in taken:
                    lock.release(unlink=True)
                self.retry(exc, "claim_retries")
                found = self.find(lease.lease_id)
                if found is not None:
                    self.counts["claims_found_after_lost_reply"] += 1
                    self.note(f"C {lease.lease_id} {found.number}")
                    return found, lease
                continue
            self.timings["claim"].append(time.perf_counter() - started)
            for lock in taken:
                lock.release(unlink=True)
            if slot is not None:
                self.note(f"C {lease.lease_id} {slot.number}")
                return slot, lease
            self.counts["none_free"] += 1
            time.sleep(0.01)

    def warm_up(self) -> None:
        """Connected and the schema checked before the start (500 connecting at once on a
        busy machine may time out: tried again, not counted)."""
        while True:
            try:
                self.store.snapshot()
                return
            except TryAgain:
                time.sleep(0.2)

    def find(self, lease_id: str) -> Slot | None:
        """The slot granted to ``lease_id`` by a claim whose reply was lost, if any."""
        while True:
            try:
                current = self.store.snapshot()
            except TryAgain as exc:
                self.retry(exc, "claim_retries")
                continue
            return next((s for s in current.slots.values()
                         if s.lease and s.lease.lease_id == lease_id), None)

    def check_markers(self, slot_dir: Path, mine: Path) -> None:
        for entry in os.scandir(slot_dir):
            if not entry.name.startswith(MARKER) or entry.name == mine.name:
                continue
            try:
                pid = int(Path(entry.path).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # removed meanwhile: its holder let go
            if alive(pid):
                self.counts["double_holds"] += 1
                self.doubles.append(f"{slot_dir}: {entry.name} (pid {pid}) beside {mine.name}")
            else:
                self.counts["stale_markers"] += 1

    def cycle(self) -> None:
        slot, lease = self.claim()
        slot_dir = self.pool.slot_dir(slot.number)
        marker = slot_dir / f"{MARKER}{lease.lease_id}"
        marker.write_text(f"{self.me.pid} {lease.lease_id}\n")
        self.check_markers(slot_dir, marker)
        time.sleep(self.hold * random.uniform(0.5, 1.5))
        self.check_markers(slot_dir, marker)
        marker.unlink()
        self.release(slot.number, lease.lease_id)
        self.counts["cycles"] += 1

    def release(self, number: int, lease_id: str) -> None:
        lock = self.pool.slot_lock(number)
        for _ in range(200):
            if lock.try_acquire():
                break
            time.sleep(0.005)
        else:
            self.counts["lock_busy"] += 1
            return
        tries = 0
        while True:
            tries += 1
            try:
                started = time.perf_counter()
                self.store.end_lease(number, lease_id, worker=self.me)
                self.timings["end"].append(time.perf_counter() - started)
                break
            except LeaseLost:
                if tries > 1 and self.cleaning_by_me(number):
                    break  # an earlier try committed, its reply lost
                self.counts["leases_lost"] += 1
                lock.release(unlink=True)
                return
            except TryAgain as exc:
                self.retry(exc, "end_retries")
        self.note(f"E {lease_id} {number}")
        while True:
            try:
                if not lock.held and not lock.try_acquire():
                    time.sleep(0.005)
                    continue
                started = time.perf_counter()
                with self.store.transaction() as current:
                    slot = current.slots[number]
                    if self.mine(slot):
                        slot.state, slot.worker = AVAILABLE, None
                    lock.release(unlink=True)  # before the write that wakes waiters
                self.timings["release"].append(time.perf_counter() - started)
                return
            except TryAgain as exc:
                self.retry(exc, "release_retries")

    def mine(self, slot: Slot) -> bool:
        return slot.state == CLEANING and slot.worker is not None and slot.worker == self.me

    def cleaning_by_me(self, number: int) -> bool:
        while True:
            try:
                return self.mine(self.store.snapshot().slots[number])
            except TryAgain as exc:
                self.retry(exc, "end_retries")


def wait_for(path: Path) -> None:
    parent = os.getppid()
    while not path.exists():
        if os.getppid() != parent:
            sys.exit("the benchmark went away")
        time.sleep(0.005)


def cycles(args: argparse.Namespace) -> dict:
    journal = os.open(args.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    allocators: list[Allocator] = []
    ready = threading.Barrier(args.threads + 1)

    def run() -> None:
        try:
            allocator = Allocator(journal, args.hold_ms / 1000)
            allocator.warm_up()
        except BaseException:
            ready.abort()
            raise
        allocators.append(allocator)
        ready.wait()
        wait_for(Path(args.go))
        deadline = float(Path(args.go).read_text()) + args.seconds
        time.sleep(random.uniform(0, allocator.hold))  # spread out, not 500 claims at once
        while time.time() < deadline:
            try:
                allocator.cycle()
            except Exception as exc:  # counted and reported, the thread goes on
                if len(allocator.errors) < 5:
                    allocator.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)

    _portalocker()  # once, here: its first import is not safe from threads at once
    threads = [threading.Thread(target=run) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    ready.wait()
    Path(args.ready).touch()
    for thread in threads:
        thread.join()
    counts = {k: sum(a.counts[k] for a in allocators) for k in allocators[0].counts}
    return {"pid": os.getpid(), **counts,
            "timings_ms": {k: [round(x * 1000, 3) for a in allocators for x in a.timings[k]]
                           for k in allocators[0].timings},
            "exit_codes": sorted({c for a in allocators for c in a.exit_codes}),
            "errors": [e for a in allocators for e in a.errors][:5],
            "doubles": [d for a in allocators for d in a.doubles][:10]}


def probe(args: argparse.Namespace) -> dict:
    """Single-client cost of one cycle through the real lifecycle (``allocate`` without
    fetch, ``release`` with ``clean=False``) and through the store as the bench does."""
    from necropool.lease.allocate import AllocateRequest, allocate
    from necropool.lease.release import release

    journal = os.open(os.devnull, os.O_WRONLY)
    allocator = Allocator(journal, 0)
    pool, timings = allocator.pool, {"lifecycle_ms": [], "store_ms": []}
    for _ in range(args.cycles):
        started = time.perf_counter()
        grant = allocate(pool, AllocateRequest(holder=allocator.me, fetch=False))
        release(pool, grant.number, lease_id=grant.lease.lease_id, clean=False)
        timings["lifecycle_ms"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        slot, lease = allocator.claim()
        allocator.release(slot.number, lease.lease_id)
        timings["store_ms"].append((time.perf_counter() - started) * 1000)
    return {k: round(statistics.median(v), 2) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    run = sub.add_parser("cycles")
    for name in ("go", "ready", "journal", "out"):
        run.add_argument(f"--{name}", required=True)
    run.add_argument("--threads", type=int, default=10)
    run.add_argument("--hold-ms", type=float, default=5)
    run.add_argument("--seconds", type=float, default=10)
    once = sub.add_parser("probe")
    once.add_argument("--cycles", type=int, default=10)
    once.add_argument("--out", required=True)
    args = parser.parse_args()
    result = cycles(args) if args.mode == "cycles" else probe(args)
    Path(args.out).write_text(json.dumps(result))
    sys.exit(0)


if __name__ == "__main__":
    main()
