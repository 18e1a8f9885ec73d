"""Which store keeps a pool's state: the shared ledger its settings name, else its files."""

from necropool.ground.config import Settings
from necropool.ground.layout import PoolPaths
from necropool.ground.proc import hostname
from necropool.store.base import Store
from necropool.store.toml import TomlStore


def open_store(settings: Settings, paths: PoolPaths, name: str) -> Store:
    """The pool's store: the shared ledger its settings name (which records the slots'
    final paths, even for a pool being made under a temp name), else its TOML files."""
    ledger = settings.ledger_for(name)
    if ledger is None:
        return TomlStore(paths, name, settings.lock_timeout)
    # lazy: the PostgreSQL ledger only
    from necropool.store.pg.connect import configure
    from necropool.store.pg.store import PgStore

    configure(settings.ledger_timeout)
    return PgStore(ledger, name, hostname(), PoolPaths(settings.root, name))
