"""Health: detect, recover, isolate and auto-recover against real faults in real pools.

Every fault is real damage (deleted files, flipped bytes, killed processes); nothing about
git or the filesystem is mocked. The fault matrix puts each fault in its own slot of one
pool, next to slots in legitimate use that must come through untouched.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import (
    Procs,
    clean_at,
    corrupt_loose_object,
    corrupt_pack_copy,
    flip_byte,
    kill,
    packs,
    set_state_fields,
    tree_digest,
    truncate,
)
from helpers import clock_at, commit_file, git, slot_files

from necropool.ground.errors import TryAgain
from necropool.ground.locks import lock_free
from necropool.slot.integrity import Verifier

KINDS = ("long_allocated_slots", "expired_leases", "abandoned_slots", "corrupted_slots",
         "orphaned_locks", "stray_paths", "isolated_slots", "tampered_free_slots")
GUIDE_COUNTERS = ("long_allocated_released", "corrupted_recovered", "corrupted_isolated",
                  "orphaned_locks_cleaned", "errors")

# Every test twice: state in local TOML files, then in a PostgreSQL ledger.
pytestmark = pytest.mark.usefixtures("ledger")


@pytest.fixture
def procs():
    started = Procs()
    yield started
    started.kill_all()


def ids(items: list[dict]) -> set[str]:
    return {a["slot_id"] for a in items if a.get("slot_id")}


def paths(items: list[dict]) -> set[str]:
    return {a["path"] for a in items}


def mentioned(detected: dict) -> set[str]:
    """Every slot id any kind of anomaly names."""
    return set().union(*(ids(detected[k]) for k in KINDS))


def slots_of(manager, pool: str) -> dict[str, dict]:
    return {s["slot_id"]: s for s in manager.pool_status(pool)["slots"]}


def wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_run(procs: Procs, manager, pool: str, slot_id: str) -> subprocess.Popen:
    """``necropool run POOL -- sleep 300`` in the background, once it holds ``slot_id``."""
    proc = procs.start([sys.executable, "-m", "necropool", "run", "--no-fetch", pool, "--",
                        "sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: slots_of(manager, pool)[slot_id]["state"] == "allocated",
             f"run to allocate {slot_id}")
    return proc


def allocate(cli, pool: str, *args) -> dict:
    result = cli("allocate", pool, *args, "--json")
    assert result.code == 0, result
    return result.json()


def allocate_everything(manager, pool: str) -> set[str]:
    """Allocate until the pool says no free slot (75); return what was handed out."""
    got = set()
    while True:
        try:
            got.add(manager.allocate_slot(pool, fetch=False)["slot_id"])
        except TryAgain:
            return got


# --- the fault matrix ------------------------------------------------------------------------

def test_fault_matrix_detected_and_healed_in_one_pass(cli, manager, upstream, procs,
                                                      monkeypatch):
    assert cli("create", "web", upstream, "--slots", "15").code == 0
    pool = manager.get_pool("web")
    pdir, slot = pool.paths.dir, pool.slot_dir
    tip = git(upstream, "rev-parse", "HEAD")

    # Negative controls: in legitimate use, they must come through untouched.
    runner = start_run(procs, manager, "web", "web-1")                 # `run` in progress
    live = procs.sleeper()
    held = allocate(cli, "web", "--pid", live.pid)                     # live --pid holder
    assert held["slot_id"] == "web-2"
    (slot(2) / "README").write_text("the live holder's unsaved work\n")
    worker = procs.cleaning_worker("web", 6)                           # live cleaning worker

    # Faults, each in its own slot.
    dying = procs.sleeper()
    abandoned = allocate(cli, "web", "--pid", dying.pid)
    assert abandoned["slot_id"] == "web-3"
    kill(dying)                                                        # holder died
    expired = allocate(cli, "web", "--ttl", "1s")
    assert expired["slot_id"] == "web-4"                               # lease past its TTL
    kill(procs.cleaning_worker("web", 5))                              # worker SIGKILLed
    shutil.rmtree(slot(7))                                             # slot dir deleted
    shutil.rmtree(slot(8) / ".git")                                    # .git deleted
    (slot(9) / ".git" / "HEAD").write_text("garbage\n")                # garbage HEAD
    truncate(slot(10) / ".git" / "index")                              # truncated index
    corrupt_loose_object(slot(11))                                     # rotten loose object
    corrupt_pack_copy(slot(12))                                        # this slot's pack only
    (pdir / "locks" / "web-13.lock").write_text("")                   # unheld lock, live slot
    (slot(14) / ".git" / "index.lock").write_text("")                 # stale git lock: the
    # free slot was written into after its cleanup, so it is cleaned (a tampered free slot)
    (pdir / "locks" / "web-99.lock").write_text("")                   # lock of no slot
    (pdir / "slots" / "junk").mkdir()                                  # stray directory
    (pdir / "slots" / "junk" / "precious.txt").write_text("not ours to delete\n")
    garbage = not os.environ.get("NECROPOOL_LEDGER")  # a ledger's rows cannot be garbage
    if garbage:
        set_state_fields(pdir, 15, state="banana")                     # garbage state entry
    clock_at(monkeypatch, 2)                                           # the TTL has run out

    found = cli("detect", "--json")
    assert found.code == 1, found
    d = found.json()
    assert d["healthy"] is False
    assert ids(d["corrupted_slots"]) == {f"web-{n}" for n in (7, 8, 9, 10, 11, 12, 15)[
        :None if garbage else -1]}
    assert all(a.get("slot_id") for a in d["corrupted_slots"]), "the mirror is not broken"
    assert ids(d["abandoned_slots"]) == {"web-3", "web-5"}
    assert ids(d["expired_leases"]) == {"web-4"} and d["long_allocated_slots"] == []
    assert paths(d["orphaned_locks"]) == {str(pdir / "locks" / "web-99.lock"),
                                          str(pdir / "locks" / "web-13.lock")}
    assert ids(d["tampered_free_slots"]) == {"web-14"}
    assert paths(d["stray_paths"]) == {str(pdir / "slots" / "junk")}
    assert d["isolated_slots"] == []
    assert d["count"] == 13 + garbage
    assert not mentioned(d) & {"web-1", "web-2", "web-6"}

    # A dry run plans the same work and changes nothing at all.
    before = tree_digest(pdir)
    dry = cli("auto-recover", "--dry-run", "--force-release-long-allocated", "--json")
    assert dry.code == 0, dry
    planned = dry.json()["pools"][0]["actions"]
    assert planned and {a["status"] for a in planned} == {"planned"}
    assert not {a["target"] for a in planned} & {"web-1", "web-2", "web-6"}
    assert tree_digest(pdir) == before

    healed = cli("auto-recover", "--force-release-long-allocated", "--json")
    assert healed.code == 0, healed
    h = healed.json()
    assert h["errors"] == []
    assert (h["corrupted_recovered"], h["corrupted_isolated"], h["abandoned_released"],
            h["expired_released"], h["long_allocated_released"], h["orphaned_locks_cleaned"],
            h["stray_paths_moved"], h["tampered_cleaned"]) == (6 + garbage, 0, 2, 1, 0, 2, 1, 1)

    after = cli("detect", "--json")
    assert after.code == 0, after
    assert after.json()["healthy"] is True

    status = slots_of(manager, "web")
    fixed = {f"web-{n}" for n in range(1, 16)} - {"web-1", "web-2", "web-6"}
    for sid in fixed:
        s = status[sid]
        assert s["state"] == "available", s
        assert s["error"] is None and s["isolated_at"] is None and s["lease_id"] is None
        assert Verifier().verify(Path(s["path"])) == [], sid
        clean_at(Path(s["path"]), tip)
    assert not (pdir / "locks" / "web-99.lock").exists()
    assert not (pdir / "locks" / "web-13.lock").exists()
    assert not (slot(14) / ".git" / "index.lock").exists()

    # The controls: untouched, still held, their work in place.
    assert status["web-1"]["state"] == "allocated" and runner.poll() is None
    assert status["web-2"]["state"] == "allocated"
    assert status["web-2"]["lease_id"] == held["lease_id"]
    assert (slot(2) / "README").read_text() == "the live holder's unsaved work\n"
    assert status["web-6"]["state"] == "cleaning" and worker.poll() is None
    assert not lock_free(pool.paths.slot_lock(6))
    assert (slot(6) / "half-cleaned.tmp").exists()
    assert cli("recover", "web-6").code == 5, "a live worker's slot is not taken"
    assert cli("isolate", "web-6").code == 5
    assert worker.poll() is None and not lock_free(pool.paths.slot_lock(6))

    # Nothing we did not make was deleted: the stray and the .git-less tree were moved aside.
    rescued = list((pdir / "rescued").iterdir())
    assert any((p / "precious.txt").exists() for p in rescued if p.name.startswith("stray-"))
    assert any((p / "README").exists() for p in rescued if p.name.startswith("web-8-"))

    # Every healed slot can be handed out again.
    assert allocate_everything(manager, "web") == fixed


def test_mirror_pack_corrupted_in_place_rebuilds_mirror_and_reclones(cli, pool, manager,
                                                                      upstream):
    p = manager.get_pool(pool)
    mirror_objects = p.paths.mirror / "objects"
    old = packs(mirror_objects)[0]
    old_ino = old.stat().st_ino
    assert all(packs(p.slot_dir(n) / ".git" / "objects")[0].stat().st_ino == old_ino
               for n in (1, 2, 3)), "slot packs are hard links of the mirror's"
    flip_byte(old)  # in place: the mirror and every slot sharing the inode are now corrupt

    found = cli("detect", "--json")
    assert found.code == 1, found
    corrupted = found.json()["corrupted_slots"]
    assert str(p.paths.mirror) in paths(corrupted)
    assert ids(corrupted) == {"web-1", "web-2", "web-3"}

    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    h = healed.json()
    assert h["corrupted_recovered"] == 3 and h["errors"] == []
    [rebuild] = [a for a in h["pools"][0]["actions"] if a["target"] == "mirror"]
    assert rebuild["status"] == "done"
    assert cli("detect").code == 0

    assert Verifier().verify(p.paths.mirror, bare=True, branch="main") == []
    new_inodes = {pk.stat().st_ino for pk in packs(mirror_objects)}
    assert old_ino not in new_inodes
    tip = git(upstream, "rev-parse", "HEAD")
    for n in (1, 2, 3):
        slot_inodes = {pk.stat().st_ino for pk in packs(p.slot_dir(n) / ".git" / "objects")}
        assert slot_inodes <= new_inodes, "re-cloned slots share the rebuilt mirror's packs"
        clean_at(p.slot_dir(n), tip)
    assert git(upstream, "fsck", "--no-progress") == ""  # the upstream itself untouched
    assert allocate_everything(manager, pool) == {"web-1", "web-2", "web-3"}


# --- work is never lost ----------------------------------------------------------------------

def test_abandoned_slot_work_is_saved_before_cleanup(cli, pool, manager, upstream, procs,
                                                     tmp_path):
    holder = procs.sleeper()
    lease = allocate(cli, "web", "--pid", holder.pid)
    slot = Path(lease["path"])
    git(slot, "switch", "-q", "-c", "feature")
    local = commit_file(slot, "feature.txt", "local work\n", "the holder's local commit")
    (slot / "README").write_text("edited, never committed\n")
    (slot / "notes.txt").write_text("untracked notes\n")
    kill(holder)

    found = cli("detect", "--json")
    assert found.code == 1, found
    [abandoned] = found.json()["abandoned_slots"]
    assert abandoned["slot_id"] == lease["slot_id"]
    assert abandoned["lease_id"] == lease["lease_id"]

    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    h = healed.json()
    assert h["abandoned_released"] == 1 and h["errors"] == []
    [action] = [a for a in h["pools"][0]["actions"] if a["target"] == lease["slot_id"]]
    bundle = Path(action["rescued"])
    assert bundle.is_file()

    tip = git(upstream, "rev-parse", "HEAD")
    clean_at(slot, tip)
    assert git(slot, "for-each-ref", "refs/heads") == ""
    status = slots_of(manager, pool)[lease["slot_id"]]
    assert status["state"] == "available" and status["last_rescue"] == str(bundle)

    # The holder's commit and edits come back from the bundle alone.
    restore = tmp_path / "restore"
    git(tmp_path, "clone", "-q", str(upstream), str(restore))
    git(restore, "fetch", "-q", str(bundle), "refs/necropool/rescue/*:refs/rescued/*")
    assert git(restore, "rev-parse", "refs/rescued/heads/feature") == local
    assert git(restore, "log", "-1", "--format=%s", local) == "the holder's local commit"
    saved = "refs/rescued/uncommitted"
    assert git(restore, "rev-parse", f"{saved}^") == local
    assert git(restore, "show", f"{saved}:README") == "edited, never committed"
    assert git(restore, "show", f"{saved}:notes.txt") == "untracked notes"
    assert git(restore, "show", f"{saved}:feature.txt") == "local work"


# --- recover ---------------------------------------------------------------------------------

def test_recover_cleans_a_dirty_slot(cli, pool, manager, upstream):
    slot = manager.get_pool(pool).slot_dir(1)
    (slot / "README").write_text("scribbled on\n")
    (slot / "build").mkdir()
    (slot / "build" / "out.o").write_text("ignored output\n")
    (slot / ".git" / "index.lock").write_text("")

    result = cli("recover", "web-1", "--json")
    assert result.code == 0, result
    data = result.json()
    assert data["recovered"] is True and data["state"] == "available"
    assert any(a.startswith("cleaned") for a in data["actions"])
    assert not any("re-cloned" in a for a in data["actions"]), "cleaning sufficed"
    clean_at(slot, git(upstream, "rev-parse", "HEAD"))
    assert not (slot / ".git" / "index.lock").exists()
    assert Path(data["rescued"]).is_file(), "the scribbles were saved, not just wiped"


def test_recover_reclones_what_cleaning_cannot_fix(cli, pool, manager, upstream):
    p = manager.get_pool(pool)
    shutil.rmtree(p.slot_dir(2) / ".git")
    flip_byte(p.slot_dir(3) / ".git" / "HEAD", offset=0)
    tip = git(upstream, "rev-parse", "HEAD")
    for ref in ("web-2", str(p.slot_dir(3) / "src")):  # a slot id, or a path inside a slot
        result = cli("recover", ref, "--json")
        assert result.code == 0, result
        data = result.json()
        assert data["recovered"] is True and data["state"] == "available"
        assert "re-cloned from the mirror" in data["actions"]
        clean_at(Path(p.slot_dir(int(data["slot_id"][-1]))), tip)
    assert {s["state"] for s in slots_of(manager, pool).values()} == {"available"}
    assert cli("detect").code == 0


def test_recover_keeps_commits_of_a_slot_it_cannot_clean(cli, pool, manager, upstream):
    """A holder committed (leaving no files in the tree) and then HEAD broke: cleaning fails,
    so the whole working copy, .git and all, is kept before the slot is re-cloned."""
    slot = manager.get_pool(pool).slot_dir(1)
    lease = manager.allocate_slot(pool, fetch=False)
    git(slot, "checkout", "-q", "-b", "feat")
    git(slot, "rm", "-q", "-r", ".")
    git(slot, "commit", "-q", "-m", "remove everything")
    work = git(slot, "rev-parse", "HEAD")
    (slot / ".git" / "HEAD").write_text("garbage\n")

    result = cli("recover", lease["slot_id"], "--force", "--json")
    assert result.code == 0, result
    data = result.json()
    assert "re-cloned from the mirror" in data["actions"]
    kept = Path(data["rescued"])
    assert (kept / ".git" / "refs" / "heads" / "feat").read_text().strip() == work
    (kept / ".git" / "HEAD").write_text("ref: refs/heads/feat\n")  # as a person would repair it
    assert git(kept, "log", "-1", "--format=%H %s") == f"{work} remove everything"
    clean_at(slot, git(upstream, "rev-parse", "HEAD"))


def test_recover_refuses_a_live_holder_unless_forced(cli, pool, manager, procs):
    holder = procs.sleeper()
    lease = allocate(cli, "web", "--pid", holder.pid)
    slot = Path(lease["path"])
    (slot / "README").write_text("work in progress\n")

    refused = cli("recover", lease["slot_id"], "--json")
    assert refused.code == 5, refused
    assert json.loads(refused.stderr)["code"] == "conflict"
    status = slots_of(manager, pool)[lease["slot_id"]]
    assert status["state"] == "allocated" and status["lease_id"] == lease["lease_id"]
    assert (slot / "README").read_text() == "work in progress\n"

    forced = cli("recover", lease["slot_id"], "--force", "--json")
    assert forced.code == 0, forced
    data = forced.json()
    assert data["recovered"] is True and data["previous_state"] == "allocated"
    assert slots_of(manager, pool)[lease["slot_id"]]["state"] == "available"
    assert (slot / "README").read_text() == "upstream\n"
    assert Path(data["rescued"]).is_file()


def test_recover_that_cannot_succeed_isolates_the_slot(cli, pool, manager, upstream):
    p = manager.get_pool(pool)
    flip_byte(packs(p.paths.mirror / "objects")[0])  # mirror (and slots sharing it) broken
    shutil.rmtree(upstream)                           # and nothing to rebuild it from
    shutil.rmtree(p.slot_dir(1) / ".git")

    result = cli("recover", "web-1", "--json")
    assert result.code == 3, result
    assert result.json()["recovered"] is False
    error = json.loads(result.stderr)
    assert error["exit_code"] == 3 and "web-1 could not be recovered" in error["message"]
    status = slots_of(manager, pool)["web-1"]
    assert status["state"] == "error"
    assert status["isolated_at"] and status["isolation_reason"] and status["error"]
    assert (p.slot_dir(1) / "README").exists(), "a failed repair destroys nothing"

    found = cli("detect", "--json")
    assert found.code == 1
    assert ids(found.json()["isolated_slots"]) == {"web-1"}

    # The health API's idiom `if manager.recover_slot(...)` must see the failure.
    outcome = manager.recover_slot("web-2")
    assert not outcome and outcome["recovered"] is False
    assert slots_of(manager, pool)["web-2"]["state"] == "error"

    healed = cli("auto-recover", "--json")
    assert healed.code == 3, healed
    assert healed.json()["errors"]
    assert json.loads(healed.stderr)["message"].startswith("auto-recover: ")
    assert slots_of(manager, pool)["web-1"]["state"] == "error"


# --- isolate ---------------------------------------------------------------------------------

def test_isolated_slot_is_never_allocated_until_recovered(cli, upstream):
    assert cli("create", "solo", upstream, "--slots", "1").code == 0
    isolated = cli("isolate", "solo-1", "--reason", "disk errors on sdb", "--json")
    assert isolated.code == 0, isolated
    data = isolated.json()
    assert data["state"] == "error" and data["isolation_reason"] == "disk errors on sdb"
    assert data["isolated_at"].endswith("Z")

    status = cli("status", "solo-1", "--json").json()
    assert status["state"] == "error"
    assert status["isolation_reason"] == "disk errors on sdb"
    assert status["isolated_at"] == data["isolated_at"]

    assert cli("allocate", "solo").code == 75
    found = cli("detect", "solo", "--json")
    assert found.code == 1
    assert ids(found.json()["isolated_slots"]) == {"solo-1"}
    assert cli("auto-recover", "solo").code == 0
    assert cli("status", "solo-1", "--json").json()["state"] == "error", \
        "isolation waits for an operator, auto-recover leaves it"
    assert cli("allocate", "solo").code == 75

    recovered = cli("recover", "solo-1", "--json")
    assert recovered.code == 0, recovered
    status = cli("status", "solo-1", "--json").json()
    assert status["state"] == "available"
    assert status["isolated_at"] is None and status["isolation_reason"] is None
    assert cli("detect", "solo").code == 0
    got = cli("allocate", "solo")
    assert got.code == 0 and got.stdout.strip().endswith("/pools/solo/slots/1")


# --- healthy pools are never reported --------------------------------------------------------

def test_healthy_pools_are_never_reported(cli, upstream, manager, procs):
    assert cli("create", "web", upstream, "--slots", "4").code == 0
    pdir = manager.get_pool("web").paths.dir
    fresh = cli("detect", "--json")
    assert fresh.code == 0, fresh
    d = fresh.json()
    assert d["healthy"] is True and d["count"] == 0
    assert all(d[k] == [] for k in KINDS)
    assert cli("detect", "--deep").code == 0, "git fsck finds nothing wrong either"

    before = tree_digest(pdir)
    noop = cli("auto-recover", "--json")
    assert noop.code == 0, noop
    assert noop.json()["pools"][0]["actions"] == []
    assert tree_digest(pdir) == before, "auto-recover on a healthy pool changes nothing"

    # An ordinary cycle that saved a holder's work leaves a healthy pool.
    path = Path(allocate(cli, "web")["path"])
    (path / "scratch.txt").write_text("holder junk\n")
    assert cli("release", path).code == 0
    assert cli("detect").code == 0

    # Slots in legitimate use: a live --pid holder, plain and long leases, a running `run`.
    live = procs.sleeper()
    leases = [allocate(cli, "web", "--pid", live.pid), allocate(cli, "web"),
              allocate(cli, "web", "--ttl", "1h")]
    start_run(procs, manager, "web", ({"web-1", "web-2", "web-3", "web-4"}
                                      - {x["slot_id"] for x in leases}).pop())
    busy = cli("detect", "--json")
    assert busy.code == 0, busy
    assert busy.json()["count"] == 0
    kept = cli("auto-recover", "--force-release-long-allocated", "--json")
    assert kept.code == 0 and kept.json()["pools"][0]["actions"] == []
    status = slots_of(manager, "web")
    assert {s["state"] for s in status.values()} == {"allocated"}
    assert all(status[x["slot_id"]]["lease_id"] == x["lease_id"] for x in leases)


# --- the health API --------------------------------------------------------------------

def test_guide_api_names_and_result_keys(pool, manager, procs, monkeypatch):
    p = manager.get_pool(pool)
    lease = manager.allocate_slot(pool, fetch=False)
    shutil.rmtree(p.slot_dir(2) / ".git")
    orphan = p.paths.locks / "web-99.lock"
    orphan.write_text("")
    clock_at(monkeypatch, 2)  # the allocation is 2 s old: long, against 0.0001 h (0.36 s)

    anomalies = manager.detect_anomalies(max_allocation_hours=24)
    assert {"long_allocated_slots", "corrupted_slots", "orphaned_locks"} <= anomalies.keys()
    assert manager.detect_long_allocated_slots(max_allocation_hours=24) == []
    [long] = manager.detect_long_allocated_slots(max_allocation_hours=0.0001)
    assert long["slot_id"] == lease["slot_id"] and "allocated since" in long["evidence"]
    assert ids(manager.detect_corrupted_slots()) == {"web-2"}
    assert paths(manager.detect_orphaned_locks()) == {str(orphan)}

    locks = manager.lock_manager
    assert locks.detect_stale_locks(max_age_hours=24) == [], "a fresh lock is not stale yet"
    assert locks.detect_stale_locks() == [], "default age: the config's stale_lock_hours (24)"
    assert locks.detect_stale_locks(max_age_hours=0) == [str(orphan)]
    day_ago = time.time() - 25 * 3600
    os.utime(orphan, (day_ago, day_ago))
    assert locks.detect_stale_locks(max_age_hours=24) == [str(orphan)]
    assert locks.cleanup_stale_locks(max_age_hours=24) == 1
    assert not orphan.exists()

    worker = procs.cleaning_worker(pool, 3, junk=False)
    held = p.paths.slot_lock(3)
    assert locks.detect_stale_locks() == [], "a lock a live worker holds is never stale"
    assert locks.force_unlock("web-3") is True
    assert not held.exists()
    assert locks.force_unlock("web-3") is False
    kill(worker)

    outcome = manager.recover_slot("web-2", force=False)
    assert outcome and outcome["recovered"] is True
    isolated = manager.isolate_slot("web-2", "manual inspection")
    assert isolated["state"] == "error" and isolated["isolation_reason"] == "manual inspection"
    assert manager.detect_anomalies()["isolated_slots"][0]["slot_id"] == "web-2"

    results = manager.auto_recover(max_allocation_hours=24, recover_corrupted=True,
                                   cleanup_orphaned_locks=True,
                                   force_release_long_allocated=False)
    assert set(GUIDE_COUNTERS) <= results.keys()
    assert results["errors"] == []
    # web-3's worker died mid-clean: recovered; web-1's lease kept; web-2 stays isolated.
    status = slots_of(manager, pool)
    assert status["web-3"]["state"] == "available"
    assert status["web-1"]["lease_id"] == lease["lease_id"]
    assert status["web-2"]["state"] == "error"


def test_the_guides_own_snippets_run_as_written(pool, manager):
    """The health API's documented idioms: isolated slots found through ``pool.slots`` and
    ``SlotState``, their metadata, attribute access on detections, ``add_slot``."""
    from necropool import PoolManager, SlotState

    manager = PoolManager(config=manager.settings)
    shutil.rmtree(manager.get_pool(pool).slot_dir(3) / ".git")
    assert [s.slot_id for s in manager.detect_anomalies()["corrupted_slots"]] == ["web-3"]
    manager.isolate_slot("web-2", "manual inspection")

    isolated = [s for s in manager.get_pool(pool).slots if s.state == SlotState.ERROR]
    assert [s.slot_id for s in isolated] == ["web-2"]
    assert isolated[0].metadata.get("isolation_reason") == "manual inspection"
    assert isolated[0].metadata.get("isolated_at")
    success = manager.recover_slot(isolated[0].slot_id, force=True)
    assert success and success.state == "available"

    assert manager.remove_slot("web-3", force=True)
    assert manager.add_slot(pool) == "web-3"
    assert {s.state for s in manager.get_pool(pool).slots} == {SlotState.AVAILABLE}


@pytest.mark.toml_only
def test_unreadable_state_entry_stays_reported_after_the_state_is_rewritten(cli, pool, manager):
    p = manager.get_pool(pool)
    set_state_fields(p.paths.dir, 2, state="banana")
    # Any later write (here an ordinary allocate + release) rewrites the entry as `error`:
    # the slot must still be reported and healed, not silently lost to the pool.
    path = allocate(cli, "web")["path"]
    assert cli("release", path).code == 0
    assert slots_of(manager, pool)["web-2"]["state"] == "error"

    found = cli("detect", "--json")
    assert found.code == 1, found
    assert ids(found.json()["corrupted_slots"]) == {"web-2"}
    healed = cli("auto-recover", "--json")
    assert healed.code == 0 and healed.json()["corrupted_recovered"] == 1, healed
    assert slots_of(manager, pool)["web-2"]["state"] == "available"
    assert cli("detect").code == 0


def test_corrupted_slot_of_a_live_holder_is_left_to_its_holder(cli, pool, manager, procs):
    holder = procs.sleeper()
    lease = allocate(cli, "web", "--pid", holder.pid)
    slot = Path(lease["path"])
    (slot / "README").write_text("work in progress\n")
    corrupt_pack_copy(slot)

    found = cli("detect", "--json")
    assert found.code == 1
    assert ids(found.json()["corrupted_slots"]) == {lease["slot_id"]}
    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed  # deferred until the release: not a failed action
    healed = healed.json()
    assert healed["corrupted_recovered"] == 0 and healed["corrupted_isolated"] == 0
    deferred = [a for a in healed["pools"][0]["actions"] if a["target"] == lease["slot_id"]]
    assert [a["status"] for a in deferred] == ["deferred"]
    status = slots_of(manager, pool)[lease["slot_id"]]
    assert status["state"] == "allocated" and status["lease_id"] == lease["lease_id"]
    assert (slot / "README").read_text() == "work in progress\n"

    kill(holder)  # once the holder is gone, the same run heals it, saving the work
    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert healed.json()["corrupted_recovered"] == 1
    assert slots_of(manager, pool)[lease["slot_id"]]["state"] == "available"
    assert cli("detect").code == 0


@pytest.mark.toml_only
def test_damaged_pool_files_are_reported_and_repaired(cli, pool, manager, upstream):
    p = manager.get_pool(pool)
    p.paths.state.write_text("slots = [[[ not toml\n")  # the backup copies are still good
    slot_file = slot_files(p.paths.dir, 2)[0]
    slot_file.write_text("state = [[[ not toml\n")
    shutil.rmtree(p.paths.locks)
    shutil.rmtree(p.paths.mirror)

    found = cli("detect", "--json")
    assert found.code == 1, found
    d = found.json()
    assert {str(p.paths.state), str(p.paths.mirror)} <= paths(d["corrupted_slots"])
    assert str(p.paths.locks) in paths(d["stray_paths"])

    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert cli("detect").code == 0
    assert p.paths.locks.is_dir()
    assert Verifier().verify(p.paths.mirror, bare=True, branch="main") == []
    assert "schema_version" in p.paths.state.read_text()
    assert "[slot]" in slot_file.read_text()
    assert allocate_everything(manager, pool) == {"web-1", "web-2", "web-3"}


def test_symlinks_are_unlinked_never_followed(cli, pool, manager, tmp_path):
    p = manager.get_pool(pool)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not necropool's\n")
    shutil.rmtree(p.slot_dir(2))
    p.slot_dir(2).symlink_to(outside)             # a slot replaced by a symlink
    (p.paths.slots / "elsewhere").symlink_to(outside)

    found = cli("detect", "--json")
    assert found.code == 1, found
    d = found.json()
    assert paths(d["stray_paths"]) == {str(p.slot_dir(2)), str(p.paths.slots / "elsewhere")}
    assert ids(d["corrupted_slots"]) == {"web-2"}

    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert (outside / "keep.txt").read_text() == "not necropool's\n"
    assert sorted(x.name for x in outside.iterdir()) == ["keep.txt"]
    assert not p.slot_dir(2).is_symlink() and (p.slot_dir(2) / ".git").is_dir()
    assert cli("detect").code == 0


def test_a_broken_pool_does_not_stop_the_health_of_the_others(cli, pool, manager, root):
    junk = root / "pools" / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("somebody's\n")
    orphan = manager.get_pool(pool).paths.locks / "web-99.lock"
    orphan.write_text("")

    found = cli("detect", "--json")
    assert found.code == 1, found
    d = found.json()
    assert paths(d["orphaned_locks"]) == {str(orphan)}
    assert str(junk) in paths(d["stray_paths"])

    healed = cli("auto-recover", "--json")
    assert healed.code == 3, "the unusable pool is reported as an error"
    h = healed.json()
    assert h["orphaned_locks_cleaned"] == 1 and not orphan.exists()
    assert any(e.startswith("junk:") for e in h["errors"])
    assert (junk / "notes.txt").read_text() == "somebody's\n"
    assert manager.lock_manager.detect_stale_locks() == []
    assert cli("detect", pool).code == 0


def test_a_pool_that_cannot_be_checked_is_named_and_the_others_still_are(
        cli, pool, manager, upstream):
    """One rule for every command over several pools: detect, like auto-recover, checks the
    healthy pool, names the one it could not check, and exits 3 (a partial failure)."""
    from necropool.ground.config import PoolSpec

    manager.create_pool(PoolSpec(name="api", url=str(upstream), num_slots=1))
    orphan = manager.get_pool(pool).paths.locks / "web-99.lock"
    orphan.write_text("")
    locks = manager.get_pool("api").paths.locks
    shutil.rmtree(locks)
    locks.write_text("not a directory\n")

    found = cli("detect", "--json")
    assert found.code == 3, found
    d = found.json()
    assert paths(d["orphaned_locks"]) == {str(orphan)}
    [error] = d["errors"]
    assert error.startswith("api: ") and str(locks) in error and d["healthy"] is False
    assert "api:" in json.loads(found.stderr)["message"]
    [outcome] = manager.detect_anomalies()["errors"]  # the API's: the pool and its error
    assert (outcome.pool, f"api: {outcome.error}") == ("api", error)

    alone = cli("detect", "api")
    assert alone.code == 3 and str(locks) in alone.stderr
    assert len(alone.stderr.strip().splitlines()) == 1
    assert cli("auto-recover", "--json").code == 3, "the same exit status as auto-recover"


@pytest.mark.toml_only
def test_slot_directory_without_state_entry_is_adopted(cli, pool, manager, root):
    """A crash between an add's rename and its state write leaves a slot the state does not
    know: auto-recover registers it again instead of leaving a stray clone."""
    for path in slot_files(root / "pools" / "web", 3):
        path.unlink()
    assert "web-3" not in slots_of(manager, pool)

    found = cli("detect", "--json").json()
    assert paths(found["stray_paths"]) == {str(root / "pools" / "web" / "slots" / "3")}
    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert healed.json()["slots_adopted"] == 1
    assert slots_of(manager, pool)["web-3"]["state"] == "available"
    assert cli("detect").code == 0


def test_what_detect_remembers_never_hides_damage(cli, pool, root):
    """The second detect skips the tree walks the first proved (verified.json), yet still
    checks every pack's checksum and notices packs that changed or went away."""
    pool_dir = root / "pools" / "web"
    assert cli("detect").code == 0
    assert (pool_dir / "verified.json").exists()
    slot2, slot3 = pool_dir / "slots" / "2", pool_dir / "slots" / "3"
    corrupt_pack_copy(slot2)
    for pack in packs(slot3 / ".git" / "objects"):
        pack.unlink()
    found = cli("detect", "--json")
    assert found.code == 1
    assert ids(found.json()["corrupted_slots"]) == {"web-2", "web-3"}
    assert cli("auto-recover").code == 0
    assert cli("detect").code == 0
