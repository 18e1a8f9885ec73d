"""Exceptions of the core; each carries the exit code the CLI reports."""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Never, TypeVar


class NecropoolError(Exception):
    """Base error: ``code`` is a stable machine-readable name, ``exit_code`` the CLI status."""

    exit_code = 3
    code = "failed"

    def __init__(self, message: str, **details: object):
        super().__init__(message)
        self.message = message
        self.details = details


class UsageError(NecropoolError):
    """Bad name, bad flag or invalid configuration."""

    exit_code = 2
    code = "usage"


class OperationFailed(NecropoolError):
    """A git call, repair or write failed."""

    exit_code = 3
    code = "failed"


class NotFound(NecropoolError):
    """A pool or slot does not exist."""

    exit_code = 4
    code = "not_found"


class Conflict(NecropoolError):
    """Wrong state for the operation, stale lease, pool exists."""

    exit_code = 5
    code = "conflict"


class TryAgain(NecropoolError):
    """No free slot or a lock timeout: try again later."""

    exit_code = 75
    code = "unavailable"


class Skipped(Conflict):
    """An action not taken because its slot changed since it was judged (or is in use):
    nothing is wrong, the next run judges afresh."""


# The one rule for commands over several pools: a broken pool never hides the others. A
# failure of these kinds is reported in that pool's entry, and the next pool goes ahead.
POOL_FAILURES = (NecropoolError, OSError)


T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class PoolOutcome(Generic[T_co]):
    """One pool's part of a command over several pools, as the core reports it: what it
    gave (``result``) or, when it failed, why (``error``, one line; ``result`` is then what
    was done before the failure, if anything). Only the CLI turns it into text or JSON."""

    pool: str
    result: T_co | None = None
    error: str | None = None


class PoolStep:
    """One pool's part of a command over several pools, under the rule above: ``with
    PoolStep(name) as step:`` ends the block on a failure of ``POOL_FAILURES`` without
    raising it, keeping it as ``step.exc`` and its one-line ``step.error``; the caller
    reports it (``step.failure()``) and goes on with the next pool."""

    def __init__(self, pool: str):
        self.pool = pool
        self.exc: BaseException | None = None
        self.error: str | None = None

    def __enter__(self) -> "PoolStep":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if not isinstance(exc, POOL_FAILURES):
            return False
        self.exc, self.error = exc, explain(exc)
        return True

    def failure(self) -> PoolOutcome[Never]:
        """The pool's outcome after the block failed."""
        return PoolOutcome(self.pool, error=self.error)


def fail_for(broken: Sequence[PoolOutcome[object]]) -> None:
    """After showing what could be read: fail (exit 3) naming each pool that could not."""
    if broken:
        raise OperationFailed(named(broken))


def named(broken: Sequence[PoolOutcome[object]]) -> str:
    """``pool NAME: why; ...`` for the pools that failed."""
    return "; ".join(f"pool {b.pool}: {b.error}" for b in broken)


def explain(exc: BaseException) -> str:
    """A one-line message for any exception; one necropool did not expect says what it was."""
    if isinstance(exc, NecropoolError):
        return exc.message
    if isinstance(exc, OSError):  # what went wrong, and on which path
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"unexpected {type(exc).__name__}: {exc}"


# Failures of the machine, not of the slot: they pass once space is freed, the disk is
# back or git is installed again, so what they isolated is retried (``retry_due``).
_ENVIRONMENTAL = (("no space", ("No space left on device", "Disk quota exceeded")),
                  ("I/O error", ("Input/output error",)),
                  ("git missing", ("git is not installed",)),
                  # a prepare command fails for a registry down or a lock file not yet fixed
                  ("prepare failed", ("prepare failed: ",)))
_CAUSE = re.compile(r" \[environmental: (?P<cause>[^;\]]+); attempt (?P<n>\d+)\]$")
RETRY_BASE, RETRY_MAX = 60.0, 3600.0  # seconds: 1 min, 2, 4, ... at most an hour apart


def environmental(reason: str) -> str | None:
    """The cause class of a failure the environment made (a full disk, an I/O error, git
    missing), or None for one of the slot itself."""
    for cause, words in _ENVIRONMENTAL:
        if any(word in reason for word in words):
            return cause
    return None


def with_cause(reason: str, before: str | None) -> str:
    """``reason`` marked with its cause class and the attempt it was (one more than the
    reason ``before`` records), when the environment caused it; else as it is."""
    cause = environmental(_CAUSE.sub("", reason))
    if cause is None:
        return reason
    found = _CAUSE.search(before or "")
    attempt = int(found["n"]) + 1 if found else 1
    return f"{_CAUSE.sub('', reason)} [environmental: {cause}; attempt {attempt}]"


def retry_due(reason: str | None, since: float) -> bool:
    """Whether a slot isolated for ``reason`` ``since`` seconds ago is to be retried now:
    only when the environment caused it, after a delay doubling with each attempt."""
    found = _CAUSE.search(reason or "")
    if found is None:
        return False
    delay: float = min(RETRY_MAX, RETRY_BASE * 2 ** (int(found["n"]) - 1))
    return since >= delay
