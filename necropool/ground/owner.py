"""Root acts as a pool's owner: a command run as root (cron's ``auto-recover``) does each
pool's work in a forked child that has dropped groups, gid and uid to the owner of the
pool's directory. So root never creates a file in another user's pool (a root-owned lock
or slot file would lock its owner out) and never runs git on a tree another user owns:
whatever a holder plants there, it can do no more than that user could."""

import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from necropool.ground.confine import Identity, Policy

T = TypeVar("T")


def owner_of(directory: Path) -> "Identity | None":
    """Whom work on ``directory`` must run as when it is not us: its owner, when we are
    root and it belongs to another user (None otherwise, and for a directory that is
    missing or a symlink: the work then fails on its own checks)."""
    if os.geteuid() != 0:
        return None
    try:  # root's own pool: nothing to become, so neither ctypes (the confinement's 3-5
        if os.lstat(directory).st_uid == 0:  # ms import) nor the user database is loaded
            return None
    except OSError:
        return None
    from necropool.ground.confine import Identity  # lazy: ctypes, needed by root only

    try:
        who = Identity.of_path(directory)
    except OSError:
        return None
    return who if who.uid != 0 else None


def run_as(who: "Identity", fn: Callable[..., T], *args: object,
           policy: "Policy | None" = None, timeout: float | None = None) -> T:
    """``fn(*args)`` in a child that became ``who`` (and is confined by ``policy``, if
    given; killed with its group past ``timeout`` seconds); its value or exception comes
    back here, so both must pickle. The child can
    import only what ``who`` may read: the caller imports beforehand what ``fn`` needs
    (root's Python may live in /root)."""
    from necropool.ground.confine import run_confined  # lazy: as in owner_of

    value: T = run_confined(_settled, who.uid, fn, args, policy=policy, user=who,
                            timeout=timeout)
    return value


def _settled(uid: int, fn: Callable[..., T], args: tuple[object, ...]) -> T:
    """In the child, now the owner: the owner's home (git reads the global config there,
    and dies on an unreadable one such as root's), and a working directory it may enter."""
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        home = "/"
    os.environ.update(HOME=home)
    os.environ.pop("XDG_CONFIG_HOME", None)
    libgit2 = sys.modules.get("pygit2")
    if libgit2 is not None:  # it read HOME when it was loaded, in root's process
        levels = libgit2.enums.ConfigLevel
        libgit2.settings.search_path[levels.GLOBAL] = home
        libgit2.settings.search_path[levels.XDG] = os.path.join(home, ".config", "git")
    if not os.access(".", os.R_OK | os.X_OK):
        os.chdir("/")
    return fn(*args)
