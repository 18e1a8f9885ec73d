"""Faults that must not stay: a slot missing a pack index or its index file is found by
``detect`` and healed by ``recover``; an event line cut short by a full disk costs that
line only, never the next event."""

import json
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
