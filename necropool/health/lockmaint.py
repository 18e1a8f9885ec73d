"""Lock maintenance: the health API's ``lock_manager``
API over the slot lock files of every pool of a root."""

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from necropool.ground.config import Settings
from necropool.ground.locks import FileLock, lock_free
from necropool.ground.validate import check_hours
from necropool.pool.pool import resolve_slot
from necropool.store.model import CLEANING

if TYPE_CHECKING:
    from necropool.pool.pool import Pool


class LockManager:
    """Slot lock files across all pools of a root."""

    def __init__(self, settings: Settings, pools: "Callable[[], list[Pool]]"):
        self.settings = settings
        self._pools = pools  # callable returning the open pools

    def detect_stale_locks(self, max_age_hours: float | None = None) -> list[str]:
        """Slot lock files that no live process holds and older than ``max_age_hours``
        (default: the config's ``stale_lock_hours``; 0 for any age)."""
        check_hours(max_age_hours, "max_age_hours", zero=True)
        if max_age_hours is None:
            max_age_hours = self.settings.stale_lock_hours
        cutoff = time.time() - max_age_hours * 3600 if max_age_hours else None
        stale = []
        for pool in self._pools():
            if pool.paths.locks.is_symlink():
                continue  # not ours to clean: detect reports the link
            try:
                names = sorted(os.listdir(pool.paths.locks))
            except OSError:
                continue
            with pool.locked() as current:
                cleaning = {pool.slot_id(n) for n, s in current.slots.items()
                            if s.state == CLEANING}
                for name in names:
                    path = pool.paths.locks / name
                    if not name.endswith(".lock") or name[:-5] in cleaning:
                        continue
                    try:
                        if cutoff and path.stat().st_mtime > cutoff:
                            continue
                    except OSError:
                        continue
                    if lock_free(path):
                        stale.append(str(path))
        return stale

    def cleanup_stale_locks(self, max_age_hours: float | None = None) -> int:
        removed = 0
        for path in self.detect_stale_locks(max_age_hours):
            lock = FileLock(Path(path))
            if lock.try_acquire(create=False):
                lock.release(unlink=True)
                removed += 1
        return removed

    def force_unlock(self, slot: "str | Pool", number: int | None = None) -> bool:
        """Remove a slot's lock file even if held: the holder's lock stops guarding anything.
        ``slot`` is a slot id or path (the health API's ``force_unlock(slot_id)``), or a pool
        with ``number``. False when there was no lock file."""

        if isinstance(slot, str):
            pool, number = resolve_slot(self.settings, slot)
        elif number is None:
            raise TypeError("force_unlock(pool) needs the slot number")
        else:
            pool = slot
        path = pool.paths.slot_lock(number)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        pool.event("force_unlock", slot_id=pool.slot_id(number))
        return True
