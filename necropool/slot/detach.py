"""A free slot moved to the commit a lease asks for (``allocate --ref``) without a cleanup:
one proved as its cleanup left it (``lastclean.touched``) needs only a checkout there, and
the seal retaken, so the next allocate, cleanup and detect find it as a cleanup would have
left it at that commit. Kept apart from ``cleanup``, which this path never loads."""

import time
from pathlib import Path

from necropool.git import commands as git
from necropool.git.commands import GitError
from necropool.slot import confined
from necropool.slot.lastclean import LastClean, index_identity


def detach(tree: Path, mirror: Path, commit: str, record: Path) -> None:
    """Check ``tree`` out at ``commit``, detached (fetched by id from the mirror when the
    slot lacks it), and seal it there; confined like a cleanup, to the slot and the
    record's directory."""
    confined.run(_detach, tree, mirror, commit, record, write=(tree, record.parent))


def _detach(tree: Path, mirror: Path, commit: str, record: Path) -> None:
    checkout = ["checkout", "-f", "-q", "--detach", commit]
    last = LastClean.load(record)
    started = time.time_ns()
    try:
        git.run(checkout, tree)
    except GitError:  # (refused before it wrote anything) the slot lacks the commit
        git.ensure_commit(tree, mirror, commit)
        git.run(checkout, tree)
    if last.dirs:
        last.retake_since(tree, started)
    else:
        last.retake_tree(tree)
    last.index = index_identity(tree / ".git")
    last.save(record)  # last of all: its ctime seals the slot at ``commit``
