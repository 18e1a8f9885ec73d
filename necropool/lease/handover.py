"""Slots held by other local users (``allocate --user``, ``run --user``): run as root, the
slot's working copy is handed to the user for the lease, and taken back (the user locked
out, its processes in the slot ended, every entry the pool owner's again) before the
owner's cleanup saves and cleans it. Only the directories on the way to the slots become
traverse-only for others (0711); everything else of the pool stays owner-only, so such a
holder can touch nothing but its own slot."""

import os
import stat
from collections.abc import Callable
from pathlib import Path

from necropool.ground import proc
from necropool.ground.errors import Conflict, UsageError
from necropool.ground.users import HolderUser, lookup
from necropool.pool.pool import Pool, get_slot
from necropool.slot.handover import give, lock_out


def check(pool: Pool, name: str) -> HolderUser:
    """The user ``--user NAME`` names, refused (UsageError, nothing changed) where handing a
    slot to it is impossible or means nothing: not root, an unknown user, root, the pool's
    owner, a pool in a shared ledger."""
    require_root()
    user = lookup(name)
    if user.uid == owner_of(pool)[0]:
        raise UsageError(f"--user {name!r} owns pool {pool.name!r}: a slot of its own pool "
                         "needs no handing over (leave out --user)")
    if pool.ledger:
        raise UsageError(f"--user is not available for pool {pool.name!r}: it is in a shared "
                         "ledger, which does not record a lease's user")
    return user


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("--user needs root: only root can hand a slot to another user")


def owner_of(pool: Pool) -> tuple[int, int]:
    """The pool owner's uid and gid (those of the pool's directory)."""
    st = os.lstat(pool.paths.dir)
    return st.st_uid, st.st_gid


def handed(pool: Pool, number: int) -> bool:
    """Whether slot ``number``'s tree belongs to someone other than the pool's owner (it
    was handed to a user and not yet taken back)."""
    try:
        return os.lstat(pool.slot_dir(number)).st_uid != owner_of(pool)[0]
    except FileNotFoundError:
        return False


def hand_out(pool: Pool, number: int, user: HolderUser) -> None:
    """Give slot ``number``'s tree to ``user`` and let it reach the slot's path."""
    open_way(pool)
    give(pool.slot_dir(number), user.uid, user.gid)


def open_way(pool: Pool) -> None:
    """Make the directories from the root down to ``slots/`` traverse-only for others (the
    mode's search bits, nothing else), and everything else in the pool's directory and
    ``slots/`` (the mirror, the state, the other slots: made before pools were private,
    or cloned with the umask's modes) the owner's alone: a user can then enter the slot
    it was handed by its path, and list or open nothing else of the pool. The root's
    parents must let it pass."""
    root = pool.settings.root
    for directory in (root, root / "pools", pool.paths.dir, pool.paths.slots):
        _chmod(directory, lambda mode: mode | 0o011)
    uid = owner_of(pool)[0]
    for directory, spared in ((pool.paths.dir, "slots"), (pool.paths.slots, None)):
        for entry in os.scandir(directory):
            st = entry.stat(follow_symlinks=False)
            if (entry.name != spared and st.st_uid == uid and st.st_mode & 0o077
                    and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode))):
                _chmod(Path(entry.path), lambda mode: mode & ~0o077)


def _chmod(path: Path, change: Callable[[int], int]) -> None:
    """chmod through a descriptor opened without following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if change(mode) != mode:
            os.fchmod(fd, change(mode))
    finally:
        os.close(fd)


def take_back(pool: Pool, number: int) -> list[str]:
    """Take slot ``number`` back from the user it was handed to: locked out first (its own
    directory the owner's, 0700), the processes still working in it ended, then every
    entry the owner's again. Returns the processes it ended; Conflict if some cannot be
    ended (the slot stays locked out: the release fails, nothing is cleaned)."""
    tree = pool.slot_dir(number)
    uid, gid = owner_of(pool)
    lock_out(tree, uid, gid)
    found = proc.processes_in(tree, pool.paths.readers)
    named = [proc.describe([pid]) for pid in found]
    if stuck := proc.end(found):
        raise Conflict(f"slot {pool.slot_id(number)}: processes of its user cannot be ended "
                       f"({proc.describe(stuck)})")
    give(tree, uid, gid, back=True)
    return named


def hand_back_if_held(pool: Pool, number: int) -> None:
    """After a release that did not happen (refused, or the lease changed meanwhile): a
    slot still leased to a user is that user's again."""
    slot = get_slot(pool.read_state(), pool, number)
    if slot.lease is not None and slot.lease.user is not None and not handed(pool, number):
        hand_out(pool, number, slot.lease.user)
