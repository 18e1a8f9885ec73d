"""``run``: a command in a freshly allocated slot, holding its lock, its lease renewed while
it runs, the slot released whatever happens."""

import contextlib
import ctypes
import os
import signal
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import IO, Any

from necropool.ground import proc
from necropool.ground.errors import NecropoolError, UsageError
from necropool.ground.proc import Holder
from necropool.ground.redact import redact
from necropool.lease import handover
from necropool.lease.allocate import AllocateRequest, Grant, allocate
from necropool.lease.release import FORCED, release
from necropool.lease.renew import Release, renew
from necropool.pool.pool import Pool, slot_env


def _set_parent_death_signal() -> None:
    """In the child: get SIGTERM if ``run`` dies, so no command outlives its lease."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _become_subreaper() -> None:
    """Make ``run`` the subreaper of the command's descendants: one that double-forks and
    leaves the session (a daemon, with its directory anywhere) is still ours to end."""
    from necropool.ground import confine  # lazy: ctypes and Landlock's tables, only for run

    with contextlib.suppress(OSError, AttributeError):  # (no prctl: the group only)
        confine.set_child_subreaper()


def _end_descendants(pgid: int) -> None:
    """End whatever the command left running: its process group and, found as our
    children (we are their subreaper), those that left it; SIGTERM first, SIGKILL to what
    is alive after ``proc.GRACE`` seconds. Once the command is gone every descendant still
    alive is a child of ours or a descendant of one, so no children means none is left."""
    from necropool.ground import confine  # lazy: as in _become_subreaper

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    confine.kill_orphans(signal.SIGTERM, wait=0)
    deadline = time.monotonic() + proc.GRACE
    while confine.children() and time.monotonic() < deadline:
        confine.kill_orphans(0, wait=0)  # (signal 0: only reaps those that have ended)
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)  # (where there is no subreaper: the group at least)
    confine.sweep_orphans()
class Terminal:
    """The terminal on standard input, lent to the command when ``run`` is in its foreground:
    the command leads a process group of its own (which ``run`` ends at the end) that is the
    terminal's foreground group, so it can open ``/dev/tty``, prompt and read (ssh, sudo,
    credential helpers, ``bash -i``); the terminal and its modes come back afterwards.
    Without one, the command gets a session of its own, without a terminal."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.modes: list[Any] | None = None
        with contextlib.suppress(OSError):
            if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
                self.fd, self.modes = 0, termios.tcgetattr(0)

    def options(self) -> dict[str, Any]:
        """Popen's options: a group of its own in the foreground, else a session."""
        return {"process_group": 0} if self.fd is not None else {"start_new_session": True}

    def lend(self, pgid: int) -> None:
        """Make ``pgid`` the foreground group (called in the child and in ``run``: whichever
        comes first wins the race with the command's first read)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                _quietly(os.tcsetpgrp, self.fd, pgid)

    def take_back(self) -> None:
        """The terminal back to ``run``'s group, in the modes it was lent in."""
        if self.fd is not None:
            with contextlib.suppress(OSError, termios.error):
                _quietly(os.tcsetpgrp, self.fd, os.getpgrp())
                _quietly(termios.tcsetattr, self.fd, termios.TCSADRAIN, self.modes)


def _quietly(call: Callable[..., None], *args: Any) -> None:
    """Call with SIGTTOU blocked: a background group may then set the terminal."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        call(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _in_child(terminal: Terminal) -> None:
    _set_parent_death_signal()
    terminal.lend(os.getpid())


@dataclass
class RunResult:
    """How ``run`` ended: the command's status and what became of the slot."""

    code: int
    slot_id: str
    release: Release | None = None
    release_error: str | None = None
    spawn_error: str | None = None


def _wait_renewing(pool: Pool, grant: Grant, child: subprocess.Popen[bytes]) -> int:
    """Wait for the command, renewing its lease every third of its TTL meanwhile, so a
    command that runs longer than ``--ttl`` is never reclaimed while it lives."""
    ttl = grant.lease.ttl_seconds
    while True:
        try:
            return child.wait(timeout=ttl / 3 if ttl else None)
        except subprocess.TimeoutExpired:
            # on failure the slot lock we hold keeps the slot ours; the next attempt may succeed
            with contextlib.suppress(NecropoolError, OSError):
                renew(pool, grant.number, grant.lease.lease_id)


def run(pool: Pool, argv: list[str], request: AllocateRequest,
        stdout: IO[Any] | None = None) -> RunResult:
    """Allocate, run ``argv`` in the slot holding its lock, release whatever happens.
    The status is the command's (128+N when signal N ended it; 127/126 when it could not
    be started, as shells report). SIGINT, SIGTERM and SIGHUP are forwarded to it; one that
    arrives before it starts means it is not started. ``stdout`` redirects its output.
    The command runs in a session of its own, or with the terminal (``Terminal``) in a
    process group of its own, with ``run`` as its subreaper: whatever of it is still
    running when it ends (or when ``run`` is interrupted), double-forked or in a session of
    its own, is ended too, before the slot is released."""
    if not argv:
        raise UsageError("run needs a command after --")
    user = handover.check(pool, request.user) if request.user is not None else None
    grant = allocate(pool, replace(request, holder=Holder.me()), keep_lock=True)
    path = pool.slot_dir(grant.number)
    result = RunResult(code=0, slot_id=pool.slot_id(grant.number))
    env = {**os.environ, **slot_env(pool, grant.number, grant.lease.lease_id)}
    identity: dict[str, Any] = {}
    if user is not None:  # the command runs as the user, in the slot handed to it
        env.update(HOME=user.home(), USER=user.name, LOGNAME=user.name)
        identity = dict(user=user.uid, group=user.gid, extra_groups=user.groups())
    if "NECROPOOL_LEDGER" in env:  # the ledger is named to the command, its password is not
        env["NECROPOOL_LEDGER"] = redact(env["NECROPOOL_LEDGER"])
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []
    terminal = Terminal()

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if user is not None:
            handover.hand_out(pool, grant.number, user)
        if pending:
            result.code = 128 + pending[0]
        else:
            try:
                _become_subreaper()
                child = subprocess.Popen(argv, cwd=path, env=env, stdout=stdout,
                                         preexec_fn=lambda: _in_child(terminal),
                                         **terminal.options(), **identity)
            except OSError as exc:
                result.code = 127 if isinstance(exc, FileNotFoundError) else 126
                result.spawn_error = f"cannot run {argv[0]!r}: {exc.strerror}"
            else:
                terminal.lend(child.pid)
                for signum in pending:
                    child.send_signal(signum)
                code = _wait_renewing(pool, grant, child)
                result.code = 128 - code if code < 0 else code
    finally:
        try:
            if child is not None:  # what it left running in the background ends with it
                _end_descendants(child.pid)
        finally:
            terminal.take_back()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        try:
            if user is not None and handover.handed(pool, grant.number):
                handover.take_back(pool, grant.number)
            result.release = release(pool, grant.number, lease_id=grant.lease.lease_id,
                                     held=grant.lock, ending=FORCED)
        except NecropoolError as exc:
            result.release_error = exc.message
    return result
