"""Validation of pool names, slot ids and upstream URLs."""

import re

from necropool.errors import UsageError

POOL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SLOT_ID = re.compile(r"(?P<pool>[a-z0-9][a-z0-9._-]{0,62})-(?P<n>[1-9][0-9]{0,5})")
_SAFE_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:[^:].*")


def check_pool_name(name: str) -> str:
    if not isinstance(name, str) or not POOL_NAME.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid pool name {name!r}: use 1-63 characters a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def parse_slot_id(slot_id: str) -> tuple[str, int]:
    """Split ``<pool>-<n>`` into its pool name and slot number."""
    match = _SLOT_ID.fullmatch(slot_id) if isinstance(slot_id, str) else None
    if not match or ".." in slot_id:
        raise UsageError(f"invalid slot id {slot_id!r}: expected <pool>-<number>, e.g. web-1")
    return match.group("pool"), int(match.group("n"))


def utf8_safe(text: str) -> str:
    """``text`` as valid UTF-8: bytes that were not (file names and branch names decoded
    with surrogate escapes) become ``\\xNN`` escapes, so no state write or print fails."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


def is_control(c: str) -> bool:
    """C0 and C1 control characters and DEL: what a terminal may act on."""
    return ord(c) < 32 or 127 <= ord(c) < 160


def check_text(value: str, what: str, limit: int = 256) -> str:
    """A free-text value a person gave (an owner, a reason): 1-``limit`` printable
    characters, no control characters (escape sequences would reach every terminal that
    shows it)."""
    if (not isinstance(value, str) or not value.strip() or len(value) > limit
            or any(is_control(c) for c in value)):
        raise UsageError(f"invalid {what} {str(value)[:40]!r}: 1-{limit} printable characters, "
                         "no control characters")
    return value


def check_url(url: str) -> str:
    """Accept local paths and the ordinary transports; refuse options and ``ext::``-style ones."""
    if not isinstance(url, str) or not url.strip():
        raise UsageError("invalid URL: it is empty")
    if url != url.strip() or any(ord(c) < 32 for c in url):
        raise UsageError(f"invalid URL {url!r}: it contains whitespace or control characters")
    if url.startswith("-"):
        raise UsageError(f"invalid URL {url!r}: it must not start with '-'")
    if url.startswith(_SAFE_SCHEMES) or _SCP_LIKE.fullmatch(url):
        return url
    if "::" in url or re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise UsageError(f"refusing URL {url!r}: transport not allowed (use https, ssh, git, file)")
    return url
