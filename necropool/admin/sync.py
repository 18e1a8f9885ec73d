"""Config convergence: ``sync`` creates, grows and updates the pools the config file
declares (shrinks, and deletes the pools it made, only with ``prune``); a pool that fails is
reported in its entry and the other pools still go ahead. ``dry_run`` reports the same
entries and does none of it."""

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from necropool.admin.pools import add_slots, create, delete, free_numbers, remove_slot
from necropool.git import commands as git
from necropool.git import credentials
from necropool.ground.config import PoolSpec, Settings, check_spec, default_config_path
from necropool.ground.errors import Conflict, OperationFailed, PoolOutcome, PoolStep, UsageError
from necropool.ground.layout import PoolPaths, write_atomic
from necropool.ground.progress import Progress
from necropool.ground.redact import split_upstream
from necropool.ground.validate import check_ports
from necropool.pool.mirror import update_mirror
from necropool.pool.pool import Pool, PoolDef, list_pools
from necropool.store.model import AVAILABLE

MANAGED_BY = "sync"  # pool.toml's managed_by of the pools sync made


def sync(settings: Settings, prune: bool = False, progress: Progress | None = None,
         dry_run: bool = False) -> list[PoolOutcome[dict[str, Any]]]:
    """Create or grow the pools the config file declares and converge their settings; shrink,
    or delete a pool sync made that the config no longer declares, only with prune (a pool
    made by hand is never deleted). One outcome per pool, its entry as the result; a pool
    that fails has its error too (and what was done before) and the other pools still go
    ahead."""
    if settings.config_path is None:
        # Without a config file nothing is declared: ``--prune`` would delete every pool.
        raise UsageError(f"sync needs a config file with [pools.NAME] tables: there is none "
                         f"at {default_config_path()} (or pass --config / NECROPOOL_CONFIG)")
    existing = set(list_pools(settings))
    actions = [_attempt(name, _sync_pool, settings, spec, name in existing, prune, progress,
                        dry_run) for name, spec in settings.pools.items()]
    if prune:
        actions += [_attempt(name, _drop_pool, settings, name, dry_run)
                    for name in sorted(existing - set(settings.pools))
                    if _made_by_sync(settings, name)]
    return actions


def _made_by_sync(settings: Settings, name: str) -> bool:
    """True when sync made the pool; one that cannot be read is not deleted either."""
    try:
        return PoolDef.load(PoolPaths(settings.root, name).definition).managed_by == MANAGED_BY
    except (OSError, ValueError, TypeError):
        return False


def _attempt(name: str, step: Callable[..., None],
             *args: object) -> PoolOutcome[dict[str, Any]]:
    """Run one pool's sync step, which fills in its action entry; a failure is reported with
    whatever the step had already done instead of ending the run."""
    entry: dict[str, Any] = {"pool": name}
    with PoolStep(name) as attempt:
        step(entry, *args)
    return PoolOutcome(name, entry, attempt.error)


def _sync_pool(entry: dict[str, Any], settings: Settings, spec: PoolSpec, exists: bool, prune: bool,
               progress: Progress | None, dry_run: bool) -> None:
    spec = check_spec(spec)
    if not exists:
        if not dry_run:
            create(settings, spec, progress, managed_by=MANAGED_BY)
        entry.update(action="created", slots=spec.num_slots)
        return
    pool = Pool(settings, spec.name)
    changed = _converge(pool, spec, dry_run)
    if changed:
        entry["changed"] = changed
    current = pool.read_state()
    have = len(current.slots)
    if have < spec.num_slots:
        added = ([pool.slot_id(n) for n in free_numbers(current, pool, spec.num_slots - have)]
                 if dry_run else add_slots(pool, spec.num_slots - have, progress))
        entry.update(action="grown", added=added)
    elif have > spec.num_slots and prune:
        entry.update(action="shrunk", removed=_shrink(pool, have - spec.num_slots, dry_run))
    else:
        entry.update(action="updated" if changed else "unchanged", slots=have)


def _drop_pool(entry: dict[str, Any], settings: Settings, name: str, dry_run: bool) -> None:
    pool = Pool(settings, name)
    if not dry_run:
        delete(pool)
    entry["action"] = "deleted"


POOL_SETTINGS = ("branch", "keep_ignored", "keep", "fetch_on_allocate", "fetch_backend",
                 "prepare", "prepare_timeout", "include", "include_from", "ports_per_slot",
                 "port_base")


def _converge(pool: Pool, spec: PoolSpec, dry_run: bool = False) -> dict[str, Any]:
    """Rewrite ``pool.toml`` with the settings the spec declares; return what changed as
    ``{key: [old, new]}``. A new branch must exist in the mirror (slots move to it at their
    next cleanup); a new url is refused: the mirror would be of another repository."""
    wanted = {k: getattr(spec, k) for k in POOL_SETTINGS
              if k in spec.declared and getattr(spec, k) is not None}
    if wanted.keys() & {"ports_per_slot", "port_base"}:  # every slot's ports, as numbered
        check_ports(wanted.get("ports_per_slot", pool.definition.ports_per_slot),
                    wanted.get("port_base", pool.definition.port_base),
                    max([*pool.read_state().slots, spec.num_slots]))
    if dry_run:
        return _differences(pool, pool.definition, spec, wanted)
    if wanted.get("branch", pool.definition.branch) != pool.definition.branch:
        _fetch_for_branch(pool, wanted["branch"])
    with pool.locked():
        old = PoolDef.load(pool.paths.definition)
        changed = _differences(pool, old, spec, wanted)
        credential = split_upstream(spec.url)[1]
        if "credentials" in changed and credential is not None:
            credentials.write(pool.paths.credentials, *credential)  # a token rotated
        if "branch" in changed:
            git.mirror_tip(pool.paths.mirror, wanted["branch"])
        if wanted.keys() & changed.keys():
            pool.definition = replace(old, **wanted)
            write_atomic(pool.paths.definition, pool.definition.dump())
    if changed:
        pool.event("update", changed=changed)
    return changed


def _differences(pool: Pool, old: PoolDef, spec: PoolSpec,
                 wanted: dict[str, Any]) -> dict[str, Any]:
    """What converging the pool defined by ``old`` would change, ``{key: [old, new]}`` (a
    credential only as ``***``); a new url is refused (Conflict)."""
    url, credential = split_upstream(spec.url)
    if url != split_upstream(old.url)[0]:
        raise Conflict(f"pool {pool.name!r} mirrors {split_upstream(old.url)[0]}, the config "
                       f"says {url}: delete and re-create the pool to change its url")
    changed = {k: [getattr(old, k), v] for k, v in wanted.items() if getattr(old, k) != v}
    if credential is not None and credentials.read(pool.paths.credentials) != credential:
        changed["credentials"] = ["***", "***"]
    return changed


def _fetch_for_branch(pool: Pool, branch: str) -> None:
    """A branch the config names must exist upstream: when the mirror does not have it yet,
    fetch first, then decide; the refusal says where it looked."""
    if git.read_ref(pool.paths.mirror, f"refs/heads/{branch}"):
        return
    error = update_mirror(pool)
    if not git.read_ref(pool.paths.mirror, f"refs/heads/{branch}"):
        looked = (f"the fetch from {pool.definition.url} failed ({error})" if error else
                  f"not in {pool.definition.url}, fetched just now into {pool.paths.mirror}")
        raise OperationFailed(f"branch {branch!r} does not exist upstream: {looked}")


def _shrink(pool: Pool, count: int, dry_run: bool = False) -> list[str]:
    """Remove up to ``count`` available slots, highest numbers first."""
    current = pool.read_state()
    idle = sorted((n for n, s in current.slots.items() if s.state == AVAILABLE),
                  reverse=True)
    if dry_run:
        return [pool.slot_id(n) for n in idle[:count]]
    removed = []
    for number in idle[:count]:
        try:
            removed.append(remove_slot(pool, number)["slot_id"])
        except Conflict:
            continue
    return removed

