"""How the CLI shows the outcomes of a command over several pools (``PoolOutcome``) in the
shapes of docs/json.md: a pool that failed is ``{"pool", "error"}`` among the others, or
``"POOL: why"`` in an ``errors`` list."""

from collections.abc import Sequence
from typing import Any, TypeVar

from necropool.ground.errors import PoolOutcome

T = TypeVar("T")


def split(outcomes: Sequence[PoolOutcome[T]]) -> tuple[list[T], list[PoolOutcome[T]]]:
    """The results of the pools that went well, and the outcomes of those that failed."""
    done = [o.result for o in outcomes if o.error is None and o.result is not None]
    return done, [o for o in outcomes if o.error is not None]


def entry(outcome: PoolOutcome[dict[str, Any]]) -> dict[str, Any]:
    """A pool's entry in a list of pools: its result, or ``{"pool", "error"}``."""
    if outcome.error is None and outcome.result is not None:
        return outcome.result
    return {"pool": outcome.pool, "error": outcome.error}


def lines(outcomes: Sequence[PoolOutcome[object]]) -> list[str]:
    """``"POOL: why"`` for each failure (a pool name has no colon)."""
    return [f"{o.pool}: {o.error}" for o in outcomes]
