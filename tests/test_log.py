"""``log``: every pool's history when none is named, the last N events, only some kinds,
details as key=value, and --follow printing events as they happen."""

import json
import os
import select
import signal
import subprocess
import sys
import time


def test_all_pools_tail_and_kinds(cli, pool, manager, upstream, tmp_path):
    assert cli("create", "api", upstream, "--slots", "1").code == 0
    held = manager.allocate_slot("api", owner="bob", fetch=False)
    manager.release_slot(held["slot_id"], fetch=False)
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 3\nkeep_ignored = true\n')
    assert cli("sync", env={"NECROPOOL_CONFIG": str(config)}).code == 0

    everything = cli("log", "--json").stdout
    events = json.loads(everything)["events"]
    assert {e["pool"] for e in events} == {"web", "api"}
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)

    rows = [line.split("\t") for line in cli("log").stdout.splitlines()]
    assert len(rows) == len(events) and all(len(r) == 5 for r in rows)
    assert [r[1] for r in rows] == [e["event"] for e in events]
    release = next(r for r in rows if r[1] == "release")
    assert release[2] == "api-1" and release[4] == "api"
    assert f"lease_id={held['lease_id']}" in release[3].split() and "owner=bob" in release[3]
    update = next(r for r in rows if r[1] == "update")
    assert update[3] == 'changed={"keep_ignored":[false,true]}'  # JSON, not a Python repr
    assert "{'" not in cli("log").stdout

    last = cli("log", "web", "--tail", "2", "--json").json()["events"]
    assert last == [e for e in events if e["pool"] == "web"][-2:]
    only = cli("log", "--event", "release", "-e", "allocate", "--json").json()["events"]
    assert [e["event"] for e in only] == ["allocate", "release"]
    nothing = cli("log", "--event", "expire", "--format", "tsv")
    assert nothing.stdout == "time\tevent\tslot\tdetail\tpool\n"
    assert cli("log", "--tail", "0").code == 2


def test_follow_prints_new_events_as_they_happen(cli, pool, manager):
    proc = subprocess.Popen([sys.executable, "-m", "necropool", "log", "--follow", "--tail", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=dict(os.environ))
    try:
        def next_line(timeout=20):
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            assert ready, "log --follow printed nothing"
            return proc.stdout.readline().decode()

        assert next_line().split("\t")[1] == "create"  # the history's last event
        time.sleep(0.3)
        held = manager.allocate_slot("web", owner="carol", fetch=False)
        line = next_line().split("\t")
        assert line[1:3] == ["allocate", held["slot_id"]] and "owner=carol" in line[3]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode == 0 and proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
