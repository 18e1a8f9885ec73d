"""Two holders in one slot, and wedged slots: what a careless or killed holder leaves behind
(background processes, a judgement overtaken by events, lost state files, a cleanup that
blows up) never reaches the next holder, and never loses work."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import Procs, corrupt_loose_object, kill
from helpers import commit_file, git

from necropool.ground.config import PoolSpec
from necropool.ground.proc import processes_in, start_time
from necropool.health import autorecover, detect
from necropool.slot import cleanup


@pytest.fixture
def procs():
    started = Procs()
    yield started
    started.kill_all()


def wait_for(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    return start_time(pid) is None


def end_leftover(pidfile: Path) -> None:
    """Kill what a test's command left running, if the code under test did not."""
    if pidfile.exists() and pidfile.read_text().strip():
        pid = int(pidfile.read_text())
        if start_time(pid) is not None:
            os.kill(pid, signal.SIGKILL)


def slot_state(manager, slot_id: str) -> dict:
    return manager.slot_status(slot_id)


# A writer loop in the background (its own output away from the test's pipes), as a build
# that starts a daemon or a forgotten `&` would leave it.
WRITER = "(while :; do echo x >> written.log; sleep 0.05; done) >/dev/null 2>&1 & echo $! > {pid}"


# --- the /proc scan --------------------------------------------------------------------------

def test_processes_in_sees_cwd_open_files_and_mappings(tmp_path, procs):
    inside, outside = tmp_path / "slot", tmp_path / "elsewhere"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    (inside / "data.bin").write_bytes(b"\0" * 4096)
    by_cwd = procs.start(["sleep", "60"], cwd=inside / "sub")
    by_fd = procs.start(["sh", "-c", f"exec 3<{inside / 'data.bin'}; exec sleep 60"],
                        cwd=outside)
    ready = tmp_path / "mapped"
    by_map = procs.start([sys.executable, "-c", (
        "import mmap, sys, time\n"
        f"f = open({str(inside / 'data.bin')!r}, 'rb')\n"
        "m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
        f"f.close(); open({str(ready)!r}, 'w').write('x')\n"
        "time.sleep(60)\n")], cwd=outside)
    bystander = procs.start(["sleep", "60"], cwd=outside)
    wait_for(ready.exists, "the mapping process")
    wait_for(lambda: by_fd.pid in processes_in(inside), "the open file to show")
    found = processes_in(inside)
    assert {by_cwd.pid, by_fd.pid, by_map.pid} <= set(found)
    assert bystander.pid not in found
    assert os.getpid() not in processes_in(Path.cwd())  # never the caller or its ancestors


def test_a_necropool_reader_is_told_by_its_lock_not_by_its_name(tmp_path, procs):
    """detect and auto-recover read slots' packs and indexes while others release, holding
    the pool's readers lock: a release must not refuse (nor end) them; one working in the
    slot still counts, and so does a holder that only calls itself necropool."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash for exec -a")
    inside, outside = tmp_path / "slot", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (inside / "pack").write_bytes(b"\0" * 64)
    readers = tmp_path / "readers.lock"
    reader = procs.start([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from necropool.ground import proc\n"
        f"f = open({str(inside / 'pack')!r}, 'rb')\n"
        f"with proc.reading(Path({str(readers)!r})): time.sleep(60)\n")], cwd=outside)
    renamed = procs.start([bash, "-c", f"exec 3<{inside / 'pack'}; exec -a necropool sleep 60"],
                          cwd=outside)
    worker = procs.start([bash, "-c", "exec -a necropool sleep 60"], cwd=inside)
    wait_for(lambda: reader.pid in processes_in(inside), "the reader's open file to show")
    wait_for(lambda: reader.pid not in processes_in(inside, readers), "the reader's lock")
    found = processes_in(inside, readers)
    assert renamed.pid in found, "a process named necropool passed for necropool"
    assert worker.pid in found


@pytest.mark.slow
def test_a_reader_that_begins_while_the_slot_is_scanned_is_still_told_by_its_lock(
        tmp_path, procs):
    """A detect that takes the readers lock just after a release read it, and opens a slot's
    index before the release's /proc scan reaches it, is a reader all the same: a release
    of a live holder was refused so under load. A reader taking and leaving the lock every
    20 ms, against 100 scans."""
    inside, outside = tmp_path / "slot", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (inside / "index").write_bytes(b"\0" * 64)
    readers, ready = tmp_path / "readers.lock", tmp_path / "ready"
    reader = procs.start([sys.executable, "-c", (
        "import time; from pathlib import Path; from necropool.ground import proc\n"
        f"ready = Path({str(ready)!r})\n"
        "while True:\n"
        f"    with proc.reading(Path({str(readers)!r})):\n"
        f"        with open({str(inside / 'index')!r}, 'rb'):\n"
        "            ready.touch(); time.sleep(0.02)\n"
        "    time.sleep(0.02)\n")], cwd=outside)
    wait_for(ready.exists, "the reader")
    blamed = [pid for _ in range(100) for pid in processes_in(inside, readers)]
    assert reader.pid not in blamed, f"the reader was blamed in {len(blamed)} of 100 scans"
    holder = procs.start(["sh", "-c", f"exec 3<{inside / 'index'}; exec sleep 60"],
                         cwd=outside)
    wait_for(lambda: holder.pid in processes_in(inside, readers), "the holder's open file")


# --- run ends its command's leftovers --------------------------------------------------------

def test_run_ends_what_its_command_left_running(cli, pool, manager, tmp_path):
    pidfile, daemon = tmp_path / "bg.pid", tmp_path / "daemon.pid"
    escaped = (f"setsid sh -c 'echo $$ > {daemon}; exec sleep 300' >/dev/null 2>&1 & "
               f"while [ ! -s {daemon} ]; do sleep 0.01; done")  # left its session, not the slot
    try:
        result = cli("run", "web", "--no-fetch", "--", "sh", "-c",
                     WRITER.format(pid=pidfile) + "; " + escaped + "; exit 4")
        assert result.code == 4, result
        writer = int(pidfile.read_text())
        assert gone(writer, timeout=1), "the command's background writer outlived run"
        assert gone(int(daemon.read_text()), timeout=1), "a daemon in the slot outlived run"
    finally:
        end_leftover(pidfile)
        end_leftover(daemon)
    slot = manager.slot_status("web-1")
    assert slot["state"] == "available"
    assert not (Path(slot["path"]) / "written.log").exists()  # cleaned after it stopped


@pytest.mark.slow
def test_leftovers_of_a_killed_run_are_ended_before_the_slot_is_handed_out(
        cli, pool, manager, tmp_path):
    pidfile, ready = tmp_path / "bg.pid", tmp_path / "ready"
    run = subprocess.Popen(
        [sys.executable, "-m", "necropool", "run", "web", "--no-fetch", "--", "sh", "-c",
         WRITER.format(pid=pidfile) + f"; echo x > {ready}; sleep 300"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready.exists, "run's command")
        writer = int(pidfile.read_text())
        kill(run)  # SIGKILL: run ends nothing itself
        assert start_time(writer) is not None
        healed = cli("auto-recover", "--json")
        assert healed.code == 0, healed
        assert healed.json()["abandoned_released"] == 1
        assert gone(writer, timeout=1), "auto-recover handed out a slot a writer still uses"
    finally:
        end_leftover(pidfile)
        if run.poll() is None:
            kill(run)
    slot = Path(manager.slot_status("web-1")["path"])
    assert manager.slot_status("web-1")["state"] == "available"
    assert not (slot / "written.log").exists()
    assert processes_in(slot) == []


# Ended, it starts one more process in the slot on its way out (as a holder's supervisor
# might restart its worker), after the slot was looked at.
HEIR = ("(trap 'sleep 300 & echo $! > {heir}; exit' TERM; while :; do sleep 0.1; done) "
        ">/dev/null 2>&1 & echo $! > {pid}")


@pytest.mark.slow
def test_a_process_started_while_the_slot_is_cleared_is_ended_too(cli, pool, manager,
                                                                  tmp_path):
    pidfile, heirfile, ready = tmp_path / "bg.pid", tmp_path / "heir.pid", tmp_path / "ready"
    run = subprocess.Popen(
        [sys.executable, "-m", "necropool", "run", "web", "--no-fetch", "--", "sh", "-c",
         HEIR.format(pid=pidfile, heir=heirfile) + f"; echo x > {ready}; sleep 300"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready.exists, "run's command")
        kill(run)  # SIGKILL: run ends nothing itself
        healed = cli("auto-recover", "--json")
        assert healed.code == 0, healed
        assert healed.json()["abandoned_released"] == 1
        heir = int(heirfile.read_text())  # it was started: the supervisor was ended
        assert gone(heir, timeout=1), "the slot was handed out with the heir still in it"
    finally:
        end_leftover(pidfile)
        end_leftover(heirfile)
        if run.poll() is None:
            kill(run)
    slot = Path(manager.slot_status("web-1")["path"])
    assert manager.slot_status("web-1")["state"] == "available"
    assert processes_in(slot) == []


# --- release with processes still in the slot ------------------------------------------------

def test_release_refuses_while_processes_work_in_the_slot_unless_forced(cli, pool, manager,
                                                                        procs):
    lease = manager.allocate_slot("web", fetch=False)
    slot = Path(lease["path"])
    (slot / "work.txt").write_text("in progress\n")
    worker = procs.start(["sleep", "300"], cwd=slot)

    refused = cli("release", lease["slot_id"])
    assert refused.code == 5, refused
    assert f"pid {worker.pid} (sleep)" in refused.stderr and "--force" in refused.stderr
    after = slot_state(manager, lease["slot_id"])
    assert (after["state"], after["lease_id"]) == ("allocated", lease["lease_id"])
    assert (slot / "work.txt").read_text() == "in progress\n"
    assert worker.poll() is None

    # necropool itself, run from inside the slot (and its ancestors), is not in the way.
    in_slot = cli("release", ".", "--force", "--json", cwd=slot)
    assert in_slot.code == 0, in_slot
    assert worker.wait(timeout=5) == -signal.SIGTERM
    assert slot_state(manager, lease["slot_id"])["state"] == "available"
    assert Path(in_slot.json()["rescued"]).is_file()


# --- an action re-checks the judgement it was decided on --------------------------------------

def test_a_judgement_overtaken_by_a_new_allocation_touches_nothing(cli, pool, manager, procs):
    """detect judges web-1 abandoned and corrupted; before auto-recover acts on that, another
    recover heals it and a live holder gets it: the stale judgement must not take it."""
    pool_ = manager.get_pool("web")
    holder = procs.sleeper()
    lease = manager.allocate_slot("web", pid=holder.pid, fetch=False)
    assert lease["slot_id"] == "web-1"
    corrupt_loose_object(Path(lease["path"]))
    kill(holder)
    found = detect.detect(pool_)  # the judgement
    assert [a.slot_id for a in found.items["abandoned_slots"]] == ["web-1"]

    assert cli("recover", "web-1").code == 0  # meanwhile: healed by someone else ...
    live = procs.sleeper()
    granted = {}  # ... and handed to a live holder
    for _ in range(3):
        got = manager.allocate_slot("web", pid=live.pid, fetch=False)
        granted[got["slot_id"]] = got
    again = granted["web-1"]
    (Path(again["path"]) / "new-holder.txt").write_text("mine\n")

    result = autorecover.auto_recover(pool_, found=found).to_dict()  # the stale judgement
    mine = [a for a in result["actions"] if a["target"] == "web-1"]
    assert mine and {a["status"] for a in mine} <= {"skipped", "deferred"}, mine
    assert any(a["status"] == "skipped" for a in mine), mine
    assert result["errors"] == []
    now = slot_state(manager, "web-1")
    assert (now["state"], now["lease_id"]) == ("allocated", again["lease_id"])
    assert (Path(again["path"]) / "new-holder.txt").read_text() == "mine\n"


# --- wedged: an unexpected error in cleanup --------------------------------------------------

def test_an_unexpected_cleanup_error_leaves_the_slot_in_error_with_its_work(
        pool, manager, upstream, procs, monkeypatch):
    """A bug in cleanup (any exception, not only the expected ones) puts the slot in error
    with the work in place; health then goes on with the other pools."""
    manager.create_pool(PoolSpec(name="other", url=str(upstream), num_slots=1))
    lease = manager.allocate_slot("web", fetch=False)
    slot = Path(lease["path"])
    commit_file(slot, "local.txt", "local commit\n")
    (slot / "dirty.txt").write_text("uncommitted\n")
    holder = procs.sleeper()
    manager.allocate_slot("other", pid=holder.pid, fetch=False)
    kill(holder)

    real = cleanup.clean

    def buggy(tree, target):
        if "/pools/web/" in str(tree):  # quoting a file name that is not UTF-8
            raise RuntimeError("a bug in cleanup at " + os.fsdecode(b"caf\xe9.txt"))
        return real(tree, target)

    monkeypatch.setattr(cleanup, "clean", buggy)
    with pytest.raises(Exception) as raised:
        manager.release_slot(lease["slot_id"])
    assert "RuntimeError: a bug in cleanup" in str(raised.value)
    after = slot_state(manager, lease["slot_id"])
    assert after["state"] == "error"
    assert "RuntimeError: a bug in cleanup at caf\\xe9.txt" in after["error"]
    assert (slot / "dirty.txt").read_text() == "uncommitted\n"
    assert git(slot, "log", "-1", "--format=%s") == "change local.txt"

    # auto-recover heals both pools: web-1's cleanup fails again, so its working copy is
    # moved aside whole (the work with it) and the slot re-cloned.
    healed = manager.auto_recover()
    assert healed["abandoned_released"] == 1 and healed["corrupted_recovered"] == 1, healed
    assert slot_state(manager, "other-1")["state"] == "available"
    assert slot_state(manager, lease["slot_id"])["state"] == "available"
    [kept] = manager.get_pool("web").paths.rescued.glob("web-1-*.broken")
    assert (kept / "dirty.txt").read_text() == "uncommitted\n"


# --- both state files lost -------------------------------------------------------------------

def test_slots_rebuilt_after_losing_both_state_files_are_isolated_unless_idle(
        cli, pool, manager, procs, root):
    """Without a state or an event log to rebuild leases from, a slot a holder may still
    work in is isolated with its work; only a provably idle one (no process, lock free,
    tree clean) is recovered and handed out."""
    working = manager.allocate_slot("web", fetch=False)  # a build still running in it
    procs.start(["sleep", "300"], cwd=working["path"])
    edited = manager.allocate_slot("web", fetch=False)  # nothing running, work in the tree
    (Path(edited["path"]) / "draft.txt").write_text("not saved anywhere else\n")
    shutil.rmtree(root / "pools/web/state")
    (root / "pools/web/events.jsonl").unlink()  # nor a log to rebuild leases from

    found = cli("detect", "web", "--json").json()
    isolated = {a["slot_id"]: a["evidence"] for a in found["isolated_slots"]}
    assert set(isolated) == {working["slot_id"], edited["slot_id"]}, found
    assert "sleep" in isolated[working["slot_id"]]
    assert "changes" in isolated[edited["slot_id"]]

    healed = cli("auto-recover", "web", "--json")
    assert healed.code == 0, healed
    after = {s["slot_id"]: s for s in manager.pool_status("web")["slots"]}
    idle = ({"web-1", "web-2", "web-3"} - set(isolated)).pop()
    assert after[idle]["state"] == "available"
    for slot_id in isolated:
        assert after[slot_id]["state"] == "error"
        assert "state rebuilt from disk" in after[slot_id]["isolation_reason"]
    assert (Path(edited["path"]) / "draft.txt").read_text() == "not saved anywhere else\n"
    assert manager.pool_status("web")["state_source"] == "state.toml"  # persisted as such


# --- wedged: a mirror stamp in the future ----------------------------------------------------

def test_a_mirror_stamp_in_the_future_does_not_stop_fetching(pool, manager, upstream, root):
    stamp = root / "pools/web/mirror.fetched"
    stamp.write_text(f"{time.time() + 365 * 86400}\n")  # a clock that was set ahead, say
    newer = commit_file(upstream, "later.txt", "pushed after the pool was made\n")
    assert manager.allocate_slot("web")["current_commit"] == newer
    assert float(stamp.read_text()) <= time.time()  # rewritten: the next fetch is not skipped


# --- remove / delete --force save the holders' work -------------------------------------------

def bundle_commits(bundle: Path, upstream: Path, tmp_path: Path) -> set[str]:
    """The commits a rescue bundle brings back, fetched into a fresh clone."""
    restore = tmp_path / f"restore-{bundle.stem}"
    git(tmp_path, "clone", "-q", str(upstream), str(restore))
    git(restore, "fetch", "-q", str(bundle), "refs/necropool/rescue/*:refs/rescued/*")
    return set(git(restore, "log", "--format=%H", "--glob=refs/rescued/*").split())


def test_remove_force_saves_the_holders_work_unless_discarded(cli, pool, manager, upstream,
                                                              tmp_path):
    lease = manager.allocate_slot("web", fetch=False)
    local = commit_file(Path(lease["path"]), "feature.txt", "the holder's commit\n")
    removed = cli("remove", lease["slot_id"], "--force", "--json")
    assert removed.code == 0, removed
    bundle = Path(removed.json()["rescued"])
    assert bundle.is_file() and local in bundle_commits(bundle, upstream, tmp_path)

    other = manager.allocate_slot("web", fetch=False)
    commit_file(Path(other["path"]), "thrown.txt", "away\n")
    before = set(manager.get_pool("web").paths.rescued.iterdir())
    discarded = cli("remove", other["slot_id"], "--force", "--discard-work", "--json")
    assert discarded.code == 0, discarded
    assert discarded.json()["rescued"] is None
    assert set(manager.get_pool("web").paths.rescued.iterdir()) == before


def test_delete_force_keeps_the_holders_work_outside_the_deleted_pool(cli, pool, manager,
                                                                      upstream, root, tmp_path):
    lease = manager.allocate_slot("web", fetch=False)
    local = commit_file(Path(lease["path"]), "feature.txt", "the holder's commit\n")
    (Path(lease["path"]) / "draft.txt").write_text("uncommitted\n")
    deleted = cli("delete", "web", "--force", "--json")
    assert deleted.code == 0, deleted
    kept = Path(deleted.json()["rescued"])
    assert kept.parent == root / "rescued" and not (root / "pools/web").exists()
    [bundle] = kept.glob("web-1-*.bundle")
    assert local in bundle_commits(bundle, upstream, tmp_path)


# --- half-made pools -------------------------------------------------------------------------

def test_delete_force_removes_the_remains_of_a_half_made_pool(cli, root, upstream, tmp_path):
    """What an add racing a delete could leave: a pool directory without pool.toml, which
    create refused and delete could not find."""
    remains = root / "pools/web"
    (remains / "slots/.tmp-add0.host.1.2/.git").mkdir(parents=True)
    (remains / "locks").mkdir()
    (remains / "pool.lock").touch()
    refused = cli("create", "web", upstream)
    assert refused.code == 5 and "delete web --force" in refused.stderr, refused
    not_usable = cli("delete", "web")  # a damaged pool, not a missing one (exit 3)
    assert not_usable.code == 3 and "delete web --force" in not_usable.stderr, not_usable
    assert cli("delete", "web", "--force").code == 0
    assert not os.path.lexists(remains)
    assert cli("create", "web", upstream, "--slots", "1").code == 0

    outside = tmp_path / "outside"  # a symlink in a pool's place: refused, never followed
    (outside / "slots").mkdir(parents=True)
    (outside / "keep.txt").write_text("not necropool's\n")
    (root / "pools/evil").symlink_to(outside)
    assert cli("delete", "evil", "--force").code == 5
    assert (root / "pools/evil").is_symlink()
    assert (outside / "keep.txt").read_text() == "not necropool's\n"


def test_a_branch_name_that_is_not_utf8_never_wedges_a_slot(cli, pool, manager, upstream):
    """Whatever cleanup makes of it, the release ends (cleaned, or in error with the work
    kept), never in ``cleaning`` with every later recover failing."""
    lease = manager.allocate_slot("web", fetch=False)
    slot = Path(lease["path"])
    local = commit_file(slot, "work.txt", "on an odd branch\n")
    subprocess.run([b"git", b"branch", b"caf\xe9-\xff", local.encode()], cwd=slot, check=True)
    released = cli("release", lease["slot_id"])
    assert released.code in (0, 3) and "Traceback" not in released.stderr, released
    assert slot_state(manager, lease["slot_id"])["state"] in ("available", "error")
    for command in (["recover", lease["slot_id"]], ["auto-recover"], ["status"], ["log", "web"]):
        result = cli(*command)
        assert result.code in (0, 3) and "Traceback" not in result.stderr, (command, result)
    assert slot_state(manager, lease["slot_id"])["state"] == "available"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_root_auto_recover_ends_an_unprivileged_holders_leftovers(cli, pool, manager, procs):
    """The way cron runs it: auto-recover as root, the holder's leftovers another user's."""
    holder = procs.sleeper()
    lease = manager.allocate_slot("web", pid=holder.pid, fetch=False)
    leftover = procs.start(["sleep", "300"], cwd=lease["path"], user=65534, group=65534)
    wait_for(lambda: leftover.pid in processes_in(Path(lease["path"])), "the leftover")
    kill(holder)
    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert healed.json()["abandoned_released"] == 1
    assert leftover.wait(timeout=5) == -signal.SIGTERM
    assert slot_state(manager, lease["slot_id"])["state"] == "available"


def test_a_slot_released_uncleaned_is_cleaned_only_once_its_leftovers_are_ended(
        cli, pool, manager, procs):
    """``release --no-cleanup`` leaves the cleanup to the next allocation: a process that
    went back into the slot meanwhile is ended before that cleanup, not cleaned under."""
    lease = manager.allocate_slot("web", fetch=False)
    assert cli("release", lease["slot_id"], "--no-cleanup").code == 0
    straggler = procs.start(["sleep", "300"], cwd=lease["path"])
    wait_for(lambda: straggler.pid in processes_in(Path(lease["path"])), "the straggler")
    for _ in range(3):
        got = manager.allocate_slot("web", fetch=False)
        if got["slot_id"] == lease["slot_id"]:
            break
    assert got["slot_id"] == lease["slot_id"]
    assert straggler.wait(timeout=5) == -signal.SIGTERM
