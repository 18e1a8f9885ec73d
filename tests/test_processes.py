"""Processes a holder leaves behind: ``run`` ends every descendant of its command (however it
hid: double-forked, in a session of its own, its directory outside the slot) before the slot
is released; a process counts as necropool's only by who it is, never by its name."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import skip_unless_ci


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


def test_a_stopped_run_is_deferred_not_failed(cli, pool, tmp_path):
    """A ``run`` stopped (SIGSTOP) past its TTL still holds its slot's lock: auto-recover
    leaves it for later and succeeds, rather than failing every cron run."""
    started = tmp_path / "started"
    run = subprocess.Popen([sys.executable, "-m", "necropool", "run", "web", "--ttl", "60",
                            "--", "sh", "-c", f"touch {started}; exec sleep 60"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the command did not start"
        run.send_signal(signal.SIGSTOP)
        healed = cli("auto-recover", "--json", env={"NECROPOOL_CLOCK_OFFSET": "600"})
        assert healed.code == 0, healed
        [action] = [a for p in healed.json()["pools"] for a in p["actions"]
                    if a["target"] == "web-1"]
        assert action["status"] == "deferred", action
        assert cli("status", "web-1", "--json").json()["state"] == "allocated"
    finally:
        run.send_signal(signal.SIGCONT)
        run.terminate()
        run.wait(timeout=30)


def test_a_dead_holder_that_named_another_host_is_reclaimed_on_a_local_pool(cli, pool):
    """A pool kept in this host's files has every holder here: a ``NECROPOOL_HOST`` the
    holder set (spoofed, or the host renamed since) does not keep a dead one's slot."""
    holder = subprocess.Popen(["sleep", "600"])
    grant = cli("allocate", "web", "--no-fetch", "--pid", holder.pid, "--json",
                env={"NECROPOOL_HOST": "somewhere-else"})
    holder.kill()
    holder.wait()
    assert grant.code == 0, grant
    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert healed.json()["abandoned_released"] == 1, healed.json()
    assert cli("status", grant.json()["slot_id"], "--json").json()["state"] == "available"


def test_a_holder_in_another_pid_namespace_is_never_judged_dead_by_pid(cli, pool, tmp_path):
    """A holder in a container (its own pid namespace) records pid 1 there: here pid 1 is
    init, with another start time, and a judge by pid would reclaim a live holder's slot."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip_unless_ci("needs root and unshare(1) for a pid namespace")
    grant_file = tmp_path / "grant.json"
    inside = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
         f'"$0" -m necropool allocate web --no-fetch --pid $$ --json > {grant_file}; '
         "exec sleep 60", sys.executable])
    try:
        deadline = time.monotonic() + 30
        while not (text := grant_file.read_text() if grant_file.exists() else "").endswith(
                "\n"):  # (the whole object written)
            assert time.monotonic() < deadline and inside.poll() is None, "no grant"
            time.sleep(0.05)
        grant = json.loads(text)
        assert grant["pid"] == 1
        healed = cli("auto-recover", "--json")
        assert healed.code == 0, healed
        assert healed.json()["abandoned_released"] == 0, "a live holder's slot was reclaimed"
        assert cli("status", grant["slot_id"], "--json").json()["state"] == "allocated"
    finally:
        inside.kill()
        inside.wait()
