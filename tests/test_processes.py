"""Processes a holder leaves behind: ``run`` ends every descendant of its command (however it
hid: double-forked, in a session of its own, its directory outside the slot) before the slot
is released; a process counts as necropool's only by who it is, never by its name."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


@pytest.fixture
def marker():
    """A unique word in the leaked processes' command lines; any still alive at the end
    of the test are killed, so a failure leaves nothing running."""
    word = f"necropool-leak-{uuid.uuid4().hex}"
    yield word
    for pid in processes_with(word):
        os.kill(pid, 9)


def test_run_ends_a_double_forked_writer_that_left_the_slot_and_the_session(cli, pool,
                                                                            marker):
    writer = (f"cd /; while :; do echo {marker} >> \"$NECROPOOL_SLOT_PATH/leak.txt\"; "
              "sleep 0.05; done")
    command = f"(setsid sh -c '{writer}' </dev/null >/dev/null 2>&1 &); sleep 0.3"
    result = cli("run", "web", "--json", "--", "sh", "-c", command)
    assert result.code == 0, result
    assert processes_with(marker) == [], "a process of the command outlived run"
    nxt = cli("allocate", "web", "--no-fetch", "--json").json()
    assert nxt["slot_id"] == result.json()["slot_id"]  # (the most recently released first)
    path = Path(nxt["path"])
    time.sleep(0.5)
    assert not (path / "leak.txt").exists(), "the next holder's slot was written into"


def test_a_holder_renamed_necropool_still_blocks_the_release(cli, pool):
    """Its directory is outside; a file of the slot is open (its standard input)."""
    slot = Path(cli("allocate", "web", "--no-fetch").stdout.strip())
    (slot / "open.txt").write_text("held open\n")
    with open(slot / "open.txt") as stdin:
        holder = subprocess.Popen(["bash", "-c", "exec -a necropool sleep 60"], cwd="/",
                                  stdin=stdin)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # (until bash has become the renamed sleep)
            with open(f"/proc/{holder.pid}/cmdline", "rb") as fh:
                if fh.read().startswith(b"necropool\0"):
                    break
            time.sleep(0.02)
        result = cli("release", slot)
        assert result.code == 5, result
        assert f"pid {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()
