"""Commands over several pools, under the one rule of ``errors.PoolStep``: a pool that does
not open, or whose step fails, is reported and never hides the others."""

from collections.abc import Callable
from typing import TypeVar

from necropool.ground.config import Settings
from necropool.ground.errors import NotFound, PoolOutcome, PoolStep, TryAgain, UsageError
from necropool.pool.pool import Pool, list_pools

T = TypeVar("T")


# The pools a command over several pools could not do, each with its error.
Broken = list[PoolOutcome[object]]


def outcomes(names: list[str], step: Callable[[str], T]) -> list[PoolOutcome[T]]:
    """What ``step`` gives for each pool, or why it failed. When not one pool could be done
    for a cause that is not theirs (a ledger every pool is kept in that cannot be reached,
    or refuses the configuration), that failure is raised: exit 75 (or 2), as for a command
    on one pool, not 3, as for pools that cannot be read."""
    done: list[PoolOutcome[T]] = []
    first: BaseException | None = None
    for name in names:
        with PoolStep(name) as attempt:
            result = step(name)
        if attempt.exc is None:
            done.append(PoolOutcome(name, result))
        else:
            first = first or attempt.exc
            done.append(attempt.failure())
    if isinstance(first, TryAgain | UsageError) and all(o.error is not None for o in done):
        raise first
    return done


def required(settings: Settings, names: list[str]) -> list[str]:
    """``names``, unless there are none: a command over every pool refuses a root without
    pools (a typo, or cron without NECROPOOL_HOME) rather than report that all is well."""
    if names:
        return names
    why = ("it does not exist (set NECROPOOL_HOME, --root, or root in the config file)"
           if not settings.root.is_dir() else
           "it holds none yet: create one with  necropool create POOL URL  (or declare "
           "[pools.NAME] in the config file and run  necropool sync)")
    raise NotFound(f"no pools under {settings.root}: {why}")


def targets(settings: Settings, name: str | None, broken: Broken | None) -> list[Pool]:
    """The named pool, or every pool. With no name and a ``broken`` list, a pool that does
    not open goes there instead of stopping the others; without the list, it raises."""
    if name:
        return [Pool(settings, name)]
    found: list[Pool] = []
    for each in list_pools(settings):
        with PoolStep(each) as step:
            found.append(Pool(settings, each))
        if step.exc is not None:
            if broken is None:
                raise step.exc
            broken.append(step.failure())
    return found


def each(settings: Settings, name: str | None, broken: Broken | None,
         step: Callable[[Pool], list[T]]) -> list[T]:
    """What ``step`` returns for the named pool, or for every pool, joined; a pool that fails
    goes to ``broken`` as for ``targets`` (a named pool's failure is raised)."""
    out: list[T] = []
    for pool in targets(settings, name, broken):
        with PoolStep(pool.name) as attempt:
            out += step(pool)
        if attempt.exc is not None:
            if name or broken is None:
                raise attempt.exc
            broken.append(attempt.failure())
    return out


def checked(pools: list[Pool], step: Callable[[Pool], T], broken: Broken) -> list[T]:
    """What ``step`` returns for each pool; a pool whose step fails goes to ``broken`` and
    the others go ahead. When no pool could even be looked at, the failure is raised: a
    refusal, not a result."""
    done: list[T] = []
    first: BaseException | None = None
    for pool in pools:
        with PoolStep(pool.name) as attempt:
            done.append(step(pool))
        if attempt.exc is not None:
            first = first or attempt.exc
            broken.append(attempt.failure())
    if first is not None and not done:
        raise first
    return done
