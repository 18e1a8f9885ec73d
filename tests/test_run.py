"""``necropool run POOL -- CMD``: allocate, run in the slot, release whatever happens."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import git

from necropool.ground.proc import start_time

# Every test twice: state in local TOML files, then in a PostgreSQL ledger.
pytestmark = pytest.mark.usefixtures("ledger")


def states(cli, pool_name: str = "web") -> dict[str, str]:
    result = cli("status", pool_name, "--json")
    assert result.code == 0, result
    return {s["slot_id"]: s["state"] for s in result.json()["slots"]}


def all_available(cli) -> bool:
    return set(states(cli).values()) == {"available"}


def wait_for(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def start_run(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "necropool", "run", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("status", [0, 3, 42])
def test_run_exits_with_the_commands_status_and_releases(cli, pool, status):
    result = cli("run", "web", "--", "sh", "-c", f"exit {status}")
    assert result.code == status, result
    assert all_available(cli)


def test_run_json_keeps_stdout_for_the_one_object(cli, pool):
    result = cli("run", "web", "--json", "--", "sh", "-c", "echo from-the-command; exit 7")
    assert result.code == 7, result
    data = json.loads(result.stdout)  # the command's output did not end up in it
    assert data["exit_code"] == 7 and data["slot_id"].startswith("web-")
    assert "from-the-command" in result.stderr


def test_run_runs_in_the_slot_with_its_lease_in_the_environment(cli, pool, root, tmp_path):
    out = tmp_path / "env.txt"
    seen = tmp_path / "status.json"
    script = (f'printf "%s\\n" "$NECROPOOL_SLOT_ID" "$NECROPOOL_SLOT_PATH" '
              f'"$NECROPOOL_LEASE_ID" "$(pwd -P)" > {out} && '
              f'"{sys.executable}" -m necropool status "$NECROPOOL_SLOT_ID" --json > {seen}')
    result = cli("run", "web", "--owner", "ci", "--", "sh", "-c", script)
    assert result.code == 0, result
    slot_id, slot_path, lease_id, cwd = out.read_text().splitlines()
    assert slot_id == "web-1"
    assert slot_path == str(root / "pools/web/slots/1")
    assert cwd == str(Path(slot_path).resolve())
    # While the command ran, the slot was allocated to exactly that lease.
    during = json.loads(seen.read_text())
    assert during["state"] == "allocated" and during["lease_id"] == lease_id
    assert during["owner"] == "ci" and during["pid"] is not None
    assert all_available(cli)
    released = cli("log", "web", "--json").json()["events"]
    assert any(e["event"] == "release" and e["lease_id"] == lease_id for e in released)


def test_run_cleans_the_slot_even_when_the_command_dirtied_it(cli, pool, root, upstream):
    script = ("echo changed > README && echo new > untracked.txt && mkdir -p build && "
              "echo obj > build/x.o && git checkout -q -b topic && "
              "git -c user.name=t -c user.email=t@t commit -qam wip && exit 4")
    result = cli("run", "web", "--json", "--", "sh", "-c", script)
    assert result.code == 4, result
    data = result.json()
    assert data["exit_code"] == 4 and data["slot_id"] == "web-1"
    assert data["release"]["cleaned"] is True
    assert Path(data["release"]["rescued"]).is_file()
    slot = root / "pools/web/slots/1"
    assert git(slot, "rev-parse", "HEAD") == git(upstream, "rev-parse", "HEAD")
    assert git(slot, "status", "--porcelain", "--ignored") == ""
    assert git(slot, "for-each-ref", "refs/heads") == ""
    assert all_available(cli)


@pytest.mark.parametrize("status,expected", [(0, 3), (7, 7)])
def test_a_slot_left_uncleanable_fails_a_successful_step(cli, pool, status, expected):
    """The command broke the repository: its slot goes to error. A command that succeeded
    then exits 3 (the step must not pass silently); one that failed keeps its own status."""
    result = cli("run", "web", "--json", "--", "sh", "-c",
                 f"echo garbage > .git/HEAD; rm -rf .git/objects; exit {status}")
    assert result.code == expected, result
    error = json.loads(result.stderr.strip().splitlines()[-1])
    assert error["exit_code"] == expected and "could not be cleaned" in error["message"]
    data = result.json()
    assert data["exit_code"] == status and data["release_error"]
    assert "error" in states(cli).values()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, 137), (signal.SIGTERM, 143)])
def test_a_command_killed_by_a_signal_gives_128_plus_n(cli, pool, sig, code):
    result = cli("run", "web", "--", "sh", "-c", f"kill -{sig.name[3:]} $$")
    assert result.code == code, result
    assert all_available(cli)


def test_command_not_found_gives_127_and_not_executable_126(cli, pool, tmp_path):
    missing = cli("run", "web", "--", "no-such-command-necropool")
    assert missing.code == 127, missing
    assert "no-such-command-necropool" in missing.stderr
    assert all_available(cli)
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    denied = cli("run", "web", "--", script)
    assert denied.code == 126, denied
    assert all_available(cli)


def test_run_needs_a_command_and_a_free_slot(cli, pool, tmp_path):
    assert cli("run", "web").code == 2
    assert cli("run", "web", "--").code == 2
    for _ in range(3):
        assert cli("allocate", "web").code == 0
    marker = tmp_path / "ran"
    busy = cli("run", "web", "--", "touch", marker)
    assert busy.code == 75, busy
    assert not marker.exists()


TRAP = """
trap 'echo "$1" > {got}; kill $child 2>/dev/null; exit {code}' {sig}
sleep 30 & child=$!
echo ready > {ready}
wait $child
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_sent_to_run_are_forwarded_to_the_command(cli, pool, tmp_path, sig):
    got, ready = tmp_path / "got", tmp_path / "ready"
    script = TRAP.format(got=got, ready=ready, code=9, sig=sig.name[3:])
    proc = start_run("web", "--", "sh", "-c", script, "sh", sig.name)
    try:
        wait_for(ready)
        time.sleep(0.2)
        proc.send_signal(sig)
        out, err = finish(proc)
    finally:
        finish(proc, 5)
    assert got.read_text() == f"{sig.name}\n", "the command never got the signal"
    assert proc.returncode == 9, err
    assert all_available(cli)


def test_a_command_without_a_handler_dies_of_the_forwarded_signal(cli, pool, tmp_path):
    ready = tmp_path / "ready"
    proc = start_run("web", "--", sys.executable, "-c",
                     f"import time; open({str(ready)!r}, 'w').write('x\\n'); time.sleep(30)")
    wait_for(ready)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert all_available(cli)


CHILD = """
import os, signal, sys, time
def on_term(*_):
    open({got!r}, "w").write("SIGTERM\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open({ready!r}, "w").write(f"{{os.getpid()}}\\n")
time.sleep(60)
"""


def test_run_killed_by_sigkill_leaves_an_abandoned_slot_and_no_orphan(cli, pool, tmp_path):
    got, ready = tmp_path / "got", tmp_path / "ready"
    proc = start_run("web", "--", sys.executable, "-c", CHILD.format(got=str(got),
                                                                     ready=str(ready)))
    try:
        child_pid = int(wait_for(ready))
        proc.kill()
        proc.wait()
        detected = cli("detect", "web", "--json")
        assert detected.code == 1, detected
        abandoned = detected.json()["abandoned_slots"]
        assert [a["slot_id"] for a in abandoned] == ["web-1"]
        assert str(proc.pid) in abandoned[0]["evidence"]
        # The command it started got SIGTERM (parent-death signal) and is gone.
        assert wait_for(got) == "SIGTERM\n"
        deadline = time.monotonic() + 5
        while start_time(child_pid) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert start_time(child_pid) is None, "the command outlived run"
    finally:
        finish(proc, 5)
        if ready.exists() and start_time(int(ready.read_text())) is not None:
            os.kill(int(ready.read_text()), signal.SIGKILL)
    # The holder is provably dead, so the slot is recoverable without --force.
    recovered = cli("recover", "web-1", "--json")
    assert recovered.code == 0, recovered
    assert all_available(cli)


def test_a_slot_in_use_by_run_cannot_be_released_from_under_it(cli, pool, tmp_path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = f"echo x > {ready}; while [ ! -e {go} ]; do sleep 0.02; done; echo done > out.txt"
    proc = start_run("web", "--", "sh", "-c", script)
    try:
        wait_for(ready)
        stolen = cli("release", "web-1")
        assert stolen.code == 5, stolen
        assert states(cli)["web-1"] == "allocated"
        healthy = cli("detect", "web", "--json")
        assert healthy.code == 0, healthy
        go.write_text("")
        _, err = finish(proc)
    finally:
        finish(proc, 5)
    assert proc.returncode == 0, err
    assert all_available(cli)
