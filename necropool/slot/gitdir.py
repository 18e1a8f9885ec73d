"""A slot's git directory as untrusted input.

A holder can leave anything in ``.git``: symlinks out of the pool, FIFOs, links to other
repositories (``commondir``, alternates), hard links to files elsewhere, hooks, excludes,
grafts, sparse-checkout, flagged index entries, refs of every kind. Before cleanup runs git
there, ``audit`` walks the whole directory under directory descriptors (``O_NOFOLLOW``,
``lstat`` only) and names what makes it unsafe; a tampered one is moved aside whole, never
repaired in place. What is merely not as a fresh slot has it is put back by ``restore``
(before the work is judged) and ``drop_leftovers`` (after the reset).
"""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from necropool.git import commands as git
from necropool.ground.proc import processes_in

# What a fresh slot's .git holds at its top; anything else a holder left (ORIG_HEAD,
# rebase state, modules, worktrees, shallow, ...) is removed once the work is saved.
FRESH_ENTRIES = frozenset({
    "HEAD", "config", "description", "hooks", "index", "info", "logs", "objects", "refs",
    "packed-refs", "FETCH_HEAD",
})
FRESH_HOOKS = frozenset({"README.sample"})
EXCLUDE = ("# File patterns to ignore; see `git help ignore` for more information.\n"
           "# Lines that start with '#' are comments.\n")  # what a fresh slot's info/exclude says
_OBJECTS = "objects/"  # object files may be hard links (a slot's packs are the mirror's)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _walk(dir_fd: int, rel: str, visit: Callable[[str, os.DirEntry[str]], None]) -> None:
    """Call ``visit(relpath, entry)`` for every entry below ``dir_fd``, never following a
    symlink (directories are opened ``O_NOFOLLOW`` relative to their parent's descriptor)."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            path = f"{rel}{entry.name}"
            visit(path, entry)
            if entry.is_dir(follow_symlinks=False):
                fd = os.open(entry.name, _O_DIR, dir_fd=dir_fd)
                try:
                    _walk(fd, path + "/", visit)
                finally:
                    os.close(fd)


def audit(gitdir: Path, *, common: Path | None = None) -> list[str]:
    """What makes ``gitdir`` unsafe: a symlink or special file anywhere in it, a file
    hard-linked from elsewhere (outside the object store), alternates, a malformed ref name
    (loose, packed or HEAD's target: names are data, never paths), or a ``commondir``
    (allowed only for a worktree's git directory, and only naming ``common``). Empty when
    git may be run on it. Entry types come from the directory listing: only files outside
    object stores are stat'ed (thousands of loose objects cost no system call each)."""
    problems: list[str] = []

    def visit(path: str, entry: os.DirEntry[str]) -> None:
        if entry.is_symlink():
            problems.append(f"symlink {path} -> {os.readlink(gitdir / path)}")
        elif entry.is_dir(follow_symlinks=False):
            return
        elif not entry.is_file(follow_symlinks=False):
            problems.append(f"special file {path}")
        elif path in ("objects/info/alternates", "objects/info/http-alternates"):
            problems.append(f"{path} borrows objects from another repository")
        elif (not path.startswith(_OBJECTS) and f"/{_OBJECTS}" not in path
              and entry.stat(follow_symlinks=False).st_nlink > 1):  # (modules' objects too)
            problems.append(f"{path} is hard-linked to a file elsewhere")
        elif path.startswith("refs/") and not path.endswith(".lock") and not git.valid_ref(path):
            problems.append(f"malformed ref name {path[:120]!r}")

    try:
        top = os.open(gitdir, _O_DIR)
    except OSError as exc:
        return [f"{gitdir.name} cannot be opened as a directory: {exc.strerror}"]
    try:
        _walk(top, "", visit)
    except OSError as exc:  # a directory replaced while we walked it, say
        problems.append(f"cannot be walked safely: {exc}")
    finally:
        os.close(top)
    return problems + ref_problems(gitdir) + commondir_problems(gitdir, common)


def ref_problems(gitdir: Path) -> list[str]:
    """Malformed ref names in ``packed-refs`` and as HEAD's target: git would refuse them,
    and a name like ``refs/heads/../../x`` must never reach code that builds paths."""
    bad = git.malformed_packed(_read_bytes(gitdir / "packed-refs") or b"")
    problems = [f"malformed ref name {name[:120]!r} in packed-refs" for name in bad[:3]]
    head = (_read(gitdir / "HEAD") or "").strip()
    if head.startswith("ref:") and not (head.startswith("ref: refs/")
                                        and git.valid_ref(head[5:])):
        problems.append(f"HEAD names a malformed ref ({head[:120]!r})")
    return problems


def commondir_problems(gitdir: Path, common: Path | None) -> list[str]:
    """A ``commondir`` makes git use another repository's refs and objects: allowed only
    for a worktree's git directory, naming the slot's own (``common``)."""
    try:
        pointed = (gitdir / "commondir").read_text().strip()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError):
        pointed = "?"
    if common is None or os.path.realpath(gitdir / pointed) != os.path.realpath(common):
        return [f"commondir points at another repository ({pointed[:80]})"]
    return []


def linked_gitdir(dotgit: Path, inside: Path) -> Path | None:
    """The git directory a ``.git`` file (a submodule's or a worktree's) names, when it is
    inside ``inside`` (the slot's own .git); None for anything else."""
    try:
        text = dotgit.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir: "):
        return None
    target = Path(os.path.realpath(dotgit.parent / text[8:].strip()))
    base = os.path.realpath(inside)
    if not str(target).startswith(base + os.sep) or not target.is_dir():
        return None
    return target


# --- putting metadata back as a fresh slot has it ---------------------------------------------

def restore(gitdir: Path, expected_config: str) -> list[str]:
    """Put back what decides how git sees the slot before its work is judged: config,
    ``info/`` (excludes, grafts, sparse-checkout, attributes), hooks and ``shallow``.
    Returns what was restored. Call only after ``audit`` found nothing."""
    done = []
    if _read(gitdir / "config") != expected_config:
        write_record(gitdir / "config", expected_config)
        done.append("config")
    info = gitdir / "info"
    for name in _names(info):
        if name != "exclude":
            remove(info / name)
            done.append(f"info/{name}")
    if _read(info / "exclude") != EXCLUDE:
        info.mkdir(exist_ok=True)
        write_record(info / "exclude", EXCLUDE)
        done.append("info/exclude")
    hooks = [n for n in _names(gitdir / "hooks") if n not in FRESH_HOOKS]
    for name in hooks:
        remove(gitdir / "hooks" / name)
    if hooks:
        done.append("hooks")
    if (gitdir / "shallow").exists():
        (gitdir / "shallow").unlink()
        done.append("shallow")
    return done


def drop_leftovers(gitdir: Path) -> list[str]:
    """Remove what a fresh slot's .git does not have (ORIG_HEAD, COMMIT_EDITMSG, rebase and
    merge state, submodules' and worktrees' git directories, temporary files of an earlier
    cleanup that was killed) and every reflog: the next holder must not find the previous
    one's history. Only once the work is saved."""
    gone = [n for n in _names(gitdir) if n not in FRESH_ENTRIES]
    for name in gone:
        remove(gitdir / name)
    remove(gitdir / "logs")
    return gone


def write_record(path: Path, text: str) -> None:
    """Write a file in a slot's .git: whatever is there (a planted symlink, a hard link to
    a file elsewhere) is unlinked first, never written through."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _read(path: Path) -> str | None:
    data = _read_bytes(path)
    return None if data is None else data.decode(errors="surrogateescape")


def _read_bytes(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove(path: Path) -> None:
    """Delete a file or a whole directory, never following a symlink."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- index entries whose changes git does not look at -----------------------------------------

ASSUME_VALID, EXTENDED = 0x8000, 0x4000
SKIP_WORKTREE, INTENT_TO_ADD = 0x4000, 0x2000


def flagged_entries(data: bytes, hash_size: int = 20) -> tuple[list[bytes], list[bytes]]:
    """Paths of index entries git does not compare with the working tree: (assume-unchanged
    or intent-to-add, skip-worktree). Raises ValueError on a malformed index."""
    hidden: list[bytes] = []
    skipped: list[bytes] = []
    for name, flags, extended in index_entries(data, hash_size):
        if flags & ASSUME_VALID or extended & INTENT_TO_ADD:
            hidden.append(name)
        if extended & SKIP_WORKTREE:
            skipped.append(name)
    return hidden, skipped


def index_entries(data: bytes, hash_size: int = 20) -> Iterator[tuple[bytes, int, int]]:
    """Each entry's path, flags and extended flags. Reads index versions 2, 3 and 4;
    raises ValueError on a malformed index (IndexError on one cut short)."""
    if data[:4] != b"DIRC":
        raise ValueError("not an index")
    version = int.from_bytes(data[4:8], "big")
    if version not in (2, 3, 4):
        raise ValueError(f"index version {version}")
    count = int.from_bytes(data[8:12], "big")
    pos, name = 12, b""
    fixed = 40 + hash_size  # ctime, mtime, dev, ino, mode, uid, gid, size, object id
    for _ in range(count):  # (20,000 entries: ~10 ms)
        flags = (data[pos + fixed] << 8) | data[pos + fixed + 1]
        start, pos = pos, pos + fixed + 2
        extended = 0
        if flags & EXTENDED:
            extended = (data[pos] << 8) | data[pos + 1]
            pos += 2
        if version == 4:
            strip, pos = _varint(data, pos)
            end = data.index(b"\0", pos)
            name = name[:len(name) - strip] + data[pos:end]
            pos = end + 1
        else:
            length = flags & 0xFFF
            end = data.index(b"\0", pos) if length == 0xFFF else pos + length
            name = data[pos:end]
            pos = start + ((end - start) // 8 + 1) * 8  # 1-8 NULs pad the entry
        if pos > len(data) - hash_size:
            raise ValueError("truncated index")
        yield name, flags, extended


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """git's offset varint (index v4 path prefixes)."""
    byte = data[pos]
    value = byte & 0x7F
    while byte & 0x80:
        pos += 1
        byte = data[pos]
        value = ((value + 1) << 7) | (byte & 0x7F)
    return value, pos + 1


# --- the index checksum (also integrity.index_ok's) ------------------------------------------

def checksum_ok(data: bytes, hash_size: int = 20) -> bool:
    """An index's trailing checksum (SHA-1, or SHA-256 in a SHA-256 repository)."""
    import hashlib  # lazy: 4 ms of start-up (OpenSSL), paid only when an index changed

    if len(data) < 12 + hash_size or data[:4] != b"DIRC":
        return False
    digest = hashlib.sha256 if hash_size == 32 else hashlib.sha1
    return digest(data[:-hash_size]).digest() == data[-hash_size:]


# --- stale git lock files ---------------------------------------------------------------------

GIT_LOCK_NAMES = ("index.lock", "HEAD.lock", "ORIG_HEAD.lock", "FETCH_HEAD.lock",
                  "packed-refs.lock", "config.lock", "shallow.lock",
                  "necropool-rescue.index.lock")  # the lock of cleanup's temporary index

def git_lock_files(gitdir: Path) -> list[Path]:
    """Git's own lock files in a repository (index.lock, HEAD.lock, ref locks, ...)."""
    found = [gitdir / n for n in GIT_LOCK_NAMES if (gitdir / n).exists()]
    for dirpath, _dirs, files in os.walk(gitdir / "refs"):
        found += [Path(dirpath, f) for f in files if f.endswith(".lock")]
    return found


def stale_git_locks(tree: Path) -> list[Path]:
    """Git lock files while no process works in the slot: left by a killed git."""

    locks = git_lock_files(tree / ".git")
    if locks and processes_in(tree):
        return []
    return locks
