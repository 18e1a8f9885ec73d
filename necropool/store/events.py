"""The append-only history of a pool: ``events.jsonl``, one JSON object per line.

Past ``ROTATE_BYTES`` the log is rotated to ``events.jsonl.1`` (by ``auto-recover``, under
the pool lock), so one earlier generation is kept and the history never grows without end.
"""

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from necropool.ground.clock import jsonable, now, rfc3339

# every kind of event necropool writes (``log --event`` takes these)
KINDS = ("create", "import", "add", "remove", "allocate", "renew", "release", "reclaim",
         "expire", "force_release", "cleanup", "failure", "rescue", "recover", "isolate",
         "adopt", "mirror_rebuilt", "mirror_config_restored", "fetch_failed", "auto_recover",
         "force_unlock", "update", "tampered_free_slot", "ledger_reconciled",
         "takeover")

# One event as recorded: a JSON object (``time``, ``event``, then the event's own fields).
Event = dict[str, Any]


def append(path: Path, event: str, **fields: Any) -> None:
    """Append one event (a single O_APPEND write of the whole line, so concurrent writers
    never interleave). A write cut short (a full disk) leaves a torn line with no newline;
    the next event is written after it all the same, and readers take it back from the end
    of the joined line (``decode``). Best effort: the state is the record of truth, and an
    operation that already happened must not be reported as failed because its history
    line could not be written (a full disk, or a symlink planted in place of the log, which
    detect reports)."""
    record = {"time": rfc3339(now()), "event": event}
    record.update({k: v for k, v in fields.items() if v is not None})
    line = (json.dumps(record, default=jsonable, separators=(",", ":")) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


ROTATE_BYTES = 8 << 20


def older(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def rotate(path: Path) -> bool:
    """Move a log past ``ROTATE_BYTES`` to ``<name>.1`` (replacing the generation before).
    Writers that still hold the old file open finish their line there."""
    try:
        if path.is_symlink() or path.stat().st_size <= ROTATE_BYTES:
            return False
        os.replace(path, older(path))
    except OSError:
        return False
    return True


def read(path: Path, since: datetime | None = None) -> list[Event]:
    """Events in order, the rotated generation first; a damaged line is skipped."""
    return _parse(_lines(older(path)) + _lines(path), since)


def _open(path: Path) -> IO[bytes]:
    """The log for reading, never through a symlink planted in its place (detect reports
    that; the history reads as empty meanwhile)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")


def _lines(path: Path) -> list[bytes]:
    try:
        with _open(path) as fh:
            return fh.readlines()
    except OSError:
        return []


START = b'{"time":'  # how every event line begins


def decode(line: bytes) -> Event | None:
    """One event line; a line joined to a torn one before it (a write cut short by a full
    disk) gives the event at its end; a torn line alone gives None."""
    for start in (0, line.rfind(START)):
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def _parse(lines: list[bytes], since: datetime | None = None) -> list[Event]:
    cutoff = rfc3339(since) if since else None
    records = []
    for line in lines:
        record = decode(line)
        if record is not None and (cutoff is None or str(record.get("time")) >= cutoff):
            records.append(record)
    return records


class Tail:
    """The lines appended to a log since the last look (the first look: its whole history,
    the rotated generation first); a rotation (a new file in its place) starts it over from
    the new file's beginning."""

    def __init__(self, path: Path):
        self.path = path
        self.inode: int | None = None
        self.offset = 0
        self.partial = b""
        self.started = False

    def new(self, since: datetime | None = None) -> list[Event]:
        history = [] if self.started else _parse(_lines(older(self.path)), since)
        self.started = True
        return history + self._appended(since)

    def _appended(self, since: datetime | None) -> list[Event]:
        try:
            fh = _open(self.path)
        except OSError:
            return []
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_ino != self.inode or st.st_size < self.offset:
                self.inode, self.offset, self.partial = st.st_ino, 0, b""
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return _parse(lines, since)


class Source(Protocol):
    def new(self, since: datetime | None = None) -> list[Event]:
        """The events not returned before (the first call: the whole history)."""
        ...


def watch(tails: list[Source], *, since: datetime | None = None,
          kinds: set[str] | None = None, last: int | None = None, follow: bool = False,
          poll: float = 0.5) -> Iterator[Event]:
    """The events of several logs (one ``Tail`` each, or a ledger's) merged by time
    (``kinds``: only those events; ``last``: only the newest so many), then, with
    ``follow``, each new one as it is appended, until the caller stops. Every event is
    yielded once: the history is read through the same tail that then follows it."""
    history: list[Event] = []
    for tail in tails:
        history += tail.new(since)
    wanted = [r for r in sorted(history, key=lambda r: str(r.get("time")))
              if kinds is None or r.get("event") in kinds]
    yield from wanted[-last:] if last else wanted
    while follow:
        time.sleep(poll)
        fresh = [r for tail in tails for r in tail.new()]
        yield from (r for r in sorted(fresh, key=lambda r: str(r.get("time")))
                    if kinds is None or r.get("event") in kinds)


def last(path: Path, event: str) -> Event | None:
    """The newest event of one kind, read from the end of the log (which only grows)."""
    for part in (path, older(path)):
        try:
            with open(part, "rb") as fh:
                found = _last_in(fh, event)
        except OSError:
            continue
        if found is not None:
            return found
    return None


def _last_in(fh: IO[bytes], event: str) -> Event | None:
    size = fh.seek(0, os.SEEK_END)
    span = 1 << 16
    while True:
        start = max(0, size - span)
        fh.seek(start)
        lines = fh.read(size - start).splitlines()[1 if start else 0:]  # first may be cut
        for line in reversed(lines):
            record = decode(line)
            if record is not None and record.get("event") == event:
                return record
        if start == 0:
            return None
        span *= 4
