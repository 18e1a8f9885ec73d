"""Process identity: who holds a slot, and whether that process is provably dead."""

import os
from dataclasses import dataclass
from functools import cache


@cache
def hostname() -> str:
    return os.uname().nodename  # what gethostname() returns, without importing socket


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
        return cls.of(os.getpid())

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

    def to_dict(self) -> dict:
        data = {"pid": self.pid, "host": self.host, "start": self.start, "boot": self.boot}
        return {k: v for k, v in data.items() if v not in (None, "")}

    @classmethod
    def from_dict(cls, data: dict) -> "Holder":
        return cls(
            pid=int(data["pid"]),
            host=str(data["host"]),
            start=int(data["start"]) if "start" in data else None,
            boot=str(data.get("boot", "")),
        )
