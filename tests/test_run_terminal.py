"""``run`` under a pseudo-terminal: the command gets the terminal (it opens ``/dev/tty``,
prompts and reads a line typed there, in the terminal's foreground group), necropool still
ends the command's whole group at the end, and the terminal is the shell's again after."""

import contextlib
import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

COMMAND = r"""
import os, subprocess, sys
child = subprocess.Popen(["sleep", "300"])
open(sys.argv[1], "w").write(f"{child.pid}\n")
tty = os.open("/dev/tty", os.O_RDWR)
os.write(tty, b"name? ")
line = os.read(tty, 100).decode().strip()
front = os.tcgetpgrp(tty) == os.getpgrp()
print(f"got {line} in the foreground: {front}", flush=True)
"""


def read_until(fd: int, text: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"{text!r} not seen within {timeout}s: {seen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's last process is gone
            chunk = b""
        if not chunk:
            raise AssertionError(f"{text!r} not seen before the end: {seen!r}")
        seen += chunk
    return seen


def test_run_gives_its_command_the_terminal(pool, tmp_path):
    pidfile = tmp_path / "sleep.pid"
    script = tmp_path / "ask.py"
    script.write_text(COMMAND)
    # a non-interactive shell as the session's leader: after run, it reads the terminal too
    shell = (f'{sys.executable} -m necropool run web -- {sys.executable} {script} {pidfile}; '
             'echo "run: $?"; read again; echo "shell read $again"')
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's session leader
        os.execvp("sh", ["sh", "-c", shell])
    try:
        read_until(fd, b"name? ")
        os.write(fd, b"alice\n")
        out = read_until(fd, b"run: 0")
        assert b"got alice in the foreground: True" in out, out
        os.write(fd, b"back\n")
        assert b"shell read back" in read_until(fd, b"shell read back")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    sleeper = int(Path(pidfile).read_text())
    assert not Path(f"/proc/{sleeper}").exists() or "Z" in Path(
        f"/proc/{sleeper}/stat").read_text().split(") ")[1][:1]
