"""Honest answers: a root without pools is an error for the commands over every pool, not
"healthy"; auto-recover's JSON says when it ran; a git failure keeps its cause; a command
that cannot run git leaves the lease and the slot alone; sync prunes only its own pools."""

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import run_cli


def write_config(path: Path, text: str) -> None:
    path.write_text(text)


COMMANDS_OVER_EVERY_POOL = (["detect"], ["auto-recover"], ["status"], ["list"])


@pytest.mark.parametrize("args", COMMANDS_OVER_EVERY_POOL)
def test_a_root_that_does_not_exist_is_not_found(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "typo"
    result = run_cli("--root", missing, *args)
    assert result.code == 4, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and str(missing) in result.stderr
    assert "does not exist" in result.stderr
    assert not missing.exists()  # nothing made either
    as_json = run_cli("--root", missing, *args, "--json")
    assert as_json.code == 4
    assert json.loads(as_json.stderr)["code"] == "not_found"


@pytest.mark.parametrize("args", COMMANDS_OVER_EVERY_POOL)
def test_a_root_without_pools_is_not_found(root: Path, args: list[str]) -> None:
    (root / "pools").mkdir(parents=True)
    result = run_cli(*args)
    assert result.code == 4, result
    assert str(root) in result.stderr and "necropool create POOL URL" in result.stderr


def test_auto_recover_says_when_it_ran(pool: str) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    result = run_cli("auto-recover", "--json")
    assert result.code == 0, result
    at = datetime.fromisoformat(result.json()["at"].replace("Z", "+00:00"))
    assert at.tzinfo is not None and at.utcoffset() == timedelta(0)
    assert before <= at <= datetime.now(UTC)


def test_a_git_failure_keeps_its_cause(root: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An ssh upstream that refuses the key: the cause, not only git's generic last word."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ssh = bindir / "ssh"
    ssh.write_text("#!/bin/sh\necho 'git@example.invalid: Permission denied (publickey).' >&2\n"
                   "exit 255\n")
    ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    result = run_cli("create", "web", "ssh://git@example.invalid/org/web.git", "--slots", "1")
    assert result.code == 3, result
    assert "Permission denied (publickey)" in result.stderr
    assert "Could not read from remote repository" in result.stderr
    assert "correct access rights" not in result.stderr  # git's stock advice is dropped
    assert not (root / "pools" / "web").exists()


@pytest.mark.parametrize("command", ["release", "recover"])
def test_without_git_a_command_refuses_and_leaves_the_lease(pool: str, tmp_path: Path,
                                                            command: str) -> None:
    slot = run_cli("allocate", pool, "--json").json()
    (Path(slot["path"]) / "work.txt").write_text("unsaved\n")
    no_git = {"PATH": str(tmp_path / "empty")}
    args = [slot["slot_id"], "--force"] if command == "recover" else [slot["slot_id"]]
    refused = run_cli(command, *args, env=no_git)
    assert refused.code == 3, refused
    assert "cannot run git" in refused.stderr and "nothing was changed" in refused.stderr
    after = run_cli("status", slot["slot_id"], "--json").json()
    assert after["state"] == "allocated" and after["lease_id"] == slot["lease_id"]
    assert (Path(slot["path"]) / "work.txt").read_text() == "unsaved\n"
    released = run_cli("release", slot["slot_id"], "--lease-id", slot["lease_id"])
    assert released.code == 0, released


def test_without_git_auto_recover_isolates_nothing(pool: str, tmp_path: Path) -> None:
    refused = run_cli("auto-recover", "--json", env={"PATH": str(tmp_path / "empty")})
    assert refused.code == 3, refused
    assert "cannot run git" in refused.stderr
    states = {s["state"] for s in run_cli("status", pool, "--json").json()["slots"]}
    assert states == {"available"}


def test_sync_prunes_only_the_pools_it_made(upstream: Path, root: Path, tmp_path: Path) -> None:
    config = tmp_path / "necropool.toml"
    write_config(config, f'[pools.api]\nurl = "{upstream}"\nnum_slots = 1\n')
    assert run_cli("--config", config, "sync").code == 0
    assert run_cli("create", "handmade", upstream, "--slots", "1").code == 0
    write_config(config, "max_allocation_hours = 12\n")  # api dropped; handmade never declared

    planned = run_cli("--config", config, "sync", "--prune", "--dry-run", "--json")
    assert planned.code == 0, planned
    assert planned.json() == {"schema_version": 1, "dry_run": True,
                              "actions": [{"pool": "api", "action": "deleted"}]}
    assert sorted(os.listdir(root / "pools")) == ["api", "handmade"]  # nothing done

    pruned = run_cli("--config", config, "sync", "--prune", "--json")
    assert pruned.code == 0, pruned
    assert pruned.json()["actions"] == [{"pool": "api", "action": "deleted"}]
    assert sorted(os.listdir(root / "pools")) == ["handmade"]


def test_sync_dry_run_changes_nothing(upstream: Path, root: Path, tmp_path: Path) -> None:
    config = tmp_path / "necropool.toml"
    write_config(config, f'[pools.web]\nurl = "{upstream}"\nnum_slots = 1\n')
    planned = run_cli("--config", config, "sync", "--dry-run", "--json")
    assert planned.code == 0, planned
    assert planned.json()["actions"] == [{"pool": "web", "action": "created", "slots": 1}]
    assert not (root / "pools" / "web").exists()
    assert run_cli("--config", config, "sync").code == 0
    write_config(config, f'[pools.web]\nurl = "{upstream}"\nnum_slots = 3\n'
                         'keep_ignored = true\n')
    before = (root / "pools" / "web" / "pool.toml").read_text()
    planned = run_cli("--config", config, "sync", "--dry-run", "--json")
    assert planned.json()["actions"] == [{"pool": "web", "action": "grown",
                                          "added": ["web-2", "web-3"],
                                          "changed": {"keep_ignored": [False, True]}}]
    assert (root / "pools" / "web" / "pool.toml").read_text() == before
    assert sorted(os.listdir(root / "pools" / "web" / "slots")) == ["1"]
    done = run_cli("--config", config, "sync", "--json")
    assert done.json()["actions"] == planned.json()["actions"]
