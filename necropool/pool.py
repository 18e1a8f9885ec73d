"""Pools: their definition, state transactions, and administration (create, delete, add,
remove, sync). Slot lifecycle lives in ``lifecycle``; health in ``health``."""

import importlib
import os
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from necropool import events, git, state, wakeup
from necropool.clock import now, rfc3339
from necropool.config import FETCH_BACKENDS, PoolSpec, Settings, default_config_path
from necropool.errors import Conflict, NecropoolError, NotFound, OperationFailed, UsageError
from necropool.layout import (
    PoolPaths,
    ensure_inside,
    kept_dir,
    pools_dir,
    remove_tree,
    sweep_temp,
    temp_name,
    trash_name,
    write_atomic,
)
from necropool.locks import FileLock
from necropool.names import check_pool_name, check_url, parse_slot_id
from necropool.records import Record
from necropool.state import ALLOCATED, AVAILABLE, CLEANING, PoolState, Slot

Progress = Callable[[int, int], None]


@dataclass
class PoolDef:
    """``pool.toml``: what a pool is a pool of."""

    name: str
    url: str
    branch: str
    keep_ignored: bool = False
    fetch_on_allocate: bool = True
    fetch_backend: str = "git"
    created_at: datetime | None = None

    @classmethod
    def load(cls, path: Path) -> "PoolDef":
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)

    def dump(self) -> bytes:
        import tomli_w

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
            raise NotFound(f"pool {name!r} does not exist under {settings.root}") from None
        except (OSError, tomllib.TOMLDecodeError, TypeError) as exc:
            raise OperationFailed(f"pool {name!r}: pool.toml is unreadable: {exc}") from None

    def read_state(self) -> PoolState:
        """A consistent snapshot without the lock (writes are atomic replaces)."""
        return state.load(self.paths)

    @property
    def slots(self) -> list[Record]:
        """Every slot as ``status`` reports it, by number (the guide's ``pool.slots``)."""
        current = self.read_state()
        return [describe_slot(self, current.slots[n]) for n in sorted(current.slots)]

    @contextmanager
    def locked(self) -> Iterator[PoolState]:
        """Hold the pool lock and yield the state; nothing is written."""
        lock = FileLock(self.paths.pool_lock)
        try:
            lock.acquire(self.settings.lock_timeout, f"lock of pool {self.name}")
        except FileNotFoundError:
            raise NotFound(f"pool {self.name!r} does not exist") from None
        try:
            if not self.paths.definition.exists():
                raise NotFound(f"pool {self.name!r} does not exist")
            yield state.load(self.paths)
        finally:
            lock.release()

    @contextmanager
    def transaction(self) -> Iterator[PoolState]:
        """Read-modify-write of the state under the pool lock; saved when the block ends.
        Leftovers of killed processes are swept first (outside the lock), so every command
        that changes a pool finishes what a crash left half-done."""
        self.sweep()
        with self.locked() as current:
            yield current
            self.save(current)

    def save(self, current: PoolState) -> None:
        """Write the state (call only while holding the pool lock); when it leaves a slot
        free, wake the allocation waiter at the head of the queue, if any (waking it for
        other writes only makes it take the pool lock for nothing)."""
        state.save(self.paths, current)
        if any(slot.state == AVAILABLE for slot in current.slots.values()):
            wakeup.poke(self.paths.wake)

    def sweep(self) -> None:
        """Finish deleting what dead processes left half-done (temp clones, trash, temp files;
        also a killed ``create``'s or ``delete``'s, next to the pools)."""
        for directory in (self.paths.dir, self.paths.slots, pools_dir(self.settings.root)):
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

    def event(self, name: str, **fields) -> None:
        events.append(self.paths.events, name, pool=self.name, **fields)

    def tip(self) -> str:
        return git.mirror_tip(self.paths.mirror, self.definition.branch)


def get_slot(current: PoolState, pool: Pool, number: int) -> Slot:
    slot = current.slots.get(number)
    if slot is None:
        raise NotFound(f"slot {pool.slot_id(number)} does not exist")
    return slot


def resolve_slot(settings: Settings, ref: str) -> tuple[Pool, int]:
    """A slot id (``web-3``) or any path inside a slot's directory."""
    if not isinstance(ref, str) or "\0" in ref:
        raise UsageError(f"invalid slot {ref!r}: expected a slot id or a path in a slot")
    if "/" in ref or ref in (".", ".."):
        path = Path(ref).absolute().resolve()
        try:
            rel = path.relative_to(pools_dir(settings.root).resolve())
        except ValueError:
            raise UsageError(f"{ref!r} is not inside a slot under {settings.root}") from None
        if not path.exists():
            raise NotFound(f"no such path {ref!r}")
        parts = rel.parts
        if len(parts) < 3 or parts[1] != "slots" or not parts[2].isdigit():
            raise UsageError(f"{ref!r} is not inside a slot under {settings.root}")
        return Pool(settings, parts[0]), int(parts[2])
    name, number = parse_slot_id(ref)
    return Pool(settings, name), number


def list_pools(settings: Settings) -> list[str]:
    try:
        entries = os.scandir(pools_dir(settings.root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _check_spec(spec: PoolSpec) -> PoolSpec:
    check_pool_name(spec.name)
    check_url(spec.url)
    if spec.num_slots < 1:
        raise UsageError(f"invalid slot count {spec.num_slots}: must be at least 1")
    if spec.fetch_backend not in FETCH_BACKENDS:
        raise UsageError(f"invalid fetch backend {spec.fetch_backend!r}")
    if spec.branch is not None and (not spec.branch or spec.branch.startswith("-")
                                    or any(ord(c) < 32 for c in spec.branch)
                                    or git.run(["check-ref-format", "--branch", spec.branch],
                                               check=False).returncode != 0):
        raise UsageError(f"invalid branch name {spec.branch!r}")
    if "://" not in spec.url and ":" not in spec.url.split("/")[0] and Path(spec.url).exists():
        spec.url = str(Path(spec.url).resolve())  # a local path: make it absolute
    return spec


def create(settings: Settings, spec: PoolSpec, progress: Progress | None = None) -> Pool:
    """Build the pool in a temp directory and rename it into place: a failure or an
    interrupt leaves nothing behind, and a concurrent create of the same name loses cleanly."""
    _check_spec(spec)
    parent = pools_dir(settings.root)
    parent.mkdir(parents=True, exist_ok=True)
    ensure_inside(parent, settings.root)
    sweep_temp(parent, settings.root)
    final = parent / spec.name
    if os.path.lexists(final / "pool.toml"):
        raise Conflict(f"pool {spec.name!r} already exists")
    if os.path.lexists(final):
        raise Conflict(f"{final} is in the way: the remains of a half-made pool (no "
                       f"pool.toml); 'necropool delete {spec.name} --force' removes them")
    tmp = parent / temp_name(spec.name)
    paths = PoolPaths(settings.root, spec.name, directory=tmp)
    try:
        for directory in (tmp, paths.locks, paths.slots, paths.rescued):
            directory.mkdir()
        # pygit2 (100-140 ms to import) loads while git clones the mirror
        threading.Thread(target=importlib.import_module, args=("pygit2",)).start()
        git.clone_mirror(spec.url, paths.mirror, timeout=settings.git_timeout,
                         backend=spec.fetch_backend)
        write_atomic(paths.mirror_stamp, f"{now().timestamp()}\n".encode())
        branch = spec.branch or git.mirror_branch(paths.mirror)
        git.mirror_tip(paths.mirror, branch)
        definition = PoolDef(name=spec.name, url=spec.url, branch=branch,
                             keep_ignored=spec.keep_ignored,
                             fetch_on_allocate=spec.fetch_on_allocate,
                             fetch_backend=spec.fetch_backend, created_at=now())
        write_atomic(paths.definition, definition.dump())
        new = PoolState(source="new")

        def made(number: int, commit: str) -> None:
            new.slots[number] = Slot(number=number, created_at=now(), commit=commit)

        _clone_slots(paths.mirror, {n: paths.slot_dir(n) for n in range(1, spec.num_slots + 1)},
                     spec.url, branch, made, progress)
        state.save(paths, new)
        events.append(paths.events, "create", pool=spec.name, url=spec.url, branch=branch,
                      slots=spec.num_slots)
        try:
            os.rename(tmp, final)
        except OSError:
            raise Conflict(f"pool {spec.name!r} already exists") from None
    except BaseException:
        remove_tree(tmp, settings.root)
        raise
    return Pool(settings, spec.name)


def _clone_slots(mirror: Path, dests: dict, url: str, branch: str,
                 made: Callable[[object, str], None], progress: Progress | None) -> None:
    """Clone a slot into each ``dests`` value, one per core at a time (a checkout mostly
    waits on the disk: 4 slots took 1.5 s two at a time against 2.7 s in turn), calling
    ``made(key, commit)`` in this thread as each is done. On any failure or interrupt, clones
    not started are cancelled and running ones finish before the exception goes on, so the
    caller can remove what is left."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    workers = ThreadPoolExecutor(max_workers=max(1, min(len(dests), os.cpu_count() or 1)))
    try:
        futures = {workers.submit(git.clone_slot, mirror, dest, url, branch): key
                   for key, dest in dests.items()}
        for done, future in enumerate(as_completed(futures), 1):
            made(futures[future], future.result())
            if progress:
                progress(done, len(dests))
    finally:
        workers.shutdown(wait=True, cancel_futures=True)


def _live_holders(pool: Pool, current: PoolState) -> list[str]:
    """Slots whose lock a live process holds (a cleaning worker or ``run``)."""
    busy = []
    for number in current.slots:
        lock = pool.slot_lock(number)
        if lock.try_acquire(create=False):
            lock.release()
        elif pool.paths.slot_lock(number).exists():
            busy.append(pool.slot_id(number))
    return busy


def delete(pool: Pool, force: bool = False, discard_work: bool = False) -> dict:
    """Delete a pool. With ``force``, slots in use go too, their holders' work saved first
    (unless ``discard_work``); saved work (this and earlier rescues) is kept under
    ``<root>/rescued/``."""
    with pool.locked() as current:
        in_use = [pool.slot_id(n) for n, s in current.slots.items()
                  if s.state in (ALLOCATED, CLEANING)]
        if in_use and not force:
            raise Conflict(f"pool {pool.name!r} has slots in use ({', '.join(in_use)}): "
                           "release them or pass --force")
        busy = _live_holders(pool, current)
        if busy:
            raise Conflict(f"slots held by live processes: {', '.join(busy)}")
        if not discard_work:
            for slot in current.slots.values():
                if _has_work(slot):
                    _save_work(pool, slot)
        kept = _keep_rescued(pool.settings.root, pool.paths.rescued, pool.name)
        trash = pool.paths.dir.parent / trash_name(pool.name)
        os.rename(pool.paths.dir, trash)
    remove_tree(trash, pool.settings.root)
    return {"pool": pool.name, "deleted": True, "slots": len(current.slots), "rescued": kept}


def delete_remains(settings: Settings, name: str) -> dict:
    """Remove what a half-made pool left (a directory under ``pools/`` without
    ``pool.toml``: a create or add interrupted by a delete, say); slot directories or
    rescued work in it are kept under ``<root>/rescued/``. A symlink or a file in a pool's
    place is refused, never followed: not necropool's to remove."""
    check_pool_name(name)
    parent = pools_dir(settings.root)
    path = parent / name
    ensure_inside(parent, settings.root)
    if not os.path.lexists(path):
        raise NotFound(f"pool {name!r} does not exist under {settings.root}")
    if path.is_symlink() or not path.is_dir():
        raise Conflict(f"{path} is not a pool directory (a symlink or a file): left alone")
    paths = PoolPaths(settings.root, name)
    if os.path.lexists(paths.definition):
        raise Conflict(f"pool {name!r} is a whole pool, not remains")
    kept = None
    slots = [e for e in _entries(paths.slots) if e.isdigit()]
    if slots or _entries(paths.rescued):
        kept = _keep_rescued(settings.root, path, name, suffix=".remains")
    else:
        trash = parent / trash_name(name)
        os.rename(path, trash)
        remove_tree(trash, settings.root)
    return {"pool": name, "deleted": True, "slots": len(slots), "rescued": kept}


def _entries(directory: Path) -> list[str]:
    """The names in a directory that is not a symlink; [] when it is one or is missing."""
    if directory.is_symlink() or not directory.is_dir():
        return []
    return os.listdir(directory)


def _keep_rescued(root: Path, source: Path, name: str, suffix: str = "") -> str | None:
    """Move ``source`` (a pool's ``rescued/``, or what is left of a pool) to
    ``<root>/rescued/NAME-STAMP``, when it holds anything; return where it went."""
    if not _entries(source):
        return None
    target = kept_dir(root) / f"{name}-{now():%Y%m%dT%H%M%S%fZ}{suffix}"
    ensure_inside(source, root)
    ensure_inside(kept_dir(root), root)
    kept_dir(root).mkdir(exist_ok=True)
    os.rename(source, target)
    return str(target)


def _has_work(slot: Slot) -> bool:
    """Whether a slot may hold a holder's work: in use, in error, or released uncleaned."""
    return slot.state != AVAILABLE or slot.needs_cleanup


def _save_work(pool: Pool, slot: Slot) -> str | None:
    """Save a slot's work before it is removed; nobody else may claim the slot meanwhile
    (its lock is ours, or the pool lock is held)."""
    from necropool import lifecycle

    rescued = lifecycle.save_work(pool, slot, f"{slot.state}-removed")
    if rescued:
        pool.event("rescue", slot_id=pool.slot_id(slot.number), rescued=rescued)
    return rescued


def _free_number(current: PoolState, pool: Pool) -> int:
    number = 1
    while number in current.slots or os.path.lexists(pool.slot_dir(number)):
        number += 1
    return number


def add_slots(pool: Pool, count: int, progress: Progress | None = None) -> list[str]:
    """Clone ``count`` slots from the mirror, each registered under the lowest free number."""
    if count < 1:
        raise UsageError(f"invalid count {count}: must be at least 1")
    pool.sweep()
    ensure_inside(pool.paths.slots, pool.settings.root)
    added = []
    # Cloned next to the pools, not inside this one: a delete meanwhile must not find its
    # pool's directory made again by a clone (a half-made pool, neither created nor deleted).
    temps = [pools_dir(pool.settings.root) / temp_name(f"{pool.name}.add{i}")
             for i in range(count)]

    def made(tmp: Path, commit: str) -> None:
        with pool.transaction() as current:
            number = _free_number(current, pool)
            os.rename(tmp, pool.slot_dir(number))
            current.slots[number] = Slot(number=number, created_at=now(), commit=commit)
        pool.event("add", slot_id=pool.slot_id(number))
        added.append(pool.slot_id(number))

    try:
        _clone_slots(pool.paths.mirror, {tmp: tmp for tmp in temps}, pool.definition.url,
                     pool.definition.branch, made, progress)
    except BaseException:
        for tmp in temps:  # the clones not registered yet
            remove_tree(tmp, pool.settings.root)
        raise
    return added


def remove_slot(pool: Pool, number: int, force: bool = False,
                discard_work: bool = False) -> dict:
    """Remove a slot; with ``force`` one in use too, its holder's work saved first (unless
    ``discard_work``)."""
    pool.sweep()
    with pool.locked() as current:
        slot = get_slot(current, pool, number)
        if slot.state in (ALLOCATED, CLEANING) and not force:
            raise Conflict(f"slot {pool.slot_id(number)} is {slot.state}: "
                           "release it or pass --force")
        slot_dir = pool.checked_slot_dir(number)  # never rename through a symlinked slots/
        lock = pool.slot_lock(number)
        if not lock.try_acquire():
            raise Conflict(f"slot {pool.slot_id(number)} is held by a live process")
        save = not discard_work and _has_work(slot)
    rescued = None
    try:
        if save:  # under the slot lock: nobody else can claim it meanwhile
            rescued = _save_work(pool, slot)
        with pool.locked() as current:
            # State first: a crash before the rename leaves a directory no slot owns (detect
            # reports it, auto-recover moves it aside), never a slot without its directory.
            current.slots.pop(number, None)
            pool.save(current)
            trash = pool.paths.slots / trash_name(str(number))
            if os.path.lexists(slot_dir):
                os.rename(slot_dir, trash)
    finally:
        lock.release(unlink=True)
    remove_tree(trash, pool.settings.root)
    pool.event("remove", slot_id=pool.slot_id(number), state=slot.state, rescued=rescued)
    return {"slot_id": pool.slot_id(number), "pool": pool.name, "removed": True,
            "rescued": rescued}


def sync(settings: Settings, prune: bool = False, progress: Progress | None = None) -> list[dict]:
    """Create or grow the pools the config file declares and converge their settings; shrink
    or delete only with prune. One entry per pool; a pool that fails is reported in its entry
    (``"action": "failed"``) and the other pools still go ahead."""
    if settings.config_path is None:
        # Without a config file nothing is declared: ``--prune`` would delete every pool.
        raise UsageError(f"sync needs a config file with [pools.NAME] tables: there is none "
                         f"at {default_config_path()} (or pass --config / NECROPOOL_CONFIG)")
    existing = set(list_pools(settings))
    actions = [_attempt(name, _sync_pool, settings, spec, name in existing, prune, progress)
               for name, spec in settings.pools.items()]
    if prune:
        actions += [_attempt(name, _drop_pool, settings, name)
                    for name in sorted(existing - set(settings.pools))]
    return actions


def _attempt(name: str, step: Callable[..., None], *args) -> dict:
    """Run one pool's sync step, which fills in its action entry; a failure is recorded there
    (after whatever the step had already done) instead of ending the run."""
    entry = {"pool": name}
    try:
        step(entry, *args)
    except (NecropoolError, OSError) as exc:
        entry.update(action="failed", error=getattr(exc, "message", None) or str(exc))
    return entry


def _sync_pool(entry: dict, settings: Settings, spec: PoolSpec, exists: bool, prune: bool,
               progress: Progress | None) -> None:
    if not exists:
        create(settings, spec, progress)
        entry.update(action="created", slots=spec.num_slots)
        return
    pool = Pool(settings, spec.name)
    changed = _converge(pool, _check_spec(spec))
    if changed:
        entry["changed"] = changed
    have = len(pool.read_state().slots)
    if have < spec.num_slots:
        entry.update(action="grown", added=add_slots(pool, spec.num_slots - have, progress))
    elif have > spec.num_slots and prune:
        entry.update(action="shrunk", removed=_shrink(pool, have - spec.num_slots))
    else:
        entry.update(action="updated" if changed else "unchanged", slots=have)


def _drop_pool(entry: dict, settings: Settings, name: str) -> None:
    delete(Pool(settings, name))
    entry["action"] = "deleted"


POOL_SETTINGS = ("branch", "keep_ignored", "fetch_on_allocate", "fetch_backend")


def _converge(pool: Pool, spec: PoolSpec) -> dict:
    """Rewrite ``pool.toml`` with the settings the spec declares; return what changed as
    ``{key: [old, new]}``. A new branch must exist in the mirror (slots move to it at their
    next cleanup); a new url is refused: the mirror would be of another repository."""
    wanted = {k: getattr(spec, k) for k in POOL_SETTINGS
              if k in spec.declared and getattr(spec, k) is not None}
    if wanted.get("branch", pool.definition.branch) != pool.definition.branch:
        _fetch_for_branch(pool, wanted["branch"])
    with pool.locked():
        old = PoolDef.load(pool.paths.definition)
        if spec.url != old.url:
            raise Conflict(f"pool {pool.name!r} mirrors {old.url}, the config says {spec.url}: "
                           "delete and re-create the pool to change its url")
        changed = {k: [getattr(old, k), v] for k, v in wanted.items() if getattr(old, k) != v}
        if "branch" in changed:
            git.mirror_tip(pool.paths.mirror, spec.branch)
        if changed:
            pool.definition = replace(old, **wanted)
            write_atomic(pool.paths.definition, pool.definition.dump())
    if changed:
        pool.event("update", changed=changed)
    return changed


def _fetch_for_branch(pool: Pool, branch: str) -> None:
    """A branch the config names must exist upstream: when the mirror does not have it yet,
    fetch first, then decide; the refusal says where it looked."""
    if git.read_ref(pool.paths.mirror, f"refs/heads/{branch}"):
        return
    from necropool.lifecycle import update_mirror

    error = update_mirror(pool)
    if not git.read_ref(pool.paths.mirror, f"refs/heads/{branch}"):
        looked = (f"the fetch from {pool.definition.url} failed ({error})" if error else
                  f"not in {pool.definition.url}, fetched just now into {pool.paths.mirror}")
        raise OperationFailed(f"branch {branch!r} does not exist upstream: {looked}")


def _shrink(pool: Pool, count: int) -> list[str]:
    """Remove up to ``count`` available slots, highest numbers first."""
    current = pool.read_state()
    idle = sorted((n for n, s in current.slots.items() if s.state == state.AVAILABLE),
                  reverse=True)
    removed = []
    for number in idle[:count]:
        try:
            removed.append(remove_slot(pool, number)["slot_id"])
        except Conflict:
            continue
    return removed


def describe_slot(pool: Pool, slot: Slot) -> Record:
    """A slot as ``status``/``allocate`` report it (the JSON contract). ``metadata`` is the
    lease's; an isolated slot's carries ``isolated_at`` and ``isolation_reason`` (as the
    guide reads them)."""
    path = pool.slot_dir(slot.number)
    branch, commit = git.read_head(path / ".git")
    lease = slot.lease
    holder = lease.holder if lease else None
    metadata = dict(lease.metadata) if lease else {}
    if slot.isolated_at:
        metadata.update(isolated_at=rfc3339(slot.isolated_at),
                        isolation_reason=slot.isolation_reason)
    return Record({
        "slot_id": pool.slot_id(slot.number), "pool": pool.name, "path": str(path),
        "state": slot.state, "lease_id": lease.lease_id if lease else None,
        "owner": lease.owner if lease else None,
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
    })


CLOCK_SLACK = 60  # seconds a fetch stamp may lie ahead of this host's clock


def mirror_freshness(pool: Pool) -> tuple[datetime | None, str | None]:
    """When the mirror last fetched, and why it is stale (None when it is not): its last
    fetch failed (the upstream is unreachable), its stamp is in the future, or, for a pool
    that fetches on allocate, it has not fetched for ``stale_mirror_hours``."""
    import json
    from datetime import UTC, timedelta

    try:
        fetched = datetime.fromtimestamp(float(pool.paths.mirror_stamp.read_text()), UTC)
    except (OSError, ValueError, OverflowError):
        fetched = None
    try:
        failed = json.loads(pool.paths.mirror_failed.read_text())
        return fetched, f"last fetch failed at {failed['time']}: {failed['error']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    at, hours = now(), pool.settings.stale_mirror_hours
    if fetched is None:
        return None, "no record of a fetch (mirror.fetched missing or unreadable)"
    if fetched > at + timedelta(seconds=CLOCK_SLACK):
        return fetched, f"last fetch stamped {rfc3339(fetched)}, in the future"
    if pool.definition.fetch_on_allocate and fetched < at - timedelta(hours=hours):
        return fetched, f"not fetched since {rfc3339(fetched)} (over {hours:g} h)"
    return fetched, None


def describe_pool(pool: Pool, current: PoolState, with_slots: bool = True) -> dict:
    counts = {s: 0 for s in state.STATES}
    for slot in current.slots.values():
        counts[slot.state] += 1
    data = {
        "pool": pool.name, "path": str(pool.paths.dir), "url": pool.definition.url,
        "branch": pool.definition.branch, "mirror_commit": git.read_ref(
            pool.paths.mirror, f"refs/heads/{pool.definition.branch}"),
        "num_slots": len(current.slots), "counts": counts,
        "keep_ignored": pool.definition.keep_ignored,
        "fetch_on_allocate": pool.definition.fetch_on_allocate,
        "state_source": current.source,
    }
    fetched, stale = mirror_freshness(pool)
    data.update(mirror_fetched_at=rfc3339(fetched), mirror_stale=stale)
    if with_slots:
        data["slots"] = [describe_slot(pool, s) for _, s in sorted(current.slots.items())]
    return data
