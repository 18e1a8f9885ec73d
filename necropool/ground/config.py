"""Settings: where the root and config file are, and what the config file may say.

Precedence for every setting: flag > environment > config file > default.
"""

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from necropool.ground.errors import UsageError
from necropool.ground.redact import redact
from necropool.ground.suggest import did_you_mean
from necropool.ground.validate import (
    DEFAULT_PORT_BASE,
    MAX_HOURS,
    check_host_name,
    check_pool_name,
    check_ports,
    check_refname,
    check_url,
)

POOL_KEYS: dict[str, type | tuple[type, ...]] = {
    "url": str,
    "num_slots": int,
    "branch": str,
    "keep_ignored": bool,
    "keep": list,
    "fetch_on_allocate": bool,
    "fetch_backend": str,
    "ports_per_slot": int,
    "port_base": int,
    "ledger": str,
    "prepare": str,
    "prepare_timeout": (int, float),
    "include": list,
    "include_from": str,
}
TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "root": str,
    "ledger": str,
    "max_allocation_hours": (int, float),
    "stale_lock_hours": (int, float),
    "stale_mirror_hours": (int, float),
    "silent_host_hours": (int, float),
    "rescued_retention_days": (int, float),
    "event_retention_days": (int, float),
    "lock_timeout": (int, float),
    "git_timeout": (int, float),
    "ledger_timeout": (int, float),
    "pools": dict,
}
# Upper bounds (also rejecting inf) so that timeouts and date arithmetic cannot overflow.
LIMITS = {"max_allocation_hours": MAX_HOURS, "stale_lock_hours": MAX_HOURS,
          "stale_mirror_hours": MAX_HOURS, "silent_host_hours": MAX_HOURS,
          "rescued_retention_days": MAX_HOURS / 24, "event_retention_days": MAX_HOURS / 24,
          "lock_timeout": 1e9, "git_timeout": 1e9, "ledger_timeout": 86400,
          "prepare_timeout": 1e9}
POSITIVE = ("max_allocation_hours", "stale_lock_hours", "stale_mirror_hours",
            "silent_host_hours", "rescued_retention_days", "event_retention_days",
            "lock_timeout", "git_timeout", "ledger_timeout", "num_slots", "prepare_timeout")
FETCH_BACKENDS = ("git", "libgit2")
PREPARE_TIMEOUT = 1800.0  # seconds a slot's prepare command may run


@dataclass
class PoolSpec:
    """A pool as the config file declares it (for ``sync``) or ``create`` asks for it."""

    name: str
    url: str
    num_slots: int = 3
    branch: str | None = None
    keep_ignored: bool = False
    keep: list[str] = field(default_factory=list)  # ignored paths cleanup leaves (gitignore)
    fetch_on_allocate: bool = True
    fetch_backend: str = "git"
    ports_per_slot: int | None = None  # a block of ports per slot (``pool.port_block``)
    port_base: int = DEFAULT_PORT_BASE
    ledger: str | None = None  # where its state is kept (``Settings.ledger_for``)
    prepare: str | None = None  # run in each slot after a cleanup at a new tip (``sh -c``)
    prepare_timeout: float = PREPARE_TIMEOUT
    include: list[str] = field(default_factory=list)  # files copied in from ``include_from``
    include_from: str | None = None
    # The keys the config table gives: ``sync`` converges only those (all keys when built in code).
    declared: frozenset[str] = field(default=frozenset(POOL_KEYS), compare=False, repr=False)


@dataclass
class Settings:
    """Where necropool keeps its pools and how it behaves (flag > env > file > default)."""

    root: Path
    config_path: Path | None = None
    max_allocation_hours: float = 24.0
    stale_lock_hours: float = 24.0
    stale_mirror_hours: float = 24.0
    silent_host_hours: float = 1.0  # a fleet host with no sign of life for this long is reported
    rescued_retention_days: float | None = None  # auto-recover deletes older rescued work
    event_retention_days: float | None = None  # auto-recover prunes a ledger's older events
    lock_timeout: float = 30.0
    git_timeout: float = 600.0
    ledger_timeout: float = 10.0  # seconds: the longest any command waits on the ledger
    pools: dict[str, PoolSpec] = field(default_factory=dict)
    ledger: str | None = None  # the config file's top-level ``ledger``
    ledger_override: str | None = None  # --ledger or NECROPOOL_LEDGER

    def ledger_for(self, pool: str) -> str | None:
        """Where pool ``pool``'s state is kept: a ``postgresql://`` DSN, or None for the
        local TOML files (also what ``local`` says). Flag > environment > the pool's table
        of the config > the config's top level."""
        spec = self.pools.get(pool)
        return _remote(self.ledger_override or (spec.ledger if spec else None) or self.ledger)

    @property
    def fleet_ledger(self) -> str | None:
        """The ledger of the pools the config file does not name (the flag, the environment
        or the top-level ``ledger``): where ``list`` looks for pools this host has no slots
        of."""
        return _remote(self.ledger_override or self.ledger)


def _remote(ledger: str | None) -> str | None:
    """A ledger setting as a DSN, or None for the local files (also what ``local`` says)."""
    return None if ledger in (None, "", "local") else ledger


def check_keep(patterns: list[str]) -> None:
    """``keep``: gitignore-style patterns of ignored paths, each a line of its own."""
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip() or pattern.startswith(("!", "#")) \
                or any(c in pattern for c in "\0\n\r"):
            raise UsageError(f"invalid keep pattern {pattern!r}: a gitignore-style pattern such "
                             "as 'node_modules/' (no '!', '#' or line break)")


def check_include(paths: list[str], source: str | None) -> None:
    """``include``: paths relative to ``include_from`` (which must then be an absolute
    directory), none leading out of it (no ``..``, not absolute)."""
    for rel in paths:
        if not isinstance(rel, str) or not rel.strip("/") or rel.startswith("/") \
                or ".." in rel.split("/") or any(c in rel for c in "\0\n\r"):
            raise UsageError(f"invalid include path {rel!r}: a path relative to include_from, "
                             "such as '.env' (no '..', not absolute)")
    if paths and source is None:
        raise UsageError("include needs include_from: the directory the files are copied from")
    if source is not None and not os.path.isabs(source):
        raise UsageError(f"invalid include_from {source!r}: an absolute directory")


def check_prepare(command: str | None) -> None:
    if command is not None and (not command.strip() or "\0" in command):
        raise UsageError(f"invalid prepare command {command!r}: a shell command such as "
                         "'npm ci'")


def check_spec(spec: PoolSpec) -> PoolSpec:
    """A pool spec from the config or the API; a local path url is made absolute."""
    check_pool_name(spec.name)
    check_keep(spec.keep)
    check_include(spec.include, spec.include_from)
    check_prepare(spec.prepare)
    if not 0 < spec.prepare_timeout <= LIMITS["prepare_timeout"]:
        raise UsageError(f"invalid prepare timeout {spec.prepare_timeout:g}: must be greater "
                         "than zero")
    check_url(spec.url)
    if spec.num_slots < 1:
        raise UsageError(f"invalid slot count {spec.num_slots}: must be at least 1")
    if spec.fetch_backend not in FETCH_BACKENDS:
        raise UsageError(f"invalid fetch backend {spec.fetch_backend!r}")
    check_ports(spec.ports_per_slot, spec.port_base, spec.num_slots)
    if spec.branch is not None:
        check_refname(spec.branch, branch=True)
    if "://" not in spec.url and ":" not in spec.url.split("/")[0] and Path(spec.url).exists():
        spec.url = str(Path(spec.url).resolve())  # a local path: make it absolute
    return spec


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_config_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "necropool" / "config.toml"


def _fail(path: Path, key: str, reason: str) -> NoReturn:
    raise UsageError(f"invalid config {path}: {key}: {reason}")


def _check_type(path: Path, key: str, value: Any,
                expected: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) and expected is not bool:
        _fail(path, key, f"expected {_type_name(expected)}, got a boolean")
    if not isinstance(value, expected):
        _fail(path, key, f"expected {_type_name(expected)}, got {type(value).__name__}")
    if isinstance(value, float) and value != value:
        _fail(path, key, "expected a number, got nan")
    if not isinstance(value, int | float):
        return
    if key in LIMITS and value > LIMITS[key]:
        _fail(path, key, f"must be at most {LIMITS[key]:g}")
    if key.rsplit(".", 1)[-1] in POSITIVE and value <= 0:
        _fail(path, key, "must be greater than zero")


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return "a number"
    return {str: "a string", int: "an integer", bool: "a boolean", dict: "a table",
            list: "a list of patterns"}[expected]


def _pool_spec(path: Path, name: str, table: object) -> PoolSpec:
    if not isinstance(table, dict):
        _fail(path, f"pools.{name}", "expected a table")
    try:
        check_pool_name(name)
    except UsageError as exc:
        _fail(path, f"pools.{name}", exc.message)
    for key, value in table.items():
        if key not in POOL_KEYS:
            _fail(path, f"pools.{name}.{key}", "unknown key" + did_you_mean(key, POOL_KEYS))
        _check_type(path, f"pools.{name}.{key}", value, POOL_KEYS[key])
    key = "keep"
    try:
        check_keep(table.get("keep", []))
        key = "include"
        check_include(table.get("include", []), table.get("include_from"))
        key = "prepare"
        check_prepare(table.get("prepare"))
    except UsageError as exc:
        _fail(path, f"pools.{name}.{key}", exc.message)
    try:
        check_ports(table.get("ports_per_slot"), table.get("port_base", DEFAULT_PORT_BASE),
                    table.get("num_slots", PoolSpec.num_slots))
    except UsageError as exc:
        key = "port_base" if exc.message.startswith("invalid port_base") else "ports_per_slot"
        _fail(path, f"pools.{name}.{key}", exc.message)
    _check_ledger_key(path, f"pools.{name}.ledger", table.get("ledger"))
    if "url" not in table:
        _fail(path, f"pools.{name}.url", "missing")
    if table.get("fetch_backend", "git") not in FETCH_BACKENDS:
        _fail(path, f"pools.{name}.fetch_backend", f"must be one of {', '.join(FETCH_BACKENDS)}")
    try:
        check_url(table["url"])
    except UsageError as exc:
        _fail(path, f"pools.{name}.url", exc.message)
    return PoolSpec(name=name, declared=frozenset(table), **table)


def parse_config(path: Path) -> dict[str, Any]:
    """Read and validate a config file; return its settings as a plain dict."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"invalid config {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    for key, value in data.items():
        if key not in TOP_KEYS:
            _fail(path, key, "unknown key" + did_you_mean(key, TOP_KEYS))
        _check_type(path, key, value, TOP_KEYS[key])
    _check_ledger_key(path, "ledger", data.get("ledger"))
    pools = data.pop("pools", {})
    data["pools"] = {name: _pool_spec(path, name, table) for name, table in pools.items()}
    return data


def _check_ledger_key(path: Path, key: str, value: str | None) -> None:
    try:
        check_ledger(value, "ledger")
    except UsageError as exc:
        _fail(path, key, exc.message)


def check_ledger(value: str | None, what: str) -> str | None:
    """A ledger is ``local`` or a PostgreSQL connection string (URL or key=value)."""
    if value in (None, "", "local"):
        return value
    assert value is not None
    if "\0" in value or not (value.startswith(("postgresql://", "postgres://"))
                             or "=" in value):
        raise UsageError(f"invalid {what} {redact(value)[:80]!r}: use 'local' or a PostgreSQL "
                         "connection string (postgresql://host/db)")
    return value


def load_settings(root: str | None = None, config: str | None = None,
                  ledger: str | None = None) -> Settings:
    """Resolve the config file and root by precedence and return validated settings."""
    env_config = os.environ.get("NECROPOOL_CONFIG")
    explicit = config or env_config
    if explicit and "\0" in explicit:
        raise UsageError(f"invalid config path {explicit!r}: it contains a NUL byte")
    candidate = Path(explicit) if explicit else default_config_path()
    data: dict[str, Any] = {}
    config_path: Path | None = None
    if explicit or candidate.exists():
        data, config_path = parse_config(candidate), candidate
    root_value = root or os.environ.get("NECROPOOL_HOME")
    from_config = not root_value and "root" in data
    root_value = root_value or data.pop("root", None)
    data.pop("root", None)
    if root_value and "\0" in root_value:
        raise UsageError(f"invalid root {root_value!r}: it contains a NUL byte")
    if root_value:
        root_path = Path(root_value).expanduser()
        if from_config and config_path is not None:  # the same root from cron and a shell
            root_path = config_path.absolute().parent / root_path
    else:
        root_path = _xdg("XDG_DATA_HOME", ".local/share") / "necropool"
    if root_path.exists() and not root_path.is_dir():
        raise UsageError(f"root {root_path} is not a directory")
    for parent in root_path.absolute().parents:  # the root's nearest existing ancestor
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"root {root_path} cannot be created: "
                                 f"{parent} is not a directory")
            break
        if os.path.lexists(parent):  # a dangling symlink, or a file in the way
            raise UsageError(f"root {root_path} cannot be created: {parent} is in the way")
    override = (check_ledger(ledger, "--ledger")
                or check_ledger(os.environ.get("NECROPOOL_LEDGER"), "NECROPOOL_LEDGER"))
    if host := os.environ.get("NECROPOOL_HOST"):
        check_host_name(host)
    if (timeout := os.environ.get("NECROPOOL_LEDGER_TIMEOUT")) is not None:
        data["ledger_timeout"] = check_ledger_timeout(timeout)
    return Settings(root=root_path.absolute(), config_path=config_path,
                    ledger_override=override, **data)


def check_ledger_timeout(value: str) -> float:
    """NECROPOOL_LEDGER_TIMEOUT: seconds, as the config file's ``ledger_timeout`` allows."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= LIMITS["ledger_timeout"]:
        raise UsageError(f"invalid NECROPOOL_LEDGER_TIMEOUT {value[:40]!r}: expected seconds "
                         f"> 0 and at most {LIMITS['ledger_timeout']:g}")
    return seconds
