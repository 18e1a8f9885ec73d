"""Putting a holder's saved state back in a clone (``rescued restore --checkout``): the
branch HEAD was on (``on/BRANCH``, a commit over the one HEAD was at) checked out there,
or HEAD detached where the holder's was; then the saved working tree written out with the
saved index over it, so that staged changes come back staged, unstaged ones unstaged and
untracked files untracked. Only a clean clone is written to, and a branch of the clone is
only moved forward (unless necropool made the clone itself)."""

from pathlib import Path
from typing import Any

from necropool.git import commands as git
from necropool.ground.errors import Conflict
from necropool.slot.saving import RESCUE_REFS

ON = "on/"


def check_clean(target: Path) -> None:
    """Refuse a clone with changes of its own: they would be mixed with the holder's."""
    out = git.run(["status", "--porcelain", "--untracked-files=normal"], target).stdout
    if out.strip():
        raise Conflict(f"{target} has changes of its own: commit or stash them, or restore "
                       "into a new directory")


def check_branch(target: Path, bundle: str, heads: dict[str, str]) -> None:
    """Refuse to move a branch of an existing clone anywhere but forward (``heads``: the
    saved names and their commits). To compare, the saved commits are fetched from the
    bundle, no ref written."""
    on = _branch(heads)
    if on is None:
        return
    found = git.run(["rev-parse", "-q", "--verify", f"refs/heads/{on[len(ON):]}^{{commit}}"],
                    target, check=False)
    if found.returncode != 0:
        return
    existing = found.stdout.decode().strip()
    git.run(["fetch", "-q", "--no-tags", "--no-write-fetch-head", bundle, RESCUE_REFS + on],
            target)
    commit = git.run(["rev-parse", heads[on] + "^"], target).stdout.decode().strip()
    ahead = git.run(["merge-base", "--is-ancestor", existing, commit], target, check=False)
    if ahead.returncode != 0:
        raise Conflict(f"branch {on[len(ON):]!r} of {target} is at {existing[:12]}, which "
                       f"the saved {commit[:12]} does not build on: restore into a new "
                       "directory, or rename that branch")


def _branch(names: dict[str, str] | list[str]) -> str | None:
    """The ``on/BRANCH`` ref among the saved names, if the holder was on a branch."""
    return next((n for n in names if n.startswith(ON)), None)


def checkout(target: Path, space: str, names: list[str]) -> dict[str, Any]:
    """Check out what the refs fetched under ``space`` saved, in ``target`` (checked by
    ``check_clean`` and ``check_branch``, or a clone necropool just made). Returns the
    branch (None: detached) and commit checked out, and whether uncommitted work was
    written back."""
    on = _branch(names)
    uncommitted = space + "uncommitted" if "uncommitted" in names else None
    head = (space + on + "^" if on else space + "HEAD" if "HEAD" in names
            else uncommitted + "^" if uncommitted else None)
    if head is None:  # the holder was clean at the pool's tip: nothing to put back
        return {"branch": None, "commit": None, "uncommitted": False}
    commit = git.run(["rev-parse", "--verify", head + "^{commit}"], target).stdout.decode().strip()
    if on:
        branch = on[len(ON):]
        git.run(["checkout", "-q", "-B", branch, commit], target)
    else:
        branch = None
        git.run(["checkout", "-q", "--detach", commit], target)
    if uncommitted:
        _write_uncommitted(target, uncommitted, space + "index" if "index" in names else None)
    return {"branch": branch, "commit": commit, "uncommitted": bool(uncommitted)}


def _write_uncommitted(target: Path, ref: str, index: str | None) -> None:
    """The saved working tree into the files, then the saved index over it (HEAD's when
    nothing was staged): what is in neither comes back untracked."""
    git.run(["read-tree", "-m", "-u", "HEAD", ref], target)
    git.run(["read-tree", index or "HEAD"], target)
    git.run(["update-index", "-q", "--refresh"], target, check=False)
