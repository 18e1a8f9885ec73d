"""Dynamic completion of pool names and slot ids: read-only, fast, never failing."""

import os
from pathlib import Path


def _root() -> Path | None:
    try:
        from necropool.config import load_settings

        return load_settings().root
    except Exception:
        return None


def _pool_names(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root / "pools")
                      if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _slots(states: tuple[str, ...] | None) -> list[str]:
    import tomllib

    root = _root()
    if root is None:
        return []
    out = []
    for name in _pool_names(root):
        try:
            with open(root / "pools" / name / "state.toml", "rb") as fh:
                table = tomllib.load(fh).get("slots", {})
        except (OSError, ValueError):
            continue
        for number, entry in table.items():
            if isinstance(entry, dict) and (states is None or entry.get("state") in states):
                out.append(f"{name}-{number}")
    return out


def pools(incomplete: str) -> list[str]:
    root = _root()
    return [n for n in _pool_names(root) if n.startswith(incomplete)] if root else []


def slots(incomplete: str) -> list[str]:
    return [s for s in _slots(None) if s.startswith(incomplete)]


def allocated_slots(incomplete: str) -> list[str]:
    return [s for s in _slots(("allocated",)) if s.startswith(incomplete)]
