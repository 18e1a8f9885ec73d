"""Input validation, in one place: pool names, slot ids, upstream URLs, ref names,
free text (owners, reasons), lease metadata and hour limits. Each check returns the value or
raises ``UsageError`` with a one-line message."""

import re

from necropool.ground.clock import MAX_DURATION
from necropool.ground.errors import UsageError

MAX_HOURS = MAX_DURATION // 3600  # any hours setting or argument

POOL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SLOT_ID = re.compile(r"(?P<pool>[a-z0-9][a-z0-9._-]{0,62})-(?P<n>[1-9][0-9]{0,5})")
_SAFE_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252}[A-Za-z0-9])?")
_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:[^:].*")


def check_pool_name(name: str) -> str:
    if not isinstance(name, str) or not POOL_NAME.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid pool name {name!r}: use 1-63 characters a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def check_host_name(name: str) -> str:
    """A host's name in a fleet (``NECROPOOL_HOST``): hostname-like, as slot ids name it
    (``web-3@NAME``) and the ledger keys its slots."""
    if not HOST_NAME.fullmatch(name):
        raise UsageError(f"invalid NECROPOOL_HOST {name[:80]!r}: expected a host name "
                         "(letters, digits, '.', '_' and '-', at most 254 characters)")
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


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid metadata {pair[:60]!r}: expected KEY=VALUE")
        if len(pair) > 4096:
            raise UsageError(f"metadata {key[:40]!r} is too long (limit 4096 characters)")
        meta[key] = value
    return check_metadata(meta)


def check_metadata(meta: object) -> dict[str, str]:
    """Lease metadata as the core accepts it (from the CLI or the API): string keys and
    values, no control characters in keys, no NUL, each pair at most 4096 characters."""
    if not isinstance(meta, dict):
        raise UsageError("invalid metadata: expected a mapping of strings to strings")
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key.strip():
            raise UsageError(f"invalid metadata {str(key)[:40]!r}: keys and values must be "
                             "strings, keys non-empty")
        if any(ord(c) < 32 for c in key) or "\0" in value:
            raise UsageError(f"invalid metadata {key[:40]!r}: control characters are not allowed")
        if len(key) + len(value) + 1 > 4096:
            raise UsageError(f"metadata {key[:40]!r} is too long (limit 4096 characters)")
    return meta


_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def check_refname(name: str, *, branch: bool = False) -> str:
    """``name`` if it is a well-formed ref name by git's rules (``git check-ref-format``),
    checked here without running git: names read from a slot or the mirror are data, and
    must never become a path that leaves ``refs/``. ``branch`` checks a short branch name
    (``main``) instead of a full one (``refs/heads/main``)."""
    bad = (not isinstance(name, str) or not name or name == "@" or name.startswith("/")
           or name.endswith(("/", ".")) or _REF_FORBIDDEN.search(name) is not None
           or any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))
           or (branch and (name.startswith("-") or name == "HEAD")))
    if bad:
        raise UsageError(f"invalid {'branch' if branch else 'ref'} name {name!r}")
    return name


_HEX = re.compile(r"[0-9a-f]{4,64}")
MAX_PORT = 65535
DEFAULT_PORT_BASE = 20000


def is_commit_id(ref: str) -> bool:
    """Whether ``ref`` may be a commit id, full or abbreviated (4 to 64 hex digits)."""
    return _HEX.fullmatch(ref) is not None


def check_ref_request(ref: str) -> str:
    """A ref a lease asks for (``allocate --ref``): a branch or tag name, a full ref name
    (``refs/pull/123/head``) or a commit id in hex, by git's rules for ref names; never an
    option, a revision expression (``main~2``, ``@{1}``) or a pattern."""
    if isinstance(ref, str) and not ref.startswith("-") and ref != "HEAD" \
            and (is_commit_id(ref) or _valid_ref(ref)):
        return ref
    raise UsageError(f"invalid ref {str(ref)[:80]!r}: expected a branch, a tag, a full ref "
                     "name such as refs/pull/123/head, or a commit id (hex)")


def _valid_ref(name: str) -> bool:
    try:
        check_refname(name if name.startswith("refs/") else f"refs/heads/{name}")
    except UsageError:
        return False
    return True


def check_ports(ports_per_slot: object, port_base: object, highest_slot: int) -> None:
    """A pool's port blocks: ``ports_per_slot`` (None: none) ports a slot from ``port_base``,
    slot k getting [base + (k-1)*N, base + k*N); every slot up to ``highest_slot`` must
    stay within 1-65535."""
    if isinstance(port_base, bool) or not isinstance(port_base, int) \
            or not 1 <= port_base <= MAX_PORT:
        raise UsageError(f"invalid port_base {port_base!r}: must be a port, 1-{MAX_PORT}")
    if ports_per_slot is None:
        return
    if isinstance(ports_per_slot, bool) or not isinstance(ports_per_slot, int) \
            or not 1 <= ports_per_slot <= MAX_PORT:
        raise UsageError(f"invalid ports_per_slot {ports_per_slot!r}: must be 1-{MAX_PORT}")
    last = port_base + highest_slot * ports_per_slot - 1
    if last > MAX_PORT:
        raise UsageError(f"ports_per_slot {ports_per_slot} from port_base {port_base} gives "
                         f"slot {highest_slot} ports up to {last}, past {MAX_PORT}: lower "
                         "port_base or ports_per_slot, or use fewer slots")


def check_hours(hours: object, what: str = "max_allocation_hours", *,
                zero: bool = False) -> None:
    """Hours as a caller gives them: None (the config's) or more than 0 (0 too with
    ``zero``), at most ``MAX_HOURS``."""
    _check_amount(hours, what, MAX_HOURS, zero, "")


def check_seconds(seconds: object, what: str, *, zero: bool = False) -> None:
    """A duration in seconds as a caller gives it (``ttl``, ``wait``): None, or more than 0
    (0 too with ``zero``), at most ``clock.MAX_DURATION``."""
    _check_amount(seconds, what, MAX_DURATION, zero, " seconds")


def _check_amount(value: object, what: str, limit: int, zero: bool, unit: str) -> None:
    """The one rule for amounts of time: a real number (not a bool; nan and inf fail the
    comparison) in (0, limit], or [0, limit] with ``zero``."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not (value >= 0 if zero else value > 0) or not value <= limit):
        low = "at least zero" if zero else "greater than zero"
        raise UsageError(f"invalid {what} {value!r}: must be {low} and at most {limit}{unit}")
