"""Event retention in a ledger (``event_retention_days``, applied by auto-recover): older
events go, but not what ``log``, ``rescued`` (who held the saved work) and a late holder's
story still need; the lease-history query is served by its index."""

import psycopg
import pytest
from helpers import clock_at, run_cli

from necropool.ground.config import load_settings
from necropool.manager.facade import PoolManager

pytestmark = [pytest.mark.slow, pytest.mark.ledger_only]


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def test_retention_prunes_old_events_and_keeps_what_is_still_asked_for(
        ledger_dsn, upstream, root, tmp_path, monkeypatch):
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    config = tmp_path / "config.toml"
    config.write_text("event_retention_days = 90\n")
    monkeypatch.setenv("NECROPOOL_CONFIG", str(config))
    assert run_cli("create", "web", str(upstream), "--slots", "3").code == 0
    manager = PoolManager(load_settings())
    saved = manager.allocate_slot("web", owner="alice", fetch=False)
    (root / "pools/web/slots" / saved["slot_id"].split("-")[1] / "work.txt").write_text("w\n")
    bundle = manager.release_slot(saved["slot_id"], saved["lease_id"], fetch=False)["rescued"]
    passing = manager.allocate_slot("web", owner="bob", fetch=False)
    manager.release_slot(passing["slot_id"], passing["lease_id"], fetch=False)
    held = manager.allocate_slot("web", owner="carol", fetch=False)
    assert run_cli("auto-recover", "web").code == 0  # nothing old yet: nothing pruned
    before = count(ledger_dsn)

    clock_at(monkeypatch, 100 * 86400)  # a hundred days on
    assert run_cli("auto-recover", "web").code == 0
    assert count(ledger_dsn) < before
    log = run_cli("log", "web", "--json")
    assert log.code == 0, log
    kept = {(e["event"], e.get("lease_id")) for e in log.json()["events"]}
    assert ("allocate", passing["lease_id"]) not in kept  # bob's lease: nothing to keep
    assert ("release", saved["lease_id"]) in kept  # alice's work is still in rescued/
    assert ("allocate", held["lease_id"]) in kept  # carol still holds hers
    assert any(name == "auto_recover" for name, _ in kept)  # `list` shows the last one
    [item] = run_cli("rescued", "list", "web", "--json").json()["items"]
    assert item["path"] == bundle
    assert (item["owner"], item["lease_id"]) == ("alice", saved["lease_id"])
    late = run_cli("release", saved["slot_id"], "--lease-id", saved["lease_id"], "--no-fetch")
    assert late.code == 5 and "was released" in late.stderr and bundle in late.stderr, late
    assert run_cli("release", held["slot_id"], "--lease-id", held["lease_id"],
                   "--no-fetch").code == 0


def test_without_retention_nothing_is_pruned(ledger_dsn, upstream, root, monkeypatch):
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    assert run_cli("create", "web", str(upstream), "--slots", "1").code == 0
    lease = run_cli("allocate", "web", "--no-fetch", "--json").json()
    assert run_cli("release", lease["slot_id"], "--lease-id", lease["lease_id"],
                   "--no-fetch").code == 0
    before = count(ledger_dsn)
    clock_at(monkeypatch, 1000 * 86400)
    assert run_cli("auto-recover", "web").code == 0
    assert count(ledger_dsn) == before + 1  # its own event


def test_a_leases_history_is_read_through_its_index(ledger_dsn):
    with psycopg.connect(ledger_dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id, at, host, name, fields FROM events WHERE pool = 'web' "
            "AND fields->>'lease_id' = 'x' ORDER BY id"))
        pruned = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT 1 FROM events WHERE pool = 'web' AND at < now()"))
    assert "events_lease" in plan, plan
    assert "events_at" in pruned, pruned
