"""The core's public API (``PoolManager``) and the JSON views it returns."""

from necropool.manager.facade import PoolManager

__all__ = ["PoolManager"]
