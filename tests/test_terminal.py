"""``status`` as a person sees it in a real terminal (tmux): at 80 columns one line per slot,
the state never wrapped, relative times, a short lease id and the path cut from the left;
at 200 columns every column in full. Colour and shape are chosen apart."""

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from helpers import run_cli

from necropool.ground.proc import Holder


@pytest.fixture
def mixed(manager, upstream, monkeypatch):
    """Pool 'web' of 6 slots: available, allocated with a TTL and the holder's pid,
    allocated without a TTL (a long owner name), in error, released without cleanup, and
    allocated with a TTL already run out."""
    from necropool.ground.config import PoolSpec

    manager.create_pool(PoolSpec(name="web", url=str(upstream), num_slots=6))
    held = manager.allocate_slot("web", owner="alice", ttl=7200, pid=os.getpid(), fetch=False)
    plain = manager.allocate_slot("web", owner="ci-job-1234567-build-and-test", fetch=False)
    broken = manager.allocate_slot("web", fetch=False)
    manager.release_slot(broken["slot_id"], fetch=False)
    manager.isolate_slot(broken["slot_id"], "disk full during checkout")
    dirty = manager.allocate_slot("web", owner="bob", fetch=False)
    manager.release_slot(dirty["slot_id"], cleanup=False)
    short = manager.allocate_slot("web", owner="carol", ttl=1, fetch=False)
    monkeypatch.setenv("NECROPOOL_CLOCK_OFFSET", "2")  # the short lease has run out
    return {"held": held, "plain": plain, "broken": broken, "short": short}


def _tmux_status(tmp_path, columns: int, *args: str) -> list[str]:
    """The screen after ``necropool status ARGS`` ran in a tmux pane ``columns`` wide."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    tmux = ["tmux", "-S", str(tmp_path / f"tmux-{columns}.sock"), "-f", "/dev/null"]
    command = " ".join(["env", "-u", "COLUMNS", "-u", "LINES", "-u", "NO_COLOR",
                        f"NECROPOOL_HOME={shlex.quote(os.environ['NECROPOOL_HOME'])}",
                        shlex.quote(sys.executable), "-m", "necropool", "status",
                        *map(shlex.quote, args)])
    script = f"{command}; echo NP-DONE; sleep 60"
    subprocess.run([*tmux, "new-session", "-d", "-x", str(columns), "-y", "40", script],
                   check=True, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True,
                                    text=True, check=True, timeout=30).stdout
            if "NP-DONE" in screen:
                break
            assert time.monotonic() < deadline, f"status did not finish: {screen}"
            time.sleep(0.1)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
    lines = screen.splitlines()
    return [line.rstrip() for line in lines[:lines.index("NP-DONE")]]


def test_status_at_80_columns_is_one_line_per_slot(mixed, tmp_path, root):
    screen = _tmux_status(tmp_path, 80, "web")
    print("\n".join(screen))  # the capture, for the record (pytest -s)
    assert all(len(line) <= 80 for line in screen)
    header = next(i for i, line in enumerate(screen) if line.split()[:2] == ["SLOT", "STATE"])
    assert screen[header].split() == ["SLOT", "STATE", "OWNER", "LEASE", "ALLOCATED",
                                      "EXPIRES", "PID", "PATH"]
    rows = {line.split()[0]: line for line in screen[header + 2:header + 8]}
    assert sorted(rows) == [f"web-{n}" for n in range(1, 7)]  # one line each, none wrapped
    held, short = rows[mixed["held"]["slot_id"]], rows[mixed["short"]["slot_id"]]
    assert held.split()[1] == "allocated"
    assert mixed["held"]["lease_id"][:8] in held and mixed["held"]["lease_id"] not in held
    assert "ago" in held and "in 2h" in held and str(os.getpid()) in held
    assert "ago" in short.split("carol", 1)[1]  # an expired lease: its end is in the past
    assert "ci-job-123456…" in rows[mixed["plain"]["slot_id"]]
    assert rows[mixed["broken"]["slot_id"]].split()[1] == "error"
    assert all(line.rstrip().endswith(f"web/slots/{line.split()[0].split('-')[1]}")
               for line in rows.values())  # the pool's name too, whatever the root's length
    assert any(line.split()[1] == "available" for line in rows.values())
    assert any("…" in line for line in rows.values())  # the long root: paths cut on the left
    # the reason of the slot in error, on its own line below the table
    assert any(line.startswith(f"{mixed['broken']['slot_id']}: disk full") for line in screen)


def test_status_at_200_columns_shows_everything(mixed, tmp_path, root):
    screen = _tmux_status(tmp_path, 200, "web")
    header = next(i for i, line in enumerate(screen) if line.split()[:2] == ["SLOT", "STATE"])
    assert screen[header].split() == ["SLOT", "STATE", "OWNER", "LEASE", "ALLOCATED",
                                      "EXPIRES", "PID", "HOST", "COMMIT", "USES", "PATH"]
    text = "\n".join(screen)
    assert mixed["held"]["lease_id"] in text
    assert "ci-job-1234567-build-and-test" in text
    assert str(root / "pools/web/slots/1") in text
    assert Holder.me().host in text


def test_color_and_shape_are_separate(mixed, tmp_path):
    """NO_COLOR on a terminal keeps the table; --color always on a pipe keeps tab lines."""
    from test_output import run_on_terminal

    code, text = run_on_terminal(["status", "web"], {"NO_COLOR": "1", "TERM": "xterm"})
    assert code == 0 and "\x1b" not in text and "SLOT" in text and "\t" not in text
    code, text = run_on_terminal(["--color", "never", "status", "web", "--format", "tsv"])
    assert code == 0 and "\x1b" not in text and text.splitlines()[0].startswith("slot\tstate")
    piped = run_cli("--color", "always", "status", "web")
    assert piped.code == 0 and "\x1b" not in piped.stdout
    assert len(piped.stdout.splitlines()[0].split("\t")) == 11  # ref last
    table = run_cli("status", "web", "--format", "table", "--color", "always")
    assert "SLOT" in table.stdout and "\x1b[" in table.stdout


def _stderr_on_terminal(args: list, stdout_too: bool = False) -> tuple[int, str, str]:
    """Run the CLI with stderr (and with ``stdout_too`` stdout) on a pseudo-terminal:
    (exit code, stdout, terminal bytes)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "necropool", *map(str, args)],
                            stdout=slave if stdout_too else subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL,
                            env=dict(os.environ, COLUMNS="100", TERM="xterm"))
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "the CLI hung"
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(60)
    return proc.returncode, out, seen.decode(errors="replace")


def test_create_shows_its_phase_and_slot_count(upstream, root):
    code, out, screen = _stderr_on_terminal(["create", "web", upstream, "--slots", "3"])
    assert code == 0 and out == f"{root / 'pools/web'}\n"
    assert "creating web: cloning the mirror" in screen
    assert "creating web: 3/3 slots" in screen
    assert "created pool web: 3 slots on main" in screen
    code, _, screen = _stderr_on_terminal(["create", "one", upstream, "--slots", "1"])
    assert code == 0 and "1/1 slot " in screen and "created pool one: 1 slot on main" in screen


def test_empty_listings_say_what_to_do_next(root, tmp_path):
    config = tmp_path / "empty.toml"
    config.write_text("max_allocation_hours = 12\n")
    (root / "pools").mkdir(parents=True)
    # no pool at all: list and status fail (exit 4), naming the root and what to do
    for args, hint, status in ((["list"], "necropool create POOL URL", 4),
                               (["status"], "necropool create POOL URL", 4),
                               (["log"], "no events yet", 0),
                               (["rescued", "list"], "nothing rescued", 0),
                               (["--config", config, "sync"], "declares no pools", 0)):
        code, _, screen = _stderr_on_terminal(args, stdout_too=True)
        assert code == status and hint in screen, (args, screen)
        assert "─" not in screen, (args, screen)  # no empty table
    piped = run_cli("list")
    assert piped.code == 4 and piped.stdout == "" and str(root) in piped.stderr


def test_status_at_80_columns_names_the_pool_in_the_path(manager, upstream, tmp_path, root):
    """A longer pool name and owner: the owner gives up room so that the path still shows
    ``POOL/slots/N``, never only ``…/slots/N``."""
    from necropool.ground.config import PoolSpec

    manager.create_pool(PoolSpec(name="frontend", url=str(upstream), num_slots=2))
    manager.allocate_slot("frontend", owner="ci-job-1234567-build-and-test", ttl=7200,
                          pid=os.getpid(), fetch=False)
    screen = _tmux_status(tmp_path, 80, "frontend")
    print("\n".join(screen))
    rows = [line for line in screen if line.startswith("frontend-")]
    assert len(rows) == 2 and all(len(line) <= 80 for line in screen)
    assert all(line.endswith(f"frontend/slots/{line.split()[0][-1]}") for line in rows)
