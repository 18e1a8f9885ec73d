"""Leases mean what they say: a TTL is the holder's promise, ``renew`` keeps it, an expired
lease is reclaimed (the holder's work saved first), and ``run`` renews its own."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import Procs
from helpers import clock_at, git, saved_state
from test_lifecycle import allocate, slot_status

from necropool.ground.clock import parse_rfc3339
from necropool.ground.errors import Conflict, UsageError

# Every test twice: state in local TOML files, then in a PostgreSQL ledger.
pytestmark = pytest.mark.usefixtures("ledger")


@pytest.fixture
def procs_sleeper():
    """A live process to name as a lease's holder."""
    started = Procs()
    yield started.sleeper()
    started.kill_all()


def test_renew_extends_the_lease_by_its_own_ttl_or_a_new_one(cli, pool):
    held = allocate(cli, "--ttl", "1h")
    assert held["ttl_seconds"] == 3600
    renewed = cli("renew", held["slot_id"], "--lease-id", held["lease_id"], "--json")
    assert renewed.code == 0, renewed
    again = renewed.json()
    assert again["lease_id"] == held["lease_id"] and again["ttl_seconds"] == 3600
    assert parse_rfc3339(again["expires_at"]) >= parse_rfc3339(held["expires_at"])

    shorter = cli("renew", held["slot_id"], "--lease-id", held["lease_id"], "--ttl", "5m",
                  "--json").json()
    assert shorter["ttl_seconds"] == 300
    span = parse_rfc3339(shorter["expires_at"]) - parse_rfc3339(again["expires_at"])
    assert span.total_seconds() < -3000  # 5 minutes from now, not an hour

    untimed = allocate(cli)
    assert untimed["expires_at"] is None and untimed["ttl_seconds"] is None
    refused = cli("renew", untimed["slot_id"], "--lease-id", untimed["lease_id"])
    assert refused.code == 2 and "--ttl" in refused.stderr, refused
    given = cli("renew", untimed["slot_id"], "--lease-id", untimed["lease_id"], "--ttl", "10m",
                "--json").json()
    assert given["ttl_seconds"] == 600 and given["expires_at"] is not None


@pytest.mark.toml_only
def test_a_clock_offset_leaked_into_production_moves_nothing(cli, pool):
    held = allocate(cli, "--ttl", "1m")
    leaked = {"NECROPOOL_CLOCK_OFFSET": "7200", "NECROPOOL_TEST_HOOKS": ""}
    found = cli("detect", "--json", env=leaked)
    assert found.code == 0 and found.json()["expired_leases"] == [], found
    assert cli("auto-recover", "--json", env=leaked).json()["expired_released"] == 0
    assert slot_status(cli, held["slot_id"])["lease_id"] == held["lease_id"]
    hooked = cli("detect", "--json", env={"NECROPOOL_CLOCK_OFFSET": "7200"})
    assert [a["slot_id"] for a in hooked.json()["expired_leases"]] == [held["slot_id"]]


def test_renew_with_a_wrong_lease_is_a_conflict_that_changes_nothing(cli, pool, root):
    held = allocate(cli, "--ttl", "1h")
    before = saved_state(root)
    wrong = cli("renew", held["slot_id"], "--lease-id", "0123456789abcdef")
    assert wrong.code == 5 and "not the current lease" in wrong.stderr, wrong
    free = cli("renew", "web-2", "--lease-id", held["lease_id"])
    assert free.code == 5, free
    assert saved_state(root) == before
    assert slot_status(cli, held["slot_id"])["expires_at"] == held["expires_at"]


def test_an_expired_lease_is_reclaimed_with_its_work_saved(cli, pool, upstream, procs_sleeper,
                                                          tmp_path, monkeypatch):
    """A TTL binds even a holder that is alive: the lease is reclaimed like an abandoned one,
    its work bundled first; the late holder is told where it went."""
    held = allocate(cli, "--ttl", "1s", "--pid", procs_sleeper.pid)
    path = Path(held["path"])
    (path / "work.txt").write_text("unsaved\n")
    clock_at(monkeypatch, 2)  # the TTL has run out

    found = cli("detect", "--json")
    assert found.code == 1, found
    [expired] = found.json()["expired_leases"]
    assert expired["slot_id"] == held["slot_id"] and expired["lease_id"] == held["lease_id"]
    assert "lease expired" in expired["evidence"]
    assert found.json()["long_allocated_slots"] == []

    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    data = healed.json()
    assert data["expired_released"] == 1 and data["errors"] == []
    [action] = data["pools"][0]["actions"]
    assert action["status"] == "done" and action["action"] == "release (lease expired)"
    bundle = action["rescued"]
    assert Path(bundle).is_file() and held["lease_id"] in bundle
    assert slot_status(cli, held["slot_id"])["state"] == "available"
    assert not (path / "work.txt").exists()
    clone = tmp_path / "restore"
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    git(clone, "fetch", "-q", bundle, "refs/necropool/rescue/*:refs/rescued/*")
    assert "unsaved" in git(clone, "log", "-p", "--all")

    late = cli("renew", held["slot_id"], "--lease-id", held["lease_id"])
    assert late.code == 5, late
    assert "expired and was reclaimed" in late.stderr and bundle in late.stderr
    assert cli("detect").code == 0


def test_an_allocation_without_ttl_is_only_reported_when_long(cli, pool, monkeypatch):
    held = allocate(cli)
    assert cli("detect", "--max-allocation-hours", "0.001").code == 0  # 3.6 s: not yet
    clock_at(monkeypatch, 10)
    found = cli("detect", "--max-allocation-hours", "0.001", "--json")
    assert found.code == 1 and found.json()["expired_leases"] == []
    assert [a["slot_id"] for a in found.json()["long_allocated_slots"]] == [held["slot_id"]]
    gentle = cli("auto-recover", "--max-allocation-hours", "0.00001", "--json")
    assert gentle.code == 0 and gentle.json()["long_allocated_released"] == 0, gentle
    assert slot_status(cli, held["slot_id"])["lease_id"] == held["lease_id"]
    forced = cli("auto-recover", "--max-allocation-hours", "0.00001",
                 "--force-release-long-allocated", "--json")
    assert forced.json()["long_allocated_released"] == 1, forced
    assert slot_status(cli, held["slot_id"])["state"] == "available"


@pytest.mark.slow
def test_run_renews_its_own_lease_while_the_command_runs(cli, pool, tmp_path):
    """``run --ttl 1s`` of a 3 s command: auto-recover runs meanwhile and never finds it
    expired."""
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-m", "necropool", "run", "web", "--no-fetch",
                             "--ttl", "1s", "--", "sh", "-c", f"touch {marker}; sleep 3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        for _ in range(4):
            time.sleep(0.6)
            healed = cli("auto-recover", "--json")
            assert healed.code == 0 and healed.json()["expired_released"] == 0, healed
            assert healed.json()["pools"][0]["detected"]["expired_leases"] == []
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


def test_api_renew_and_the_slot_context_manager(manager, pool):
    with manager.slot("web", ttl=600, fetch=False) as slot:
        assert slot.state == "allocated" and slot.ttl_seconds == 600
        renewed = manager.renew_slot(slot.slot_id, slot.lease_id, ttl=60)
        assert renewed["ttl_seconds"] == 60
        with pytest.raises(Conflict):
            manager.renew_slot(slot.slot_id, "not-the-lease")
        with pytest.raises(UsageError):
            manager.renew_slot(slot.slot_id, slot.lease_id, ttl=-1)
    assert manager.slot_status(slot.slot_id)["state"] == "available"

    with pytest.raises(RuntimeError), manager.slot("web", fetch=False) as slot:
        Path(slot.path, "half-done.txt").write_text("work\n")
        raise RuntimeError("the block failed")
    after = manager.slot_status(slot.slot_id)
    assert after["state"] == "available" and after["last_rescue"]
    assert not Path(slot.path, "half-done.txt").exists()


_HOLDER = r"""
import sys, time
from necropool.manager.facade import PoolManager
manager = PoolManager()
slot_id, lease_id = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while True:
    manager.renew_slot(slot_id, lease_id)
    time.sleep(1)
"""


@pytest.mark.slow
def test_a_renewing_holder_keeps_its_slot_an_unrenewed_one_is_reclaimed(cli, pool):
    renewed = allocate(cli, "--ttl", "3s")
    forgotten = allocate(cli, "--ttl", "3s")
    Path(forgotten["path"], "work.txt").write_text("forgotten work\n")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, renewed["slot_id"],
                               renewed["lease_id"]], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        reclaimed = []
        started = time.monotonic()
        while time.monotonic() - started < 7:
            run = cli("auto-recover", "--json")
            assert run.code == 0, run
            reclaimed += [a for a in run.json()["pools"][0]["actions"]
                          if a["action"] == "release (lease expired)"]
            assert holder.poll() is None, "the holder's renewals kept succeeding"
            assert slot_status(cli, renewed["slot_id"])["lease_id"] == renewed["lease_id"]
            time.sleep(1)
    finally:
        holder.kill()
        holder.wait()
    assert [a["target"] for a in reclaimed] == [forgotten["slot_id"]]
    assert Path(reclaimed[0]["rescued"]).is_file()
    assert slot_status(cli, forgotten["slot_id"])["state"] == "available"
    assert slot_status(cli, renewed["slot_id"])["state"] == "allocated"


def test_a_holder_whose_slot_was_recovered_is_told(cli, pool):
    held = allocate(cli, "--ttl", "1h")
    Path(held["path"], "work.txt").write_text("mine\n")
    assert cli("recover", held["slot_id"], "--force").code == 0
    late = cli("renew", held["slot_id"], "--lease-id", held["lease_id"])
    assert late.code == 5 and "taken back by recover" in late.stderr, late
    assert "saved to" in late.stderr


def test_a_lease_renewed_after_detection_is_not_reclaimed(manager, pool):
    """The reclaim judges the expiry again under the pool lock: a renewal that lands between
    detect and reclaim wins."""
    from necropool.lease.release import EXPIRE, release
    from necropool.lease.renew import Renewed

    slot = manager.allocate_slot("web", ttl=600, fetch=False)
    web = manager.get_pool("web")
    with pytest.raises(Renewed):
        release(web, 1, lease_id=slot.lease_id, ending=EXPIRE)
    assert manager.slot_status(slot.slot_id)["lease_id"] == slot.lease_id
