"""Test helpers: git in temp repositories, a CLI runner that starts ``python -m necropool``
as a real process, a template pool, and digests that prove a command changed nothing.
Fixtures are in conftest.py; tests/slots.py and tests/faults.py hold more helpers, and
tests/pgcluster.py a throw-away PostgreSQL server."""

import contextlib
import hashlib
import importlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from necropool.ground.config import PoolSpec, load_settings
from necropool.manager.facade import PoolManager

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd, *args, check=True) -> str:
    env = dict(os.environ, **GIT_ENV)
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def commit_file(repo: Path, name: str, content: str, message: str | None = None) -> str:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message or f"change {name}")
    return git(repo, "rev-parse", "HEAD")


def template_pool(base: Path) -> dict:
    """An upstream (README, .gitignore) and under ``base/root`` a pool ``web`` of 3 slots
    with ``web-1`` allocated to no live process; returns that slot's lease."""
    upstream = base / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    (upstream / "README").write_text("upstream\n")
    (upstream / ".gitignore").write_text("build/\n")
    git(upstream, "add", ".")
    git(upstream, "commit", "-q", "-m", "initial")
    manager = PoolManager(load_settings(root=str(base / "root")))
    manager.create_pool(PoolSpec(name="web", url=str(upstream), num_slots=3))
    lease = manager.allocate_slot("web", owner="tester", fetch=False)
    (base / "lease").write_text(lease["lease_id"])
    return lease


def digest(top: Path) -> dict[str, tuple]:
    """Every path under ``top`` (symlinks not followed) with its type, mode and content, to
    prove that a command changed nothing there."""
    out: dict[str, tuple] = {}
    if not os.path.lexists(top):
        return out
    st = top.lstat()
    out["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    if not stat.S_ISDIR(st.st_mode):
        out["."] += (hashlib.sha256(top.read_bytes()).hexdigest(),)
        return out
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISFIFO(st.st_mode):  # wake.fifo: reading it would block
                out[rel] = ("fifo", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode),
                            hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def changes(before: dict, after: dict) -> list[str]:
    """The paths whose entry differs between two digests."""
    return sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self) -> dict:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<exit {self.code} stdout={self.stdout[:300]!r} stderr={self.stderr[:300]!r}>"


# Commands run inside the test's own process by default: a new interpreter costs ~0.1 s of
# start-up, and the suite runs thousands of commands. Those whose process is part of what is
# tested (``run`` and its signals, waiting, following, completion requests), a call from a
# thread other than the main one, and every call when NECROPOOL_TEST_SUBPROCESS=1 is set,
# start ``python -m necropool`` as a real process.
_OWN_PROCESS = frozenset({"run", "completion"})
_OWN_PROCESS_FLAGS = frozenset({"--wait", "--follow", "-f", "--version"})


def _in_process(args: list[str], env: dict | None) -> bool:
    if os.environ.get("NECROPOOL_TEST_SUBPROCESS") == "1":
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    if env and ("_NECROPOOL_COMPLETE" in env or "PATH" in env):  # (programs are found once
        return False                                                 # per process)
    head = args[: args.index("--")] if "--" in args else args
    words = {a.partition("=")[0] for a in head}
    return not (words & _OWN_PROCESS or words & _OWN_PROCESS_FLAGS)


def _run_in_process(args: list[str], env: dict | None, cwd) -> CliResult:
    """``main(args)`` in this process with the environment, directory, standard streams and
    signal handlers of a fresh process, all put back afterwards."""
    from necropool.cli import main
    from necropool.ground import clock, proc
    from necropool.store.pg.connect import disconnect

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_sigint = signal.getsignal(signal.SIGINT)
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    # what a process learns of itself once: this host's name (NECROPOOL_HOST), its holder,
    # and how far its clock is off its ledger's (measured again on the ledger's first word)
    proc.hostname.cache_clear()
    proc._me.cache_clear()
    clock.follow_server(timedelta(0))
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                _stdin(io.StringIO()):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code
    finally:
        disconnect()  # no ledger connection outlives the command, as with a process
        clock.follow_server(timedelta(0))
        proc.hostname.cache_clear()  # nor what it learnt of itself under its environment
        proc._me.cache_clear()  # (a NECROPOOL_HOST of its own: the test's code goes on)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        signal.signal(signal.SIGINT, saved_sigint)
    code = 0 if code is None else code if isinstance(code, int) else 1
    return CliResult(subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue()))


@contextlib.contextmanager
def _stdin(stream: io.StringIO):
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved


def run_cli(*args, env: dict | None = None, cwd=None, timeout: float = 120,
            in_process: bool | None = None) -> CliResult:
    """Run the CLI with ``ARGS``: in this process where nothing depends on it having a
    process of its own (see ``_in_process``), else as ``python -m necropool`` in a new one;
    ``in_process`` forces either."""
    argv = [str(a) for a in args]
    if in_process if in_process is not None else _in_process(argv, env):
        return _run_in_process(argv, env, cwd)
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "necropool", *argv], env=full_env,
                          capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return CliResult(proc)


def wait_until_queued(pool_dir: Path, waiter: subprocess.Popen, timeout: float = 30) -> None:
    """Return once the ``allocate --wait`` running as ``waiter`` waits for a slot: it holds
    the pool's allocation queue lock (wait.lock), which it takes only after finding none
    free. Fails when the waiter exits first or does not get there within ``timeout``."""
    from necropool.ground.locks import lock_free

    deadline = time.monotonic() + timeout
    while lock_free(pool_dir / "wait.lock"):
        assert waiter.poll() is None, ("the waiter exited", waiter.communicate())
        assert time.monotonic() < deadline, "allocate --wait never began waiting"
        time.sleep(0.01)


def in_ci() -> bool:
    """True where the environment variable CI is set (and not "false" or "0")."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under CI fail instead, because CI must run it."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def import_or_skip(name: str) -> ModuleType:
    """Import ``name``, skipping the module where it is missing; under CI a missing module is
    an error."""
    return importlib.import_module(name) if in_ci() else pytest.importorskip(name)


# --- either backend: local TOML files or a PostgreSQL ledger (NECROPOOL_LEDGER) -------------


def state_files(pool_dir: Path) -> list[Path]:
    """Every file of a pool's TOML state: ``state.toml`` (the schema stub) and ``state/``
    (each slot's file, their copies, the free list)."""
    directory = pool_dir / "state"
    return sorted([*(p for p in (pool_dir / "state.toml", pool_dir / "state.toml.bak")
                     if p.exists()), *(directory.iterdir() if directory.exists() else ())])


def slot_entries(pool_dir: Path) -> dict[int, dict]:
    """Each slot's entry as its file in ``state/`` holds it, by number."""
    return {int(p.stem): tomllib.loads(p.read_text())["slot"]
            for p in (pool_dir / "state").glob("*.toml")}


def slot_files(pool_dir: Path, number: int) -> list[Path]:
    """Both copies of one slot's state file."""
    main = pool_dir / "state" / f"{number}.toml"
    return [main, main.with_name(main.name + ".bak")]


def saved_state(root: Path, pool: str = "web") -> str:
    """What the pool's state store holds, to compare before and after: its state files
    (with their inodes and mtimes), or every row the ledger has (slots, hosts, events)."""
    dsn = os.environ.get("NECROPOOL_LEDGER")
    if not dsn:  # a rewrite with the same content is a write all the same
        return "\n".join(f"{path.name} {path.stat().st_ino} {path.stat().st_mtime_ns}\n"
                         f"{path.read_text()}" for path in state_files(root / "pools" / pool))
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return "\n".join(repr(conn.execute(sql).fetchall()) for sql in (
            "SELECT * FROM slots ORDER BY pool, host, number",
            "SELECT * FROM hosts ORDER BY pool, host",
            "SELECT * FROM events ORDER BY id"))


LEDGER_TIMES = {"slots": ("allocated_at", "expires_at", "created_at", "last_allocated_at",
                          "last_released_at", "isolated_at"),
                "hosts": ("registered_at", "last_seen"), "events": ("at",)}


def clock_at(monkeypatch, offset: float) -> None:
    """Make time pass: what follows happens ``offset`` seconds after the test's start. The
    clock's test hook (``NECROPOOL_CLOCK_OFFSET``) moves this host's clock; a ledger keeps
    the server's times (a client's clock cannot age a lease), so there every recorded time
    is moved into the past by as much as the hook moved on."""
    before = float(os.environ.get("NECROPOOL_CLOCK_OFFSET", "0"))
    monkeypatch.setenv("NECROPOOL_CLOCK_OFFSET", str(offset))
    dsn = os.environ.get("NECROPOOL_LEDGER")
    if not dsn or offset == before:
        return
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for table, columns in LEDGER_TIMES.items():
            sets = ", ".join(f"{c} = {c} - make_interval(secs => %(d)s)" for c in columns)
            conn.execute(f"UPDATE {table} SET {sets}", {"d": offset - before})
