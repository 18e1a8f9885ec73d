"""Faults that must not stay: a slot missing a pack index or its index file is found by
``detect`` and healed by ``recover``; a slot isolated by the machine's fault (git missing,
a full disk) is retried until it heals; an event line cut short by a full disk costs that
line only, never the next event; a failed write names its file and operation."""

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clock_at, git

from necropool.store import events


def _slot(root: Path, number: int) -> Path:
    return root / "pools" / "web" / "slots" / str(number)


@pytest.mark.parametrize("fault", ["pack index", "index file"])
def test_a_missing_index_is_detected_and_recovered(cli, pool, root, upstream, monkeypatch,
                                                   fault):
    slot = _slot(root, 2)
    if fault == "pack index":
        [idx] = (slot / ".git/objects/pack").glob("*.idx")
        idx.unlink()
        assert git(slot, "rev-parse", "-q", "--verify", "HEAD^{tree}", check=False) == ""
    else:
        (slot / ".git/index").unlink()
    clock_at(monkeypatch, 60)  # the pack is not one a fetch is still putting in place

    found = cli("detect", "web", "--json")
    assert found.code == 1, found
    [corrupted] = found.json()["corrupted_slots"]
    assert corrupted["slot_id"] == "web-2" and "missing" in corrupted["evidence"], corrupted

    healed = cli("recover", "web-2", "--json")
    assert healed.code == 0 and healed.json()["recovered"] is True, healed
    tip = git(upstream, "rev-parse", "HEAD")
    assert git(slot, "rev-parse", "HEAD") == tip
    assert git(slot, "--no-optional-locks", "status", "--porcelain") == ""
    assert cli("detect", "web").code == 0


def test_a_torn_event_line_costs_only_itself(cli, pool, root):
    log = root / "pools/web/events.jsonl"
    with open(log, "ab") as fh:  # what a write cut short by a full disk leaves: no newline
        fh.write(b'{"time":"2026-01-01T00:00:00.000Z","event":"allocate","slot_id":"we')
    grant = cli("allocate", "web", "--no-fetch", "--json").json()
    assert cli("release", grant["slot_id"], "--no-fetch").code == 0

    shown = cli("log", "web", "--json").json()["events"]
    kinds = [(e["event"], e.get("lease_id")) for e in shown[-3:]]
    assert ("allocate", grant["lease_id"]) in kinds and ("release", grant["lease_id"]) in kinds
    assert events.last(log, "allocate")["lease_id"] == grant["lease_id"]
    torn = log.read_bytes().split(b"\n")
    assert any(line.startswith(b'{"time":"2026-01-01') and b'"lease_id"' in line
               for line in torn)  # the torn line and the next one share a line on disk
    json.loads(torn[-2])  # the line after it is whole


def _isolation(cli, slot_id: str) -> tuple[str, str | None]:
    slot = cli("status", slot_id, "--json").json()
    return slot["state"], slot["isolation_reason"]


def test_a_slot_isolated_by_its_environment_is_retried_with_backoff_and_healed(
        cli, pool, root, tmp_path, monkeypatch):
    """A recovery the machine made fail (a full disk, an I/O error: not the slot's fault)
    isolates the slot with its cause; auto-recover retries it, less often after each
    failure, and heals it once the cause is gone. Without git, nothing is even tried:
    the command refuses and changes nothing."""
    no_git = {"PATH": str(tmp_path / "empty-bin")}
    (tmp_path / "empty-bin").mkdir()
    (_slot(root, 2) / ".git/index").unlink()  # something to recover
    before = _isolation(cli, "web-2")
    refused = cli("recover", "web-2", env=no_git)
    assert refused.code == 3 and "git" in refused.stderr, refused
    assert _isolation(cli, "web-2") == before
    reason = "re-clone failed: No space left on device [environmental: disk full; attempt 1]"
    assert cli("isolate", "web-2", "--reason", reason).code == 0

    def retried(offset: float, env: dict[str, str] | None = None) -> list[str | None]:
        """The outcome of each retry an auto-recover at ``offset`` seconds made, and its
        ``isolated_retried`` counter (the retries that healed)."""
        clock_at(monkeypatch, offset)
        result = cli("auto-recover", "web", "--json", env=env).json()["pools"][0]
        outcomes = [a["status"] for a in result["actions"] if "retried" in a["action"]]
        assert result["isolated_retried"] == outcomes.count("done")
        return outcomes

    assert retried(0) == []  # too soon: the first retry comes after a minute
    assert retried(190) == ["done"]
    assert _isolation(cli, "web-2") == ("available", None)
    assert cli("detect", "web").code == 0


def test_a_slot_isolated_for_its_own_damage_is_not_retried(cli, pool, root, monkeypatch):
    assert cli("isolate", "web-2", "--reason", "disk of this slot is suspect").code == 0
    clock_at(monkeypatch, 86400)
    assert cli("auto-recover", "web", "--json").json()["isolated_retried"] == 0  # never due
    assert _isolation(cli, "web-2")[0] == "error"


def test_a_failed_state_write_names_the_file_and_the_operation(cli, pool, root):
    """A full disk stood in for by a file size limit: every write past 64 bytes fails
    (EFBIG, as ENOSPC would). The error says what was being written, and nothing changed."""
    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    state = (root / "pools/web/state/1.toml").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "necropool", "allocate", "web", "--no-fetch"],
                          capture_output=True, text=True, preexec_fn=small_files)
    assert proc.returncode == 3, proc
    [line] = proc.stderr.splitlines()
    assert "writing " in line and "state/1.toml" in line and "File too large" in line, line
    assert (root / "pools/web/state/1.toml").read_bytes() == state
