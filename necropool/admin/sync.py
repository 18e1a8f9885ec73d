"""Config convergence: ``sync`` creates, grows and updates the pools the config file
declares (shrinks and deletes only with ``prune``); a pool that fails is reported in its
entry and the other pools still go ahead."""

from collections.abc import Callable
from dataclasses import replace

from necropool.admin.pools import Progress, add_slots, create, delete, remove_slot
from necropool.git import commands as git
from necropool.ground.config import PoolSpec, Settings, check_spec, default_config_path
from necropool.ground.errors import Conflict, OperationFailed, PoolStep, UsageError
from necropool.ground.layout import write_atomic
from necropool.pool.mirror import update_mirror
from necropool.pool.pool import Pool, PoolDef, list_pools
from necropool.store.model import AVAILABLE


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
    with PoolStep(name) as attempt:
        step(entry, *args)
    if attempt.error:
        entry.update(action="failed", error=attempt.error)
    return entry


def _sync_pool(entry: dict, settings: Settings, spec: PoolSpec, exists: bool, prune: bool,
               progress: Progress | None) -> None:
    if not exists:
        create(settings, spec, progress)
        entry.update(action="created", slots=spec.num_slots)
        return
    pool = Pool(settings, spec.name)
    changed = _converge(pool, check_spec(spec))
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


POOL_SETTINGS = ("branch", "keep_ignored", "keep", "fetch_on_allocate", "fetch_backend")


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
            git.mirror_tip(pool.paths.mirror, wanted["branch"])
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
    error = update_mirror(pool)
    if not git.read_ref(pool.paths.mirror, f"refs/heads/{branch}"):
        looked = (f"the fetch from {pool.definition.url} failed ({error})" if error else
                  f"not in {pool.definition.url}, fetched just now into {pool.paths.mirror}")
        raise OperationFailed(f"branch {branch!r} does not exist upstream: {looked}")


def _shrink(pool: Pool, count: int) -> list[str]:
    """Remove up to ``count`` available slots, highest numbers first."""
    current = pool.read_state()
    idle = sorted((n for n, s in current.slots.items() if s.state == AVAILABLE),
                  reverse=True)
    removed = []
    for number in idle[:count]:
        try:
            removed.append(remove_slot(pool, number)["slot_id"])
        except Conflict:
            continue
    return removed

