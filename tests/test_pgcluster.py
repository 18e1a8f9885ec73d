"""The throw-away PostgreSQL server of tests/pgcluster.py and its fixtures: a working server,
a fresh database per test, restart, a taken port, no process left behind (even when the
owner is killed)."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import import_or_skip, skip_unless_ci
from pgcluster import Cluster, ClusterError

from necropool.ground.proc import start_time

psycopg = import_or_skip("psycopg")


def test_server_stores_and_reads_back(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        conn.commit()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id, name FROM t ORDER BY id").fetchall() == [
            (1, "one"), (2, "two")]


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database(pg_dsn, run):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)
        conn.execute("CREATE TABLE marker (run int)")  # the other run must not see it


def test_restart_cuts_open_connections(pg_cluster, pg_dsn):
    with psycopg.connect(pg_dsn) as old:
        old.execute("SELECT 1")
        pg_cluster.restart()
        with pytest.raises(psycopg.OperationalError):
            old.execute("SELECT 1")
    with psycopg.connect(pg_cluster.dsn(old.info.dbname)) as new:
        assert new.execute("SELECT 1").fetchone() == (1,)


def test_missing_binaries_name_the_cause(tmp_path):
    with pytest.raises(ClusterError, match=re.escape(f"not found in {tmp_path}: initdb, pg_ctl")):
        Cluster(bindir=tmp_path)


def test_skip_unless_ci_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no server"):
        skip_unless_ci("no server")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no server"):
        skip_unless_ci("no server")


@pytest.mark.slow
def test_taken_port_is_skipped_and_stop_leaves_nothing(pg_cluster):  # skips with pg_cluster
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Cluster(port=port, max_connections=5) as cluster:
            assert cluster.port != port
            assert cluster.psql("SHOW max_connections").strip() == "5"
            base = cluster.base
            pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    assert cluster.base is None and not base.exists()
    assert start_time(pid) is None  # gone, or a zombie of a PID 1 that does not reap


@pytest.mark.slow
def test_server_of_a_killed_owner_is_stopped_by_the_next_start(pg_cluster, tmp_path):
    script = ("import sys, time; from pgcluster import Cluster; c = Cluster().start(); "
              "print(c.base, flush=True); time.sleep(600)")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)))
    base = Path(owner.stdout.readline().strip())
    pid = int((base / "data" / "postmaster.pid").read_text().split()[0])
    owner.kill()
    owner.wait()
    assert start_time(pid) is not None, "killed before it could stop its server"
    with Cluster():
        assert not base.exists()
        assert start_time(pid) is None
    assert pg_cluster.psql("SELECT 1").strip() == "1", "a live owner's server is left alone"
