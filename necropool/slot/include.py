"""Local files carried into each slot at cleanup (``include = [".env"]``, copied from the
pool's ``include_from``): files a checkout lacks but every holder needs.

Runs inside the cleanup's confinement. A copy is owner-only (0600) and written through
directory descriptors opened without following symlinks, so a link a holder left in the
slot never redirects it; a source entry is read only when it resolves inside
``include_from``. An included file its holder left as it was copied (its digest, kept in the
cleanup's record outside the slot) is taken back before the work is judged: it is not the
holder's work, even when the source changed meanwhile; one the holder changed is judged
like any file the holder made. A file git tracks is never overwritten.
"""

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from necropool.git import commands as git

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LIMIT = 1 << 20  # an included file is configuration, not data


def tracked(tree: Path, paths: tuple[str, ...]) -> set[str]:
    """Which of ``paths`` git tracks in the slot (never overwritten nor taken back)."""
    out = git.run(["ls-files", "-z", "--", *(f":(literal){p}" for p in paths)], tree).stdout
    return {os.fsdecode(p) for p in out.split(b"\0") if p}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def take_back(tree: Path, copied: dict[str, str], paths: tuple[str, ...],
              skip: set[str]) -> list[str]:
    """Remove the included files the holder left as they were copied (``copied``: their
    digests, as the last cleanup recorded them; a source changed since does not make
    them the holder's); return the ones it changed (left in place: its work)."""
    changed = []
    for rel in paths:
        if rel in skip:
            continue
        found = _read_slot(tree, rel)
        if found is None:
            continue
        if copied.get(rel) == digest(found):
            _unlink(tree, rel)
        else:
            changed.append(rel)
    return changed


def copy_in(tree: Path, source: str, paths: tuple[str, ...],
            skip: set[str]) -> tuple[dict[str, str], list[str]]:
    """Copy the included files into the slot; return (what was copied, with its digest;
    warnings): a file missing from the source, leading out of it, tracked by git or
    blocked in the slot is skipped with a warning, never a failure."""
    copied: dict[str, str] = {}
    warnings: list[str] = []
    for rel in paths:
        if rel in skip:
            warnings.append(f"{rel}: tracked by git, not included")
            continue
        data = _read_source(source, rel)
        if data is None:
            warnings.append(f"{rel}: not in {source} (or not a regular file inside it)")
            continue
        try:
            _write(tree, rel, data)
            copied[rel] = digest(data)
        except OSError as exc:
            warnings.append(f"{rel}: not copied ({exc.strerror})")
    return copied, warnings


def _read_source(source: str, rel: str) -> bytes | None:
    """The source file's bytes, or None when it is missing, not a regular file, larger than
    1 MiB, or resolves outside ``source`` (a symlink pointing out of it)."""
    top = os.path.realpath(source)
    path = os.path.realpath(os.path.join(top, rel))
    if not path.startswith(top.rstrip("/") + "/"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _LIMIT:
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(_LIMIT + 1)
    finally:
        os.close(fd)


def _parent(tree: Path, rel: str, make: bool) -> tuple[int, str]:
    """A descriptor of ``rel``'s directory in the slot (made 0700 where missing, with
    ``make``), reached without following a symlink, and the file's name."""
    *dirs, name = rel.strip("/").split("/")
    fd = os.open(tree, _DIR)
    try:
        for part in dirs:
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            inner = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _read_slot(tree: Path, rel: str) -> bytes | None:
    """The slot's regular file at ``rel`` (never through a symlink), or None."""
    try:
        parent, name = _parent(tree, rel, make=False)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(_LIMIT + 1)
    finally:
        os.close(fd)


def _unlink(tree: Path, rel: str) -> None:
    parent, name = _parent(tree, rel, make=False)
    try:
        os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)


def _write(tree: Path, rel: str, data: bytes) -> None:
    """Write ``data`` at ``rel`` in the slot, 0600, by a temp file renamed over whatever is
    there (a symlink is replaced, never written through)."""
    parent, name = _parent(tree, rel, make=True)
    tmp = f".{name}.necropool-include"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        try:
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError:
            os.unlink(tmp, dir_fd=parent)
            raise
    finally:
        os.close(parent)
