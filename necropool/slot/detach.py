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

# The index moved to the commit's tree with the files that differ between the two
# (``reset --merge``), not ``checkout -f``: the slot is proved untouched, so the lstat of
# every tracked file that a forced checkout makes is redundant (half its time on 2,000
# files); and a file in the way that git does not expect is refused, never overwritten.
_MOVE = ("reset", "-q", "--merge")


def detach(tree: Path, mirror: Path, commit: str, record: Path) -> None:
    """Check ``tree`` out at ``commit``, detached (fetched by id from the mirror when the
    slot lacks it), and seal it there; confined like a cleanup, to the slot and the
    record's directory."""
    confined.run(_detach, tree, mirror, commit, record, write=(tree, record.parent))


def _detach(tree: Path, mirror: Path, commit: str, record: Path) -> None:
    gitdir = tree / ".git"
    if git.read_head(gitdir)[0] is not None:  # on a branch, which the move would carry along
        raise GitError(f"{tree} is not detached: left to the cleanup")
    last = LastClean.load(record)
    started = time.time_ns()
    try:
        git.run([*_MOVE, commit], tree)
    except GitError:  # (refused before it wrote anything) the slot lacks the commit
        git.ensure_commit(tree, mirror, commit)
        git.run([*_MOVE, commit], tree)
    (gitdir / "ORIG_HEAD").unlink(missing_ok=True)  # the move's; a fresh slot has none
    if last.dirs:
        last.retake_since(tree, started)
    else:
        last.retake_tree(tree)
    last.index = index_identity(gitdir)
    last.save(record)  # last of all: its ctime seals the slot at ``commit``
