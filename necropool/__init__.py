"""necropool: pools of ready-made git working copies ("slots") for parallel jobs."""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {"PoolManager": "necropool.manager.facade", "PoolSpec": "necropool.ground.config",
            "SlotState": "necropool.store.model"}


def __getattr__(name: str) -> Any:
    """``from necropool import PoolManager`` without importing the core for every command."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
