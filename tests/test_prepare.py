"""``prepare``: the pool's command (``npm ci``, ``uv sync``) run in each slot after a cleanup
at a new tip, confined like the cleanup, its output kept; a slot is handed out only once
prepared for its commit, and a failing prepare isolates it until auto-recover heals it."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clock_at, commit_file, git

from necropool.ground.confine import abi_version

# Installs "dependencies" into an ignored directory, as npm ci does into node_modules/: the
# file names the commit it was installed for, and counts the runs.
INSTALL = ('mkdir -p deps && git rev-parse HEAD > deps/installed-for && '
           'echo run >> deps/runs && echo "installing for $NECROPOOL_SLOT_ID"')


def _status(cli, pool="web"):
    shown = cli("status", pool, "--json")
    assert shown.code == 0, shown
    return {s["slot_id"]: s for s in json.loads(shown.stdout)["slots"]}


def _pool(cli, upstream, *extra):
    commit_file(upstream, ".gitignore", "deps/\n")
    made = cli("create", "web", upstream, "-n", "1", "--keep", "deps/", *extra, "--json")
    assert made.code == 0, made
    return json.loads(made.stdout)


@pytest.mark.slow
def test_installed_dependencies_are_kept_across_holders_and_redone_for_a_new_tip(
        cli, root, upstream):
    made = _pool(cli, upstream, "--prepare", INSTALL)
    assert made["prepare"] == INSTALL
    slot = Path(made["path"]) / "slots/1"
    tip = git(upstream, "rev-parse", "HEAD")
    assert (slot / "deps/installed-for").read_text().strip() == tip  # prepared by create
    state = _status(cli)["web-1"]["prepared"]
    assert state["ok"] and state["current"] and state["commit"] == tip
    log = Path(state["log"])
    assert "installing for web-1" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600

    for _holder in range(2):  # same tip: what prepare installed stays (keep), not redone
        got = cli("allocate", "web")
        assert got.code == 0 and got.stdout.strip() == str(slot), got
        assert (slot / "deps/installed-for").read_text().strip() == tip
        assert cli("release", slot).code == 0
    assert (slot / "deps/runs").read_text().count("run") == 1

    new_tip = commit_file(upstream, "app.txt", "v2\n")  # upstream moves
    got = cli("allocate", "web")
    assert got.code == 0 and got.stdout.strip() == str(slot)
    assert (slot / "deps/installed-for").read_text().strip() == new_tip  # prepared for it
    assert (slot / "deps/runs").read_text().count("run") == 2
    assert cli("release", slot).code == 0
    state = _status(cli)["web-1"]["prepared"]
    assert state["commit"] == new_tip and state["current"]
    events = json.loads(cli("log", "web", "--json").stdout)["events"]
    assert any(e["event"] == "cleanup" and "prepare_seconds" in e for e in events)


@pytest.mark.slow
def test_a_waiting_allocation_gets_the_slot_only_once_prepared_for_the_new_tip(
        cli, root, upstream):
    slow = f"sleep 2; {INSTALL}"
    made = _pool(cli, upstream, "--prepare", slow)
    slot = Path(made["path"]) / "slots/1"
    assert cli("allocate", "web").code == 0
    new_tip = commit_file(upstream, "app.txt", "v2\n")  # pushed while the slot is held
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    releasing = subprocess.Popen([sys.executable, "-m", "necropool", "release", str(slot)],
                                 env=env, stderr=subprocess.PIPE, text=True)
    try:  # the release cleans at the new tip, then prepares (2 s) while this waits
        got = cli("allocate", "web", "--wait", "60", "--json")
    finally:
        assert releasing.wait(timeout=60) == 0, releasing.stderr.read()
    assert got.code == 0, got
    assert json.loads(got.stdout)["current_commit"] == new_tip
    assert (slot / "deps/installed-for").read_text().strip() == new_tip
    assert (slot / "deps/runs").read_text().count("run") == 2  # create's, the new tip's
    assert json.loads(got.stdout)["prepared"]["current"]


@pytest.mark.slow
def test_a_slot_released_at_an_old_tip_is_prepared_before_it_is_handed_out(
        cli, ledger, upstream):
    made = _pool(cli, upstream, "--prepare", INSTALL)
    slot = Path(made["path"]) / "slots/1"
    assert cli("allocate", "web").code == 0
    new_tip = commit_file(upstream, "app.txt", "v2\n")
    assert cli("release", slot, "--no-fetch").code == 0  # cleaned at the old tip
    got = cli("allocate", "web")  # fetches: the slot is behind, refreshed and prepared
    assert got.code == 0, got
    assert git(slot, "rev-parse", "HEAD") == new_tip
    assert (slot / "deps/installed-for").read_text().strip() == new_tip


@pytest.mark.slow
def test_a_failing_prepare_isolates_the_slot_and_auto_recover_heals_it_once_fixed(
        cli, ledger, upstream, tmp_path, monkeypatch):
    flag = tmp_path / "registry-down"
    command = f'echo "fetching deps"; test ! -e {flag} || {{ echo "registry down" >&2; exit 7; }}'
    made = _pool(cli, upstream, "--prepare", command)
    slot = Path(made["path"]) / "slots/1"
    assert cli("allocate", "web").code == 0
    flag.write_text("")
    commit_file(upstream, "app.txt", "v2\n")
    released = cli("release", slot)
    assert released.code == 3 and "prepare failed" in released.stderr, released
    shown = _status(cli)["web-1"]
    assert shown["state"] == "error"
    assert "exited with status 7" in shown["isolation_reason"]
    log = shown["prepared"]["log"]
    assert log in shown["isolation_reason"] and "registry down" in Path(log).read_text()
    assert shown["prepared"]["ok"] is False
    assert cli("allocate", "web").code == 75  # never handed out unprepared

    found = cli("detect", "--json")
    assert found.code == 1
    failed = json.loads(found.stdout)["failed_prepares"]
    assert [f["slot_id"] for f in failed] == ["web-1"] and log in failed[0]["evidence"]

    flag.unlink()  # fixed; retried after the back-off (a minute for the first attempt)
    early = cli("auto-recover", "--json")  # not due yet: retried after a minute
    assert early.code == 0 and json.loads(early.stdout)["prepares_retried"] == 0, early
    clock_at(monkeypatch, 120)
    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert json.loads(healed.stdout)["prepares_retried"] == 1
    shown = _status(cli)["web-1"]
    assert shown["state"] == "available" and shown["prepared"]["current"]
    assert cli("allocate", "web").code == 0


@pytest.mark.slow
@pytest.mark.skipif(abi_version() == 0, reason="needs Landlock")
def test_prepare_cannot_write_outside_the_slot(cli, root, upstream, tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("untouched\n")
    command = f'echo changed > {canary} || {{ echo "refused: $?"; exit 9; }}'
    made = _pool(cli, upstream, "--prepare", command)
    shown = _status(cli)["web-1"]
    assert shown["state"] == "error" and "exited with status 9" in shown["isolation_reason"]
    assert "Permission denied" in Path(shown["prepared"]["log"]).read_text()
    assert canary.read_text() == "untouched\n"
    assert made["prepare"] == command


@pytest.mark.slow
def test_prepare_runs_the_slots_own_programs_and_has_a_private_cache(cli, root, upstream):
    # a tool the project installs (node_modules/.bin, .venv/bin) is run by a later step
    command = ('mkdir -p deps/bin && printf "#!/bin/sh\\necho tool ran\\n" > deps/bin/tool && '
               'chmod +x deps/bin/tool && deps/bin/tool > deps/out && '
               'echo cached > "$HOME/cache-file" && touch "$TMPDIR/scratch"')
    made = _pool(cli, upstream, "--prepare", command)
    slot = Path(made["path"]) / "slots/1"
    assert (slot / "deps/out").read_text() == "tool ran\n", _status(cli)["web-1"]
    cache = Path(made["path"]) / "cache"
    assert (cache / "home/cache-file").read_text() == "cached\n"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_prepare_times_out(cli, root, upstream, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 1\n'
                      'prepare = "echo started; sleep 30"\nprepare_timeout = 1\n')
    synced = cli("sync", "--config", config)
    assert synced.code == 0, synced
    shown = _status(cli)["web-1"]
    assert shown["state"] == "error" and "timed out after 1s" in shown["isolation_reason"]
    assert "started" in Path(shown["prepared"]["log"]).read_text()


def test_the_log_keeps_the_start_and_the_end_of_a_long_output(cli, root, upstream):
    command = "echo FIRST; head -c 2000000 /dev/zero | tr '\\0' x; echo; echo LAST"
    _pool(cli, upstream, "--prepare", command)
    log = Path(_status(cli)["web-1"]["prepared"]["log"]).read_bytes()
    assert log.startswith(b"FIRST\n") and log.endswith(b"LAST\n")
    assert len(log) < 300 * 1024 and b"bytes of output dropped" in log


def test_bad_prepare_settings_are_refused(cli, root, upstream, tmp_path):
    bad = cli("create", "web", upstream, "--prepare", "  ")
    assert bad.code == 2 and "prepare command" in bad.stderr and not (root / "pools/web").exists()
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nprepare_timeout = 0\n')
    wrong = cli("sync", "--config", config)
    assert wrong.code == 2 and "pools.web.prepare_timeout" in wrong.stderr, wrong
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_sync_sets_prepare_on_an_existing_pool(cli, root, upstream, tmp_path):
    assert cli("create", "web", upstream, "-n", "1").code == 0
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 1\nprepare = "true"\n')
    metrics = cli("status", "--format", "prometheus").stdout
    assert "necropool_slot_prepared" not in metrics  # the pool prepares nothing
    assert cli("sync", "--config", config).code == 0
    assert 'prepare = "true"' in (root / "pools/web/pool.toml").read_text()
    metrics = cli("status", "--format", "prometheus").stdout
    assert 'necropool_slot_prepared{pool="web",slot="web-1"} 0' in metrics
    got = cli("allocate", "web", "--json", "--config", config)  # prepared first
    assert got.code == 0, got
    assert _status(cli)["web-1"]["prepared"]["current"]
    assert os.path.exists(root / "pools/web/records/1.prepared.json")
    metrics = cli("status", "--format", "prometheus").stdout
    assert 'necropool_slot_prepared{pool="web",slot="web-1"} 1' in metrics
    assert 'necropool_slot_prepare_duration_seconds{pool="web",slot="web-1"}' in metrics
    assert cli("release", "web-1").code == 0
    assert cli("add", "web", "--config", config).code == 0  # a new slot: prepared when made
    assert _status(cli)["web-2"]["prepared"]["current"]
    table = cli("status", "web", "--format", "table", env={"COLUMNS": "200"})
    assert "web: prepare 'true': 2 of 2 slots prepared for their commit" in table.stdout
