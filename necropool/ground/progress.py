"""Progress of a long command, as the core reports it: typed data, never text; the CLI
decides whether and how to show it (only on a terminal)."""

from collections.abc import Callable
from dataclasses import dataclass

# The phases a report names: the mirror's clone of a remote upstream, in git's own words
# lowercased (``receiving objects``, ``resolving deltas``, the remote's ``counting
# objects``...), a local upstream's object files taken by hard link or copy, then the
# slots cloned from the mirror.
RECEIVING = "receiving objects"
TAKING = "taking objects"  # counted in files: packs and loose objects
SLOTS = "slots"


@dataclass(frozen=True)
class Report:
    """``done`` of ``total`` (None when not known yet) in ``phase``; ``size``: bytes
    received or taken so far, where the phase moves bytes."""

    phase: str
    done: int
    total: int | None
    size: int | None = None

    @property
    def percent(self) -> int | None:
        return 100 * self.done // self.total if self.total else None


Progress = Callable[[Report], None]
