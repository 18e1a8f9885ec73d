"""What the last cleanup left in a slot, so the next one can skip work a holder cannot have
made necessary: the slot's directories and its index file.

The record lives outside the slot (``<pool>/records/<n>.json``), where no holder can forge
it, and it rests on change times (ctime), which no holder can set back: a directory's
changes with every entry added, removed or renamed in it, and an index's with every write.
Every cleanup rewrites the record last, so the record's own ctime, taken by the same
filesystem clock, seals the slot: an entry with a ctime as late was changed since
(``touched``), and a free slot can be proved untouched without running git in it.
"""

import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from necropool.ground.layout import storing
from necropool.slot import gitdir as slotgit

NO_HOLDER = "no-holder"  # the rescue label of what was found in a free slot: nobody's lease
SLACK_NS = 50_000_000  # file times are coarser than the clock: within 50 ms is "changed"


def directories(tree: Path) -> list[str]:
    """Every directory below ``tree`` (its .git excluded), as relative paths."""
    found, stack, top = [""], [""], str(tree)
    while stack:
        rel = stack.pop()
        with os.scandir(f"{top}/{rel}" if rel else top) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and not (rel == "" and entry.name == ".git"):
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    found.append(child)
                    stack.append(child)
    return found


def index_identity(gitdir: Path) -> str:
    """The index file as it is now (git replaces the file on every write)."""
    try:
        st = os.stat(gitdir / "index", follow_symlinks=False)
    except OSError:
        return ""
    return f"{st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


@dataclass
class LastClean:
    at: int = 0  # when ``dirs`` was taken (ns)
    dirs: list[str] = field(default_factory=list)
    index: str = ""
    included: dict[str, str] = field(default_factory=dict)  # include path -> sha256 copied

    @classmethod
    def load(cls, path: Path) -> "LastClean":
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as fh:
                data = json.load(fh)
            return cls(int(data["at"]), list(data["dirs"]), str(data["index"]),
                       {str(k): str(v) for k, v in data.get("included", {}).items()})
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def save(self, path: Path) -> None:
        """Replace the record (never through a symlink); losing it only costs a slower
        next cleanup, so it is not fsynced."""
        with storing("writing", path):
            path.parent.mkdir(mode=0o700, exist_ok=True)  # the pool's alone, whatever umask
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:  # dumps: json.dump does without the C encoder
                fh.write(json.dumps({"at": self.at, "dirs": self.dirs, "index": self.index,
                                     "included": self.included}))
            os.replace(tmp, path)
        _past_the_tick(path)

    def retake_tree(self, tree: Path) -> None:
        self.at, self.dirs = time.time_ns(), directories(tree)

    def retake_since(self, tree: Path, since: int) -> None:
        """``retake_tree`` after a change that began at ``since`` (ns) in a tree this record
        described until then (a checkout): the recorded directories are stat'ed, and only
        those changed since are read for new ones (a new directory changes its parent's
        ctime), not the whole tree (a third of the walk's cost on 1,000 directories)."""
        at, limit = time.time_ns(), since - SLACK_NS
        top = os.open(tree, _O_DIR)
        try:
            kept, stack = [], []
            for rel in self.dirs:
                try:
                    st = os.stat(rel or ".", dir_fd=top, follow_symlinks=False)
                except OSError:
                    continue  # removed
                if stat.S_ISDIR(st.st_mode):
                    kept.append(rel)
                    if st.st_ctime_ns >= limit:
                        stack.append(rel)
            known = set(kept)
            while stack:
                rel = stack.pop()
                fd = os.open(rel or ".", _O_DIR, dir_fd=top)
                try:
                    with os.scandir(fd) as entries:
                        names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
                finally:
                    os.close(fd)
                for name in names:
                    child = f"{rel}/{name}" if rel else name
                    if child not in known and child != ".git":
                        known.add(child)
                        kept.append(child)
                        stack.append(child)  # new: everything below it is new too
        finally:
            os.close(top)
        self.at, self.dirs = at, kept

    def index_unchanged(self, gitdir: Path) -> bool:
        """True when the index is the very file the last cleanup left (checked then)."""
        return self.index != "" and self.index == index_identity(gitdir)

    def changed_dirs(self, tree: Path) -> list[str] | None:
        """The directories that had entries added, removed or renamed since the last
        cleanup (each such change sets the directory's ctime, which no holder can set
        back; a new directory changes its parent's), or None when there is no record.
        An empty list: untracked files, ignored files, empty directories and nested
        repositories cannot exist, and the tree needs no walk."""
        if not self.dirs:
            return None
        try:
            top = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # not a directory (any more): no record to trust
        limit, changed, lstat = self.at - SLACK_NS, [], os.stat
        try:  # thousands of stats: relative to the tree (a third faster), plain strings
            for rel in self.dirs:
                try:
                    st = lstat(rel or ".", dir_fd=top, follow_symlinks=False)
                except OSError:
                    continue  # gone: its parent changed
                if not stat.S_ISDIR(st.st_mode):
                    continue  # replaced: its parent changed
                if st.st_ctime_ns >= limit:
                    changed.append(rel)
        finally:
            os.close(top)
        return changed


def _past_the_tick(record: Path) -> None:
    """Touch the record until its ctime is later than when it was written: file times come
    from a clock that ticks every few ms, so the slot's last changes may share the record's
    first ctime, but never its last one, and whatever changes later has at least that."""
    first = os.stat(record, follow_symlinks=False).st_ctime_ns
    while True:
        os.utime(record, follow_symlinks=False)
        if os.stat(record, follow_symlinks=False).st_ctime_ns > first:
            return
        time.sleep(0.0005)


def seal(tree: Path, record: Path, *, again: bool = False) -> None:
    """Record a slot just made (a fresh clone) as its cleanup would: sealed as it is; or,
    ``again``, a slot changed since its cleanup by necropool itself (its prepare command),
    keeping what the record knows of its included files."""
    last = LastClean(included=LastClean.load(record).included if again else {})
    last.retake_tree(tree)
    last.index = index_identity(tree / ".git")
    last.save(record)


def touched(tree: Path, record: Path, files: bool = True) -> str | None:
    """What in the slot changed since its last cleanup sealed it (the first entry found),
    or None when nothing did: every entry's ctime is earlier than the record's. Pack and object
    files are not looked at (hard links into the mirror: each new slot changes their ctime);
    a holder's new object or pack changes its directory. Without ``files`` (``allocate``,
    where each system call counts: a walk of a 2,000-file slot took 19 ms here), only the
    directories the record lists are stat'ed (an entry added, removed or renamed anywhere
    changes one), everything in ``.git`` (refs, HEAD, index, config, hooks), then the
    tracked files the index lists (an edit in place changes no directory; the index is the
    cleanup's own once its ctime is proved older than the seal); ignored files kept for
    the next holder (``keep``) are left to ``detect``. Only lstat under directory
    descriptors (never through a symlink), never git: the slot's config may have been
    planted to run code."""
    try:
        sealed = os.stat(record, follow_symlinks=False).st_ctime_ns
    except OSError:
        return "no record of its last cleanup"
    try:
        top = os.open(tree, _O_DIR)
    except OSError:
        return "the slot's directory (missing, or not a directory)"
    try:
        if os.fstat(top).st_ctime_ns >= sealed:
            return "the slot's directory"
        if files:
            return _changed(top, sealed, [""])
        dirs = LastClean.load(record).dirs  # the tree's directories as the cleanup left them
        if not dirs:
            return "no record of its directories"
        for rel in dirs:  # one lstat each, none opened: a third of a walk's cost
            if rel and os.stat(rel, dir_fd=top, follow_symlinks=False).st_ctime_ns >= sealed:
                return rel
        if os.stat(".git", dir_fd=top, follow_symlinks=False).st_ctime_ns >= sealed:
            return ".git"
        return _changed(top, sealed, [".git/"]) or _edited(top, sealed)
    except OSError as exc:  # replaced or removed while we looked: changed all the same
        return f"an entry that vanished ({exc.strerror})"
    finally:
        os.close(top)


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _edited(top: int, sealed: int) -> str | None:
    """The first tracked file whose ctime is ``sealed`` or later, read from the index the
    last cleanup left (one lstat each, about 3 us: 3,000 files cost some 10 ms)."""
    try:
        data = _read(top, ".git/index")
        sha256 = re.search(rb"objectformat\s*=\s*sha256", _read(top, ".git/config"), re.I)
        entries = [name for name, _, _ in slotgit.index_entries(data, 32 if sha256 else 20)]
    except (ValueError, IndexError):
        return "the index (unreadable)"
    stat_at = os.stat
    for name in entries:
        if stat_at(name, dir_fd=top, follow_symlinks=False).st_ctime_ns >= sealed:
            return os.fsdecode(name)
    return None


def _read(top: int, rel: str) -> bytes:
    fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _changed(top: int, sealed: int, stack: list[str]) -> str | None:
    """The first entry below the directories ``stack`` names (relative to ``top``, with a
    trailing slash) whose ctime is ``sealed`` or later; one directory open at a time,
    however deep the tree."""
    while stack:
        rel = stack.pop()
        objects = rel.startswith(".git/objects/")
        fd = os.open(rel, _O_DIR, dir_fd=top) if rel else top
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if objects and not is_dir:
                        continue
                    if entry.stat(follow_symlinks=False).st_ctime_ns >= sealed:
                        return rel + entry.name
                    if is_dir:
                        stack.append(f"{rel}{entry.name}/")
        finally:
            if fd != top:
                os.close(fd)
    return None
