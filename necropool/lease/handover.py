"""Slots held by other local users (``allocate --user``, ``run --user``): run as root, the
slot's working copy is handed to the user for the lease, and taken back (the user locked
out, its processes in the slot ended, every entry the pool owner's again) before the
owner's cleanup saves and cleans it. Only the directories on the way to the slots become
traverse-only for others (0711); everything else of the pool stays owner-only, so such a
holder can touch nothing but its own slot."""

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from necropool.ground import proc
from necropool.ground.errors import Conflict, UsageError
from necropool.ground.locks import lock_free
from necropool.ground.users import HolderUser, lookup
from necropool.pool.pool import Pool, get_slot
from necropool.slot.handover import give, lock_out


def check(pool: Pool, name: str) -> HolderUser:
    """The user ``--user NAME`` names, refused (UsageError, nothing changed) where handing a
    slot to it is impossible or means nothing: not root, an unknown user, root, the pool's
    owner."""
    require_root()
    user = lookup(name)
    if user.uid == owner_of(pool)[0]:
        raise UsageError(f"--user {name!r} owns pool {pool.name!r}: a slot of its own pool "
                         "needs no handing over (leave out --user)")
    return user


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("--user needs root: only root can hand a slot to another user")


def owner_of(pool: Pool) -> tuple[int, int]:
    """The pool owner's uid and gid (those of the pool's directory)."""
    st = os.lstat(pool.paths.dir)
    return st.st_uid, st.st_gid


def handed(pool: Pool, number: int) -> bool:
    """Whether slot ``number``'s tree was handed to a user and not yet taken back: it
    belongs to someone other than the pool's owner, and its lease names that user (or it
    has no lease any more: a release or isolation that failed half-way). A tree of
    another uid under a lease without a user was not handed out by necropool: cleaned as
    it is, never chowned."""
    try:
        uid = os.lstat(pool.slot_dir(number)).st_uid
    except FileNotFoundError:
        return False
    if uid == owner_of(pool)[0]:
        return False
    lease = get_slot(pool.read_state(), pool, number).lease
    return lease is None or (lease.user is not None and lease.user.uid == uid)


def worked_on(pool: Pool, number: int) -> bool:
    """Whether a live process holds slot ``number``'s lock (a ``run`` of it, a cleanup):
    the owner's work would refuse it (Busy), so it is not taken back meanwhile."""
    return not lock_free(pool.paths.slot_lock(number))


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
    """Take slot ``number`` back from the user it was handed to: the processes working in
    it ended, its work saved and the tree cleaned as that user (``save_as_user``), then
    the user locked out (the slot's own directory the owner's, 0700), what entered
    meanwhile ended, and every entry the owner's again. Returns the processes it ended;
    Conflict if some cannot be ended (the slot stays locked out: the release fails, nothing
    is cleaned)."""
    tree = pool.slot_dir(number)
    uid, gid = owner_of(pool)
    ended = _end_processes(pool, number)
    save_as_user(pool, number)
    lock_out(tree, uid, gid)
    ended += _end_processes(pool, number)
    give(tree, uid, gid, back=True)
    return ended


def _end_processes(pool: Pool, number: int) -> list[str]:
    found = proc.processes_in(pool.slot_dir(number), pool.paths.readers)
    named = [proc.describe([pid]) for pid in found]
    if stuck := proc.end(found):
        raise Conflict(f"slot {pool.slot_id(number)}: processes of its user cannot be ended "
                       f"({proc.describe(stuck)})")
    return named


def save_as_user(pool: Pool, number: int) -> None:
    """The holder's pass of the cleanup (``cleanup.holder_pass``), as the user who owns the
    slot's tree, confined to the slot. Whatever it could not do (its user may have made the
    tree impossible to clean) the owner's cleanup does after the take-back: a failure here
    is no failure of the release."""
    from necropool.ground.confine import Identity  # lazy: ctypes, as root only
    from necropool.slot import cleanup  # lazy: handing out a slot never loads it

    tree = pool.slot_dir(number)
    slot = get_slot(pool.read_state(), pool, number)
    st = os.lstat(tree)
    user = slot.lease.user if slot.lease else None
    groups = tuple(user.groups()) if user and user.uid == st.st_uid else (st.st_gid,)
    target = cleanup.Target(
        mirror=pool.paths.mirror, url=pool.definition.url, branch=pool.definition.branch,
        tip=slot.commit or "", rescue_to=pool.paths.rescued, record=pool.paths.slot_record(
            number), keep_ignored=pool.definition.keep_ignored, keep=tuple(pool.definition.keep),
        known_commit=slot.commit)
    with contextlib.suppress(Exception):
        cleanup.holder_pass(tree, target, Identity(st.st_uid, st.st_gid, groups))


def hand_back_if_held(pool: Pool, number: int) -> None:
    """After a release that did not happen (refused, or the lease changed meanwhile): a
    slot still leased to a user is that user's again."""
    slot = get_slot(pool.read_state(), pool, number)
    if slot.lease is not None and slot.lease.user is not None and not handed(pool, number):
        hand_out(pool, number, slot.lease.user)
