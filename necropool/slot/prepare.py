"""A pool's prepare command (``npm ci``, ``uv sync``, ``make deps``) run in a slot just
cleaned, so that a holder receives it with its dependencies installed.

It runs through ``/bin/sh -c`` in the slot, in a child the kernel confines (``confined``)
to writing beneath the slot and the pool's cache directory, and to running programs from
the system's directories, the ``PATH``'s, the slot's (``node_modules/.bin``, ``.venv/bin``,
what the project builds) and the cache's: a prepare runs the project's code anyway (install
scripts through a system interpreter), so forbidding ``execve`` there would protect nothing
while breaking the tools. Its environment is fixed, whoever triggered the cleanup (a
holder's release, ``allocate``, root's cron): ``PATH`` and the locale of the caller, and
``HOME``, ``XDG_CACHE_HOME`` and ``TMPDIR`` in the cache directory, shared by the pool's
slots (warm package caches, nothing written in the owner's home).
"""

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from necropool.slot import confined

LOG_HEAD, LOG_TAIL = 64 * 1024, 192 * 1024  # output kept: its start and its end
_PASSED = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass
class Outcome:
    """How the command ended: ``error`` is None when it succeeded; ``output`` its stdout
    and stderr, interleaved, at most ``LOG_HEAD + LOG_TAIL`` bytes (the middle dropped)."""

    seconds: float
    output: bytes
    error: str | None = None


def run(tree: Path, command: str, timeout: float, cache: Path,
        env: dict[str, str]) -> Outcome:
    """Run ``command`` in ``tree`` (confined, see the module), killed past ``timeout``
    seconds; ``env`` is added to the fixed environment (the slot's id, say)."""
    for directory in (cache, cache / "home", cache / "tmp"):
        directory.mkdir(mode=0o700, exist_ok=True)  # the pool's alone, whatever the umask
    fixed = {k: os.environ[k] for k in _PASSED if k in os.environ}
    fixed.update(HOME=str(cache / "home"), XDG_CACHE_HOME=str(cache / "home" / ".cache"),
                 TMPDIR=str(cache / "tmp"), **env)
    fixed.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    on_path = [Path(d) for d in fixed["PATH"].split(":") if os.path.isabs(d) and os.path.isdir(d)]
    started = time.monotonic()
    try:
        code, output = confined.run(_shell, tree, command, fixed, timeout, write=(tree, cache),
                                    execute=(tree, cache, *on_path), timeout=timeout + 30)
    except TimeoutError:
        code, output = None, b""
    seconds = round(time.monotonic() - started, 3)
    if code is None:
        return Outcome(seconds, output, f"timed out after {timeout:g}s")
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return Outcome(seconds, output, how)
    return Outcome(seconds, output)


def _shell(tree: Path, command: str, env: dict[str, str],
           timeout: float) -> tuple[int | None, bytes]:
    """In the confined child: the command in a session of its own, its output read as it
    comes (bounded); past ``timeout`` its whole group is killed (returns None)."""
    child = subprocess.Popen(["/bin/sh", "-c", command], cwd=tree, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    assert child.stdout is not None
    head, tail, dropped = bytearray(), bytearray(), 0
    deadline = time.monotonic() + timeout
    fd = child.stdout.fileno()
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], remaining)[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        room = LOG_HEAD - len(head)
        head += chunk[:room]
        tail += chunk[room:]
        if len(tail) > LOG_TAIL:
            dropped += len(tail) - LOG_TAIL
            del tail[:len(tail) - LOG_TAIL]
    try:  # (its output closed, it may still run: the deadline holds all the same)
        return child.wait(max(0.0, deadline - time.monotonic())), _joined(head, tail, dropped)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return None, _joined(head, tail, dropped)


def _joined(head: bytearray, tail: bytearray, dropped: int) -> bytes:
    gap = f"\n[... {dropped} bytes of output dropped ...]\n".encode() if dropped else b""
    return bytes(head) + gap + bytes(tail)
