"""Small things a new user trips over: --quiet, ``help COMMAND``, "did you mean" for pool
names and config keys, --host without a ledger, --no-headers on a table, JSON spellings
(``false``, not ``False``) in plain output, ``release --force`` naming what it ended, and
``create`` on a second host of a ledger counting this host's slots."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli
from test_ledger import on


def test_quiet_keeps_the_result_and_drops_the_notes(cli, pool, upstream):
    made = cli("-q", "create", "api", upstream, "-n", "1")
    assert made.code == 0 and made.stderr == "" and Path(made.stdout.strip()).is_dir(), made
    for quiet in ([], ["--quiet"]):
        held = cli("allocate", "web", "--no-fetch").stdout.strip()
        released = cli("release", held, *quiet)
        assert released.code == 0 and (released.stderr == "") == bool(quiet), released
    assert cli("release", "nosuch-1", "-q").stderr.startswith("necropool: error:")


@pytest.mark.slow
def test_help_command_is_the_help_option(cli):
    for words in (["status"], ["rescued", "restore"], []):
        asked = cli("help", *words)
        assert asked.code == 0, asked
        assert asked.stdout == cli(*words, "--help").stdout
    unknown = cli("help", "nosuch")
    assert unknown.code == 2 and "No such command" in unknown.stderr


def test_did_you_mean_for_pool_names_and_config_keys(cli, pool, tmp_path):
    for args in (["status", "wbe"], ["allocate", "wbe"], ["log", "wbe"]):
        typo = cli(*args)
        assert typo.code == 4 and "did you mean 'web'?" in typo.stderr, typo
        assert len(typo.stderr.splitlines()) == 1
    config = tmp_path / "config.toml"
    config.write_text('max_alocation_hours = 3\n')
    bad = cli("list", "--config", config)
    assert bad.code == 2 and "did you mean 'max_allocation_hours'?" in bad.stderr, bad
    config.write_text('[pools.web]\nurl = "x"\nkeep_ignord = true\n')
    bad = cli("list", "--config", config)
    assert bad.code == 2 and "did you mean 'keep_ignored'?" in bad.stderr, bad


def test_host_without_a_ledger_is_an_error(cli, pool):
    for args in (["status", "--host", "x"], ["list", "--host", "x"], ["log", "--host", "x"],
                 ["detect", "--host", "x"], ["status", "web", "--host", "x"]):
        refused = cli(*args)
        assert refused.code == 2 and "--host" in refused.stderr and refused.stdout == "", args


def test_no_headers_drops_the_table_header(cli, pool):
    plain = cli("status", "web", "--format", "table", "--no-headers").stdout
    assert "SLOT" not in plain and "web-1" in plain
    assert "SLOT" in cli("status", "web", "--format", "table").stdout
    assert "POOL" not in cli("list", "--format", "table", "--no-headers").stdout


def test_plain_output_spells_values_as_json_does(cli, pool, upstream, tmp_path):
    one = dict(line.split("\t", 1) for line in cli("status", "web-1").stdout.splitlines())
    assert one["needs_cleanup"] == "false"
    assert "False" not in one.values() and "True" not in one.values()
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 5\nkeep_ignored = true\n')
    synced = cli("sync", "--config", config)
    assert synced.code == 0, synced
    assert "[" not in synced.stdout and "web-4, web-5" in synced.stdout
    assert "keep_ignored false -> true" in synced.stdout


def test_release_force_names_the_processes_it_ended(cli, pool):
    held = cli("allocate", "web", "--no-fetch", "--json").json()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                              cwd=held["path"], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        released = cli("release", held["slot_id"], "--force")
        assert released.code == 0, released
        assert f"ended pid {worker.pid} (python" in released.stderr
        assert worker.wait(timeout=10) != 0
    finally:
        worker.kill()
    events = cli("log", "web", "--event", "release", "--json").json()["events"]
    [ended] = events[-1]["ended"]
    assert ended.startswith(f"pid {worker.pid} (python")


@pytest.mark.slow
def test_create_on_a_second_host_counts_its_own_slots(ledger_dsn, upstream, tmp_path):
    first = on("alpha", tmp_path / "alpha", ledger_dsn, "create", "web", upstream, "-n", "2")
    assert first.code == 0, first
    second = on("beta", tmp_path / "beta", ledger_dsn, "create", "web", upstream, "-n", "1")
    assert second.code == 0, second
    assert "created pool web: 1 slot (3 in the fleet)" in second.stderr, second


def test_run_cli_is_quiet_too(pool):
    """(``-q`` after the command name, as the other global options)."""
    assert run_cli("list", "-q").code == 0
    listed = json.loads(run_cli("list", "--json", "-q").stdout)["pools"]
    assert [p["pool"] for p in listed] == [pool]
