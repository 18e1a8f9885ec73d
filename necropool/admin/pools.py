"""Pool administration: create, delete (also a half-made pool's remains), add and remove
slots. Work found in a slot that goes is saved under ``rescued/`` first."""

import contextlib
import importlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from necropool.git import commands as git
from necropool.git import credentials
from necropool.ground.clock import now
from necropool.ground.config import PoolSpec, Settings, check_spec
from necropool.ground.errors import Conflict, NecropoolError, NotFound, UsageError
from necropool.ground.layout import (
    PoolPaths,
    ensure_inside,
    fsync_dir,
    kept_dir,
    pools_dir,
    private_dir,
    remove_tree,
    rename_into_place,
    sweep_temp,
    sync_filesystem,
    temp_name,
    trash_name,
    write_atomic,
)
from necropool.ground.locks import lock_free
from necropool.ground.proc import hostname
from necropool.ground.progress import SLOTS, Progress, Report
from necropool.ground.redact import split_upstream
from necropool.ground.validate import check_pool_name, check_ports
from necropool.lease.refresh import ready_new, save_work
from necropool.pool.mirror import make_mirror
from necropool.pool.pool import Pool, PoolDef, get_slot
from necropool.slot.lastclean import seal
from necropool.store.model import ALLOCATED, AVAILABLE, CLEANING, PoolState, Slot
from necropool.store.open import open_store

Key = TypeVar("Key")


def create(settings: Settings, spec: PoolSpec, progress: Progress | None = None,
           managed_by: str | None = None) -> Pool:
    """Build the pool in a temp directory and rename it into place: a failure or an
    interrupt leaves nothing behind, and a concurrent create of the same name loses cleanly.
    ``managed_by``: what made it (``sync``), recorded in ``pool.toml``."""
    check_spec(spec)
    parent = pools_dir(settings.root)
    private_dir(settings.root)
    private_dir(parent)
    ensure_inside(parent, settings.root)
    sweep_temp(parent, settings.root)
    final = parent / spec.name
    if os.path.lexists(final / "pool.toml"):
        raise Conflict(f"pool {spec.name!r} already exists")
    if os.path.lexists(final):
        raise Conflict(f"{final} is in the way: the remains of a half-made pool (no "
                       f"pool.toml); 'necropool delete {spec.name} --force' removes them")
    url, credential = split_upstream(spec.url)
    if credential is not None:
        credentials.encode(*credential)  # bad input refused before anything is made
    tmp = parent / temp_name(spec.name)
    paths = PoolPaths(settings.root, spec.name, directory=tmp)
    ledger = settings.ledger_for(spec.name)
    try:
        for directory in (tmp, paths.locks, paths.slots, paths.rescued):
            directory.mkdir(mode=0o700)
        os.chmod(tmp, 0o700)  # whatever the umask: the pool is its owner's alone
        if credential is not None:
            credentials.write(paths.credentials, *credential)
        # pygit2 (100-140 ms to import) loads while git clones the mirror
        threading.Thread(target=importlib.import_module, args=("pygit2",)).start()
        make_mirror(url, paths.mirror, timeout=settings.git_timeout,
                    backend=spec.fetch_backend, credentials=paths.credentials, progress=progress)
        write_atomic(paths.mirror_stamp, f"{now().timestamp()}\n".encode())
        branch = spec.branch or git.mirror_branch(paths.mirror)
        git.mirror_tip(paths.mirror, branch)
        git.put_back_mirror_config(paths.mirror, url, branch)  # the one it will keep
        definition = PoolDef(name=spec.name, url=url, branch=branch,
                             keep_ignored=spec.keep_ignored, keep=list(spec.keep),
                             fetch_on_allocate=spec.fetch_on_allocate,
                             fetch_backend=spec.fetch_backend, prepare=spec.prepare,
                             prepare_timeout=spec.prepare_timeout, include=list(spec.include),
                             include_from=spec.include_from,
                             ports_per_slot=spec.ports_per_slot, port_base=spec.port_base,
                             created_at=now(), managed_by=managed_by)
        write_atomic(paths.definition, definition.dump())
        if ledger:  # before the slots are cloned: an unreachable ledger fails fast
            from necropool.store.pg.hosts import register  # lazy: a PostgreSQL ledger only

            register(ledger, spec.name, hostname(), str(settings.root), url, branch)
        new = PoolState(source="new")

        def made(number: int, commit: str) -> None:
            new.slots[number] = Slot(number=number, created_at=now(), commit=commit)

        _clone_slots(paths.mirror, {n: paths.slot_dir(n) for n in range(1, spec.num_slots + 1)},
                     url, branch, made, progress)
        for number in new.slots:  # once all are cloned: the main thread stays free to
            seal(paths.slot_dir(number), paths.slot_record(number))  # take a Ctrl-C
        store = open_store(settings, paths, spec.name)  # not locked: not there yet
        store.save(new)
        if ledger:
            from necropool.store.pg.hosts import mark  # lazy: a PostgreSQL ledger only

            mark(paths, ledger)
        store.append_event("create", url=url, branch=branch, slots=spec.num_slots)
        sync_filesystem(tmp)  # clones and checkouts are not durable by themselves
        try:
            os.rename(tmp, final)
        except OSError:
            raise Conflict(f"pool {spec.name!r} already exists") from None
        fsync_dir(parent)  # else a power loss may take the new pool's name back
    except BaseException:
        remove_tree(tmp, settings.root)
        if ledger and not os.path.lexists(final / "pool.toml"):
            from necropool.store.pg.hosts import unregister  # lazy: a PostgreSQL ledger only

            with contextlib.suppress(NecropoolError):
                unregister(ledger, spec.name, hostname())
        raise
    pool = Pool(settings, spec.name)
    ready_new(pool, sorted(new.slots))  # (once in place: a failed prepare isolates a slot)
    return pool


def _clone_slots(mirror: Path, dests: dict[Key, Path], url: str, branch: str,
                 made: Callable[[Key, str], None], progress: Progress | None) -> None:
    """Clone a slot into each ``dests`` value, one per core at a time (a checkout mostly
    waits on the disk: 4 slots took 1.5 s two at a time against 2.7 s in turn), calling
    ``made(key, commit)`` in this thread as each is done. On any failure or interrupt, no
    clone starts any more and running ones finish before the exception goes on, so the
    caller can remove what is left. The wait is on a count of running clones, not on thread
    joins: an interrupt inside a thread's start must not leave a clone nobody waits for."""
    todo = list(dests.items())
    results: list[tuple[Key, str | BaseException]] = []
    cond = threading.Condition()
    running, stopped = 0, False

    def worker() -> None:
        nonlocal running
        while True:
            with cond:
                if stopped or not todo:
                    return
                key, dest = todo.pop(0)
                running += 1
            outcome: str | BaseException
            try:
                outcome = git.clone_slot(mirror, dest, url, branch)
            except BaseException as exc:  # handed to the main thread, raised there
                outcome = exc
            with cond:
                running -= 1
                results.append((key, outcome))
                cond.notify_all()

    total = len(dests)
    try:
        for _ in range(max(1, min(total, os.cpu_count() or 1))):
            threading.Thread(target=worker, name="necropool-clone", daemon=True).start()
        for done in range(1, total + 1):
            with cond:
                while not results:
                    cond.wait()
                key, outcome = results.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            made(key, outcome)
            if progress:
                progress(Report(SLOTS, done, total))
    finally:
        with cond:
            stopped = True
            while running:
                cond.wait()


def _live_holders(pool: Pool, current: PoolState) -> list[str]:
    """Slots whose lock a live process holds (a cleaning worker or ``run``)."""
    ensure_inside(pool.paths.locks, pool.settings.root)
    return [pool.slot_id(n) for n in current.slots if not lock_free(pool.paths.slot_lock(n))]


def delete(pool: Pool, force: bool = False, discard_work: bool = False) -> dict[str, Any]:
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
        if pool.ledger:  # in the same transaction as the lock: gone from both or neither
            from necropool.store.pg.hosts import unregister  # lazy: a PostgreSQL ledger only

            unregister(pool.ledger, pool.name, hostname())
        trash = pool.paths.dir.parent / trash_name(pool.name)
        os.rename(pool.paths.dir, trash)
    remove_tree(trash, pool.settings.root)
    return {"pool": pool.name, "deleted": True, "slots": len(current.slots), "rescued": kept}


def delete_remains(settings: Settings, name: str) -> dict[str, Any]:
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
    kept_dir(root).mkdir(mode=0o700, exist_ok=True)
    rename_into_place(source, target)
    return str(target)


def _has_work(slot: Slot) -> bool:
    """Whether a slot may hold a holder's work: in use, in error, or released uncleaned."""
    return slot.state != AVAILABLE or slot.needs_cleanup


def _save_work(pool: Pool, slot: Slot) -> str | None:
    """Save a slot's work before it is removed; nobody else may claim the slot meanwhile
    (its lock is ours, or the pool lock is held)."""
    rescued = save_work(pool, slot, f"{slot.state}-removed")
    if rescued:
        pool.event("rescue", slot_id=pool.slot_id(slot.number), rescued=rescued)
    return rescued


def _free_number(current: PoolState, pool: Pool) -> int:
    return free_numbers(current, pool, 1)[0]


def free_numbers(current: PoolState, pool: Pool, count: int) -> list[int]:
    """The ``count`` lowest numbers neither registered nor on disk: those new slots get."""
    numbers: list[int] = []
    number = 1
    while len(numbers) < count:
        if number not in current.slots and not os.path.lexists(pool.slot_dir(number)):
            numbers.append(number)
        number += 1
    return numbers


def add_slots(pool: Pool, count: int, progress: Progress | None = None) -> list[str]:
    """Clone ``count`` slots from the mirror, each registered under the lowest free number."""
    if count < 1:
        raise UsageError(f"invalid count {count}: must be at least 1")
    pool.sweep()
    current = pool.read_state()  # the new slots' ports must exist: refused before any clone
    check_ports(pool.definition.ports_per_slot, pool.definition.port_base,
                max([*current.slots, *free_numbers(current, pool, count)]))
    ensure_inside(pool.paths.slots, pool.settings.root)
    added: list[str] = []
    numbers: list[int] = []
    # Cloned next to the pools, not inside this one: a delete meanwhile must not find its
    # pool's directory made again by a clone (a half-made pool, neither created nor deleted).
    temps = [pools_dir(pool.settings.root) / temp_name(f"{pool.name}.add{i}")
             for i in range(count)]

    def made(tmp: Path, commit: str) -> None:
        sync_filesystem(tmp)  # outside the pool lock: it may take a while
        with pool.transaction() as current:
            number = _free_number(current, pool)
            rename_into_place(tmp, pool.slot_dir(number), flush=False)
            seal(pool.slot_dir(number), pool.paths.slot_record(number))  # after the rename
            current.slots[number] = Slot(number=number, created_at=now(), commit=commit)
        pool.event("add", slot_id=pool.slot_id(number))
        added.append(pool.slot_id(number))
        numbers.append(number)

    try:
        _clone_slots(pool.paths.mirror, {tmp: tmp for tmp in temps}, pool.definition.url,
                     pool.definition.branch, made, progress)
    except BaseException:
        for tmp in temps:  # the clones not registered yet
            remove_tree(tmp, pool.settings.root)
        raise
    ready_new(pool, numbers)
    return added


def remove_slot(pool: Pool, number: int, force: bool = False,
                discard_work: bool = False) -> dict[str, Any]:
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

