"""Every command under --json: one object on stdout with schema_version 1 and the keys
docs/json.md documents, nothing else on stdout. The list of commands comes from the CLI
itself, so a new command without a case here fails the test."""

import json
import signal
import subprocess
import sys

from conftest import commit_file

from necropool.cli.app import COMMANDS

SLOT_KEYS = {"slot_id", "pool", "path", "state", "lease_id", "owner", "pid", "host",
             "allocated_at", "expires_at", "metadata", "current_branch", "current_commit",
             "allocation_count", "total_usage_seconds", "last_allocated_at",
             "last_released_at", "needs_cleanup", "error", "isolated_at", "isolation_reason",
             "last_rescue"}
POOL_KEYS = {"pool", "path", "url", "branch", "mirror_commit", "num_slots", "counts",
             "keep_ignored", "fetch_on_allocate", "state_source"}
STATUS_KEYS = POOL_KEYS | {"slots", "rescued_count", "rescued_bytes", "mirror_fetched_at"}
DETECT_KEYS = {"long_allocated_slots", "abandoned_slots", "corrupted_slots", "orphaned_locks",
               "stray_paths", "isolated_slots", "healthy", "count"}
COUNTERS = {"long_allocated_released", "abandoned_released", "corrupted_recovered",
            "corrupted_isolated", "orphaned_locks_cleaned", "stray_paths_moved",
            "slots_adopted"}


def one_object(result, code: int = 0) -> dict:
    assert result.code == code, result
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    data = json.loads(lines[0])
    assert data.pop("schema_version") == 1
    return data


def test_every_command_speaks_the_documented_json(cli, upstream, root, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.api]\nurl = "{upstream}"\nnum_slots = 1\n')
    seen = set()

    def run(command, *args, code=0, env=None):
        seen.add(command)
        result = cli(command, "--json", *args, env=env)
        return one_object(result, code)

    assert POOL_KEYS | {"slots"} <= run("create", "web", upstream, "--slots", "3").keys()
    assert run("add", "web").keys() == {"pool", "added"}
    assert run("list")["pools"][0].keys() >= POOL_KEYS
    assert run("status")["pools"][0]["slots"][0].keys() >= SLOT_KEYS
    assert run("status", "web").keys() == STATUS_KEYS
    assert run("status", "web-1").keys() >= SLOT_KEYS
    held = run("allocate", "web", "--meta", "task=7", "--ttl", "1h")
    assert held.keys() >= SLOT_KEYS and held["metadata"] == {"task": "7"}
    commit_file(upstream, "new.txt", "upstream moved\n")
    released = run("release", held["slot_id"], "--lease-id", held["lease_id"])
    assert released.keys() >= {"slot_id", "pool", "lease_id", "cleaned", "commit", "cleanup"}
    ran = run("run", "web", "--", "sh", "-c", "echo to-stderr")
    assert ran.keys() >= {"slot_id", "pool", "exit_code", "release"} and ran["exit_code"] == 0
    events = run("log", "web")["events"]
    assert {e["event"] for e in events} >= {"create", "allocate", "release", "cleanup"}
    assert run("detect").keys() == DETECT_KEYS
    isolated = run("isolate", "web-2", "--reason", "inspect")
    assert isolated.keys() == {"slot_id", "pool", "state", "previous_state", "isolated_at",
                               "isolation_reason"}
    assert run("detect", code=1)["isolated_slots"][0]["slot_id"] == "web-2"
    recovered = run("recover", "web-2")
    assert recovered.keys() >= {"slot_id", "pool", "recovered", "state", "previous_state",
                                "actions"} and recovered["recovered"] is True
    healed = run("auto-recover", "--dry-run")
    assert healed.keys() >= COUNTERS | {"errors", "dry_run", "pools"}
    assert healed["pools"][0].keys() >= COUNTERS | {"actions", "detected", "pool"}
    synced = run("sync", env={"NECROPOOL_CONFIG": str(config)})
    assert synced["actions"] == [{"pool": "api", "action": "created", "slots": 1}]
    assert run("remove", "web-4").keys() == {"slot_id", "pool", "removed"}
    seen.add("rescued")
    rescued = one_object(cli("rescued", "list", "--json"))
    assert rescued == {"items": [], "total_bytes": 0}
    pruned = one_object(cli("rescued", "prune", "--json"))
    assert pruned.keys() == {"dry_run", "older_than_seconds", "items", "freed_bytes"}
    completion = run("completion", "bash")
    assert completion["shell"] == "bash" and "_NECROPOOL_COMPLETE" in completion["script"]
    assert run("delete", "api").keys() == {"pool", "deleted", "slots"}

    assert seen == set(COMMANDS), f"commands without a JSON case: {set(COMMANDS) - seen}"


def test_a_command_interrupted_under_json_reports_it_as_json(cli, upstream):
    """SIGINT while waiting for a slot: exit 130 and one JSON error on stderr."""
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    assert cli("allocate", "web").code == 0
    waiter = subprocess.Popen([sys.executable, "-m", "necropool", "allocate", "web",
                               "--wait", "30s", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time

        time.sleep(1.0)
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 130
    assert out == ""
    error = json.loads(err.strip().splitlines()[-1])
    assert error["type"] == "error" and error["exit_code"] == 130
