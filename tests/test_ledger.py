"""The shared ledger across hosts: two simulated hosts (each its own root and
``NECROPOOL_HOST``) over one PostgreSQL ledger, through the CLI as separate processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clock_at, run_cli

from necropool.store.pg import schema as ledger


def on(host: str, root: Path, dsn: str, *args, extra: dict | None = None):
    """``necropool ARGS`` run as host ``host``."""
    env = {"NECROPOOL_HOME": str(root), "NECROPOOL_HOST": host, "NECROPOOL_LEDGER": dsn,
           **(extra or {})}
    return run_cli(*args, env=env)


@pytest.fixture
def fleet(ledger_dsn, upstream, tmp_path, monkeypatch):
    """Pool ``web`` on hosts alpha and beta, 2 slots each."""
    monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)  # for clock_at
    roots = {h: tmp_path / h for h in ("alpha", "beta")}
    for host, root in roots.items():
        made = on(host, root, ledger_dsn, "create", "web", upstream, "--slots", "2")
        assert made.code == 0, made
    return roots, ledger_dsn


def test_status_and_list_show_every_host(fleet):
    roots, dsn = fleet
    status = on("alpha", roots["alpha"], dsn, "status", "web", "--json")
    assert status.code == 0, status
    data = status.json()
    ids = {s["slot_id"]: s for s in data["slots"]}
    assert set(ids) == {"web-1", "web-2", "web-1@beta", "web-2@beta"}
    assert ids["web-1@beta"]["slot_host"] == "beta" and ids["web-1"]["slot_host"] == "alpha"
    assert ids["web-2@beta"]["path"] == str(roots["beta"] / "pools/web/slots/2")
    assert data["num_slots"] == 4 and data["counts"]["available"] == 4
    assert {h["host"] for h in data["hosts"]} == {"alpha", "beta"}
    only = on("alpha", roots["alpha"], dsn, "status", "web", "--host", "beta", "--json").json()
    assert {s["slot_id"] for s in only["slots"]} == {"web-1@beta", "web-2@beta"}
    listed = on("beta", roots["beta"], dsn, "list", "--json").json()["pools"]
    assert listed[0]["num_slots"] == 4
    assert on("alpha", roots["alpha"], dsn, "status", "web-2@beta", "--json").json()[
        "state"] == "available"
    assert on("alpha", roots["alpha"], dsn, "allocate", "web", "--no-fetch").code == 0
    metrics = on("beta", roots["beta"], dsn, "status", "--format", "prometheus").stdout
    assert 'necropool_slots{pool="web",state="allocated"} 1' in metrics
    assert 'necropool_host_slots{pool="web",host="alpha"} 2' in metrics
    logged = on("beta", roots["beta"], dsn, "log", "web", "--host", "alpha", "--json").json()
    assert {e["event"] for e in logged["events"]} == {"create", "allocate"}
    assert {e["host"] for e in logged["events"]} == {"alpha"}


def test_any_host_takes_another_hosts_slot_and_its_host_cleans_it(fleet):
    roots, dsn = fleet
    alpha = roots["alpha"]
    for _ in range(2):
        assert on("alpha", alpha, dsn, "allocate", "web", "--no-fetch").code == 0
    assert on("alpha", alpha, dsn, "allocate", "web", "--no-fetch").code == 75
    got = on("alpha", alpha, dsn, "allocate", "web", "--no-fetch", "--any-host", "--json")
    assert got.code == 0, got
    slot = got.json()
    assert slot["slot_host"] == "beta" and slot["slot_id"].endswith("@beta")
    path = Path(slot["path"])
    assert path.parent == roots["beta"] / "pools/web/slots"
    (path / "work.txt").write_text("done on alpha's behalf\n")  # the remote holder's work
    released = on("alpha", alpha, dsn, "release", slot["slot_id"], "--lease-id",
                  slot["lease_id"], "--json")
    assert released.code == 0, released
    seen = on("beta", roots["beta"], dsn, "status", slot["slot_id"].split("@")[0],
              "--json").json()
    assert seen["state"] == "available" and seen["needs_cleanup"] is True
    # beta hands it out again only after cleaning it, the holder's work saved first
    again = [on("beta", roots["beta"], dsn, "allocate", "web", "--no-fetch", "--json").json()
             for _ in range(2)]
    cleaned = next(s for s in again if s["path"] == str(path))
    assert not (path / "work.txt").exists() and cleaned["needs_cleanup"] is False
    assert list((roots["beta"] / "pools/web/rescued").iterdir())
    stale = on("alpha", alpha, dsn, "release", slot["slot_id"], "--lease-id", slot["lease_id"])
    assert stale.code == 5, stale


def test_recovery_acts_on_its_own_host_and_reports_the_rest(fleet, monkeypatch):
    roots, dsn = fleet
    held = on("beta", roots["beta"], dsn, "allocate", "web", "--no-fetch", "--ttl", "60",
              "--json").json()
    clock_at(monkeypatch, 120)  # the lease ran out (by the server's clock)
    found = on("alpha", roots["alpha"], dsn, "detect", "--json")
    assert found.code == 1, found
    [expired] = found.json()["expired_leases"]
    assert expired["slot_id"] == held["slot_id"] + "@beta" and expired["host"] == "beta"
    assert on("alpha", roots["alpha"], dsn, "detect", "--host", "alpha").code == 0
    assert on("alpha", roots["alpha"], dsn, "auto-recover").code == 0
    still = on("beta", roots["beta"], dsn, "status", held["slot_id"], "--json").json()
    assert still["lease_id"] == held["lease_id"], "alpha must not touch beta's slot"
    assert on("beta", roots["beta"], dsn, "auto-recover").code == 0
    assert on("beta", roots["beta"], dsn, "status", held["slot_id"], "--json").json()[
        "state"] == "available"


def test_a_silent_host_is_reported(fleet, monkeypatch):
    roots, dsn = fleet
    clock_at(monkeypatch, 2 * 3600)  # two hours without a sign of life from either host
    assert on("alpha", roots["alpha"], dsn, "auto-recover").code == 0  # alpha speaks up
    found = on("alpha", roots["alpha"], dsn, "detect", "--json").json()
    assert [a["evidence"].split(":")[0] for a in found["silent_hosts"]] == ["host beta"]
    status = on("alpha", roots["alpha"], dsn, "status", "web")
    assert "host beta silent since" in status.stderr


@pytest.mark.parametrize("skew", [3600, -3600])
def test_a_skewed_client_neither_steals_a_live_lease_nor_keeps_an_expired_one(fleet, skew):
    roots, dsn = fleet
    beta = roots["beta"]
    skewed = {"NECROPOOL_CLOCK_OFFSET": str(skew)}
    live = on("beta", beta, dsn, "allocate", "web", "--no-fetch", "--ttl", "600", "--json",
              extra=skewed).json()
    assert on("beta", beta, dsn, "auto-recover", extra=skewed).code == 0
    assert on("beta", beta, dsn, "status", live["slot_id"], "--json").json()[
        "lease_id"] == live["lease_id"], "a live lease was taken"
    short = on("beta", beta, dsn, "allocate", "web", "--no-fetch", "--ttl", "1", "--json",
               extra=skewed).json()
    subprocess.run(["sleep", "1.5"], check=True)  # the server's clock passes its expiry
    assert on("beta", beta, dsn, "auto-recover", extra=skewed).code == 0
    assert on("beta", beta, dsn, "status", short["slot_id"], "--json").json()[
        "state"] == "available", "an expired lease was kept"


def test_import_and_export_keep_leases(upstream, tmp_path, ledger_dsn, monkeypatch):
    monkeypatch.delenv("NECROPOOL_LEDGER", raising=False)
    root = tmp_path / "root"
    local = {"NECROPOOL_HOME": str(root)}
    assert run_cli("create", "api", upstream, "--slots", "2", env=local).code == 0
    lease = run_cli("allocate", "api", "--no-fetch", "--json", env=local).json()
    moved = run_cli("--ledger", ledger_dsn, "ledger", "import", "api", "--json", env=local)
    assert moved.code == 0, moved
    assert moved.json()["leases"] == 1
    refused = run_cli("status", "api", env=local)  # no ledger given: never a rebuilt state
    assert refused.code == 2 and "shared ledger" in refused.stderr, refused
    inside = run_cli("--ledger", ledger_dsn, "status", lease["slot_id"], "--json", env=local)
    assert inside.json()["lease_id"] == lease["lease_id"]
    assert run_cli("--ledger", ledger_dsn, "ledger", "export", "api", env=local).code == 0
    back = run_cli("status", lease["slot_id"], "--json", env=local)
    assert back.json()["lease_id"] == lease["lease_id"]
    assert run_cli("release", lease["slot_id"], "--lease-id", lease["lease_id"],
                   env=local).code == 0
    assert ledger.status(ledger_dsn)["pools"] == []


def test_init_is_safe_twice_and_from_two_processes_at_once(pg_cluster):
    dsn = pg_cluster.create_database("init_race")
    procs = [subprocess.Popen([sys.executable, "-m", "necropool", "--ledger", dsn, "ledger",
                               "init", "--json"], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["migrated"] for r in results) == [False, False, True]
    assert run_cli("--ledger", dsn, "ledger", "migrate", "--json").json()["migrated"] is False
    status = run_cli("--ledger", dsn, "ledger", "status", "--json").json()
    assert status["version"] == ledger.SCHEMA_VERSION and status["up_to_date"]


def test_migrate_brings_a_ledger_of_the_previous_version_up_and_keeps_its_leases(
        pg_cluster, upstream, tmp_path):
    """A ledger as the previous version left it (a lease held; no column for a lease's
    user): refused until ``ledger migrate`` adds it; the lease held before is kept."""
    dsn = pg_cluster.create_database("previous_schema")
    env = {"NECROPOOL_HOME": str(tmp_path / "root"), "NECROPOOL_LEDGER": dsn}
    assert run_cli("ledger", "init", env=env).code == 0
    assert run_cli("create", "web", upstream, "--slots", "1", env=env).code == 0
    held = run_cli("allocate", "web", "--no-fetch", "--json", env=env).json()
    pg_cluster.psql("ALTER TABLE slots DROP COLUMN lease_user",
                    f"DELETE FROM necropool_schema WHERE version = {ledger.SCHEMA_VERSION}",
                    dbname="previous_schema")
    column = ("SELECT data_type FROM information_schema.columns WHERE table_name = 'slots' "
              "AND column_name = 'lease_user'")
    assert pg_cluster.psql(column, dbname="previous_schema").strip() == ""
    refused = run_cli("status", "web", env=env, in_process=False)
    assert refused.code == 3 and "ledger migrate" in refused.stderr, refused
    done = run_cli("ledger", "migrate", "--json", env=env).json()
    assert (done["was"], done["version"], done["migrated"]) == (
        ledger.SCHEMA_VERSION - 1, ledger.SCHEMA_VERSION, True)
    assert pg_cluster.psql(column, dbname="previous_schema").strip() == "jsonb"
    kept = run_cli("status", held["slot_id"], "--json", env=env).json()
    assert (kept["lease_id"], kept["user"]) == (held["lease_id"], None)
    assert run_cli("release", held["slot_id"], "--lease-id", held["lease_id"], "--no-cleanup",
                   env=env).code == 0
    pg_cluster.drop_database("previous_schema")


def test_a_password_is_never_shown(pg_cluster, tmp_path):
    dsn = pg_cluster.dsn("postgres").replace("postgres@", "postgres:hunter2-secret@")
    for args in (["ledger", "status"], ["ledger", "status", "--json"], ["ledger", "init"]):
        shown = run_cli("--ledger", dsn, *args, env={"NECROPOOL_HOME": str(tmp_path)})
        assert shown.code == 0, shown  # trust authentication: the password is not checked
        assert "hunter2" not in shown.stdout + shown.stderr and "***" in shown.stdout + \
            shown.stderr
    down = run_cli("--ledger", "postgresql://u:hunter2-secret@127.0.0.1:1/db", "ledger",
                   "status")
    assert down.code == 75 and "hunter2" not in down.stderr and "unavailable" in down.stderr


@pytest.mark.slow
def test_a_ledger_that_goes_away_fails_with_75_and_changes_nothing(upstream, tmp_path):
    from pgcluster import Cluster

    with Cluster() as cluster:
        dsn = cluster.dsn("postgres")
        ledger.migrate(dsn)
        root = tmp_path / "root"
        env = {"NECROPOOL_HOME": str(root), "NECROPOOL_LEDGER": dsn}
        assert run_cli("create", "web", upstream, "--slots", "2", env=env).code == 0
        held = run_cli("allocate", "web", "--no-fetch", "--json", env=env).json()
        cluster._run("pg_ctl", "-D", str(cluster.datadir), "-m", "fast", "-w", "stop")
        for args in (["allocate", "web", "--no-fetch"], ["release", held["slot_id"]],
                     ["status", "web"], ["auto-recover"]):
            down = run_cli(*args, env=env)
            assert down.code == 75 and "unavailable" in down.stderr, (args, down)
        cluster._start_server()
        after = run_cli("status", "web", "--json", env=env).json()
        slots = {s["slot_id"]: s for s in after["slots"]}
        assert slots[held["slot_id"]]["lease_id"] == held["lease_id"]
        assert after["counts"] == {"available": 1, "allocated": 1, "cleaning": 0, "error": 0}


def test_a_host_without_slots_of_the_pool_allocates_anywhere(fleet, tmp_path):
    roots, dsn = fleet
    visitor = tmp_path / "gamma"  # a CI job's machine: no pool of its own
    assert on("gamma", visitor, dsn, "allocate", "web", "--no-fetch").code == 4
    got = on("gamma", visitor, dsn, "allocate", "web", "--any-host", "--json")
    assert got.code == 0, got
    slot = got.json()
    assert slot["slot_host"] in ("alpha", "beta") and Path(slot["path"]).is_dir()
    status = on("gamma", visitor, dsn, "status", "web", "--json").json()
    assert status["num_slots"] == 4 and status["counts"]["allocated"] == 1
    assert on("gamma", visitor, dsn, "release", slot["slot_id"], "--lease-id",
              slot["lease_id"]).code == 0
    assert on("gamma", visitor, dsn, "allocate", "nosuch", "--any-host").code == 4
    listed = on("gamma", visitor, dsn, "list", "--json")
    assert listed.code == 0, listed
    [web] = listed.json()["pools"]  # the fleet's pool, though gamma has no slots of it
    assert web["pool"] == "web" and web["num_slots"] == 4 and web["counts"]["available"] == 4
    alone = on("gamma", visitor, dsn, "--ledger", "local", "list")  # none of its own
    assert alone.code == 4 and "no pools under" in alone.stderr, alone


def test_without_psycopg_the_error_names_the_extra(tmp_path):
    """A Python without psycopg (here: its import made to fail) is told what to install."""
    code = ("import sys; sys.modules['psycopg'] = None; sys.argv = ['necropool', '--ledger', "
            "'postgresql://127.0.0.1:1/db', 'ledger', 'status']; "
            "from necropool.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"NECROPOOL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc
    assert "pip install 'necropool[postgres]'" in proc.stderr and "Traceback" not in proc.stderr


def test_follow_returns_an_event_committed_after_a_later_one(fleet, monkeypatch):
    """Ids are taken at insert, events show at commit: ``log --follow`` on a ledger must not
    skip the event whose transaction committed after a later id was read, nor repeat one."""
    import psycopg

    from necropool.ground.config import load_settings
    from necropool.manager.facade import PoolManager

    roots, dsn = fleet
    monkeypatch.setenv("NECROPOOL_HOME", str(roots["alpha"]))
    monkeypatch.setenv("NECROPOOL_HOST", "alpha")
    tail = PoolManager(load_settings()).get_pool("web").store.tail()
    assert {e["event"] for e in tail.new()} == {"create"}
    insert = "INSERT INTO events (pool, host, name, fields) VALUES ('web', 'alpha', %s, '{}')"
    with psycopg.connect(dsn) as slow, psycopg.connect(dsn, autocommit=True) as quick:
        slow.execute(insert, ("slow",))  # its id is taken; it commits later
        quick.execute(insert, ("quick",))
        assert [e["event"] for e in tail.new()] == ["quick"]
        slow.commit()
        assert [e["event"] for e in tail.new()] == ["slow"]
    assert tail.new() == []


def test_a_release_from_another_host_needs_the_lease_and_never_ends_its_holder(fleet):
    """alpha ends beta's lease (with its id: without, exit 2, nothing changed); beta's
    holder still works in the slot, so beta neither ends it nor hands the slot out, and
    detect on beta reports it; once the holder is gone the slot is cleaned, its work saved."""
    roots, dsn = fleet
    beta = roots["beta"]
    held = on("beta", beta, dsn, "allocate", "web", "--no-fetch", "--json").json()
    path = Path(held["path"])
    (path / "work.txt").write_text("beta's holder at work\n")
    holder = subprocess.Popen(["sleep", "60"], cwd=path)
    try:
        remote_id = f"{held['slot_id']}@beta"
        bare = on("alpha", roots["alpha"], dsn, "release", remote_id)
        assert bare.code == 2 and "lease id" in bare.stderr, bare
        assert len(bare.stderr.strip().splitlines()) == 1
        assert on("beta", beta, dsn, "status", held["slot_id"], "--json").json()[
            "lease_id"] == held["lease_id"]
        for _ in range(2):  # the same release repeated (its answer lost, say): done
            done = on("alpha", roots["alpha"], dsn, "release", remote_id, "--lease-id",
                      held["lease_id"])
            assert done.code == 0, done
        late = on("beta", beta, dsn, "renew", held["slot_id"], "--lease-id", held["lease_id"],
                  "--ttl", "1h")
        assert late.code == 5 and "host beta saves the holder's work" in late.stderr, late
        for _ in range(2):  # the other slot, then none: never the busy one
            got = on("beta", beta, dsn, "allocate", "web", "--no-fetch", "--json")
            assert got.code in (0, 75) and (got.code == 75 or got.json()["path"] != str(path))
        assert holder.poll() is None and (path / "work.txt").exists()
        found = on("beta", beta, dsn, "detect", "--json")
        assert found.code == 1, found
        [busy] = found.json()["busy_free_slots"]
        assert busy["slot_id"] == held["slot_id"] and str(holder.pid) in busy["evidence"]
    finally:
        holder.kill()
        holder.wait()
    again = on("beta", beta, dsn, "allocate", "web", "--no-fetch", "--json")
    assert again.code == 0 and again.json()["path"] == str(path), again
    assert not (path / "work.txt").exists()
    assert list((beta / "pools/web/rescued").iterdir())


def test_init_and_migrate_are_no_ops_for_a_role_without_ddl_rights(pg_cluster, root,
                                                                  ledger_template):
    dsn = pg_cluster.create_database("dml_only", template=ledger_template)
    pg_cluster.psql("DROP ROLE IF EXISTS necropool_dml",
                    "CREATE ROLE necropool_dml LOGIN")
    pg_cluster.psql("REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                    "TO necropool_dml", "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public "
                    "TO necropool_dml", dbname="dml_only")
    dml = dsn.replace("postgres@", "necropool_dml@")
    for action in ("init", "migrate"):
        done = run_cli("--ledger", dml, "ledger", action, "--json")
        assert done.code == 0 and done.json()["migrated"] is False, done
    pg_cluster.drop_database("dml_only")


@pytest.mark.parametrize("env", [{"NECROPOOL_HOST": "bad host"}, {"NECROPOOL_HOST": "a/b"},
                                 {"NECROPOOL_HOST": "h@x"}, {"NECROPOOL_LEDGER_TIMEOUT": "0"},
                                 {"NECROPOOL_LEDGER_TIMEOUT": "soon"},
                                 {"NECROPOOL_LEDGER_TIMEOUT": "inf"}])
def test_a_bad_host_name_or_ledger_timeout_is_a_usage_error(root, env):
    bad = run_cli("list", env=env)
    assert bad.code == 2 and len(bad.stderr.strip().splitlines()) == 1, bad
    assert next(iter(env)) in bad.stderr and not root.exists()


def test_ledger_timeout_in_the_config_is_checked(root, tmp_path):
    config = tmp_path / "config.toml"
    for value, code in (("0", 2), ("-1", 2), ('"10"', 2), ("2.5", 4)):  # 4: read, no pool
        config.write_text(f"ledger_timeout = {value}\n")
        assert run_cli("--config", config, "list").code == code, value
