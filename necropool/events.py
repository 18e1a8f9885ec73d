"""The append-only history of a pool: ``events.jsonl``, one JSON object per line.

Past ``ROTATE_BYTES`` the log is rotated to ``events.jsonl.1`` (by ``auto-recover``, under
the pool lock), so one earlier generation is kept and the history never grows without end.
"""

import os
from datetime import datetime
from pathlib import Path

from necropool.clock import now, rfc3339


def append(path: Path, event: str, **fields) -> None:
    """Append one event (a single O_APPEND write, so concurrent writers never interleave).
    Best effort: the state is the record of truth, and an operation that already happened
    must not be reported as failed because its history line could not be written (a full
    disk, or a symlink planted in place of the log, which detect reports)."""
    import json

    record = {"time": rfc3339(now()), "event": event}
    record.update({k: v for k, v in fields.items() if v is not None})
    line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
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


def read(path: Path, since: datetime | None = None) -> list[dict]:
    """Events in order, the rotated generation first; a damaged line is skipped."""
    lines = []
    for part in (older(path), path):
        try:
            with open(part, "rb") as fh:
                lines += fh.readlines()
        except OSError:
            pass
    import json

    cutoff = rfc3339(since) if since else None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (cutoff is None or str(record.get("time")) >= cutoff):
            records.append(record)
    return records


def last(path: Path, event: str) -> dict | None:
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


def _last_in(fh, event: str) -> dict | None:
    import json

    size = fh.seek(0, os.SEEK_END)
    span = 1 << 16
    while True:
        start = max(0, size - span)
        fh.seek(start)
        lines = fh.read(size - start).splitlines()[1 if start else 0:]  # first may be cut
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                return record
        if start == 0:
            return None
        span *= 4
