"""The upstream's credential (the userinfo of an http(s) URL, a CI token usually): kept in one
owner-only file of the pool, in git's credential format, and handed to the mirror's fetches
only, through a credential helper named in git's environment. So it is on no command line
(``ps``), in no config file (the mirror's or a slot's) and in no URL anything shows."""

import os
import shlex
from pathlib import Path

from necropool.ground.errors import UsageError
from necropool.ground.layout import temp_name
from necropool.ground.validate import is_control


def encode(user: str, password: str) -> bytes:
    """The file's content; git's credential format has no room for control characters."""
    if any(is_control(c) for c in user + password):
        raise UsageError("invalid URL: its user name or password contains control characters")
    return f"username={user}\npassword={password}\n".encode()


def write(path: Path, user: str, password: str) -> None:
    """Write the file readable by its owner only (never through a symlink; atomic)."""
    tmp = path.parent / temp_name(path.name)  # swept if this process dies
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode(user, password))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read(path: Path) -> tuple[str, str] | None:
    """(user, password) from the file, or None when the pool has none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        fields = dict(line.partition("=")[::2] for line in fh.read().decode().splitlines())
    return fields.get("username", ""), fields.get("password", "")


def helper(path: Path | None) -> str | None:
    """The credential helper that answers git's request for the upstream's credential from
    the file (set after an empty ``credential.helper``, it is the only one: a user's store or
    keychain neither gives another one nor learns this one). None when there is no file (or
    a symlink in its place: what it points at is never sent upstream)."""
    if path is None or os.path.islink(path) or not os.path.isfile(path):
        return None
    return "!f() { test \"$1\" = get && cat " + shlex.quote(str(path)) + "; }; f"
