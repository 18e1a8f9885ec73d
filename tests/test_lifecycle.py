"""The allocation lifecycle through the CLI: leases, fencing, waiting, statistics, history."""

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import clock_at, commit_file, git, run_cli, saved_state, wait_until_queued

# Every test twice: state in local TOML files, then in a PostgreSQL ledger.
pytestmark = pytest.mark.usefixtures("ledger")


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), f"not an RFC 3339 UTC time: {text!r}"
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def allocate(cli, *args) -> dict:
    result = cli("allocate", "web", "--json", *args)
    assert result.code == 0, result
    return result.json()


def slot_status(cli, slot_id: str) -> dict:
    result = cli("status", slot_id, "--json")
    assert result.code == 0, result
    return result.json()


def events(root: Path, pool: str = "web") -> list[dict]:
    """The pool's history as ``log --json`` gives it (from either backend)."""
    result = run_cli("--root", root, "log", pool, "--json")
    assert result.code == 0, result
    return result.json()["events"]


def cli_process(*args) -> subprocess.Popen:
    """``necropool ARGS`` started in the background (the environment carries the root)."""
    return subprocess.Popen([sys.executable, "-m", "necropool", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


# --- allocate ---------------------------------------------------------------------------------

def test_plain_allocate_prints_the_path_alone(cli, pool, root):
    result = cli("allocate", "web")
    assert result.code == 0, result
    assert result.stdout == f"{root}/pools/web/slots/1\n"
    path = Path(result.stdout.strip())
    assert path.is_absolute() and (path / ".git").is_dir()
    # ``cd "$(necropool allocate web)"`` works in a shell.
    shell = subprocess.run(["sh", "-c", 'cd "$(python -m necropool allocate web)" && pwd -P'],
                           capture_output=True, text=True,
                           env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:"
                                                     f"{os.environ['PATH']}"))
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == str((root / "pools/web/slots/2").resolve())


def test_allocate_json_describes_the_lease(cli, pool, root):
    before = datetime.now(UTC)
    data = allocate(cli, "--owner", "alice", "--ttl", "2h", "--meta", "ticket=ABC-1",
                    "--meta", "query=a=b")
    after = datetime.now(UTC)
    assert data["schema_version"] == 1
    assert data["slot_id"] == "web-1" and data["pool"] == "web"
    assert data["path"] == str(root / "pools/web/slots/1")
    assert data["state"] == "allocated" and data["owner"] == "alice"
    assert len(data["lease_id"]) >= 8
    allocated = parse_time(data["allocated_at"])
    assert before - timedelta(seconds=1) <= allocated <= after + timedelta(seconds=1)
    expires = parse_time(data["expires_at"])
    assert abs((expires - allocated).total_seconds() - 7200) < 1
    assert data["metadata"] == {"ticket": "ABC-1", "query": "a=b"}
    assert data["current_commit"] == git(root / "pools/web/slots/1", "rev-parse", "HEAD")
    # status reports the same lease.
    status = slot_status(cli, "web-1")
    for key in ("lease_id", "owner", "allocated_at", "expires_at", "metadata", "state"):
        assert status[key] == data[key], key
    # Without --ttl there is no expiry; the next free slot is handed out.
    second = allocate(cli)
    assert second["slot_id"] == "web-2" and second["expires_at"] is None
    assert second["lease_id"] != data["lease_id"]


def test_allocate_rejects_bad_options_as_usage_errors(cli, pool):
    for args in (["--ttl", "soon"], ["--wait", "-5"], ["--meta", "novalue"], ["--ttl", "0"]):
        result = cli("allocate", "web", *args)
        assert result.code == 2, (args, result)
        assert result.stdout == ""
    assert slot_status(cli, "web-1")["state"] == "available"


def test_allocate_pid_of_a_missing_process_is_a_usage_error(cli, pool):
    gone = subprocess.Popen(["true"])
    gone.wait()
    result = cli("allocate", "web", "--pid", gone.pid, "--json")
    assert result.code == 2, result
    error = json.loads(result.stderr)
    assert error["type"] == "error" and error["exit_code"] == 2
    assert all(s["state"] == "available" for s in cli("status", "web", "--json").json()["slots"])


def test_a_slot_held_for_a_pid_is_abandoned_as_soon_as_that_process_dies(cli, pool):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        data = allocate(cli, "--pid", holder.pid)
        assert data["pid"] == holder.pid
        healthy = cli("detect", "web", "--json")
        assert healthy.json()["abandoned_slots"] == [], healthy
    finally:
        holder.kill()
        holder.wait()
    found = cli("detect", "web", "--json")
    assert found.code == 1, found
    abandoned = found.json()["abandoned_slots"]
    assert [a["slot_id"] for a in abandoned] == ["web-1"]
    assert abandoned[0]["lease_id"] == data["lease_id"]


def test_allocate_hands_out_the_current_upstream_tip(cli, pool, upstream):
    new_tip = commit_file(upstream, "later.txt", "newer\n")
    data = allocate(cli)
    assert data["current_commit"] == new_tip
    assert git(data["path"], "rev-parse", "HEAD") == new_tip
    assert git(data["path"], "status", "--porcelain", "--ignored") == ""
    # --no-fetch does not talk to the upstream, but no slot is handed out behind the
    # mirror: the slot that was never used is brought up to the tip the mirror knows.
    newest = commit_file(upstream, "later.txt", "newest\n")
    stale = allocate(cli, "--no-fetch")
    assert stale["slot_id"] != data["slot_id"]
    assert stale["current_commit"] == new_tip != newest
    assert git(stale["path"], "rev-parse", "HEAD") == new_tip
    assert git(stale["path"], "status", "--porcelain", "--ignored") == ""


def test_a_local_upstream_is_fetched_only_when_it_has_moved(cli, pool, upstream, root):
    """Its refs are read and compared with the mirror's: no fetch when nothing is new, a
    fetch (and the new tip) as soon as a branch moves or a tag appears."""
    fetch_head = root / "pools" / "web" / "mirror.git" / "FETCH_HEAD"
    first = allocate(cli)
    assert not fetch_head.exists()  # nothing new since create: nothing fetched
    assert cli("release", first["slot_id"]).code == 0
    assert not fetch_head.exists()
    new_tip = commit_file(upstream, "later.txt", "newer\n")
    assert allocate(cli)["current_commit"] == new_tip
    assert fetch_head.exists()
    git(upstream, "tag", "v1")
    allocate(cli)
    mirror = root / "pools" / "web" / "mirror.git"
    assert git(mirror, "rev-parse", "refs/tags/v1") == new_tip


def test_an_unreachable_upstream_does_not_stop_allocation(cli, pool, upstream, tmp_path):
    tip = git(upstream, "rev-parse", "HEAD")
    upstream.rename(tmp_path / "moved-away")
    result = cli("allocate", "web", "--json")
    assert result.code == 0, result
    data = result.json()
    assert data["state"] == "allocated" and data["current_commit"] == tip
    assert data.get("fetch_error")
    plain = cli("allocate", "web")
    assert plain.code == 0, plain
    assert plain.stdout == f"{Path(plain.stdout.strip())}\n"
    assert "warning" in plain.stderr


# --- release ----------------------------------------------------------------------------------

def test_release_by_slot_id_slot_path_and_a_path_inside_the_slot(cli, pool, root):
    paths = [Path(allocate(cli)["path"]) for _ in range(3)]
    (paths[2] / "made/by/holder").mkdir(parents=True)
    by_id = cli("release", "web-1")
    by_path = cli("release", paths[1])
    inner = cli("release", paths[2] / "made/by/holder")
    for result in (by_id, by_path, inner):
        assert result.code == 0, result
        assert result.stdout == ""
    assert "released web-1" in by_id.stderr
    assert "released web-2" in by_path.stderr
    assert "released web-3" in inner.stderr
    assert not (paths[2] / "made").exists()
    # A relative path, from a shell sitting inside the slot.
    again = Path(allocate(cli)["path"])
    relative = cli("release", "src/pkg0", cwd=again)
    assert relative.code == 0, relative
    here = cli("release", ".", cwd=again)
    assert here.code == 5, here  # already released by the line above
    states = {s["slot_id"]: s["state"] for s in cli("status", "web", "--json").json()["slots"]}
    assert states == {"web-1": "available", "web-2": "available", "web-3": "available"}


def test_a_slot_id_with_this_hosts_name_is_the_local_slot_and_another_hosts_is_refused(
        cli, pool, root):
    """``web-1@HOST`` names HOST's slot web-1: with this host's own name, every command takes
    it as the local slot; the commands that work on the slot's directory refuse another
    host's (exit 2), changing nothing."""
    from necropool.ground.proc import hostname

    held = allocate(cli)
    mine = f"{held['slot_id']}@{hostname()}"
    assert slot_status(cli, mine)["lease_id"] == held["lease_id"]
    before = saved_state(root)
    for command in ("recover", "isolate", "remove"):
        refused = cli(command, f"{held['slot_id']}@elsewhere")
        assert refused.code == 2 and "is on host elsewhere" in refused.stderr, refused
    assert saved_state(root) == before
    released = cli("release", mine, "--lease-id", held["lease_id"])
    assert released.code == 0 and f"released {held['slot_id']}" in released.stderr, released


def test_a_stale_lease_id_is_refused_and_changes_nothing(cli, pool, root):
    first = allocate(cli)
    assert cli("release", "web-1", "--lease-id", first["lease_id"]).code == 0
    second = allocate(cli)
    assert second["slot_id"] == "web-1"
    slot = Path(second["path"])
    (slot / "README").write_text("the new holder's work\n")
    (slot / "mine.txt").write_text("untracked work\n")
    before = slot_status(cli, "web-1")
    events_before = len(events(root))

    stale = cli("release", "web-1", "--lease-id", first["lease_id"], "--json")
    assert stale.code == 5, stale
    assert stale.stdout == ""
    error = json.loads(stale.stderr)
    assert error["code"] == "conflict" and error["exit_code"] == 5
    assert first["lease_id"] in error["message"]
    assert slot_status(cli, "web-1") == before
    assert (slot / "README").read_text() == "the new holder's work\n"
    assert (slot / "mine.txt").exists()
    assert len(events(root)) == events_before
    assert list((root / "pools/web/rescued").iterdir()) == []
    # The current holder's lease id still works.
    assert cli("release", "web-1", "--lease-id", second["lease_id"]).code == 0


def test_a_release_repeated_before_anyone_else_holds_the_slot_is_done(cli, pool, root):
    """As after a lost answer: the holder cannot tell its release happened, so it asks
    again; until the slot has another lease, that is success, not a stale lease."""
    held = allocate(cli)
    for _ in range(2):
        again = cli("release", held["slot_id"], "--lease-id", held["lease_id"], "--json")
        assert again.code == 0 and again.json()["lease_id"] == held["lease_id"], again
    assert [e["event"] for e in events(root)].count("release") == 1
    never = cli("release", held["slot_id"], "--lease-id", "0123456789abcdef")
    assert never.code == 5, never


def test_releasing_a_slot_that_is_not_allocated_is_a_conflict(cli, pool, root):
    result = cli("release", "web-2")
    assert result.code == 5, result
    assert "not allocated" in result.stderr
    state_before = saved_state(root)
    again = cli("release", "web-2", "--json")
    assert again.code == 5 and json.loads(again.stderr)["code"] == "conflict"
    assert saved_state(root) == state_before


def test_unknown_pools_and_slots_are_not_found(cli, pool, root, tmp_path):
    assert cli("release", "web-9").code == 4
    assert cli("release", "nosuch-1").code == 4
    assert cli("allocate", "nosuch").code == 4
    assert cli("release", root / "pools/web/slots/9").code == 4
    assert cli("release", "Not A Slot").code == 2
    assert cli("release", tmp_path).code == 2  # a path outside every slot


def test_no_free_slot_exits_75_at_once(cli, pool):
    for _ in range(3):
        allocate(cli)
    started = time.monotonic()
    result = cli("allocate", "web")
    elapsed = time.monotonic() - started
    assert result.code == 75, result
    assert result.stdout == ""
    assert "no free slot" in result.stderr
    assert elapsed < 3, f"allocate without --wait took {elapsed:.1f}s"


def test_allocate_wait_gets_a_slot_another_process_releases(cli, pool, root):
    leases = [allocate(cli) for _ in range(3)]
    waiter = cli_process("allocate", "web", "--wait", "60s")
    try:
        wait_until_queued(root / "pools/web", waiter)  # fails if it gave up meanwhile
        assert cli("release", "web-2", "--lease-id", leases[1]["lease_id"]).code == 0
        released_at = time.monotonic()
        out, err = waiter.communicate(timeout=65)
        waited_after_release = time.monotonic() - released_at
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, err
    assert out == leases[1]["path"] + "\n"
    # The release's state write wakes the waiter at once (the waiter's own check comes only
    # every 5 s): it is done soon after the release command returns, however long that took.
    assert waited_after_release < 1.5
    status = slot_status(cli, "web-2")
    assert status["state"] == "allocated" and status["lease_id"] != leases[1]["lease_id"]


def test_allocate_wait_gives_up_with_75_when_nobody_releases(cli, pool):
    for _ in range(3):
        allocate(cli)
    started = time.monotonic()
    result = cli("allocate", "web", "--wait", "1.5s")
    elapsed = time.monotonic() - started
    assert result.code == 75, result
    assert 1.5 <= elapsed < 6


def test_a_waiting_allocate_sleeps_instead_of_polling(cli, pool):
    # DESIGN: --wait blocks, no busy polling. A poller that looks every few ms is switched
    # out hundreds of times in 2 s; a waiter asleep in the kernel only a handful.
    for _ in range(3):
        allocate(cli)
    proc = cli_process("allocate", "web", "--wait", "2s")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.communicate()
    assert proc.returncode == 75
    assert usage.ru_nvcsw < 60, f"{usage.ru_nvcsw} voluntary context switches in a 2 s wait"


def test_release_without_cleanup_leaves_the_work_to_the_next_allocate(cli, pool, root):
    data = allocate(cli)
    slot = Path(data["path"])
    (slot / "README").write_text("left behind\n")
    result = cli("release", "web-1", "--no-cleanup", "--json")
    assert result.code == 0, result
    assert result.json()["cleaned"] is False
    assert (slot / "README").read_text() == "left behind\n"
    status = slot_status(cli, "web-1")
    assert status["state"] == "available" and status["needs_cleanup"] is True
    # Clean slots go first; once they are taken, the dirty one is cleaned before handing out.
    assert [allocate(cli)["slot_id"] for _ in range(2)] == ["web-2", "web-3"]
    again = allocate(cli)
    assert again["slot_id"] == "web-1"
    assert git(slot, "status", "--porcelain", "--ignored") == ""
    assert again["needs_cleanup"] is False
    bundles = list((root / "pools/web/rescued").iterdir())
    assert len(bundles) == 1, "the left-behind work was not saved before cleaning"


# --- statistics and history -------------------------------------------------------------------

def test_usage_statistics_accumulate_over_allocations(cli, pool, monkeypatch):
    fresh = slot_status(cli, "web-1")
    assert fresh["allocation_count"] == 0 and fresh["total_usage_seconds"] == 0
    assert fresh["last_allocated_at"] is None and fresh["last_released_at"] is None

    first = allocate(cli)
    clock_at(monkeypatch, 60)  # held for a minute
    assert cli("release", "web-1").code == 0
    after_one = slot_status(cli, "web-1")
    assert after_one["allocation_count"] == 1
    assert 60 <= after_one["total_usage_seconds"] < 65
    # (a ledger's times print in its server's clock, and clock_at moved its records back)
    ledger = bool(os.environ.get("NECROPOOL_LEDGER"))
    back = timedelta(seconds=60 if ledger else 0)
    assert parse_time(after_one["last_allocated_at"]) == parse_time(first["allocated_at"]) - back
    assert parse_time(after_one["last_released_at"]) > parse_time(first["allocated_at"])

    second = allocate(cli)
    assert second["slot_id"] == "web-1"  # the most recently released slot goes first
    assert second["allocation_count"] == 2
    clock_at(monkeypatch, 90)  # held for half a minute
    assert cli("release", "web-1").code == 0
    after_two = slot_status(cli, "web-1")
    assert after_two["allocation_count"] == 2
    assert after_two["total_usage_seconds"] >= after_one["total_usage_seconds"] + 30
    back = timedelta(seconds=30 if ledger else 0)
    assert parse_time(after_two["last_allocated_at"]) == parse_time(second["allocated_at"]) - back
    assert after_two["last_released_at"] > after_one["last_released_at"]
    assert slot_status(cli, "web-2")["allocation_count"] == 0


def test_events_record_allocations_releases_and_cleanups(cli, pool, root, monkeypatch):
    data = allocate(cli, "--owner", "bob")
    (Path(data["path"]) / "junk.txt").write_text("x\n")
    clock_at(monkeypatch, 60)  # held for a minute
    assert cli("release", "web-1").code == 0
    recorded = events(root)
    kinds = [e["event"] for e in recorded]
    assert kinds[0] == "create"
    alloc = next(e for e in recorded if e["event"] == "allocate")
    assert alloc["slot_id"] == "web-1" and alloc["lease_id"] == data["lease_id"]
    assert alloc["owner"] == "bob" and alloc["pool"] == "web"
    rel = next(e for e in recorded if e["event"] == "release")
    assert rel["slot_id"] == "web-1" and rel["lease_id"] == data["lease_id"]
    assert 60 <= rel["usage_seconds"] < 65
    clean = [e for e in recorded if e["event"] == "cleanup"][-1]
    assert clean["slot_id"] == "web-1" and clean["duration_seconds"] >= 0
    assert clean["untracked"] == 1
    released_at = kinds.index("release")
    assert kinds.index("allocate") < released_at < kinds.index("cleanup", released_at)
    for event in recorded:
        parse_time(event["time"])

    # ``log`` shows the same history, as JSON and as plain lines.
    log = cli("log", "web", "--json")
    assert log.code == 0, log
    assert [e["event"] for e in log.json()["events"]] == kinds
    plain = cli("log", "web")
    assert plain.code == 0, plain
    rows = [line.split("\t") for line in plain.stdout.splitlines()]
    assert [r[1] for r in rows] == kinds
    assert any(r[1] == "cleanup" and "duration_seconds=" in r[3] for r in rows)
    assert any(r[1] == "release" and "usage_seconds=" in r[3] for r in rows)


def test_log_since_shows_only_recent_events(cli, pool, root, monkeypatch):
    allocate(cli)
    assert cli("release", "web-1").code == 0
    clock_at(monkeypatch, 60)  # what follows happens a minute later
    recent = allocate(cli)
    log = cli("log", "web", "--since", "30s", "--json")
    assert log.code == 0, log
    shown = log.json()["events"]
    assert [(e["event"], e.get("lease_id")) for e in shown] == [("allocate", recent["lease_id"])]
    assert len(cli("log", "web", "--since", "1h", "--json").json()["events"]) == len(events(root))
    assert cli("log", "web", "--since", "yesterday").code == 2
    assert cli("log", "nosuch").code == 4


@pytest.mark.toml_only
def test_the_history_is_rotated_past_its_limit_and_log_reads_both_generations(cli, pool, root):
    from necropool.store.events import ROTATE_BYTES

    log = root / "pools" / "web" / "events.jsonl"
    assert cli("allocate", "web", "--no-fetch", "--owner", "before-rotation").code == 0
    with open(log, "a") as fh:  # a long history: filler lines of an event nobody reads
        line = '{"time":"2026-01-01T00:00:00.000Z","event":"filler","pad":"' + "x" * 200 + '"}\n'
        fh.write(line * (ROTATE_BYTES // len(line) + 1))
    assert cli("auto-recover").code == 0
    assert log.with_name("events.jsonl.1").stat().st_size > ROTATE_BYTES
    assert log.stat().st_size < ROTATE_BYTES
    assert cli("allocate", "web", "--no-fetch", "--owner", "after-rotation").code == 0
    owners = [e.get("owner") for e in cli("log", "web", "--json").json()["events"]
              if e["event"] == "allocate"]
    assert owners == ["before-rotation", "after-rotation"]
    assert cli("detect").code == 0  # the old generation is part of the layout, not a stray
