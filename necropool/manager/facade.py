"""``PoolManager``: the core's public API, a thin facade over the floors below (pools and
their administration, leases, health, the fleet); its health methods keep the names of the
original request (ARCHITECTURE.md, Health). ``walk`` runs the commands over several pools.
The CLI talks to this and nothing else."""

import contextlib
import functools
import importlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self, TypeVar

from necropool.ground.clock import now, rfc3339
from necropool.ground.config import PoolSpec, Settings, load_settings
from necropool.ground.errors import (
    NecropoolError,
    NotFound,
    PoolOutcome,
    TryAgain,
    UsageError,
    named,
)
from necropool.ground.layout import pools_dir
from necropool.ground.owner import owner_of, run_as
from necropool.ground.proc import Holder, hostname
from necropool.ground.results import Record
from necropool.ground.slotref import SlotRef
from necropool.ground.validate import HOST_NAME, check_hours, check_pool_name
from necropool.lease import handover
from necropool.lease import renew as leases
from necropool.lease.allocate import AllocateRequest, allocate, default_owner
from necropool.lease.refresh import refuse_busy
from necropool.lease.release import FORCED, RELEASE, release
from necropool.manager import views, walk
from necropool.pool import pool as pools
from necropool.store import events
from necropool.store.model import Slot
from necropool.store.pg import connect as ledger_link

if TYPE_CHECKING:
    from necropool.ground.progress import Progress
    from necropool.health.lockmaint import LockManager
    from necropool.lease.run import RunResult
    from necropool.pool.rescued import Deleted

T = TypeVar("T")
# What work on a pool imports lazily, inside the child that becomes the pool's owner (who
# may not read root's Python): loaded before it, with what each loads in turn. The modules
# a method here imports before calling ``_owned`` need no place; tests/test_privilege.py
# counts what the child still imports. By importer: lease/refresh (cleanup), slot/gitdir
# (hashlib), pool/rescued's datetime.strptime (_strptime), ground/locks (portalocker),
# git/commands and slot/integrity (pygit2), a ledger's store/open, pg/connect, pool/pool
# and health/detect (its store, psycopg, hosts, fleet.remote).
_OWNER_WORK = (
    "_strptime", "hashlib", "necropool.fleet.remote", "necropool.slot.cleanup",
    "necropool.slot.detach", "necropool.slot.prepare", "necropool.store.pg.hosts",
    "necropool.store.pg.store", "portalocker", "psycopg", "pygit2",
)


def _allocated(pool: pools.Pool, request: AllocateRequest) -> tuple[Slot, str | None]:
    """``allocate``'s slot and fetch error (its grant holds the pool, which stays here)."""
    grant = allocate(pool, request)
    return grant.slot, grant.fetch_error


class PoolManager:
    # The administration, health, sync, run and rescued modules are imported where they are
    # used: allocate and release, the commands run most, load none of them (integrity,
    # cleanup, ...).

    def __init__(self, settings: Settings | None = None, *, config: Settings | None = None):
        """``config`` is the health API's name for the same settings."""
        self.settings = settings or config or load_settings()
        ledger_link.configure(self.settings.ledger_timeout)

    @staticmethod
    def _owned(pool: "pools.Pool | Deleted", fn: Callable[..., T], *args: Any,
               **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on ``pool`` as its owner: run as root on another user's
        pool, in a child that became that user (``owner``)."""
        who = owner_of(pool.paths.dir)
        if who is None:
            return fn(*args, **kwargs)
        for module in _OWNER_WORK:  # before the child becomes a user who may not read them
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        return run_as(who, functools.partial(fn, *args, **kwargs))

    @property
    def lock_manager(self) -> "LockManager":
        # lazy: allocate and release load no health module
        from necropool.health.lockmaint import LockManager

        return LockManager(self.settings, lambda: walk.targets(self.settings, None, []))

    @classmethod
    def from_config_file(cls, root: str | None = None, config: str | None = None) -> Self:
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

    def pool_names(self, required: bool = False) -> list[str]:
        """The pools under the root; ``required``: none is an error (NotFound, naming the
        root), for the commands over every pool that must not read as "all is well"."""
        names = pools.list_pools(self.settings)
        return walk.required(self.settings, names) if required else names

    def create_pool(self, spec: PoolSpec, progress: "Progress | None" = None) -> dict[str, Any]:
        # lazy: allocate and release load no admin module
        from necropool.admin import pools as admin

        pool = admin.create(self.settings, spec, progress)
        return views.describe_pool(pool, pool.read_state())

    def delete_pool(self, name: str, force: bool = False,
                    discard_work: bool = False) -> dict[str, Any]:
        """With ``force``, also the remains of a half-made pool (no ``pool.toml``)."""
        # lazy: allocate and release load no admin module
        from necropool.admin import pools as admin

        try:
            pool = self.get_pool(name)
        except NecropoolError:
            if not force:
                raise
            return admin.delete_remains(self.settings, name)
        return admin.delete(pool, force, discard_work)  # also writes beside the pool

    def add_slots(self, name: str, count: int = 1,
                  progress: "Progress | None" = None) -> list[str]:
        # lazy: allocate and release load no admin module
        from necropool.admin import pools as admin

        pool = self.get_pool(name)
        return self._owned(pool, admin.add_slots, pool, count, progress)

    def add_slot(self, name: str) -> str:
        """One more slot (the health API's ``add_slot(repo_name)``); returns its id."""
        return self.add_slots(name)[0]

    def remove_slot(self, slot_ref: str, force: bool = False,
                    discard_work: bool = False) -> dict[str, Any]:
        # lazy: allocate and release load no admin module
        from necropool.admin import pools as admin

        pool, number = pools.resolve_slot(self.settings, slot_ref)
        if not force:  # (refused by the owner's work while leased: nothing to take back)
            return self._owned(pool, admin.remove_slot, pool, number, force, discard_work)
        return self._on_owned_slot(pool, number, None, True, admin.remove_slot, pool, number,
                                   force, discard_work)

    def list_pools(self, host: str | None = None) -> list[PoolOutcome[dict[str, Any]]]:
        """Every pool's summary (of ``host``'s slots only, for a pool in a ledger), with the
        pools of the fleet's ledger this host has no slots of; an unreadable pool is
        reported, never hidden."""
        names = self.pool_names()
        if dsn := self.settings.fleet_ledger:
            from necropool.store.pg import schema as ledger_schema  # lazy: a PostgreSQL ledger only

            names = sorted({*names, *ledger_schema.pool_names(dsn)})
        walk.required(self.settings, names)
        return walk.outcomes(names, lambda name: views.summary(self.fleet_pool(name), host,
                                                               with_slots=False))

    def pool_statuses(self, host: str | None = None) -> list[PoolOutcome[dict[str, Any]]]:
        """``pool_status`` of every pool; an unreadable pool is reported, never hidden."""
        return walk.outcomes(self.pool_names(required=True),
                             lambda name: self.pool_status(name, host))

    def pool_status(self, name: str, host: str | None = None) -> dict[str, Any]:
        """The pool object with its slots (of ``host`` only, for a pool in a ledger) and what
        its ``rescued/`` holds."""
        # lazy: allocate and release never read rescued work
        from necropool.pool import rescued

        pool = self.fleet_pool(name)
        data = views.summary(pool, host)
        data["rescued_count"], data["rescued_bytes"] = rescued.usage(pool)
        data["confinement"] = self.confinement()
        return data

    @staticmethod
    def confinement() -> str:
        """What confines the work on slots on this host (``landlock ABI N``, or ``none``
        and why)."""
        from necropool.slot import confined  # lazy: ctypes, for status and detect only

        return confined.describe()

    def slot_status(self, slot_ref: str) -> dict[str, Any]:
        ref = SlotRef.parse(slot_ref)
        if remote := self._remote(ref):
            from necropool.fleet import remote as fleet  # lazy: a pool in a ledger only

            pool, number, host = remote
            found = fleet.find(pool, host, number)
            return pools.describe_slot(pool, found.slot, found.host, found.path)
        pool, number = pools.resolve_slot(self.settings, ref)
        return pools.describe_slot(pool, pools.get_slot(pool.read_state(), pool, number))

    def sync(self, prune: bool = False, progress: "Progress | None" = None,
             dry_run: bool = False) -> list[PoolOutcome[dict[str, Any]]]:
        from necropool.admin.sync import sync  # lazy: allocate and release load no admin module

        return sync(self.settings, prune, progress, dry_run)

    # --- lifecycle ----------------------------------------------------------------------------
    def allocate_slot(self, name: str, request: AllocateRequest | None = None, *,
                      owner: str | None = None, pid: int | None = None,
                      ttl: float | None = None, metadata: dict[str, str] | None = None,
                      wait: float = 0, fetch: bool | None = None,
                      any_host: bool = False, user: str | None = None,
                      ref: str | None = None) -> dict[str, Any]:
        """A slot under a new lease: as ``request`` asks, or as the keywords do (the health API's
        form). ``pid``: the holder process (either way). ``any_host``: when this host has no
        free slot, a clean one of another host of the fleet (its ``slot_host`` and ``path``
        say where). ``user`` (as root): the local user the slot is handed to for the lease
        (``lease.handover``). ``ref``: the slot detached at that branch, tag, ref or commit."""
        if request is None:
            request = AllocateRequest(owner=owner, ttl=ttl, metadata=metadata or {}, wait=wait,
                                      fetch=fetch, any_host=any_host, user=user, ref=ref)
        if pid is not None:
            holder = Holder.of(pid)
            if holder is None:
                raise UsageError(f"no process with pid {pid} on this host")
            request = replace(request, holder=holder)
        if request.user is not None:
            handover.require_root()  # before the pool is read: it may be unreadable to us
            return self._allocated_to_user(self.get_pool(name), request)
        pool = self.fleet_pool(name) if request.any_host else self.get_pool(name)
        deadline = time.monotonic() + request.wait
        while True:
            try:
                if not pool.local:  # no slot here: only the others
                    raise TryAgain(f"no free slot in pool {name!r} on any host")
                slot, fetch_error = self._owned(pool, _allocated, pool, replace(
                    request, wait=min(request.wait, max(0.0, deadline - time.monotonic()), 1.0))
                    if request.any_host else request)
            except TryAgain:
                if not request.any_host:
                    raise
                from necropool.fleet import remote as fleet  # lazy: a pool in a ledger only

                remote = fleet.allocate(pool, owner=request.owner or default_owner(),
                                        holder=request.holder, ttl=request.ttl,
                                        metadata=request.metadata)
                if remote is not None:
                    return {**pools.describe_slot(pool, remote.slot, remote.host, remote.path),
                            "fetch_error": None}
                if time.monotonic() >= deadline:
                    raise
                request = replace(request, fetch=False)  # fetched once is enough
                if not pool.local:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            data = pools.describe_slot(pool, slot)
            data["fetch_error"] = fetch_error
            return data

    def _allocated_to_user(self, pool: pools.Pool, request: AllocateRequest) -> dict[str, Any]:
        """``allocate --user``: a slot allocated as the owner, then handed to the user (on
        failure, released again: nothing is left half given)."""
        assert request.user is not None
        user = handover.check(pool, request.user)
        slot, fetch_error = self._owned(pool, _allocated, pool, request)
        try:
            handover.hand_out(pool, slot.number, user)
        except BaseException:
            with contextlib.suppress(Exception):
                handover.take_back(pool, slot.number)
                self._owned(pool, release, pool, slot.number, lease_id=slot.lease.lease_id
                            if slot.lease else None, ending=FORCED)
            raise
        data = pools.describe_slot(pool, slot)
        data["fetch_error"] = fetch_error
        return data

    def _taken_back(self, pool: pools.Pool, number: int, lease_id: str | None = None,
                    stop: bool = True) -> bool:
        """As root, before the owner's work cleans slot ``number``: a slot handed to a user
        is taken back from it (``handover.take_back``), unless the work will refuse anyway
        (another lease named) or, without ``stop``, processes still work in it (Conflict,
        nothing changed). Returns whether it was taken back."""
        if os.geteuid() != 0 or not handover.handed(pool, number) or handover.worked_on(
                pool, number):  # (a ``run`` of it, say: the work refuses, as Busy)
            return False
        lease = pools.get_slot(pool.read_state(), pool, number).lease
        if lease is not None and lease_id is not None and lease.lease_id != lease_id:
            return False
        if not stop:
            refuse_busy(pool, number)
        handover.take_back(pool, number)
        return True

    def _on_owned_slot(self, pool: pools.Pool, number: int, lease: str | None, stops: bool,
                       fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on a slot as its pool's owner, the slot taken back from its user first
        (see ``_taken_back``: ``lease``, the lease named, ``stops``, whether ``fn`` ends
        processes in the slot), and handed back to the user if ``fn`` left it leased to
        them."""
        taken = self._taken_back(pool, number, lease, stops)
        try:
            return self._owned(pool, fn, *args, **kwargs)
        finally:
            if taken:
                handover.hand_back_if_held(pool, number)

    def release_slot(self, slot_ref: str, lease_id: str | None = None, cleanup: bool = True,
                     fetch: bool | None = None, stop: bool = False) -> dict[str, Any]:
        """``stop``: end processes still running in the slot instead of refusing. A slot of
        another host (``POOL-N@HOST``) is only given back: its host cleans it."""
        ref = SlotRef.parse(slot_ref)
        if remote := self._remote(ref):
            from necropool.fleet import remote as fleet  # lazy: a pool in a ledger only

            pool, number, host = remote
            return fleet.release(pool, host, number, lease_id)
        pool, number = pools.resolve_slot(self.settings, ref)
        return self._on_owned_slot(
            pool, number, lease_id, stop, release, pool, number, lease_id=lease_id,
            clean=cleanup, fetch=fetch, ending=FORCED if stop else RELEASE).to_dict()

    def renew_slot(self, slot_ref: str, lease_id: str,
                   ttl: float | None = None) -> dict[str, Any]:
        """Extend a lease by ``ttl`` seconds from now (default: its own TTL)."""
        ref = SlotRef.parse(slot_ref)
        if remote := self._remote(ref):
            from necropool.fleet import remote as fleet  # lazy: a pool in a ledger only

            pool, number, host = remote
            renewed = fleet.renew(pool, host, number, lease_id, ttl)
            return pools.describe_slot(pool, renewed.slot, renewed.host, renewed.path)
        pool, number = pools.resolve_slot(self.settings, ref)
        return pools.describe_slot(pool, self._owned(pool, leases.renew, pool, number,
                                                     lease_id, ttl))

    def _remote(self, ref: SlotRef) -> tuple[pools.Pool, int, str] | None:
        """A slot of another host (``POOL-N@HOST``): its pool, number and host."""
        if ref.host is None:
            return None
        return self.fleet_pool(ref.pool), ref.number, ref.host

    @contextmanager
    def slot(self, name: str, request: AllocateRequest | None = None, *,
             owner: str | None = None, pid: int | None = None, ttl: float | None = None,
             metadata: dict[str, str] | None = None, wait: float = 0,
             fetch: bool | None = None, any_host: bool = False,
             ref: str | None = None) -> Iterator[dict[str, Any]]:
        """``with manager.slot("web", ttl=600) as slot:``: a slot allocated for the block and
        released (its lease only) when the block ends, also on an exception."""
        slot = self.allocate_slot(name, request, owner=owner, pid=pid, ttl=ttl,
                                  metadata=metadata, wait=wait, fetch=fetch,
                                  any_host=any_host, ref=ref)
        try:
            yield slot
        finally:
            self.release_slot(slot["slot_id"], lease_id=slot["lease_id"])

    def run(self, name: str, argv: list[str], stdout: IO[Any] | None = None,
            request: AllocateRequest | None = None, *, owner: str | None = None,
            ttl: float | None = None, metadata: dict[str, str] | None = None,
            wait: float = 0, fetch: bool | None = None, user: str | None = None,
            ref: str | None = None) -> "RunResult":
        """``argv`` in a slot allocated as ``request`` (or the keywords) asks, held by this
        process; see ``lease.run``. ``user`` (as root): run it as that local user, in the
        slot handed to it."""
        from necropool.lease.run import run  # lazy: only run needs it

        if request is None:
            request = AllocateRequest(owner=owner, ttl=ttl, metadata=metadata or {}, wait=wait,
                                      fetch=fetch, user=user, ref=ref)
        if request.user is not None:
            handover.require_root()  # before the pool is read: it may be unreadable to us
        return run(self.get_pool(name), argv, request, stdout=stdout)

    def log(self, name: str, since: datetime | None = None) -> list[events.Event]:
        return self.get_pool(name).store.read_events(since)

    def watch_log(self, name: str | None = None, host: str | None = None,
                  broken: walk.Broken | None = None, *, since: datetime | None = None,
                  kinds: set[str] | None = None, last: int | None = None,
                  follow: bool = False) -> Iterator[events.Event]:
        """The events of one pool or every pool (see ``events.watch`` for the options); those
        of ``host`` only, if given (a ledger's events name theirs; the others are this
        host's). ``broken``: as for ``rescued_list``."""
        found = events.watch(walk.each(self.settings, name, broken,
                                       lambda pool: [pool.store.tail()]),
                             since=since, kinds=kinds, last=last, follow=follow)
        if host is None:
            return found
        return (e for e in found if e.get("host", hostname()) == host)

    def last_event(self, name: str, event: str) -> events.Event | None:
        return self.get_pool(name).store.last_event(event)

    # --- the shared ledger ---------------------------------------------------------------------
    def ledger_dsn(self, pool: str | None = None) -> str:
        """The ledger of ``pool`` (or the one the flag, environment or config names)."""
        dsn = self.settings.ledger_for(pool or "")
        if not dsn:
            raise UsageError("no ledger given: pass --ledger postgresql://..., set "
                             "NECROPOOL_LEDGER, or set ledger in the config file")
        return dsn

    def ledger(self, action: str, pool: str | None = None) -> dict[str, Any]:
        """``init``/``migrate`` (the same: create or update the schema), ``status``,
        ``import`` or ``export`` (of ``pool``)."""
        from necropool.fleet import transfer as ledger_transfer  # lazy: ledger import/export only
        from necropool.store.pg import schema as ledger_schema  # lazy: a PostgreSQL ledger only

        dsn = self.ledger_dsn(pool)
        if action in ("init", "migrate"):
            return ledger_schema.migrate(dsn)
        if action == "status":
            return ledger_schema.status(dsn)
        assert pool is not None
        move = ledger_transfer.import_pool if action == "import" else ledger_transfer.export_pool
        return move(self.settings, pool, dsn)

    def ledger_takeover(self, host: str, pool: str | None = None,
                        force: bool = False) -> dict[str, Any]:
        """Take over a silent ``host``'s part of the fleet (``store.pg.takeover``): the
        leases its processes held on other hosts' slots end, and no other host takes its
        own slots until it is back and has checked them. Refused while ``host`` gave a sign
        of life within ``silent_host_hours``, unless ``force``."""
        from necropool.store.pg.takeover import take_over  # lazy: a PostgreSQL ledger only

        if not HOST_NAME.fullmatch(host) or host == hostname():
            raise UsageError(f"cannot take over host {host[:80]!r}: "
                             + ("this host" if host == hostname() else "not a host name"))
        if pool is not None:
            check_pool_name(pool)
        return take_over(self.ledger_dsn(pool), host, f"{default_owner()}@{hostname()}",
                         self.settings.silent_host_hours, pool, force)

    # --- rescued work -------------------------------------------------------------------------
    def rescued_list(self, name: str | None = None, inspect: bool = True,
                     broken: walk.Broken | None = None) -> list[Record]:
        """What the ``rescued/`` of one pool or every pool holds, oldest first. With a
        ``broken`` list, a pool that cannot be read goes there (its ``PoolOutcome``) and
        the others are listed; without one, it raises."""
        # lazy: allocate and release never read rescued work
        from necropool.pool import rescued

        def listed(pool: "pools.Pool | Deleted") -> list[Record]:
            found = rescued.entries(pool)
            if inspect:  # in a scratch repository in the pool's directory
                rescued.inspect(pool, found)
            return found

        return self._rescued_each(name, broken, lambda pool: self._owned(pool, listed, pool))

    def _rescued_each(self, name: str | None, broken: walk.Broken | None,
                      step: Callable[[Any], list[Record]]) -> list[Record]:
        """``walk.each`` over the pools, then over the deleted pools whose work
        ``<root>/rescued/`` keeps (those of that name only, when one is named)."""
        # lazy: allocate and release never read rescued work
        from necropool.pool import rescued

        gone = [d for d in rescued.deleted_pools(self.settings) if name in (None, d.name)]
        only_gone = bool(name and gone and name not in self.pool_names())
        live = [] if only_gone else walk.each(self.settings, name, broken, step)
        return live + [item for pool in gone for item in step(pool)]

    def rescued_show(self, ident: str) -> Record:
        # lazy: allocate and release never read rescued work
        from necropool.pool import rescued

        pool, item = self._rescued_find(ident)

        def inspected() -> Record:
            rescued.inspect(pool, [item])
            return item

        return self._owned(pool, inspected)

    def rescued_restore(self, ident: str, into: str | None = None,
                        checkout: bool = False) -> dict[str, Any]:
        # lazy: allocate and release never read rescued work
        from necropool.pool import rescued

        pool, item = self._rescued_find(ident)
        return rescued.restore(pool, item, Path(into) if into else None, checkout)

    def _rescued_find(self, ident: str) -> tuple["pools.Pool | Deleted", Record]:
        """The item among every pool's; not found, the pools that could not be searched are
        named."""
        # lazy: allocate and release never read rescued work
        from necropool.pool import rescued

        broken: walk.Broken = []
        try:
            return rescued.find([*walk.targets(self.settings, None, broken),
                                 *rescued.deleted_pools(self.settings)], ident)
        except NotFound as exc:
            if not broken:
                raise
            raise NotFound(f"{exc.message}; not searched: {named(broken)}") from None

    def rescued_prune(self, name: str | None, older_than: float, apply: bool,
                      broken: walk.Broken | None = None) -> list[Record]:
        """Items older than ``older_than`` seconds, deleted only when ``apply``; ``broken``:
        as for ``rescued_list``."""
        # lazy: allocate and release never read rescued work
        from necropool.pool import rescued

        return self._rescued_each(name, broken, lambda pool: self._owned(
            pool, rescued.prune, pool, older_than, apply))

    # --- health -------------------------------------------------------------------------------
    def detect_anomalies(self, name: str | None = None,
                         max_allocation_hours: float | None = None, deep: bool = False,
                         host: str | None = None) -> dict[str, list[Any]]:
        """``{kind: [anomaly, ...]}`` over one pool or all, with the health API's keys (those on
        ``host`` only, if given), and ``errors``: a ``PoolOutcome`` for each pool that could
        not be checked (as ``auto_recover`` reports them); the others are checked all the
        same. A directory under pools/ that is not a pool is a stray path."""
        # lazy: allocate and release load no health module
        from necropool.health.detect import KINDS, detect

        check_hours(max_allocation_hours)
        self.pool_names(required=name is None)
        merged: dict[str, list[Any]] = {k: [] for k in KINDS}
        unusable: walk.Broken = []
        errors: walk.Broken = []
        targets = walk.targets(self.settings, name, unusable)
        for found in walk.checked(targets, lambda pool: self._owned(
                pool, detect, pool, max_allocation_hours=max_allocation_hours, deep=deep),
                errors):
            for kind, records in found.to_dict().items():
                merged[kind].extend(r for r in records if host in (None, r["host"]))
        for each in unusable:
            merged["stray_paths"].append(Record(
                kind="stray_path", pool=each.pool, slot_id=None,
                evidence=f"not a usable pool: {each.error}",
                path=str(pools_dir(self.settings.root) / each.pool), lease_id=None,
                host=hostname()))
        merged["errors"] = errors
        return merged

    def detect_long_allocated_slots(self, max_allocation_hours: float | None = None,
                                    name: str | None = None) -> list[Record]:
        return self.detect_anomalies(name, max_allocation_hours)["long_allocated_slots"]

    def detect_corrupted_slots(self, name: str | None = None) -> list[Record]:
        return self.detect_anomalies(name)["corrupted_slots"]

    def detect_orphaned_locks(self, name: str | None = None) -> list[Record]:
        return self.detect_anomalies(name)["orphaned_locks"]

    def recover_slot(self, slot_ref: str, force: bool = False) -> Record:
        # lazy: allocate and release load no health module
        from necropool.health.repair import recover

        pool, number = pools.resolve_slot(self.settings, slot_ref)
        return self._on_owned_slot(pool, number, None, True, recover, pool, number,
                                   force).to_dict()

    def isolate_slot(self, slot_ref: str, reason: str | None = None) -> dict[str, Any]:
        # lazy: allocate and release load no health module
        from necropool.health.repair import isolate

        pool, number = pools.resolve_slot(self.settings, slot_ref)
        return self._owned(pool, isolate, pool, number, reason).to_dict()

    def auto_recover(self, name: str | None = None, *,
                     max_allocation_hours: float | None = None,
                     recover_corrupted: bool = True, cleanup_orphaned_locks: bool = True,
                     force_release_long_allocated: bool = False,
                     dry_run: bool = False) -> dict[str, Any]:
        """The health API's counters summed over the pools, plus per-pool details; ``errors``: a
        ``PoolOutcome`` for each failure, in order (a pool not usable, an action that
        failed, a pool that could not be done)."""
        # lazy: allocate and release load no health module
        from necropool.health.autorecover import auto_recover, zero_counters

        check_hours(max_allocation_hours)
        self.pool_names(required=name is None)
        began = now()  # a cron log line says when the run began (rendered once the ledger,
        # if any, has told its clock: ``clock.follow_server``)
        counters = zero_counters()
        unusable: walk.Broken = []
        targets = walk.targets(self.settings, name, unusable)
        errors: walk.Broken = [
            PoolOutcome(each.pool, error=f"not a usable pool (left alone): {each.error}")
            for each in unusable]

        def recovered(pool: pools.Pool) -> dict[str, Any]:
            taken = [] if dry_run else self._take_back_reclaimed(
                pool, max_allocation_hours, force_release_long_allocated)
            try:
                result = self._owned(
                    pool, auto_recover, pool, max_allocation_hours=max_allocation_hours,
                    recover_corrupted=recover_corrupted,
                    cleanup_orphaned_locks=cleanup_orphaned_locks,
                    force_release_long_allocated=force_release_long_allocated, dry_run=dry_run)
            finally:
                for number in taken:
                    handover.hand_back_if_held(pool, number)
            for key, value in result.counters.items():
                counters[key] += value
            errors.extend(PoolOutcome(pool.name, error=e) for e in result.errors)
            return result.to_dict()

        results = walk.checked(targets, recovered, errors)
        return {**counters, "errors": errors, "dry_run": dry_run, "at": rfc3339(began),
                "pools": results}

    def _take_back_reclaimed(self, pool: pools.Pool, max_allocation_hours: float | None,
                             force_long: bool) -> list[int]:
        """As root, before ``auto-recover`` works on ``pool`` as its owner: take back from
        their users the handed slots it is about to clean (an abandoned or expired lease, a
        long allocation it may end, a slot in error). Returns their numbers."""
        if os.geteuid() != 0:
            return []
        numbers = [n for n in pool.read_state().slots if handover.handed(pool, n)]
        if not numbers:
            return []
        from necropool.health.detect import detect  # lazy: allocate and release load no health

        found = self._owned(pool, detect, pool, max_allocation_hours=max_allocation_hours)
        kinds = ["abandoned_slots", "expired_leases", "corrupted_slots", "isolated_slots"]
        if force_long:
            kinds.append("long_allocated_slots")
        doomed = {r["slot_id"] for kind in kinds for r in found.to_dict().get(kind, [])}
        taken = []
        for number in numbers:
            state = pools.get_slot(pool.read_state(), pool, number)
            if handover.worked_on(pool, number):  # a ``run``, stopped maybe: deferred
                continue
            if pool.slot_id(number) in doomed or state.lease is None:
                with contextlib.suppress(NecropoolError, OSError):
                    handover.take_back(pool, number)
                    taken.append(number)
        return taken
