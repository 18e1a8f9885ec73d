"""A throw-away PostgreSQL server for tests and benchmarks (no dependency beyond the
PostgreSQL binaries; bench/ scripts import it with ``tests/`` on ``sys.path``).

    with Cluster() as cluster:
        dsn = cluster.create_database("ledger")

The server lives in a private temp directory, listens on 127.0.0.1 only (trust
authentication), trades durability for speed (fsync, synchronous_commit and
full_page_writes off) and is stopped, its directory removed, by ``stop()``, on leaving
the ``with`` block, or at interpreter exit, whichever comes first; a server whose owner was
killed before it could stop it is stopped by the next ``start()`` of any owner. As root it
runs as ``user`` (PostgreSQL refuses root) through ``runuser``."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from necropool.ground.proc import start_time

PREFIX = "necropool-pg-"
START_ATTEMPTS = 5
PORT_IN_USE = ("could not create any TCP/IP sockets", "Address already in use")
DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class ClusterError(RuntimeError):
    """No server could be set up or started; the message says why."""


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, else initdb's directory on
    PATH."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").is_file()]
    versions = [d for d in found if d.parent.name.replace(".", "").isdigit()]
    if versions:
        return max(versions, key=lambda d: [int(p) for p in d.parent.name.split(".")])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ClusterError("PostgreSQL binaries not found: no /usr/lib/postgresql/*/bin/initdb and "
                       "no initdb on PATH (Debian/Ubuntu: apt-get install postgresql)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at this moment (another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One PostgreSQL server in a temp directory; ``start()`` it, or use it as a context
    manager. ``port`` is tried first; when it (or any chosen port) is taken, another free port
    is tried, so read ``dsn()`` after ``start()`` and ``restart()``. ``settings`` adds or
    overrides postgresql.conf lines, values as written there (strings quoted: ``"'64MB'"``);
    the defaults include wal_level minimal with max_wal_senders 0 (no replication)."""

    def __init__(self, *, max_connections: int = 100, shared_buffers: str = "32MB",
                 settings: dict[str, str | int] | None = None, port: int | None = None,
                 bindir: str | Path | None = None, user: str = "postgres") -> None:
        self.bindir = Path(bindir) if bindir else find_bindir()
        missing = [b for b in ("initdb", "pg_ctl", "postgres", "psql")
                   if not (self.bindir / b).is_file()]
        if missing:
            raise ClusterError(f"PostgreSQL binaries not found in {self.bindir}: "
                               f"{', '.join(missing)}")
        self.settings: dict[str, str | int] = {
            "listen_addresses": "'127.0.0.1'", "max_connections": max_connections,
            "shared_buffers": f"'{shared_buffers}'", "fsync": "off",
            "synchronous_commit": "off", "full_page_writes": "off",
            "wal_level": "minimal", "max_wal_senders": 0, **(settings or {})}
        self.port = port
        self.user = user
        self.base: Path | None = None
        self.running = False
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._runas: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise ClusterError(f"running as root, which PostgreSQL refuses, and there is no "
                                   f"user {user!r} to run it as") from None
            runuser = shutil.which("runuser")
            if not runuser:
                raise ClusterError("running as root, which PostgreSQL refuses, and runuser "
                                   "is not on PATH")
            self._runas = [runuser, "-u", user, "--"]

    @property
    def datadir(self) -> Path:
        assert self.base, "cluster not started"
        return self.base / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI for ``dbname`` as the superuser ``postgres`` over TCP."""
        assert self.running, "cluster not running"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> Cluster:
        """Create the temp directory, run initdb and start the server (waiting until it
        accepts connections). On failure everything is removed and ClusterError raised."""
        assert self.base is None, "cluster already started"
        self._reap_orphans()
        self.base = Path(tempfile.mkdtemp(prefix=PREFIX))
        atexit.register(self.stop)
        try:
            (self.base / "owner").write_text(f"{os.getpid()} {start_time(os.getpid())}")
            if self._runas:
                os.chown(self.base, pwd.getpwnam(self.user).pw_uid, -1)
            self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-E", "UTF8",
                      "--locale=C", "--auth=trust", "--no-sync", "--no-instructions")
            (self.datadir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
            with (self.datadir / "postgresql.conf").open("a") as conf:
                conf.write("\ninclude 'necropool.conf'\n")
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl -m mode``: smart, fast or immediate) and start it again,
        on the same port unless it was taken meanwhile. Open connections are cut."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
        self.running = False
        self._start_server()

    def stop(self) -> None:
        """Stop the server (fast, else immediate) and remove the temp directory. Idempotent;
        also registered with atexit by ``start()``."""
        atexit.unregister(self.stop)
        if self.base is None:
            return
        self._stop_server(self.datadir, "fast", "immediate")
        self.running = False
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def psql(self, *commands: str, dbname: str = "postgres") -> str:
        """Run SQL commands with one psql, each on its own (not in a transaction block, so
        CREATE DATABASE works); returns their unaligned output."""
        args = [arg for sql in commands for arg in ("-c", sql)]
        return self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-d", self.dsn(dbname), *args, runas=False)

    def create_database(self, name: str, template: str = "template0") -> str:
        """A fresh database ``name``, a copy of ``template`` (empty by default; dropped first
        if it exists); returns its DSN."""
        self.psql(_drop(name), f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, ending its sessions."""
        self.psql(_drop(name))

    def __enter__(self) -> Cluster:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _reap_orphans(self) -> None:
        """Stop the servers, and remove the directories, of owners that are gone (killed
        before they could stop them). A directory without an owner file is being set up."""
        for base in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
            try:
                pid, start = (base / "owner").read_text().split()
            except (OSError, ValueError):
                continue
            if str(start_time(int(pid))) == start:
                continue
            self._stop_server(base / "data", "immediate")
            shutil.rmtree(base, ignore_errors=True)

    def _stop_server(self, datadir: Path, *modes: str) -> None:
        """``pg_ctl stop`` in the first of ``modes`` that works; none running is no error."""
        if not (datadir / "postmaster.pid").exists():
            return
        for mode in modes:
            with contextlib.suppress(ClusterError):
                self._run("pg_ctl", "-D", str(datadir), "-m", mode, "-w", "-t", "30", "stop")
                return

    def _start_server(self) -> None:
        assert self.base
        log = self.base / "server.log"
        for attempt in range(START_ATTEMPTS):
            if self.port is None or attempt:
                self.port = free_port()
            conf = {**self.settings, "port": self.port,
                    "unix_socket_directories": f"'{self.base}'"}
            (self.datadir / "necropool.conf").write_text(
                "".join(f"{key} = {value}\n" for key, value in conf.items()))
            logged = log.stat().st_size if log.exists() else 0
            try:
                self._run("pg_ctl", "-D", str(self.datadir), "-l", str(log), "-w", "-t", "60",
                          "start")
            except ClusterError as exc:
                tail = log.read_bytes()[logged:].decode(errors="replace") if log.exists() else ""
                if any(sign in tail for sign in PORT_IN_USE):
                    continue
                raise ClusterError(f"{exc}\n{tail.strip()}") from None
            self.running = True
            return
        raise ClusterError(f"no free port found in {START_ATTEMPTS} attempts")

    def _run(self, program: str, *args: str, runas: bool = True) -> str:
        cmd = [*(self._runas if runas else []), str(self.bindir / program), *args]
        proc = subprocess.run(cmd, env=self._env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode:
            raise ClusterError(f"{program} {' '.join(args)} failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")
        return proc.stdout


def _drop(name: str) -> str:
    if not DB_NAME.fullmatch(name):
        raise ValueError(f"database name must match {DB_NAME.pattern}: {name!r}")
    return f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
