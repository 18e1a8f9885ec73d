"""A pool's mirror of an upstream on a local path, made as ``git clone --local`` makes a
clone: the upstream's object files are hard-linked (copied where no link can be made)
instead of repacked, seconds instead of minutes for a large repository.

The upstream is read as data, never as a repository git works in: its config, hooks and
alternates are neither copied nor obeyed, and nothing beneath it is opened through a
symlink (the hazard of git's own ``--local``, CVE-2024-32021). Only an upstream that is a
plain repository of this user takes this way; any other (a symlink, a ``.git`` file, another
user's, shallow, with alternates or extensions, a symlink among its objects or refs) is
left to ``git clone --no-local``, which copies objects through git's own protocol.

Why a hard link keeps the mirror independent (ARCHITECTURE.md, facts): git never writes
into a pack or loose object file once it has its name; a repack or gc writes new files and
unlinks the old names, which leaves our links and their contents as they were. Only files
of this user with no write permission (git writes them 0444) are linked; any other is
copied, 0444.
"""

import contextlib
import errno
import os
import re
import shutil
import stat
from pathlib import Path

from necropool.git.commands import GitError, mirror_config, packed_names, run, valid_ref, write_refs
from necropool.ground.progress import TAKING, Progress, Report

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOOSE_DIR = re.compile(r"[0-9a-f]{2}")
_LOOSE = re.compile(r"[0-9a-f]{38}|[0-9a-f]{62}")
_PACK_FILE = re.compile(r"pack-([0-9a-f]{40}|[0-9a-f]{64})\.(pack|idx|rev|bitmap|mtimes)")
# a link failing for these reasons is made a copy: another filesystem, a kernel or
# filesystem refusing (``fs.protected_hardlinks``, no hard links), too many links already
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.ENOENT)
TRIES = 3  # a concurrent gc or push in the upstream moves files: start over, then give up


class _Unusual(Exception):
    """The upstream is not plain enough to be taken by files: git clones it."""


class _Moved(Exception):
    """The upstream changed while it was read (a gc, a push): read it again."""


def local_path(url: str) -> Path | None:
    """The path of an upstream on this host's filesystem, or None for a remote one."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    return Path(url) if url.startswith("/") else None


def clone_local(url: str, dest: Path, progress: Progress | None = None) -> bool:
    """Make ``dest`` (which must not exist) the bare mirror of the local upstream at
    ``url`` from its files; False, leaving nothing at ``dest``, when the upstream is not a
    plain repository of this user or kept changing: git must clone it."""
    path = local_path(url)
    if path is None:
        return False
    for _ in range(TRIES):
        try:
            with _Upstream(path) as upstream:
                _build(upstream, url, dest, progress)
            return True
        except _Moved:
            shutil.rmtree(dest, ignore_errors=True)
        except (_Unusual, OSError, GitError):  # an unreadable corner: git says what is wrong
            shutil.rmtree(dest, ignore_errors=True)
            return False
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return False


class _Upstream:
    """The upstream's git directory, opened without following a symlink below the path
    given, and checked to be a plain repository this user owns."""

    def __init__(self, path: Path):
        self.path = path
        self.fds: list[int] = []

    def __enter__(self) -> "_Upstream":
        try:
            self._check()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _check(self) -> None:
        top = self._open(str(self.path), None)
        try:
            self.gitdir = self._open(".git", top)
        except FileNotFoundError:
            self.gitdir = top  # a bare repository
        except OSError:  # a symlink or a file (``gitdir:``, a worktree's): not plain
            raise _Unusual from None
        st = os.fstat(self.gitdir)
        if st.st_uid != os.geteuid():
            raise _Unusual  # another user's: git's ownership rules decide
        for name in ("commondir", "shallow", "objects/info/alternates"):
            with contextlib.suppress(FileNotFoundError):
                os.stat(name, dir_fd=self.gitdir, follow_symlinks=False)
                raise _Unusual
        self.format = _object_format(self.read("config"))
        self.objects = self._open("objects", self.gitdir)

    def __exit__(self, *_: object) -> None:
        for fd in self.fds:
            os.close(fd)

    def _open(self, name: str, parent: int | None) -> int:
        fd = os.open(name, _DIR, dir_fd=parent)
        self.fds.append(fd)
        return fd

    def opendir(self, name: str, parent: int) -> int:
        try:
            return self._open(name, parent)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise _Moved from None
            raise _Unusual from None  # a symlink (ELOOP) or not a directory

    def read(self, name: str, parent: int | None = None) -> bytes:
        """A small file of the git directory, never through a symlink."""
        fd = os.open(name, _FILE, dir_fd=self.gitdir if parent is None else parent)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _Unusual
            with os.fdopen(os.dup(fd), "rb") as fh:
                return fh.read()
        finally:
            os.close(fd)

    def refs(self) -> tuple[str, dict[str, str]]:
        """(HEAD's content, every ref under refs/ with its object id), as git would read
        them from the files; a symbolic ref is resolved, an odd value is _Unusual."""
        found: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            found.update(packed_names(self.read("packed-refs")))
        loose: dict[str, str] = {}
        self._walk_refs(self.opendir("refs", self.gitdir), "refs", loose)
        found.update(loose)
        width = 64 if self.format == "sha256" else 40
        resolved = {name: self._resolve(found, value, width) for name, value in found.items()}
        head = self.read("HEAD").decode(errors="replace").strip()
        if not (head.startswith("ref: ") and valid_ref(head[5:])) and not _oid(head, width):
            raise _Unusual
        return head, resolved

    def _walk_refs(self, fd: int, prefix: str, found: dict[str, str]) -> None:
        for entry in os.scandir(fd):
            name = f"{prefix}/{entry.name}"
            if entry.is_symlink():
                raise _Unusual
            if entry.is_dir(follow_symlinks=False):
                self._walk_refs(self.opendir(entry.name, fd), name, found)
            elif valid_ref(name):  # (a ``.lock`` file is not a ref)
                found[name] = self.read(entry.name, fd).decode(errors="replace").strip()

    @staticmethod
    def _resolve(refs: dict[str, str], value: str, width: int) -> str:
        for _ in range(5):  # a symbolic ref: followed, as git does, at most 5 levels
            if not value.startswith("ref: "):
                break
            value = refs.get(value[5:], "")
        if not _oid(value, width):
            raise _Unusual
        return value


def _oid(value: str, width: int) -> bool:
    return len(value) == width and all(c in "0123456789abcdef" for c in value)


# extensions that change nothing in how the objects and refs are read from the files
_PLAIN_EXTENSIONS = {("objectformat", "sha1"), ("objectformat", "sha256"),
                     ("refstorage", "files")}
_HARMLESS = {"worktreeconfig", "preciousobjects", "noop"}


def _object_format(config: bytes) -> str | None:
    """The object format a repository's config declares (None: SHA-1), read as text: the
    config is the upstream's, never obeyed. An extension that changes how objects or refs
    are stored (reftable refs, a partial clone's promisor, ...) or a newer repository
    format is _Unusual."""
    section, found = "", None
    for raw in config.decode(errors="replace").splitlines():
        line = raw.split("#")[0].split(";")[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip().lower()
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        key = key.lower()
        if section == "core" and key == "repositoryformatversion" and value not in ("0", "1"):
            raise _Unusual
        if section == "extensions" and key:
            if (key, value.lower()) not in _PLAIN_EXTENSIONS and key not in _HARMLESS:
                raise _Unusual
            if key == "objectformat" and value.lower() == "sha256":
                found = "sha256"
    return found


def _build(upstream: _Upstream, url: str, dest: Path, progress: Progress | None) -> None:
    """Refs read before the objects and again after them: unchanged, and no listed file
    gone meanwhile, the objects taken hold all the refs reach (a gc writes new files before
    it unlinks old ones; loose objects are listed before the packs they may move into)."""
    head, refs = upstream.refs()
    files = _object_files(upstream)
    os.mkdir(dest)
    for sub in ("objects", "objects/pack", "objects/info", "refs", "refs/heads", "refs/tags"):
        os.mkdir(dest / sub)
    total, size = len(files), 0
    made: dict[str, int] = {}
    euid = os.geteuid()
    try:
        for done, (sub, name, source) in enumerate(files, 1):
            if sub not in made:
                os.makedirs(dest / "objects" / sub, exist_ok=True)
                made[sub] = os.open(dest / "objects" / sub, _DIR)
            size += _take(source, name, made[sub], euid)
            if progress:
                progress(Report(TAKING, done, total, size))
    finally:
        for fd in made.values():
            os.close(fd)
    if upstream.refs() != (head, refs):
        raise _Moved
    write_refs(dest, refs)
    (dest / "HEAD").write_text(head + "\n")
    (dest / "config").write_text(mirror_config(url, upstream.format))
    _pack_loose(dest, [sub + name for sub, name, _ in files if sub != "pack"])


def _pack_loose(dest: Path, loose: list[str]) -> None:
    """Pack the loose objects taken into one new pack of the mirror's own (the packs taken
    stay as they are), and drop their loose links: a slot with loose objects would have
    each hashed at every verify, and no tree proven complete once for all its packs."""
    if not loose:
        return
    run(["pack-objects", "-q", str(dest / "objects" / "pack" / "pack")], dest,
        input="".join(oid + "\n" for oid in loose).encode())
    run(["prune-packed", "-q"], dest)


def _object_files(upstream: _Upstream) -> list[tuple[str, str, int]]:
    """(directory under objects/, name, the upstream's directory fd) of each object file
    to take: loose objects first, then the packs git can see (an index beside the pack)."""
    loose: list[tuple[str, str, int]] = []
    names = os.listdir(upstream.objects)
    for sub in names:
        if _LOOSE_DIR.fullmatch(sub):
            fd = upstream.opendir(sub, upstream.objects)
            loose += [(sub, name, fd) for name in os.listdir(fd) if _LOOSE.fullmatch(name)]
    if "pack" not in names:
        return loose
    fd = upstream.opendir("pack", upstream.objects)
    pack_names = set(os.listdir(fd))
    packs = [(m.group(1), name) for name in pack_names if (m := _PACK_FILE.fullmatch(name))]
    visible = {h for h, name in packs
               if name.endswith(".idx") and f"pack-{h}.pack" in pack_names}
    # the index last, as git writes it: a reader never sees a pack without its parts
    order = {"pack": 0, "rev": 1, "bitmap": 1, "mtimes": 1, "idx": 2}
    taken = sorted((name for h, name in packs if h in visible),
                   key=lambda name: (name.rsplit(".", 1)[0], order[name.rsplit(".", 1)[1]]))
    return loose + [("pack", name, fd) for name in taken]


def _take(source: int, name: str, target: int, euid: int) -> int:
    """Hard-link the upstream's file ``name`` into ``target``, or copy it (0444) where it
    cannot or must not be shared; return its size. The file is opened first (never through
    a symlink) and the link made to the inode opened, so nothing swapped in meanwhile is
    taken."""
    try:
        fd = os.open(name, _FILE, dir_fd=source)
    except FileNotFoundError:
        raise _Moved from None
    except OSError as exc:
        raise (_Unusual if exc.errno == errno.ELOOP else exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unusual
        if st.st_uid == euid and not st.st_mode & 0o222:
            try:
                os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=source, dst_dir_fd=target,
                        follow_symlinks=True)
                return st.st_size
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
        _copy(fd, name, target)
        return st.st_size
    finally:
        os.close(fd)


def _copy(fd: int, name: str, target: int) -> None:
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o444, dir_fd=target)
    try:
        with os.fdopen(os.dup(fd), "rb") as src, os.fdopen(os.dup(out), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.fchmod(out, 0o444)  # whatever the umask: read-only, as git makes its own
    finally:
        os.close(out)
