"""How a host reaches the ledger: through PgBouncer in transaction mode (tests/pgbouncer.py,
one server connection shared by every client, so session state or a prepared statement left
by one client would meet the next), and with the password in a passfile named by a service
file instead of in the URL."""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import run_cli, skip_unless_ci
from pgbouncer import Bouncer, BouncerError

from necropool.ground.config import load_settings
from necropool.manager.facade import PoolManager
from necropool.store.pg.connect import connect, disconnect

pytestmark = [pytest.mark.slow, pytest.mark.ledger_only]


@pytest.fixture
def bouncer(pg_cluster) -> Iterator[Bouncer]:
    try:
        bouncer = Bouncer(pg_cluster, pool_size=1).start()
    except BouncerError as exc:
        skip_unless_ci(str(exc))
    with bouncer:
        yield bouncer


def test_allocate_release_and_status_through_pgbouncer_in_transaction_mode(
        bouncer, ledger_dsn, upstream, root, monkeypatch):
    dsn = bouncer.dsn(ledger_dsn.rsplit("/", 1)[1])
    monkeypatch.setenv("NECROPOOL_LEDGER", dsn)
    assert run_cli("ledger", "init").code == 0  # current: a no-op
    assert run_cli("create", "web", upstream, "-n", "3").code == 0
    with ThreadPoolExecutor(3) as workers:  # three hosts' commands at once, one server conn
        grants = list(workers.map(lambda _: run_cli("allocate", "web", "--no-fetch", "--json",
                                                   in_process=False), range(3)))
    assert all(g.code == 0 for g in grants), grants
    assert sorted(g.json()["slot_id"] for g in grants) == ["web-1", "web-2", "web-3"]
    status = run_cli("status", "web", "--json", in_process=False)
    assert status.code == 0 and status.json()["counts"]["allocated"] == 3, status
    for grant in grants:
        done = run_cli("release", grant.json()["slot_id"], "--lease-id",
                       grant.json()["lease_id"], "--no-fetch", in_process=False)
        assert done.code == 0, done
    status = run_cli("status", "web", "--json", in_process=False)
    assert status.json()["counts"]["allocated"] == 0, status
    manager = PoolManager(load_settings())  # one long-lived client: the same queries again
    for _ in range(4):
        grant = manager.allocate_slot("web", fetch=False)
        manager.release_slot(grant["slot_id"], grant["lease_id"], fetch=False)

    conn = connect(dsn)  # the server connection the commands used, as the next client sees it
    assert conn.execute("SELECT current_setting('application_name')").fetchone() == (
        "necropool",)
    left = conn.execute("SELECT current_setting('statement_timeout'), "
                        "current_setting('lock_timeout'), "
                        "current_setting('idle_in_transaction_session_timeout'), "
                        "(SELECT count(*) FROM pg_prepared_statements)").fetchone()
    disconnect()
    assert left == ("0", "0", "0", 0), left


@pytest.fixture
def password_role(pg_cluster) -> Iterator[tuple[str, str]]:
    """A role that must give its password (scram-sha-256): (name, password)."""
    role, password = "necro_pw", "s3cret:with\\odd chars"
    hba = pg_cluster.datadir / "pg_hba.conf"
    trusting = hba.read_text()
    escaped = password.replace("'", "''")
    pg_cluster.psql(f"DROP ROLE IF EXISTS {role}",
                    f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{escaped}'")
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{trusting}")
    pg_cluster.psql("SELECT pg_reload_conf()")
    try:
        yield role, password
    finally:
        hba.write_text(trusting)
        pg_cluster.psql("SELECT pg_reload_conf()")
        pg_cluster.psql(f"DROP ROLE IF EXISTS {role}")


def test_a_service_file_and_a_passfile_stand_for_a_password_in_the_url(
        pg_cluster, ledger_dsn, password_role, upstream, root, tmp_path):
    role, password = password_role
    database = ledger_dsn.rsplit("/", 1)[1]
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[necropool]\nhost=127.0.0.1\nport={pg_cluster.port}\n"
                        f"dbname={database}\nuser={role}\n")
    passfile = tmp_path / "pgpass"
    field = password.replace("\\", "\\\\").replace(":", "\\:")
    passfile.write_text(f"127.0.0.1:{pg_cluster.port}:{database}:{role}:{field}\n")
    passfile.chmod(0o600)
    env = {"NECROPOOL_LEDGER": "service=necropool", "PGSERVICEFILE": str(services)}

    refused = run_cli("ledger", "status", env=env, in_process=False)
    # checked, and a missing password is the configuration's fault (2), not a passing one
    assert refused.code == 2 and "password" in refused.stderr, refused

    env["PGPASSFILE"] = str(passfile)
    assert run_cli("create", "web", upstream, "-n", "2", env=env, in_process=False).code == 0
    grant = run_cli("allocate", "web", "--no-fetch", "--json", env=env, in_process=False)
    assert grant.code == 0, grant
    status = run_cli("ledger", "status", "--json", env=env, in_process=False)
    assert status.code == 0, status
    assert json.loads(status.stdout)["pools"][0]["allocated"] == 1
    assert password not in status.stdout + status.stderr + grant.stdout + grant.stderr
