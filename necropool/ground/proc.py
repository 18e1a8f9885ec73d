"""Process identity: who holds a slot, and whether that process is provably dead."""

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
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
    pidns: str = ""  # its pid namespace (``pid:[4026531836]``): its pid means nothing elsewhere

    @classmethod
    def of(cls, pid: int) -> "Holder | None":
        """Identify a live local process, or None when no such process exists."""
        start = start_time(pid)
        if start is None:
            return None
        return cls(pid=pid, host=hostname(), start=start, boot=boot_id(), pidns=pid_namespace(pid))

    @classmethod
    def me(cls) -> "Holder":
        """This process: alive by definition, so identified even where ``/proc`` is not."""
        return _me(os.getpid())

    def is_local(self) -> bool:
        return self.host == hostname()

    def is_dead(self, here: bool = False) -> bool:
        """True only when provably dead: local (or known to be ``here`` whatever host it
        recorded), and gone or replaced (pid reuse, reboot)."""
        if not here and not self.is_local():
            return False
        if self.boot and boot_id() and self.boot != boot_id():
            return True
        if self.pidns and self.pidns != pid_namespace("self"):  # (a container's process:
            return False  # its pid names another process here, or none)
        current = start_time(self.pid)
        return current is None or (self.start is not None and current != self.start)

    def to_dict(self) -> dict[str, int | str]:
        data: dict[str, int | str | None] = {"pid": self.pid, "host": self.host,
                                             "start": self.start, "boot": self.boot,
                                             "pidns": self.pidns}
        return {k: v for k, v in data.items() if v is not None and v != ""}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Holder":
        return cls(
            pid=int(data["pid"]),
            host=str(data["host"]),
            start=int(data["start"]) if "start" in data else None,
            boot=str(data.get("boot", "")),
            pidns=str(data.get("pidns", "")),
        )


@cache
def _me(pid: int) -> Holder:
    """``Holder.me``, read once per process (a forked child has a pid of its own)."""
    return Holder(pid=pid, host=hostname(), start=start_time(pid), boot=boot_id(),
                  pidns=pid_namespace("self"))


def pid_namespace(pid: int | str) -> str:
    """The pid namespace of a process (``self``: this one), or "" where it cannot be read
    (gone, or another user's)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


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


def _uses(pid: str, prefix: str, raw: bytes, readers: set[int], files: bool = True) -> bool:
    """Whether the process has its working directory, root, an open file or a mapping
    inside ``prefix`` (``raw``: the same, as bytes). Unreadable entries (gone, or another
    user's) count as not inside. A necropool reader (``readers``: it holds the pool's
    readers lock, see ``reading``) counts by its directories only: the files it has open
    or mapped in a slot are the integrity checks' reads (detect, auto-recover), never a
    holder's work, and a release must neither wait for them nor end them."""
    base = f"/proc/{pid}"
    for name in ("cwd", "root"):
        try:
            if _inside(os.readlink(f"{base}/{name}"), prefix):
                return True
        except OSError:
            pass
    return files and int(pid) not in readers and _has_open(base, prefix, raw)


def _has_open(base: str, prefix: str, raw: bytes) -> bool:
    """An open file or a mapped file inside ``prefix``. The mappings (hundreds of lines
    for a Python process) are parsed only when the path appears in them at all."""
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        fds = []
    for fd in fds:
        try:
            target = os.readlink(f"{base}/fd/{fd}")
        except OSError:
            continue
        if _inside(target, prefix) and _PACKS not in target:
            return True
    try:
        maps = _read_all(f"{base}/maps")
    except OSError:
        return False
    if raw not in maps:
        return False
    for line in maps.decode(errors="surrogateescape").splitlines():
        path = line.split(None, 5)[5:]
        if path and _inside(path[0].removesuffix(" (deleted)"), prefix) \
                and _PACKS not in path[0]:
            return True
    return False


# A pack file open or mapped (libgit2 keeps them so while a repository object lives, e.g. in a
# detect or an auto-recover that verified the slot) is no work in the slot: packs are read
# only, hard links of the mirror's.
_PACKS = "/.git/objects/pack/"


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


def processes_in(tree: str | os.PathLike[str], readers: Path | None = None,
                 files: bool = True) -> list[int]:
    """Local processes with their working directory, root, an open file or a mapped file
    inside ``tree`` (a /proc scan), other than this process and its ancestors (told by
    pid and start time: nothing a holder can name itself). Holders of a lock on
    ``readers`` (the pool's readers lock) count by their directories only; without
    ``files``, every process does (two readlinks each: 3-5 ms for 160 processes on a
    loaded host, against 90-100 ms with the files)."""
    prefix = os.path.realpath(tree)
    raw = os.fsencode(prefix)
    mine = _ancestors()
    exempt = lock_holders(readers) if readers is not None and files else set()
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    found = [p for p in entries if int(p) not in mine and _uses(p, prefix, raw, exempt, files)]
    if readers is not None and files:
        found = _without_late_readers(found, readers, prefix, raw)
    return sorted(map(int, found))


READER_ROUNDS = 3  # of looking again at what a scan found, for readers that had just begun


def _without_late_readers(found: list[str], readers: Path, prefix: str,
                          raw: bytes) -> list[str]:
    """``found`` less the readers that took the lock after it was read and opened a slot's
    file before the scan reached them: each is looked at again, the lock read afresh. A
    reader holds a slot's files only while it holds the lock, so it is now exempt, or its
    files are closed; a holder's process is found again."""
    for _ in range(READER_ROUNDS):
        if not found:
            break
        exempt = lock_holders(readers)
        found = [p for p in found if _uses(p, prefix, raw, exempt)]
    return found


@contextlib.contextmanager
def reading(readers: Path) -> Iterator[None]:
    """Mark this process, while it reads a pool's slots (integrity checks), as necropool's
    own: a shared lock on the pool's ``readers`` file, which the kernel lists with this
    pid (a holder can name its process anything; it cannot put this pid on that lock
    without the pool's files). Unmarked where the file cannot be opened."""
    import fcntl  # lazy: only the integrity checks take it

    try:
        fd = os.open(readers, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def lock_holders(path: Path) -> set[int]:
    """The pids holding a lock on ``path``, as ``/proc/locks`` lists them (waiters, shown
    with ``->``, are not holders). Matched by inode number: a file system's device number
    there is not always the one ``stat`` gives (btrfs)."""
    try:
        inode = os.stat(path, follow_symlinks=False).st_ino
        data = _read_all("/proc/locks")
    except OSError:
        return set()
    suffix = f":{inode}".encode()
    holders = set()
    for line in data.splitlines():
        fields = line.split()
        if b"->" in fields:
            continue
        for i, field in enumerate(fields[1:], 1):
            if field.endswith(suffix) and field.count(b":") == 2 and fields[i - 1].isdigit():
                holders.add(int(fields[i - 1]))
    return holders


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

