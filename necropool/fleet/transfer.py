"""Moving a pool's state between this host's files and the ledger: ``ledger import`` and
``ledger export``, leases and all."""

import os
from dataclasses import replace
from typing import Any

from necropool.ground.config import Settings
from necropool.ground.errors import Conflict
from necropool.ground.proc import hostname
from necropool.ground.redact import redact
from necropool.pool.pool import Pool
from necropool.store import statefile
from necropool.store.model import ALLOCATED, PoolState
from necropool.store.pg.hosts import mark, register, unregister
from necropool.store.pg.store import PgStore
from necropool.store.toml import TomlStore


def import_pool(settings: Settings, name: str, dsn: str) -> dict[str, Any]:
    """Move a local pool's state into the ledger, leases and all, under the pool lock (so
    nothing changes meanwhile); its state files are kept as ``*.imported``."""
    pool = Pool(replace(settings, ledger_override="local"), name)
    if os.path.lexists(pool.paths.in_ledger):
        raise Conflict(f"pool {name!r} is already in a ledger ({redact(dsn)})")
    with pool.locked() as current:
        if current.source not in ("state.toml", "state.toml.bak"):
            raise Conflict(f"pool {name!r}: its state is {current.source}, not a saved one: "
                           "run 'necropool auto-recover' first")
        register(dsn, name, hostname(), str(settings.root), pool.definition.url,
                 pool.definition.branch, replace_leased=True)  # the local state is the truth
        store = PgStore(dsn, name, hostname(), pool.paths)
        store.save(current)
        mark(pool.paths, dsn)
        statefile.set_aside(pool.paths)
    store.append_event("import", host=hostname(), slots=len(current.slots))
    return {"pool": name, "host": hostname(), "ledger": redact(dsn),
            "slots": len(current.slots), "leases": _leases(current)}


def export_pool(settings: Settings, name: str, dsn: str) -> dict[str, Any]:
    """Move this host's part of a pool from the ledger back to its state files, leases
    and all, in one ledger transaction that also removes it there."""
    pool = Pool(replace(settings, ledger_override=dsn), name)
    with pool.locked() as current:
        TomlStore(pool.paths, name, settings.lock_timeout).save(current)
        unregister(dsn, name, hostname())
        os.unlink(pool.paths.in_ledger)
        statefile.discard_aside(pool.paths)  # the state before the import
    return {"pool": name, "host": hostname(), "ledger": redact(dsn),
            "slots": len(current.slots), "leases": _leases(current)}


def _leases(current: PoolState) -> int:
    return sum(1 for s in current.slots.values() if s.state == ALLOCATED)
