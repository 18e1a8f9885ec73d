"""Slot work on a thread, or in a forked child, that the kernel confines (Landlock): it may
write only beneath the directories its step names and execute only the system's programs,
so whatever a holder renames while the work runs, no write, delete or program run lands
outside them.

Where the kernel has no Landlock the work runs in this process, unconfined: ``describe``
says so (``status`` and ``detect`` show it), and the audit of ``.git`` through directory
descriptors remains the only guard."""

import functools
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from necropool.ground import confine, owner

T = TypeVar("T")


def describe() -> str:
    """What confines slot work on this kernel, as ``status`` and ``detect`` report it."""
    try:
        abi = confine.abi_version()
    except OSError as exc:  # Landlock refused (a seccomp filter, say): run() fails closed
        return f"none (Landlock refused: {exc.strerror})"
    return f"landlock ABI {abi}" if abi else "none (kernel without Landlock)"


def run(fn: Callable[..., T], *args: object, write: Iterable[Path],
        execute: Iterable[Path] = (), timeout: float | None = None,
        user: confine.Identity | None = None) -> T:
    """``fn(*args)`` confined so that it may write only beneath ``write`` (existing
    directories, none of them a symlink) and run programs from the system's directories and
    beneath ``execute``: on a thread of its own where the kernel scopes signals (Landlock
    ABI 6+: no fork, no copy of this process's pages), else in a forked child, whose value
    or exception must then pickle. A child when it must become ``user`` (as root: glibc
    changes the ids of every thread) or be killed with its process group past ``timeout``
    seconds (TimeoutError). Without Landlock, ``fn`` runs here, or unconfined in a child
    that became ``user``."""
    policy = None
    if confine.abi_version():
        policy = confine.Policy(write=tuple(os.fspath(p) for p in write),
                                execute=_programs() + tuple(os.fspath(p) for p in execute))
    if user is not None:
        return owner.run_as(user, fn, *args, policy=policy, timeout=timeout)
    if policy is None:
        return fn(*args)
    if timeout is None and confine.threads_confinable(policy):
        return confine.run_in_thread(fn, *args, policy=policy)
    return confine.run_confined(fn, *args, policy=policy, timeout=timeout)


@functools.cache
def _programs() -> tuple[str, ...]:
    """Where programs may be run from: the system's directories, and git's wherever it is.
    Not this Python's (slot work runs none; root's may be in /root, which the pool's owner
    cannot open)."""
    dirs = [d for d in confine.SYSTEM_EXECUTE if os.path.isdir(d)]
    found = shutil.which("git")
    if found:
        home = os.path.dirname(os.path.realpath(found))
        if not any(home == d or home.startswith(d + "/") for d in map(os.path.realpath, dirs)):
            dirs.append(home)
    return tuple(dirs)
