"""``PoolManager``: the core's public API (the names of ERROR_RECOVERY_GUIDE.md), a thin
facade over ``pool``/``admin``/``sync``/``views``, the lease modules and
the health modules (``detect``, ``repair``, ``autorecover``, ``lockmaint``); ``walk`` runs
the commands over several pools. The CLI talks to this and nothing else."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from necropool.ground.config import PoolSpec, Settings, load_settings
from necropool.ground.errors import (
    NecropoolError,
    NotFound,
    PoolStep,
    TryAgain,
    UsageError,
    named,
)
from necropool.ground.proc import Holder, hostname
from necropool.ground.results import Record
from necropool.ground.validate import check_hours
from necropool.lease import renew as leases
from necropool.lease.allocate import allocate, default_owner
from necropool.lease.release import release
from necropool.manager import views, walk
from necropool.pool import pool as pools
from necropool.store import events

if TYPE_CHECKING:
    from necropool.lease.run import RunResult


class PoolManager:
    # The administration, health, sync, run and rescued modules are imported where they are
    # used: allocate and release, the commands run most, load none of them (integrity,
    # cleanup, ...).

    def __init__(self, settings: Settings | None = None, *, config: Settings | None = None):
        """``config`` is the guide's name for the same settings."""
        self.settings = settings or config or load_settings()

    @property
    def lock_manager(self):
        from necropool.health.lockmaint import LockManager

        return LockManager(self.settings, lambda: walk.targets(self.settings, None, []))

    @classmethod
    def from_config_file(cls, root: str | None = None, config: str | None = None):
        return cls(load_settings(root, config))

    # --- pools --------------------------------------------------------------------------------
    def get_pool(self, name: str) -> pools.Pool:
        return pools.Pool(self.settings, name)

    def fleet_pool(self, name: str) -> pools.Pool:
        """The pool, also one this host has no slots of but its ledger knows."""
        try:
            return self.get_pool(name)
        except NotFound:
            return pools.Pool.elsewhere(self.settings, name)

    def pool_names(self) -> list[str]:
        return pools.list_pools(self.settings)

    def create_pool(self, spec: PoolSpec, progress=None) -> dict:
        from necropool.admin import pools as admin

        pool = admin.create(self.settings, spec, progress)
        return views.describe_pool(pool, pool.read_state())

    def delete_pool(self, name: str, force: bool = False, discard_work: bool = False) -> dict:
        """With ``force``, also the remains of a half-made pool (no ``pool.toml``)."""
        from necropool.admin import pools as admin

        try:
            pool = self.get_pool(name)
        except NecropoolError:
            if not force:
                raise
            return admin.delete_remains(self.settings, name)
        return admin.delete(pool, force, discard_work)

    def add_slots(self, name: str, count: int = 1, progress=None) -> list[str]:
        from necropool.admin import pools as admin

        return admin.add_slots(self.get_pool(name), count, progress)

    def add_slot(self, name: str) -> str:
        """One more slot (the guide's ``add_slot(repo_name)``); returns its id."""
        return self.add_slots(name)[0]

    def remove_slot(self, slot_ref: str, force: bool = False,
                    discard_work: bool = False) -> dict:
        from necropool.admin import pools as admin

        pool, number = pools.resolve_slot(self.settings, slot_ref)
        return admin.remove_slot(pool, number, force, discard_work)

    def list_pools(self, host: str | None = None) -> list[dict]:
        """Every pool's summary (of ``host``'s slots only, for a pool in a ledger), with the
        pools of the fleet's ledger this host has no slots of; an unreadable pool is
        reported, never hidden."""
        names = self.pool_names()
        if dsn := self.settings.fleet_ledger:
            from necropool.store.pg import schema as ledger_schema

            names = sorted({*names, *ledger_schema.pool_names(dsn)})
        out: list[dict] = []
        for name in names:
            with PoolStep(name) as step:
                out.append(views.summary(self.fleet_pool(name), host, with_slots=False))
            if step.error:
                out.append(step.broken())
        return out

    def pool_status(self, name: str, host: str | None = None) -> dict:
        """The pool object with its slots (of ``host`` only, for a pool in a ledger) and what
        its ``rescued/`` holds."""
        from necropool.pool import rescued

        pool = self.fleet_pool(name)
        data = views.summary(pool, host)
        data["rescued_count"], data["rescued_bytes"] = rescued.usage(pool)
        return data

    def slot_status(self, slot_ref: str) -> dict:
        if remote := self._remote(slot_ref):
            from necropool.fleet import remote as fleet

            pool, number, host = remote
            found = fleet.find(pool, host, number)
            return views.describe_slot(pool, found.slot, found.host, found.path)
        pool, number = pools.resolve_slot(self.settings, slot_ref.split("@")[0])
        return views.describe_slot(pool, pools.get_slot(pool.read_state(), pool, number))

    def sync(self, prune: bool = False, progress=None) -> list[dict]:
        from necropool.admin.sync import sync

        return sync(self.settings, prune, progress)

    # --- lifecycle ----------------------------------------------------------------------------
    def allocate_slot(self, name: str, *, owner=None, pid: int | None = None, ttl=None,
                      metadata=None, wait: float = 0, fetch: bool | None = None,
                      any_host: bool = False) -> dict:
        """``any_host``: when this host has no free slot, a clean one of another host of the
        fleet (its ``slot_host`` and ``path`` say where)."""
        holder = None
        if pid is not None:
            holder = Holder.of(pid)
            if holder is None:
                raise UsageError(f"no process with pid {pid} on this host")
        pool = self.fleet_pool(name) if any_host else self.get_pool(name)
        deadline = time.monotonic() + (wait or 0)
        while True:
            try:
                if not pool.local:  # no slot here: only the others
                    raise TryAgain(f"no free slot in pool {name!r} on any host")
                grant = allocate(
                    pool, owner=owner, holder=holder, ttl=ttl, metadata=metadata, fetch=fetch,
                    wait=min(wait, max(0.0, deadline - time.monotonic()), 1.0) if any_host
                    else wait)
            except TryAgain:
                if not any_host:
                    raise
                from necropool.fleet import remote as fleet

                remote = fleet.allocate(pool, owner=owner or default_owner(),
                                        holder=holder, ttl=ttl, metadata=metadata or {})
                if remote is not None:
                    return {**views.describe_slot(pool, remote.slot, remote.host, remote.path),
                            "fetch_error": None}
                if time.monotonic() >= deadline:
                    raise
                fetch = False  # fetched once is enough
                if not pool.local:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            data = views.describe_slot(pool, grant.slot)
            data["fetch_error"] = grant.fetch_error
            return data

    def release_slot(self, slot_ref: str, lease_id: str | None = None, cleanup: bool = True,
                     fetch: bool | None = None, stop: bool = False) -> dict:
        """``stop``: end processes still running in the slot instead of refusing. A slot of
        another host (``POOL-N@HOST``) is only given back: its host cleans it."""
        if remote := self._remote(slot_ref):
            from necropool.fleet import remote as fleet

            pool, number, host = remote
            return fleet.release(pool, host, number, lease_id)
        pool, number = pools.resolve_slot(self.settings, slot_ref)
        return release(pool, number, lease_id=lease_id, clean=cleanup, fetch=fetch,
                                 stop=stop).to_dict()

    def renew_slot(self, slot_ref: str, lease_id: str, ttl: float | None = None) -> dict:
        """Extend a lease by ``ttl`` seconds from now (default: its own TTL)."""
        if remote := self._remote(slot_ref):
            from necropool.fleet import remote as fleet

            pool, number, host = remote
            renewed = fleet.renew(pool, host, number, lease_id, ttl)
            return views.describe_slot(pool, renewed.slot, renewed.host, renewed.path)
        pool, number = pools.resolve_slot(self.settings, slot_ref)
        return views.describe_slot(pool, leases.renew(pool, number, lease_id, ttl))

    def _remote(self, slot_ref: str) -> tuple[pools.Pool, int, str] | None:
        """A slot of another host (``POOL-N@HOST``): its pool, number and host."""
        if not isinstance(slot_ref, str) or "@" not in slot_ref or "/" in slot_ref:
            return None
        from necropool.fleet import remote as fleet

        name, number, host = fleet.resolve(slot_ref)
        if host is None:  # this host, named
            return None
        return self.fleet_pool(name), number, host

    @contextmanager
    def slot(self, name: str, **allocate_options) -> Iterator[dict]:
        """``with manager.slot("web", ttl=600) as slot:``: a slot allocated for the block and
        released (its lease only) when the block ends, also on an exception."""
        slot = self.allocate_slot(name, **allocate_options)
        try:
            yield slot
        finally:
            self.release_slot(slot["slot_id"], lease_id=slot["lease_id"])

    def run(self, name: str, argv: list[str], stdout=None,
            **allocate_options) -> "RunResult":
        from necropool.lease.run import run

        return run(self.get_pool(name), argv, stdout=stdout, **allocate_options)

    def log(self, name: str, since: datetime | None = None) -> list[dict]:
        return self.get_pool(name).store.read_events(since)

    def watch_log(self, name: str | None = None, host: str | None = None,
                  broken: list[dict] | None = None, **options) -> Iterator[dict]:
        """The events of one pool or every pool (see ``events.watch`` for the options); those
        of ``host`` only, if given (a ledger's events name theirs; the others are this
        host's). ``broken``: as for ``rescued_list``."""
        found = events.watch(walk.each(self.settings, name, broken,
                                       lambda pool: [pool.store.tail()]), **options)
        if host is None:
            return found
        return (e for e in found if e.get("host", hostname()) == host)

    def last_event(self, name: str, event: str) -> dict | None:
        return self.get_pool(name).store.last_event(event)

    # --- the shared ledger ---------------------------------------------------------------------
    def ledger_dsn(self, pool: str | None = None) -> str:
        """The ledger of ``pool`` (or the one the flag, environment or config names)."""
        dsn = self.settings.ledger_for(pool or "")
        if not dsn:
            raise UsageError("no ledger given: pass --ledger postgresql://..., set "
                             "NECROPOOL_LEDGER, or set ledger in the config file")
        return dsn

    def ledger(self, action: str, pool: str | None = None) -> dict:
        """``init``/``migrate`` (the same: create or update the schema), ``status``,
        ``import`` or ``export`` (of ``pool``)."""
        from necropool.fleet import transfer as ledger_transfer
        from necropool.store.pg import schema as ledger_schema

        dsn = self.ledger_dsn(pool)
        if action in ("init", "migrate"):
            return ledger_schema.migrate(dsn)
        if action == "status":
            return ledger_schema.status(dsn)
        assert pool is not None
        move = ledger_transfer.import_pool if action == "import" else ledger_transfer.export_pool
        return move(self.settings, pool, dsn)

    # --- rescued work -------------------------------------------------------------------------
    def rescued_list(self, name: str | None = None, inspect: bool = True,
                     broken: list[dict] | None = None) -> list[Record]:
        """What the ``rescued/`` of one pool or every pool holds, oldest first. With a
        ``broken`` list, a pool that cannot be read goes there (``{"pool", "error"}``) and
        the others are listed; without one, it raises."""
        from necropool.pool import rescued

        def listed(pool) -> list[Record]:
            found = rescued.entries(pool)
            if inspect:
                rescued.inspect(pool, found)
            return found

        return self._rescued_each(name, broken, listed)

    def _rescued_each(self, name: str | None, broken: list[dict] | None, step) -> list[Record]:
        """``walk.each`` over the pools, then over the deleted pools whose work
        ``<root>/rescued/`` keeps (those of that name only, when one is named)."""
        from necropool.pool import rescued

        gone = [d for d in rescued.deleted_pools(self.settings) if name in (None, d.name)]
        only_gone = bool(name and gone and name not in self.pool_names())
        live = [] if only_gone else walk.each(self.settings, name, broken, step)
        return live + [item for pool in gone for item in step(pool)]

    def rescued_show(self, ident: str) -> dict:
        from necropool.pool import rescued

        pool, item = self._rescued_find(ident)
        rescued.inspect(pool, [item])
        return item

    def rescued_restore(self, ident: str, into: str | None = None,
                        checkout: bool = False) -> dict:
        from necropool.pool import rescued

        pool, item = self._rescued_find(ident)
        return rescued.restore(pool, item, Path(into) if into else None, checkout)

    def _rescued_find(self, ident: str) -> tuple[object, Record]:
        """The item among every pool's; not found, the pools that could not be searched are
        named."""
        from necropool.pool import rescued

        broken: list[dict] = []
        try:
            return rescued.find([*walk.targets(self.settings, None, broken),
                                 *rescued.deleted_pools(self.settings)], ident)
        except NotFound as exc:
            if not broken:
                raise
            raise NotFound(f"{exc.message}; not searched: {named(broken)}") from None

    def rescued_prune(self, name: str | None, older_than: float, apply: bool,
                      broken: list[dict] | None = None) -> list[Record]:
        """Items older than ``older_than`` seconds, deleted only when ``apply``; ``broken``:
        as for ``rescued_list``."""
        from necropool.pool import rescued

        return self._rescued_each(name, broken,
                                  lambda pool: rescued.prune(pool, older_than, apply))

    # --- health -------------------------------------------------------------------------------
    def detect_anomalies(self, name: str | None = None, max_allocation_hours=None,
                         deep: bool = False, host: str | None = None) -> dict[str, list]:
        """``{kind: [anomaly, ...]}`` over one pool or all, with the guide's keys (those on
        ``host`` only, if given), and ``errors``: ``"POOL: why"`` for each pool that could
        not be checked (as ``auto_recover`` reports them); the others are checked all the
        same. A directory under pools/ that is not a pool is a stray path."""
        from necropool.health.detect import KINDS, detect

        check_hours(max_allocation_hours)
        merged: dict[str, list] = {k: [] for k in KINDS}
        unusable: list[dict] = []
        errors: list[str] = []
        targets = walk.targets(self.settings, name, unusable)
        for found in walk.checked(targets, lambda pool: detect(
                pool, max_allocation_hours=max_allocation_hours, deep=deep), errors):
            for kind, records in found.to_dict().items():
                merged[kind].extend(r for r in records if host in (None, r["host"]))
        for each in unusable:
            merged["stray_paths"].append(Record(
                kind="stray_path", pool=each["pool"], slot_id=None,
                evidence=f"not a usable pool: {each['error']}",
                path=str(pools.pools_dir(self.settings.root) / each["pool"]), lease_id=None,
                host=hostname()))
        merged["errors"] = errors
        return merged

    def detect_long_allocated_slots(self, max_allocation_hours=None, name=None) -> list[Record]:
        return self.detect_anomalies(name, max_allocation_hours)["long_allocated_slots"]

    def detect_corrupted_slots(self, name=None) -> list[Record]:
        return self.detect_anomalies(name)["corrupted_slots"]

    def detect_orphaned_locks(self, name=None) -> list[Record]:
        return self.detect_anomalies(name)["orphaned_locks"]

    def recover_slot(self, slot_ref: str, force: bool = False) -> Record:
        from necropool.health.repair import recover

        pool, number = pools.resolve_slot(self.settings, slot_ref)
        return recover(pool, number, force).to_dict()

    def isolate_slot(self, slot_ref: str, reason: str | None = None) -> dict:
        from necropool.health.repair import isolate

        pool, number = pools.resolve_slot(self.settings, slot_ref)
        return isolate(pool, number, reason).to_dict()

    def auto_recover(self, name: str | None = None, *, max_allocation_hours=None,
                     recover_corrupted: bool = True, cleanup_orphaned_locks: bool = True,
                     force_release_long_allocated: bool = False, dry_run: bool = False) -> dict:
        """The guide's counters summed over the pools, plus per-pool details."""
        from necropool.health.autorecover import auto_recover, zero_counters

        check_hours(max_allocation_hours)
        counters = zero_counters()
        unusable: list[dict] = []
        targets = walk.targets(self.settings, name, unusable)
        errors = [f"{each['pool']}: not a usable pool (left alone): {each['error']}"
                  for each in unusable]

        def recovered(pool: pools.Pool) -> dict:
            result = auto_recover(
                pool, max_allocation_hours=max_allocation_hours,
                recover_corrupted=recover_corrupted, cleanup_orphaned_locks=cleanup_orphaned_locks,
                force_release_long_allocated=force_release_long_allocated, dry_run=dry_run)
            for key, value in result.counters.items():
                counters[key] += value
            errors.extend(f"{pool.name}: {e}" for e in result.errors)
            return result.to_dict()

        results = walk.checked(targets, recovered, errors)
        return {**counters, "errors": errors, "dry_run": dry_run, "pools": results}
