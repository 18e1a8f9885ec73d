"""Many real processes allocating and releasing at once: no slot is ever held twice, none
is lost, and every slot comes back clean."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import git, saved_state, wait_until_queued

from necropool.ground.config import PoolSpec

# Every test twice: state in local TOML files, then in a PostgreSQL ledger.
pytestmark = pytest.mark.usefixtures("ledger")

WORKERS = 8
CYCLES = 25
SLOTS = 4

# One holder process: allocate with --wait through the core API, prove exclusive use of
# the slot with an O_EXCL marker file, dirty the slot now and then, release by lease id.
WORKER = r"""
import json, os, random, sys, time
from pathlib import Path
from necropool.ground.config import load_settings
from necropool.manager.facade import PoolManager

root, pool, worker, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
manager = PoolManager(load_settings(root=root))
me = str(os.getpid())
report = {"worker": worker, "pid": me, "cycles": 0, "problems": [], "holds": []}
for cycle in range(cycles):
    try:
        slot = manager.allocate_slot(pool, owner=f"worker{worker}", pid=os.getpid(),
                                     fetch=False, wait=60)
    except Exception as exc:
        report["problems"].append(f"cycle {cycle}: allocate failed: {exc!r}")
        continue
    start = time.monotonic()
    path = Path(slot["path"])
    marker = path / "build" / "holder"
    if marker.exists():
        report["problems"].append(f"{slot['slot_id']}: handed out with a marker: "
                                  f"{marker.read_text()!r}")
    if (path / "README").read_text() != "upstream\n":
        report["problems"].append(f"{slot['slot_id']}: handed out with a dirty README")
    marker.parent.mkdir(exist_ok=True)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, me.encode())
        os.close(fd)
    except FileExistsError:
        report["problems"].append(f"{slot['slot_id']}: double hold, marker "
                                  f"{marker.read_text()!r} appeared")
    if cycle % 5 == worker % 5:  # some holders leave work behind to be rescued
        (path / "README").write_text(f"work of {me}\n")
        (path / f"untracked-{me}.txt").write_text("x\n")
    time.sleep(random.uniform(0, 0.01))
    seen = marker.read_text() if marker.exists() else None
    if seen != me:
        report["problems"].append(f"{slot['slot_id']}: foreign marker {seen!r} while held")
    end = time.monotonic()
    report["holds"].append([slot["slot_id"], start, end])
    try:
        manager.release_slot(slot["slot_id"], lease_id=slot["lease_id"], fetch=False)
    except Exception as exc:
        report["problems"].append(f"cycle {cycle}: release failed: {exc!r}")
        continue
    report["cycles"] += 1
print(json.dumps(report))
"""


@pytest.mark.slow
def test_many_processes_never_share_or_lose_a_slot(manager, upstream, root):
    manager.create_pool(PoolSpec(name="race", url=str(upstream), num_slots=SLOTS))
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), "race", str(n),
                               str(CYCLES)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for n in range(WORKERS)]
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - started

    problems = [p for r in reports for p in r["problems"]]
    assert problems == [], problems
    assert [r["cycles"] for r in reports] == [CYCLES] * WORKERS
    # No two holds of one slot overlap in time (CLOCK_MONOTONIC is system-wide).
    holds: dict[str, list[tuple[float, float, str]]] = {}
    for r in reports:
        for slot_id, start, end in r["holds"]:
            holds.setdefault(slot_id, []).append((start, end, r["pid"]))
    for slot_id, spans in holds.items():
        spans.sort()
        for (_, end, pid), (start, _, other) in zip(spans, spans[1:], strict=False):
            assert end <= start, f"{slot_id} held by {pid} and {other} at once"
    assert set(holds) <= {f"race-{n}" for n in range(1, SLOTS + 1)}

    # No slot is lost: all are available, clean, at the tip, and the counts add up.
    status = manager.pool_status("race")
    tip = git(upstream, "rev-parse", "HEAD")
    assert status["counts"]["available"] == SLOTS
    assert sum(s["allocation_count"] for s in status["slots"]) == WORKERS * CYCLES
    for slot in status["slots"]:
        assert slot["lease_id"] is None
        assert git(slot["path"], "--no-optional-locks", "status", "--porcelain", "--ignored") == ""
        assert git(slot["path"], "rev-parse", "HEAD") == tip
    assert list((root / "pools/race/locks").glob("*.lock")) == []
    found = manager.detect_anomalies("race")
    assert all(items == [] for items in found.values()), found
    # The history has every allocation and release, none torn by concurrent appends.
    kinds = [e["event"] for e in manager.log("race")]
    assert kinds.count("allocate") == kinds.count("release") == WORKERS * CYCLES
    rescued = list((root / "pools/race/rescued").iterdir())
    assert len(rescued) == WORKERS * CYCLES // 5
    assert elapsed < 100, f"{WORKERS}x{CYCLES} cycles took {elapsed:.0f}s"


def test_concurrent_allocates_without_wait_hand_out_each_slot_once(manager, upstream, root):
    manager.create_pool(PoolSpec(name="race", url=str(upstream), num_slots=SLOTS))
    procs = [subprocess.Popen([sys.executable, "-m", "necropool", "allocate", "race",
                               "--no-fetch", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2 * SLOTS)]
    results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] * SLOTS + [75] * SLOTS, results
    granted = [json.loads(out) for code, out, _ in results if code == 0]
    assert sorted(g["slot_id"] for g in granted) == [f"race-{n}" for n in range(1, SLOTS + 1)]
    assert len({g["lease_id"] for g in granted}) == SLOTS
    assert manager.pool_status("race")["counts"]["allocated"] == SLOTS


def test_concurrent_runs_queue_for_slots_and_all_finish(cli, manager, upstream, root, tmp_path):
    manager.create_pool(PoolSpec(name="small", url=str(upstream), num_slots=2))
    log = tmp_path / "holders.log"
    # Each command records when it held its slot; it is busy for a moment.
    script = (f'echo "$NECROPOOL_SLOT_ID start $$" >> {log}; sleep 0.3; '
              f'test ! -e build/mark || exit 99; mkdir -p build && touch build/mark; '
              f'echo "$NECROPOOL_SLOT_ID end $$" >> {log}; exit 7')
    procs = [subprocess.Popen([sys.executable, "-m", "necropool", "run", "small", "--wait",
                               "60s", "--no-fetch", "--", "sh", "-c", script],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    outcomes = [(p.wait(timeout=90), p.communicate()[1]) for p in procs]
    assert [code for code, _ in outcomes] == [7] * 6, outcomes
    # Per slot, each command's start follows the previous command's end.
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 12
    open_holds: dict[str, str] = {}
    for slot_id, what, pid in events:
        if what == "start":
            assert slot_id not in open_holds, f"{slot_id} run twice at once"
            open_holds[slot_id] = pid
        else:
            assert open_holds.pop(slot_id) == pid
    status = manager.pool_status("small")
    assert status["counts"]["available"] == 2
    for slot in status["slots"]:
        assert git(slot["path"], "status", "--porcelain", "--ignored") == ""


def test_a_waiting_allocate_does_not_rewrite_the_pool_state(cli, pool, root):
    for _ in range(3):
        assert cli("allocate", "web", "--no-fetch").code == 0
    before_wait = saved_state(root)
    waiter = subprocess.Popen([sys.executable, "-m", "necropool", "allocate", "web",
                               "--no-fetch", "--wait", "20s"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until_queued(root / "pools/web", waiter)
        time.sleep(0.5)  # a while of waiting (without the FIFO it would look every 10 ms)
        assert waiter.poll() is None
        assert saved_state(root) == before_wait, \
            "a waiting allocate rewrites the state while nothing changes"
        assert cli("release", "web-3").code == 0
        out, _ = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0
    assert Path(out.strip()) == root / "pools/web/slots/3"


def test_an_allocator_killed_while_refreshing_a_stale_slot_leaves_it_to_auto_recover(
        cli, manager, pool):
    """A stale slot is claimed under a lease held by the allocator while it is refreshed:
    killed then, the allocator leaves an abandoned allocation that auto-recover takes back."""
    first = cli("allocate", "web", "--json").json()
    assert cli("release", "web-1", "--no-cleanup").code == 0  # web-1 now needs a cleanup
    assert {cli("allocate", "web").code for _ in range(2)} == {0}  # web-2, web-3 taken
    # A job its holder left behind that ignores SIGTERM: the allocator ends it in 3 s.
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 60"],
                                cwd=first["path"])
    allocator = subprocess.Popen([sys.executable, "-m", "necropool", "allocate", "web"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def holder() -> int | None:
        lease = manager.get_pool(pool).read_state().slots[1].lease
        return lease.holder.pid if lease and lease.holder else None

    try:
        deadline = time.monotonic() + 15
        while holder() != allocator.pid:
            assert allocator.poll() is None and time.monotonic() < deadline, \
                "the stale slot was never claimed for the allocator"
            time.sleep(0.01)
    finally:
        allocator.kill()
        allocator.wait()
        stubborn.kill()
        stubborn.wait()
    found = cli("detect", "web", "--json")
    assert [a["slot_id"] for a in found.json()["abandoned_slots"]] == ["web-1"], found
    assert cli("auto-recover", "web").code == 0
    after = cli("status", "web-1", "--json").json()
    assert (after["state"], after["needs_cleanup"]) == ("available", False)
