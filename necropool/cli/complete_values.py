"""Dynamic completion of pool names and slot ids: read-only, fast, never failing."""

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import typer

from necropool.store.events import KINDS


def _root() -> Path | None:
    try:
        # lazy: necropool.cli loads nothing until a command runs
        from necropool.ground.config import load_settings

        return load_settings().root
    except Exception:
        return None


def _pool_names(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root / "pools")
                      if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _slots(states: tuple[str, ...] | None) -> list[tuple[str, str]]:
    """(slot id, "state, owner") of the slots in ``states`` (all when None)."""
    root = _root()
    if root is None:
        return []
    out = []
    for name in _pool_names(root):
        for number, entry in _entries(root / "pools" / name).items():
            if isinstance(entry, dict) and (states is None or entry.get("state") in states):
                lease = entry.get("lease")
                owner = lease.get("owner") if isinstance(lease, dict) else None
                about = ", ".join(str(v) for v in (entry.get("state"), owner) if v)
                out.append((f"{name}-{number}", about))
    return out


def _entries(pool_dir: Path) -> dict[str, object]:
    """Each slot's entry by number, as the state files hold them (a file per slot in
    ``state/``, or every slot in a ``state.toml`` not yet converted); unreadable ones
    left out."""
    try:
        names = sorted(os.listdir(pool_dir / "state"), key=lambda n: (len(n), n))
    except OSError:
        names = []
    found: dict[str, object] = {}
    for name in names:
        if name.endswith(".toml") and name[:-5].isdigit():
            try:
                with open(pool_dir / "state" / name, "rb") as fh:
                    found[name[:-5]] = tomllib.load(fh).get("slot")
            except (OSError, ValueError):
                continue
    if found:
        return found
    try:
        with open(pool_dir / "state.toml", "rb") as fh:
            table = tomllib.load(fh).get("slots", {})
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _items(found: list[tuple[str, str]], incomplete: str) -> list[tuple[str, str] | str]:
    """Candidates, with their description (shown by zsh and fish) where there is one."""
    return [(value, about) if about else value for value, about in found
            if value.startswith(incomplete)]


def pools(incomplete: str) -> list[str]:
    root = _root()
    return [n for n in _pool_names(root) if n.startswith(incomplete)] if root else []


def slots(incomplete: str) -> list[tuple[str, str] | str]:
    return _items(_slots(None), incomplete)


def allocated_slots(incomplete: str) -> list[tuple[str, str] | str]:
    return _items(_slots(("allocated",)), incomplete)


def targets(incomplete: str) -> list[tuple[str, str] | str]:
    """``status``: a pool name or a slot id."""
    root = _root()
    found = [(n, "pool") for n in _pool_names(root)] if root else []
    return _items(found + _slots(None), incomplete)


def choices(*values: str) -> Callable[[str], list[str]]:
    """A completer of fixed values."""

    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


formats = choices("table", "tsv", "json")
status_formats = choices("table", "tsv", "json", "prometheus")
colors = choices("auto", "always", "never")
backends = choices("git", "libgit2")
shells = choices("bash", "zsh", "fish")
event_kinds = choices(*KINDS)


def rescued_ids(incomplete: str) -> list[tuple[str, str] | str]:
    """The short ids of what the pools' ``rescued/`` directories hold (names only: no git)."""
    root = _root()
    if root is None:
        return []
    found = []
    for name in _pool_names(root):
        try:
            entries = sorted(os.listdir(root / "pools" / name / "rescued"))
        except OSError:
            continue
        for entry in entries:
            if not entry.startswith("."):
                short = re.sub(r"(-[0-9a-f]{16}|-allocate|-recover)?\.(bundle|broken)$", "", entry)
                found.append((short, name))
    return _items(found, incomplete)


def commands(ctx: typer.Context, incomplete: str) -> list[str]:
    """``run POOL -- <TAB>``: the programs on PATH for the command's name; nothing (the
    shell's file names) for its arguments."""
    if ctx.params.get("command"):
        return []
    found = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        try:
            entries = os.scandir(directory or ".")
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith(incomplete) and os.access(entry.path, os.X_OK) \
                        and not entry.is_dir():
                    found.add(entry.name)
    return sorted(found)
