"""Holders on another host than their slot: judged by their own host while it gives signs
of life, and, once it is silent, ended only by an explicit, audited takeover."""

import subprocess

import pytest
from helpers import clock_at
from test_ledger import on

pytestmark = [pytest.mark.slow, pytest.mark.ledger_only]


@pytest.fixture
def fleet(ledger_dsn, upstream, tmp_path, monkeypatch):
    """Pool ``web``: alpha has 2 slots, beta 1, beta's held; and a process on beta that
    holds a slot of alpha's (``allocate --any-host --pid``)."""
    monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)  # for clock_at
    roots = {h: tmp_path / h for h in ("alpha", "beta")}
    for host, slots in (("alpha", "2"), ("beta", "1")):
        made = on(host, roots[host], ledger_dsn, "create", "web", upstream, "--slots", slots)
        assert made.code == 0, made
    own = on("beta", roots["beta"], ledger_dsn, "allocate", "web", "--no-fetch", "--json")
    assert own.code == 0, own
    holder = subprocess.Popen(["sleep", "300"])
    got = on("beta", roots["beta"], ledger_dsn, "allocate", "web", "--no-fetch", "--any-host",
             "--pid", str(holder.pid), "--json")
    assert got.code == 0 and got.json()["slot_id"].endswith("@alpha"), got
    yield roots, ledger_dsn, holder, got.json(), own.json()
    holder.kill()
    holder.wait()


def slot_of(roots, dsn, grant) -> dict:
    return on("alpha", roots["alpha"], dsn, "status", grant["slot_id"].split("@")[0],
              "--json").json()


def test_a_dead_holder_is_reclaimed_by_its_own_host_not_the_slots(fleet):
    roots, dsn, holder, grant, _ = fleet
    holder.kill()
    holder.wait()
    assert on("alpha", roots["alpha"], dsn, "auto-recover").code == 0
    assert slot_of(roots, dsn, grant)["lease_id"] == grant["lease_id"], \
        "alpha cannot judge a pid of beta's"
    found = on("beta", roots["beta"], dsn, "detect", "--json")
    [dead] = found.json()["abandoned_slots"]
    assert dead["slot_id"] == grant["slot_id"] and dead["lease_id"] == grant["lease_id"]
    healed = on("beta", roots["beta"], dsn, "auto-recover", "--json")
    assert healed.code == 0 and healed.json()["abandoned_released"] == 1, healed
    now = slot_of(roots, dsn, grant)
    assert now["state"] == "available" and now["needs_cleanup"], now
    events = on("alpha", roots["alpha"], dsn, "log", "web", "--json").json()["events"]
    assert any(e["event"] == "reclaim" and e.get("lease_id") == grant["lease_id"]
               for e in events)


def test_a_silent_hosts_holders_are_taken_over_only_by_an_audited_command(fleet, monkeypatch):
    roots, dsn, holder, grant, own = fleet
    alpha = roots["alpha"]
    refused = on("alpha", alpha, dsn, "ledger", "takeover", "beta")
    assert refused.code == 5 and "sign of life" in refused.stderr, refused
    assert slot_of(roots, dsn, grant)["lease_id"] == grant["lease_id"]
    assert on("alpha", alpha, dsn, "ledger", "takeover", "alpha").code == 2
    assert on("alpha", alpha, dsn, "ledger", "takeover", "nosuch").code == 4

    assert on("beta", roots["beta"], dsn, "release", own["slot_id"], "--lease-id",
              own["lease_id"], "--no-fetch").code == 0  # beta's own slot free
    clock_at(monkeypatch, 2 * 3600)  # beta silent for two hours (alpha too, not asked)
    assert on("alpha", alpha, dsn, "auto-recover").code == 0
    assert slot_of(roots, dsn, grant)["lease_id"] == grant["lease_id"], "never silently"
    taken = on("alpha", alpha, dsn, "ledger", "takeover", "beta", "--json",
               extra={"USER": "ops"})
    assert taken.code == 0, taken
    data = taken.json()
    assert data["by"] == "ops@alpha" and not data["forced"]
    [part] = data["pools"]
    assert part["leases_ended"] == [{"slot_id": grant["slot_id"].split("@")[0],
                                     "lease_id": grant["lease_id"], "owner": grant["owner"]}]
    now = slot_of(roots, dsn, grant)
    assert now["state"] == "available" and now["needs_cleanup"], now
    log = on("alpha", alpha, dsn, "log", "web", "--event", "takeover", "--json").json()
    assert {e.get("by") for e in log["events"]} == {"ops@alpha"}
    late = on("beta", roots["beta"], dsn, "release", grant["slot_id"], "--lease-id",
              grant["lease_id"])
    assert late.code == 5 and "takeover" in late.stderr, late
    # beta's own (free) slot goes to nobody else until beta is back and has checked it
    for _ in range(2):  # alpha's own: the one taken over cleaned first
        assert on("alpha", alpha, dsn, "allocate", "web", "--no-fetch").code == 0
    assert on("alpha", alpha, dsn, "allocate", "web", "--no-fetch", "--any-host").code == 75
    assert on("beta", roots["beta"], dsn, "auto-recover").code == 0  # back, and checked
    again = on("alpha", alpha, dsn, "allocate", "web", "--no-fetch", "--any-host", "--json")
    assert again.code == 0 and again.json()["slot_id"] == own["slot_id"] + "@beta", again
