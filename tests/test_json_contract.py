"""Every command under --json: one object on stdout with schema_version 1 and the keys
docs/json.md documents, nothing else on stdout. The list of commands comes from the CLI
itself, so a new command without a case here fails the test."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from helpers import commit_file, wait_until_queued

from necropool.cli.app import COMMANDS
from necropool.health.detect import KINDS

DOC = (Path(__file__).parent.parent / "docs" / "json.md").read_text()


def documented(anchor: str) -> set[str]:
    """The keys of the first ``{"key", ...}`` code span after ``anchor`` in docs/json.md."""
    at = DOC.index(anchor) + len(anchor)
    span = re.search(r"`(\{[^`]*\})`", DOC[at:])
    assert span, f"no key list after {anchor!r}"
    return set(re.findall(r'"([a-z_]+)"', span.group(1)))


def table_fields(heading: str) -> set[str]:
    """The field names in the first column of the table under ``heading``."""
    section = DOC[DOC.index(heading):]
    section = section[:section.index("\n\n", section.index("|"))]
    return {name for row in section.splitlines() if row.startswith("| `")
            for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


SLOT_KEYS = table_fields("## The slot object")
POOL_KEYS = table_fields("### The pool object")
STATUS_ONLY = {"rescued_count", "rescued_bytes", "confinement"}  # status adds to the pool object
COUNTERS = {"long_allocated_released", "expired_released", "abandoned_released",
            "corrupted_recovered", "corrupted_isolated", "orphaned_locks_cleaned",
            "stray_paths_moved", "slots_adopted"}


def row(command: str) -> set[str]:
    return documented(f"| `{command}` |")


def one_object(result, code: int = 0) -> dict:
    assert result.code == code, result
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    data = json.loads(lines[0])
    assert data.pop("schema_version") == 1
    return data


def test_the_document_lists_what_the_code_knows():
    assert {"slot_id", "lease_id", "expires_at", "ttl_seconds", "last_rescue"} <= SLOT_KEYS
    assert {"pool", "counts", "state_source", "slots"} <= POOL_KEYS
    assert row("detect") == set(KINDS) | {"healthy", "count", "errors", "confinement"}
    assert row("auto-recover") >= COUNTERS


def test_every_command_speaks_the_documented_json(cli, upstream, root, tmp_path, pg_cluster):
    """Each object's keys are exactly the documented ones: nothing missing, nothing extra."""
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.api]\nurl = "{upstream}"\nnum_slots = 1\n')
    seen = set()

    def run(command, *args, code=0, env=None):
        seen.add(command)
        result = cli(command, "--json", *args, env=env)
        return one_object(result, code)

    created = run("create", "web", upstream, "--slots", "3")
    assert created.keys() == POOL_KEYS - STATUS_ONLY
    assert created["slots"][0].keys() == SLOT_KEYS
    assert run("add", "web").keys() == row("add")
    assert run("list")["pools"][0].keys() == POOL_KEYS - STATUS_ONLY - {"slots"}
    assert run("status")["pools"][0]["slots"][0].keys() == SLOT_KEYS
    assert run("status", "web").keys() == POOL_KEYS
    assert run("status", "web-1").keys() == SLOT_KEYS
    held = run("allocate", "web", "--meta", "task=7", "--ttl", "1h")
    assert held.keys() == SLOT_KEYS | {"fetch_error"} and held["metadata"] == {"task": "7"}
    assert run("renew", held["slot_id"], "--lease-id", held["lease_id"]).keys() == SLOT_KEYS
    commit_file(upstream, "new.txt", "upstream moved\n")
    released = run("release", held["slot_id"], "--lease-id", held["lease_id"])
    assert released.keys() == row("release") and released["rescued"] is None
    again = run("allocate", "web", "--no-fetch")
    kept = run("release", again["slot_id"], "--no-cleanup")
    assert kept.keys() == row("release") and kept["cleanup"] is None
    ran = run("run", "web", "--", "sh", "-c", "echo to-stderr")
    assert ran.keys() == row("run") and ran["exit_code"] == 0
    assert ran["release"].keys() == row("release")
    logged = run("log", "web")
    assert logged.keys() == row("log")
    assert {e["event"] for e in logged["events"]} >= {"create", "allocate", "release", "cleanup"}
    assert run("detect").keys() == row("detect")
    isolated = run("isolate", "web-2", "--reason", "inspect")
    assert isolated.keys() == row("isolate")
    [anomaly] = run("detect", code=1)["isolated_slots"]
    assert anomaly.keys() == documented("An anomaly is") and anomaly["slot_id"] == "web-2"
    recovered = run("recover", "web-2")
    assert recovered.keys() == row("recover") and recovered["recovered"] is True
    (root / "pools" / "web" / "slots" / "junk").mkdir()
    healed = run("auto-recover", "--dry-run")
    assert healed.keys() == row("auto-recover")
    [pool] = healed["pools"]
    assert pool.keys() == documented("one entry per pool:")
    [action] = pool["actions"]
    assert action.keys() == documented("Each entry of `actions` is")
    synced = run("sync", env={"NECROPOOL_CONFIG": str(config)})
    assert synced.keys() == row("sync")
    assert synced["actions"] == [{"pool": "api", "action": "created", "slots": 1}]
    assert run("remove", "web-4").keys() == row("remove")
    work = run("allocate", "web", "--no-fetch")
    (Path(work["path"]) / "notes.txt").write_text("saved on release\n")
    assert run("release", work["slot_id"])["rescued"]
    seen.add("ledger")
    dsn = pg_cluster.create_database("json_contract")
    for action in ("init", "migrate"):
        assert one_object(cli("--ledger", dsn, "ledger", action, "--json")).keys() == \
            documented("| `ledger init`")
    for action in ("import", "export"):
        moved = one_object(cli("--ledger", dsn, "ledger", action, "web", "--json"))
        assert moved.keys() == documented("| `ledger import`") and moved["slots"] == 3
    status = one_object(cli("--ledger", dsn, "ledger", "status", "--json"))
    assert status.keys() == row("ledger status") and status["pools"] == []
    seen.add("rescued")
    rescued = one_object(cli("rescued", "list", "--json"))
    assert rescued.keys() == row("rescued list")
    assert rescued["items"] and rescued["items"][0].keys() == table_fields("### Rescued items")
    pruned = one_object(cli("rescued", "prune", "--json"))
    assert pruned.keys() == row("rescued prune")
    completion = run("completion", "bash")
    assert completion.keys() == row("completion")
    assert completion["shell"] == "bash" and "_NECROPOOL_COMPLETE" in completion["script"]
    assert run("delete", "api").keys() == row("delete")

    assert seen == set(COMMANDS), f"commands without a JSON case: {set(COMMANDS) - seen}"


def test_an_unreadable_pool_is_the_documented_pair(cli, upstream, root):
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    (root / "pools" / "web" / "pool.toml").write_text("not = [toml")
    for command in ("list", "status"):
        [entry] = one_object(cli(command, "--json"), 3)["pools"]
        [line] = [x for x in DOC.splitlines() if x.startswith(f"| `{command}` |")]
        said = re.search(r"an unreadable pool is `\{([^`]*)\}`", line).group(1)
        assert entry.keys() == set(re.findall(r'"([a-z_]+)"', said))


def test_a_command_interrupted_under_json_reports_it_as_json(cli, root, upstream):
    """SIGINT while waiting for a slot: exit 130 and one JSON error on stderr."""
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    assert cli("allocate", "web").code == 0
    waiter = subprocess.Popen([sys.executable, "-m", "necropool", "allocate", "web",
                               "--wait", "30s", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_queued(root / "pools/web", waiter)
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 130
    assert out == ""
    error = json.loads(err.strip().splitlines()[-1])
    assert error["type"] == "error" and error["exit_code"] == 130
