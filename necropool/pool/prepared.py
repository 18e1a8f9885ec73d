"""What a slot was last prepared for (the pool's ``prepare`` command): kept beside the
slot's cleanup record, outside the slot (``records/<n>.prepared.json``), with the command's
output (``records/<n>.prepare.log``), both owner-only.

A slot counts as prepared only for the commit, the command and the very directory (its
inode: a re-cloned or re-added slot is a new one) the record names, and only if the
command succeeded.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from necropool.ground.clock import now, rfc3339
from necropool.ground.layout import PoolPaths, write_atomic

PREPARE_FAILED = "prepare failed: "  # how an isolation reason tells a failed prepare


@dataclass
class Prepared:
    commit: str
    command: str
    at: str  # RFC 3339
    duration_seconds: float
    ok: bool
    directory: str  # the slot directory's "device:inode"
    error: str | None = None

    def fits(self, commit: str | None, command: str, directory: str | None) -> bool:
        """Prepared, successfully, for this commit, command and slot directory."""
        return self.ok and (self.commit, self.command, self.directory) == (
            commit, command, directory)

    def view(self, paths: PoolPaths, number: int, current: bool) -> dict[str, object]:
        """As ``status`` and its JSON show it (``current``: prepared for what the slot is)."""
        return {"commit": self.commit, "at": self.at, "duration_seconds": self.duration_seconds,
                "ok": self.ok, "error": self.error, "current": current,
                "log": str(log_path(paths, number))}


def record_path(paths: PoolPaths, number: int) -> Path:
    return paths.records / f"{number}.prepared.json"


def log_path(paths: PoolPaths, number: int) -> Path:
    return paths.records / f"{number}.prepare.log"


def directory_of(tree: Path) -> str | None:
    try:
        st = os.stat(tree, follow_symlinks=False)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def load(paths: PoolPaths, number: int) -> Prepared | None:
    """The slot's record, or None (none yet, or unreadable: the slot is then prepared again)."""
    try:
        fd = os.open(record_path(paths, number), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as fh:
            return Prepared(**json.load(fh))
    except (OSError, ValueError, TypeError):
        return None


def save(paths: PoolPaths, number: int, *, commit: str, command: str, seconds: float,
         error: str | None, directory: str | None, output: bytes) -> Prepared:
    """Keep the command's output, then the record (owner-only, never through a symlink)."""
    paths.records.mkdir(mode=0o700, exist_ok=True)
    write_atomic(log_path(paths, number), output, sync_dir=False, sync=False)
    record = Prepared(commit=commit, command=command, at=rfc3339(now()) or "",
                      duration_seconds=seconds, ok=error is None, directory=directory or "",
                      error=error)
    write_atomic(record_path(paths, number), json.dumps(asdict(record)).encode(), sync=False)
    return record

