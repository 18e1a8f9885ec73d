"""A slot's tree handed to another user for a lease and taken back after it, by walks
under directory descriptors that never follow a symlink (``os.fwalk``, ``chown`` with
``follow_symlinks=False``): whatever the holder planted, no inode outside the slot changes
owner. Needs root (CAP_CHOWN)."""

import os
import stat
from pathlib import Path


def lock_out(tree: Path, uid: int, gid: int) -> None:
    """Make the slot's own directory ``uid``'s and owner-only (through a descriptor: a
    symlink in its place is refused), so the holder can no longer reach anything inside
    it by a path. Processes that already work inside are the caller's to end."""
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def give(tree: Path, uid: int, gid: int, *, back: bool = False) -> int:
    """Make every entry of ``tree`` (a directory, never followed) ``uid:gid``'s; returns how
    many entries were left out. A regular file with more than one link is never chowned
    (its other names may lie outside the slot): handing out, it is one of the mirror's
    pack files the slot shares, left the owner's and made readable (``0444``: git writes
    objects read-only); taking ``back``, it is a link a holder made, and its name in the
    slot is removed (the cleanup that follows puts back what was tracked)."""
    left = 0
    top = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(top, uid, gid)
    finally:
        os.close(top)
    for _, dirs, files, fd in os.fwalk(tree, follow_symlinks=False):
        os.fchown(fd, uid, gid)
        for name in files + dirs:  # (dirs may list symlinks to directories)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    left += 1
                    if back and st.st_uid != uid:
                        os.unlink(name, dir_fd=fd)
                    elif not back and st.st_mode & 0o444 != 0o444:
                        _readable(name, fd)
                    continue
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile
    return left


def _readable(name: str, parent: int) -> None:
    """Let anyone read the file ``name`` (opened without following a link)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
    try:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o444)
    finally:
        os.close(fd)
