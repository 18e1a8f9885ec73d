"""Pools: their definition (``pool.toml``), paths, and transactions over their state
(through the pool's ``Store``). Administration is in ``admin``, config convergence in
``sync``, the JSON views in ``views``; allocation and release in the lease modules; health
in ``detect``, ``repair`` and ``autorecover``."""

import os
import tomllib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from necropool.git import commands as git
from necropool.ground.clock import rfc3339
from necropool.ground.config import PREPARE_TIMEOUT, Settings
from necropool.ground.errors import NotFound, OperationFailed, UsageError
from necropool.ground.layout import (
    PoolPaths,
    ensure_inside,
    pools_dir,
    sweep_temp,
    write_atomic,
)
from necropool.ground.locks import FileLock
from necropool.ground.proc import hostname
from necropool.ground.redact import redact, split_upstream
from necropool.ground.results import Record
from necropool.ground.slotref import SlotRef
from necropool.ground.suggest import did_you_mean
from necropool.ground.validate import DEFAULT_PORT_BASE, check_pool_name
from necropool.pool import prepared
from necropool.pool.upstream import migrate
from necropool.store.base import Store
from necropool.store.model import PoolState, Slot
from necropool.store.open import open_store


@dataclass
class PoolDef:
    """``pool.toml``: what a pool is a pool of."""

    name: str
    url: str
    branch: str
    keep_ignored: bool = False
    keep: list[str] = field(default_factory=list)
    fetch_on_allocate: bool = True
    fetch_backend: str = "git"
    prepare: str | None = None  # run in a slot after each cleanup at a new tip
    prepare_timeout: float = PREPARE_TIMEOUT
    include: list[str] = field(default_factory=list)  # copied in from include_from
    include_from: str | None = None
    ports_per_slot: int | None = None  # slot k's ports: ``port_block``
    port_base: int = DEFAULT_PORT_BASE
    created_at: datetime | None = None
    managed_by: str | None = None  # "sync": made by sync, which alone may prune it

    @classmethod
    def load(cls, path: Path) -> "PoolDef":
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)

    def dump(self) -> bytes:
        return tomli_w.dumps({k: v for k, v in asdict(self).items() if v is not None}).encode()


class Pool:
    """An existing pool: paths, definition, and transactions over its state."""

    def __init__(self, settings: Settings, name: str):
        self.settings = settings
        self.name = check_pool_name(name)
        self.paths = PoolPaths(settings.root, name)
        ensure_inside(self.paths.dir, settings.root)
        try:
            self.definition = PoolDef.load(self.paths.definition)
        except FileNotFoundError:
            if os.path.lexists(self.paths.dir):  # there, but not a pool: damaged, not missing
                raise OperationFailed(f"pool {name!r} is not usable: {self.paths.dir} has no "
                                      f"pool.toml (remains of a half-made pool? "
                                      f"'necropool delete {name} --force' removes them)") from None
            raise NotFound(f"pool {name!r} does not exist under {settings.root}"
                           + did_you_mean(name, list_pools(settings))) from None
        except (OSError, tomllib.TOMLDecodeError, TypeError) as exc:
            raise OperationFailed(f"pool {name!r}: pool.toml is unreadable: {exc}") from None
        url, moved = migrate(self.paths, self.definition.url, settings.root)
        if url != self.definition.url:  # a credential in the URL: never kept in memory either
            self.definition.url = url
            if moved:  # best effort: a failed rewrite is redone by the next use
                with suppress(OSError):
                    write_atomic(self.paths.definition, self.definition.dump())
        self.ledger = settings.ledger_for(name)
        self.store: Store = open_store(settings, self.paths, name)
        self.local = True  # this host has slots of it

    @classmethod
    def elsewhere(cls, settings: Settings, name: str) -> "Pool":
        """A pool of the fleet this host has no slots of, as its ledger defines it (for
        ``allocate --any-host``, other hosts' slots and the fleet's status)."""
        ledger = settings.ledger_for(check_pool_name(name))
        if ledger is None:
            raise NotFound(f"pool {name!r} does not exist under {settings.root}"
                           + did_you_mean(name, list_pools(settings)))
        from necropool.store.pg.hosts import definition  # lazy: a PostgreSQL ledger only

        pool = cls.__new__(cls)
        pool.settings, pool.name, pool.ledger, pool.local = settings, name, ledger, False
        pool.paths = PoolPaths(settings.root, name)
        url, branch, created_at = definition(ledger, name)
        pool.definition = PoolDef(name=name, url=split_upstream(url)[0], branch=branch,
                                  created_at=created_at)
        pool.store = open_store(settings, pool.paths, name)
        return pool

    def read_state(self) -> PoolState:
        """A consistent snapshot without the lock."""
        return self.store.snapshot()

    @property
    def slots(self) -> list[Record]:
        """Every slot as ``status`` reports it, by number (the health API's ``pool.slots``)."""
        current = self.read_state()
        return [describe_slot(self, current.slots[n]) for n in sorted(current.slots)]

    def locked(self) -> AbstractContextManager[PoolState]:
        """Hold the pool lock and yield the state; nothing is written."""
        return self.store.locked()

    @contextmanager
    def transaction(self) -> Iterator[PoolState]:
        """Read-modify-write of the state under the pool lock; saved when the block ends.
        Leftovers of killed processes are swept first (outside the lock), so every command
        that changes a pool finishes what a crash left half-done."""
        self.sweep()
        with self.store.transaction() as current:
            yield current

    def save(self, current: PoolState) -> None:
        """Write the state (call only while holding the pool lock)."""
        self.store.save(current)

    def sweep(self) -> None:
        """Finish deleting what dead processes left half-done (temp clones, trash, temp files;
        also a killed ``create``'s or ``delete``'s, next to the pools)."""
        for directory in (self.paths.dir, self.paths.state_dir, self.paths.slots,
                          pools_dir(self.settings.root)):
            sweep_temp(directory, self.settings.root)

    def slot_id(self, number: int) -> str:
        return self.paths.slot_id(number)

    def slot_dir(self, number: int) -> Path:
        return self.paths.slot_dir(number)

    def slot_lock(self, number: int) -> FileLock:
        ensure_inside(self.paths.locks, self.settings.root)
        if not self.paths.locks.is_dir():  # deleted by hand: locks are ours to recreate
            self.paths.locks.mkdir(exist_ok=True)
        return FileLock(self.paths.slot_lock(number))

    def checked_slot_dir(self, number: int) -> Path:
        """The slot's directory, refusing a path that passes through a symlink."""
        path = self.paths.slot_dir(number)
        ensure_inside(path.parent, self.settings.root)
        return path

    def event(self, name: str, **fields: Any) -> None:
        """Append to the pool's history; text fields (errors quoting git or the ledger) with
        any URL's password or token masked."""
        self.store.append_event(name, **{key: redact(value) if isinstance(value, str) else value
                                         for key, value in fields.items()})

    def tip(self) -> str:
        return git.mirror_tip(self.paths.mirror, self.definition.branch)


def describe_slot(pool: "Pool", slot: Slot, host: str | None = None,
                  path: str | None = None) -> Record:
    """A slot as ``status``/``allocate`` report it (the JSON contract). ``metadata`` is the
    lease's; an isolated slot's carries ``isolated_at`` and ``isolation_reason`` (as the
    health API reads them). ``host`` and ``path``: a slot of another host in the fleet, shown as
    the ledger has it (its id ``POOL-N@HOST``; the commit it was last cleaned to)."""
    remote = host is not None and host != hostname()
    where = Path(path) if remote and path else pool.slot_dir(slot.number)
    lease = slot.lease
    handed = lease is not None and lease.user is not None  # (its tree is not ours to read)
    branch, commit = ((None, slot.commit) if remote or handed
                      else git.read_head(where / ".git"))
    holder = lease.holder if lease else None
    ref = lease.ref if lease else None
    ports = port_block(pool.definition, slot.number)
    metadata: dict[str, str | None] = dict(lease.metadata) if lease else {}
    if slot.isolated_at:
        metadata.update(isolated_at=rfc3339(slot.isolated_at),
                        isolation_reason=slot.isolation_reason)
    return Record({
        "slot_id": f"{pool.slot_id(slot.number)}@{host}" if remote else pool.slot_id(slot.number),
        "pool": pool.name, "path": str(where), "slot_host": host if remote else hostname(),
        "state": slot.state, "lease_id": lease.lease_id if lease else None,
        "owner": lease.owner if lease else None,
        "user": lease.user.name if lease and lease.user else None,
        "user_uid": lease.user.uid if lease and lease.user else None,
        "pid": holder.pid if holder else None, "host": holder.host if holder else None,
        "allocated_at": rfc3339(lease.allocated_at) if lease else None,
        "expires_at": rfc3339(lease.expires_at) if lease else None,
        "ttl_seconds": lease.ttl_seconds if lease else None,
        "metadata": metadata, "current_branch": branch, "current_commit": commit,
        "allocation_count": slot.allocation_count,
        "total_usage_seconds": round(slot.total_usage_seconds, 3),
        "last_allocated_at": rfc3339(slot.last_allocated_at),
        "last_released_at": rfc3339(slot.last_released_at),
        "needs_cleanup": slot.needs_cleanup, "error": slot.error,
        "isolated_at": rfc3339(slot.isolated_at), "isolation_reason": slot.isolation_reason,
        "last_rescue": slot.last_rescue,
        "prepared": _prepared(pool, slot, commit) if not remote else None,
        "ref": ref, "ref_commit": slot.commit if ref else None,
        "slot_index": slot.number, "port": ports[0] if ports else None, "ports": ports,
    })


def _prepared(pool: "Pool", slot: Slot, commit: str | None) -> dict[str, object] | None:
    """What the slot was last prepared for (None: the pool prepares nothing, or not yet)."""
    if not pool.definition.prepare:
        return None
    last = prepared.load(pool.paths, slot.number)
    if last is None:
        return None
    where = prepared.directory_of(pool.slot_dir(slot.number))
    return last.view(pool.paths, slot.number, last.fits(commit, pool.definition.prepare, where))


def port_block(definition: PoolDef, number: int) -> list[int]:
    """Slot ``number``'s ports: [base + (k-1)*N, base + k*N) with ``ports_per_slot`` N
    (none without it): a block of its own, so parallel dev servers never collide."""
    per = definition.ports_per_slot
    if not per:
        return []
    first = definition.port_base + (number - 1) * per
    return list(range(first, first + per))


def slot_env(pool: Pool, number: int, lease_id: str) -> dict[str, str]:
    """What a command in slot ``number`` is told (``run``): the slot, its lease, its stable
    index, and its ports when the pool gives slots ports."""
    env = {"NECROPOOL_SLOT_ID": pool.slot_id(number),
           "NECROPOOL_SLOT_PATH": str(pool.slot_dir(number)),
           "NECROPOOL_LEASE_ID": lease_id, "NECROPOOL_SLOT_INDEX": str(number)}
    if ports := port_block(pool.definition, number):
        env.update(NECROPOOL_PORT=str(ports[0]), NECROPOOL_PORTS=" ".join(map(str, ports)))
    return env


def get_slot(current: PoolState, pool: Pool, number: int) -> Slot:
    slot = current.slots.get(number)
    if slot is None:
        raise NotFound(f"slot {pool.slot_id(number)} does not exist")
    return slot


def resolve_slot(settings: Settings, slot: SlotRef | str) -> tuple[Pool, int]:
    """A slot of this host: by id (``web-3``) or any path inside its directory."""
    ref = slot if isinstance(slot, SlotRef) else SlotRef.parse(slot)
    if ref.remote:
        raise UsageError(f"slot {ref} is on host {ref.host}: run this there")
    if ref.path is not None:
        path = Path(ref.path).absolute().resolve()
        try:
            rel = path.relative_to(pools_dir(settings.root).resolve())
        except ValueError:
            raise UsageError(f"{ref.path!r} is not inside a slot under {settings.root}") from None
        if not path.exists():
            raise NotFound(f"no such path {ref.path!r}")
        parts = rel.parts
        if len(parts) < 3 or parts[1] != "slots" or not parts[2].isdigit():
            raise UsageError(f"{ref.path!r} is not inside a slot under {settings.root}")
        return Pool(settings, parts[0]), int(parts[2])
    return Pool(settings, ref.pool), ref.number


def list_pools(settings: Settings) -> list[str]:
    try:
        entries = os.scandir(pools_dir(settings.root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())

