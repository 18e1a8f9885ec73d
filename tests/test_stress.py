"""Concurrency stress: 16 processes allocate, hold, release and ``run`` against one small
pool (half through the real CLI, half through the core API), while ``auto-recover`` and
``detect`` run in a loop beside them.

Every holder creates a marker file in its slot with O_EXCL (so a marker already there means
two holders) and checks while holding that nobody else's marker appears; every grant and
release is logged with a system-wide monotonic time, and the hold intervals of each slot
must never overlap. Holders are alive throughout, so the maintenance loop must find nothing
to do: no slot is ever taken from a live holder, and each holder's ``release --lease-id``
succeeds. At the end nothing is lost: every slot is back, available and healthy.
"""

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import slot_entries

from necropool.ground.config import PoolSpec

WORKERS = 16
DURATION = float(os.environ.get("NECROPOOL_STRESS_SECONDS", "25"))
SLOTS = 4
MARK = ".stress-holder"

_COMMON = r"""
import json, os, random, subprocess, sys, time
from pathlib import Path

LOG = os.environ["STRESS_LOG"]
MARK = ".stress-holder"


def log(**record):
    record.update(pid=os.getpid(), t=time.monotonic())
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def claim(path, who):
    # O_EXCL: a marker already there is another holder's (or one cleanup failed to remove)
    marker = Path(path) / MARK
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        log(kind="violation", what="marker already present when the slot was granted",
            path=path, found=marker.read_text())
        return False
    os.write(fd, who.encode())
    os.close(fd)
    return True


def still_mine(path, who):
    marker = Path(path) / MARK
    try:
        found = marker.read_text()
    except FileNotFoundError:
        found = None
    if found != who:
        log(kind="violation", what="foreign or missing marker while holding", path=path,
            found=found, expected=who)
        return False
    return True
"""

WORKER = _COMMON + r"""
from necropool.ground.errors import NecropoolError, TryAgain

pool, deadline, mode, seed = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
if mode == "api":
    from necropool.manager.facade import PoolManager
    manager = PoolManager()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "necropool", *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


def allocate():
    fetch = rng.random() < 0.3
    if mode == "cli":
        proc = cli("allocate", pool, "--pid", str(os.getpid()), "--wait", "2s", "--json",
                   *([] if fetch else ["--no-fetch"]))
        if proc.returncode == 75:
            return None
        if proc.returncode != 0:
            log(kind="violation", what="allocate failed", code=proc.returncode, err=proc.stderr)
            return None
        return json.loads(proc.stdout)
    try:
        return manager.allocate_slot(pool, pid=os.getpid(), wait=2, fetch=fetch)
    except TryAgain:
        return None
    except NecropoolError as exc:
        log(kind="violation", what="allocate failed", err=exc.message)
        return None


def release(slot_id, lease):
    fetch = rng.random() < 0.3
    if mode == "cli":
        proc = cli("release", slot_id, "--lease-id", lease, *([] if fetch else ["--no-fetch"]))
        return proc.returncode == 0, proc.stderr
    try:
        manager.release_slot(slot_id, lease_id=lease, fetch=fetch)
        return True, ""
    except NecropoolError as exc:
        return False, f"{type(exc).__name__}: {exc.message}"


def hold():
    got = allocate()
    if got is None:
        log(kind="busy")
        return
    slot_id, path, lease = got["slot_id"], got["path"], got["lease_id"]
    who = f"{os.getpid()} {lease}"
    log(kind="grant", slot=slot_id, lease=lease)
    mine = claim(path, who)
    for _ in range(rng.randint(1, 4)):
        time.sleep(rng.uniform(0, 0.12))
        (Path(path) / f"work-{os.getpid()}.txt").write_text("holder work\n")
        with open(Path(path) / "README", "a") as fh:
            fh.write("edit\n")
        if mine:
            still_mine(path, who)
    log(kind="release-start", slot=slot_id, lease=lease)
    ok, err = release(slot_id, lease)
    if ok:
        log(kind="released", slot=slot_id, lease=lease)
    else:
        log(kind="violation", what="release of a live holder failed", slot=slot_id,
            lease=lease, err=err)


def run_in_slot():
    proc = cli("run", "--wait", "2s", *([] if rng.random() < 0.3 else ["--no-fetch"]), pool,
               "--", sys.executable, "-c", RUN_CHILD)
    if proc.returncode == 75:
        log(kind="busy")
    elif proc.returncode != 0 or "error" in proc.stderr:
        log(kind="violation", what="run failed", code=proc.returncode, err=proc.stderr[-800:])


RUN_CHILD = os.environ["STRESS_RUN_CHILD"]
log(kind="start", mode=mode)
while time.time() < deadline:
    if rng.random() < 0.3:
        run_in_slot()
    else:
        hold()
log(kind="stop")
"""

RUN_CHILD = _COMMON + r"""
path, lease, slot = (os.environ["NECROPOOL_SLOT_PATH"], os.environ["NECROPOOL_LEASE_ID"],
                     os.environ["NECROPOOL_SLOT_ID"])
who = f"{os.getpid()} {lease}"
log(kind="grant", slot=slot, lease=lease, via="run")
ok = claim(path, who)
time.sleep(random.uniform(0, 0.1))
(Path(path) / "run-output.txt").write_text("made by run\n")
ok = ok and still_mine(path, who)
log(kind="release-start", slot=slot, lease=lease, via="run")
sys.exit(0 if ok else 99)
"""

MAINTENANCE = _COMMON + r"""
stop = Path(sys.argv[1])
while not stop.exists():
    for args in (["auto-recover", "--json"], ["detect", "--json"]):
        proc = subprocess.run([sys.executable, "-m", "necropool", *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = None
        log(kind="maint", cmd=args[0], code=proc.returncode, data=data, err=proc.stderr[-800:])
"""


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def overlapping_holds(records: list[dict]) -> list[str]:
    """Pairs of holds of the same slot whose [grant, release-start] intervals overlap."""
    spans: dict[tuple, dict] = {}
    for r in records:
        if r["kind"] in ("grant", "release-start"):
            span = spans.setdefault((r["slot"], r["lease"]), {"slot": r["slot"]})
            span[r["kind"]] = r["t"]
    by_slot = defaultdict(list)
    for (slot, lease), span in spans.items():
        by_slot[slot].append((span.get("grant"), span.get("release-start", float("inf")),
                              lease))
    problems = []
    for slot, items in by_slot.items():
        items.sort(key=lambda s: s[0])
        held_until, holder = float("-inf"), None
        for granted, released, lease in items:
            if granted < held_until:
                problems.append(f"{slot}: lease {lease} granted at {granted:.3f} while "
                                f"{holder} held it until {held_until:.3f}")
            if released > held_until:
                held_until, holder = released, lease
    return problems


@pytest.mark.slow
def test_sixteen_processes_never_double_hold_steal_or_lose_a_slot(manager, upstream, root,
                                                                  tmp_path, capsys):
    manager.create_pool(PoolSpec(name="hot", url=str(upstream), num_slots=SLOTS))
    log_path = tmp_path / "stress.jsonl"
    stop = tmp_path / "stop"
    env = dict(os.environ, STRESS_LOG=str(log_path), STRESS_RUN_CHILD=RUN_CHILD)
    started = time.monotonic()
    deadline = time.time() + DURATION
    maintenance = subprocess.Popen([sys.executable, "-c", MAINTENANCE, str(stop)], env=env,
                                   stdin=subprocess.DEVNULL)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, "hot", str(deadline),
                                 "cli" if i % 2 else "api", str(1000 + i)], env=env,
                                stdin=subprocess.DEVNULL)
               for i in range(WORKERS)]
    try:
        for proc in workers:
            proc.wait(timeout=DURATION + 60)
    finally:
        stop.write_text("stop")
        maintenance.wait(timeout=60)
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - started
    assert all(p.returncode == 0 for p in workers), [p.returncode for p in workers]

    records = read_log(log_path)
    violations = [r for r in records if r["kind"] == "violation"]
    assert violations == [], json.dumps(violations[:10], indent=1)
    assert overlapping_holds(records) == []
    grants = [r for r in records if r["kind"] == "grant"]
    holds = [r for r in grants if r.get("via") != "run"]
    released = [r for r in records if r["kind"] == "released"]
    assert len(released) == len(holds), "every direct hold must be released"
    assert len({r["slot"] for r in grants}) == SLOTS, "every slot should have been used"
    assert len(grants) >= 40, f"too little contention to mean anything: {len(grants)} grants"

    maint = [r for r in records if r["kind"] == "maint"]
    assert {r["cmd"] for r in maint} == {"auto-recover", "detect"}, "maintenance never ran"
    for r in maint:
        assert r["data"] is not None and "Traceback" not in r["err"], r
        if r["cmd"] == "auto-recover":
            assert r["code"] == 0, r
            touched = {k: r["data"][k] for k in ("long_allocated_released",
                                                 "abandoned_released", "corrupted_recovered",
                                                 "corrupted_isolated") if r["data"][k]}
            assert touched == {}, f"auto-recover acted on a pool of live holders: {r['data']}"
        else:
            found = {k: v for k, v in r["data"].items() if isinstance(v, list) and v}
            assert not found.get("abandoned_slots") and not found.get("corrupted_slots") \
                and not found.get("long_allocated_slots"), f"detect blamed a live holder: {r}"

    # nothing lost: every slot back, available, clean and healthy
    slots = slot_entries(root / "pools" / "hot")
    assert sorted(slots) == list(range(1, SLOTS + 1))
    assert {s["state"] for s in slots.values()} == {"available"}, slots
    assert sum(s.get("allocation_count", 0) for s in slots.values()) == len(grants)
    for n in slots:
        assert not (root / "pools" / "hot" / "slots" / str(n) / MARK).exists()
    detect = subprocess.run([sys.executable, "-m", "necropool", "detect"], capture_output=True,
                            text=True)
    assert detect.returncode == 0, detect.stdout + detect.stderr
    with capsys.disabled():
        print(f"\n[stress] {WORKERS} processes for {DURATION:g}s ({elapsed:.1f}s in all): "
              f"{len(grants)} grants ({len(grants) - len(holds)} via run), "
              f"{sum(r['kind'] == 'busy' for r in records)} busy, "
              f"{sum(r['cmd'] == 'auto-recover' for r in maint)} auto-recover and "
              f"{sum(r['cmd'] == 'detect' for r in maint)} detect runs beside them", flush=True)
