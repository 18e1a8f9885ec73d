"""A throw-away PgBouncer in front of a tests/pgcluster.py server, for tests and benchmarks:

    with Bouncer(cluster) as bouncer:
        dsn = bouncer.dsn("ledger")

It pools in transaction mode (each transaction may run on another server connection, so a
client that keeps session state or prepared statements breaks), listens on 127.0.0.1 and a
free port (no Unix socket), trusts every user of ``userlist.txt``, and lives in a private
temp directory removed by ``stop()``. PgBouncer refuses to run as root: as root it runs as
the cluster's user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pgcluster import Cluster, free_port

START_ATTEMPTS = 5


class BouncerError(RuntimeError):
    """PgBouncer is missing or would not start; the message says why."""


def find_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if not found:
        raise BouncerError("no pgbouncer binary (Debian/Ubuntu: apt-get install pgbouncer)")
    return found


class Bouncer:
    """PgBouncer forwarding every database to ``cluster`` (at ``target_port``: a proxy in
    front of it, say); ``pool_size`` server connections per database and user (1: every
    client's transactions share one, so session state a client left behind is seen by the
    next)."""

    def __init__(self, cluster: Cluster, *, pool_mode: str = "transaction", pool_size: int = 1,
                 max_client_conn: int = 200, target_port: int | None = None) -> None:
        self.binary = find_pgbouncer()
        self.cluster = cluster
        self.target_port = target_port
        self.settings = {"pool_mode": pool_mode, "default_pool_size": pool_size,
                         "max_client_conn": max_client_conn}
        self.base: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, dbname: str = "postgres") -> str:
        assert self.proc is not None, "pgbouncer not started"
        return f"postgresql://{self.cluster.user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> Bouncer:
        self.base = Path(tempfile.mkdtemp(prefix="necropool-pgbouncer-"))
        try:
            for _ in range(START_ATTEMPTS):
                if self._start(free_port()):
                    return self
            raise BouncerError(f"pgbouncer found no free port in {START_ATTEMPTS} attempts")
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        assert self.base is not None
        path = self.base / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _start(self, port: int) -> bool:
        """Start on ``port``: True once it accepts connections, False when the port was
        taken meanwhile."""
        assert self.base is not None
        self.port = port
        conf = {"listen_addr": "127.0.0.1", "listen_port": port, "unix_socket_dir": "",
                "auth_type": "trust", "auth_file": self.base / "userlist.txt",
                "logfile": self.base / "pgbouncer.log", "admin_users": self.cluster.user,
                **self.settings}
        (self.base / "userlist.txt").write_text(f'"{self.cluster.user}" ""\n')
        (self.base / "pgbouncer.ini").write_text(
            f"[databases]\n* = host=127.0.0.1 port={self.target_port or self.cluster.port}\n"
            "[pgbouncer]\n"
            + "".join(f"{key} = {value}\n" for key, value in conf.items()))
        account = pwd.getpwnam(self.cluster.user) if os.geteuid() == 0 else None
        if account is not None:
            for path in (self.base, *self.base.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.proc = subprocess.Popen(
            [self.binary, str(self.base / "pgbouncer.ini")], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            user=account.pw_uid if account else None, group=account.pw_gid if account else None,
            extra_groups=[] if account else None)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self.log():
                    return False
                raise BouncerError(f"pgbouncer exited ({self.proc.returncode}):\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            time.sleep(0.05)
        raise BouncerError(f"pgbouncer did not listen on port {port} within 15 s:\n{self.log()}")

    def stop(self) -> None:
        """Stop PgBouncer (SIGTERM, then SIGKILL) and remove its directory. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> Bouncer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
