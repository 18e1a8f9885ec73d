"""Process identity: who holds a slot, and whether that process is provably dead."""

import os
import signal
import time
from dataclasses import dataclass
from functools import cache
from typing import Any


@cache
def hostname() -> str:
    """This host's name: ``NECROPOOL_HOST`` (a fleet's name for it, or a simulated host), else
    what gethostname() returns (without importing socket)."""
    return os.environ.get("NECROPOOL_HOST") or os.uname().nodename


@cache
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Holder:
    """A process on a host, identified so that a reused pid cannot pass for it."""

    pid: int
    host: str
    start: int | None = None
    boot: str = ""

    @classmethod
    def of(cls, pid: int) -> "Holder | None":
        """Identify a live local process, or None when no such process exists."""
        start = start_time(pid)
        if start is None:
            return None
        return cls(pid=pid, host=hostname(), start=start, boot=boot_id())

    @classmethod
    def me(cls) -> "Holder":
        """This process: alive by definition, so identified even where ``/proc`` is not."""
        return _me(os.getpid())

    def is_local(self) -> bool:
        return self.host == hostname()

    def is_dead(self) -> bool:
        """True only when provably dead: local, and gone or replaced (pid reuse, reboot)."""
        if not self.is_local():
            return False
        if self.boot and boot_id() and self.boot != boot_id():
            return True
        current = start_time(self.pid)
        return current is None or (self.start is not None and current != self.start)

    def to_dict(self) -> dict[str, int | str]:
        data: dict[str, int | str | None] = {"pid": self.pid, "host": self.host,
                                             "start": self.start, "boot": self.boot}
        return {k: v for k, v in data.items() if v is not None and v != ""}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Holder":
        return cls(
            pid=int(data["pid"]),
            host=str(data["host"]),
            start=int(data["start"]) if "start" in data else None,
            boot=str(data.get("boot", "")),
        )


@cache
def _me(pid: int) -> Holder:
    """``Holder.me``, read once per process (a forked child has a pid of its own)."""
    return Holder(pid=pid, host=hostname(), start=start_time(pid), boot=boot_id())


# --- processes inside a directory -------------------------------------------------------------

GRACE = 3.0  # seconds between SIGTERM and SIGKILL when ending processes


def _ancestors() -> set[int]:
    """This process and its ancestors (the shell an operator runs necropool from, say)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                data = fh.read()
            pid = int(data[data.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def _inside(link: str, prefix: str) -> bool:
    return link == prefix or link.startswith(prefix + "/")


def _necropool(base: str) -> bool:
    """Whether the process is a necropool command (``necropool detect``, ``python -m
    necropool auto-recover``, ...)."""
    try:
        with open(f"{base}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")[:3]
    except OSError:
        return False
    return any(arg == b"necropool" or arg.endswith(b"/necropool") for arg in argv)


def _uses(pid: str, prefix: str, raw: bytes) -> bool:
    """Whether the process has its working directory, root, an open file or a mapping
    inside ``prefix`` (``raw``: the same, as bytes). Unreadable entries (gone, or another
    user's) count as not inside. A necropool command counts by its directories only: the
    files it has open or mapped in a slot are the integrity checks' reads (detect,
    auto-recover), never a holder's work, and a release must neither wait for them nor
    end them."""
    base = f"/proc/{pid}"
    for name in ("cwd", "root"):
        try:
            if _inside(os.readlink(f"{base}/{name}"), prefix):
                return True
        except OSError:
            pass
    return _has_open(base, prefix, raw) and not _necropool(base)


def _has_open(base: str, prefix: str, raw: bytes) -> bool:
    """An open file or a mapped file inside ``prefix``. The mappings (hundreds of lines
    for a Python process) are parsed only when the path appears in them at all."""
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        fds = []
    for fd in fds:
        try:
            if _inside(os.readlink(f"{base}/fd/{fd}"), prefix):
                return True
        except OSError:
            continue
    try:
        maps = _read_all(f"{base}/maps")
    except OSError:
        return False
    if raw not in maps:
        return False
    for line in maps.decode(errors="surrogateescape").splitlines():
        path = line.split(None, 5)[5:]
        if path and _inside(path[0].removesuffix(" (deleted)"), prefix):
            return True
    return False


def _read_all(path: str) -> bytes:
    """A /proc file whole, in as few reads as the kernel allows (its size reads as 0, so
    ``open().read()`` grows its buffer read by read: 10 % slower on a scan)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 18):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def processes_in(tree: str | os.PathLike[str]) -> list[int]:
    """Local processes with their working directory, root, an open file or a mapped file
    inside ``tree`` (a /proc scan), other than this process and its ancestors."""
    prefix = os.path.realpath(tree)
    raw = os.fsencode(prefix)
    mine = _ancestors()
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    return sorted(int(p) for p in entries if int(p) not in mine and _uses(p, prefix, raw))


def describe(pids: list[int]) -> str:
    """``pid 12 (sleep), pid 13 (sh)``: for messages naming processes."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            name = "?"
        out.append(f"pid {pid} ({name})")
    return ", ".join(out)


def end(pids: list[int], grace: float = GRACE) -> list[int]:
    """SIGTERM the processes, SIGKILL those still running after ``grace`` seconds; return
    the ones that could not be ended (no permission, or stuck in the kernel)."""

    started = {pid: start_time(pid) for pid in pids}
    alive = {pid for pid, start in started.items() if start is not None}

    def still(pid: int) -> bool:
        return start_time(pid) == started[pid]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        for pid in sorted(alive):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                alive.discard(pid)
            except PermissionError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = {pid for pid in alive if still(pid)}
        if not alive:
            break
    return sorted(alive)


def end_group(pgid: int, grace: float = GRACE) -> None:
    """End a whole process group (a command ``run`` started in its own session)."""

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
