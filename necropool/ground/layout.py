"""The on-disk layout of a root and its pools, and filesystem operations that never
follow a symlink out of the root."""

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from necropool.ground.errors import OperationFailed
from necropool.ground.proc import Holder, hostname

TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


class PoolPaths:
    """Every path of one pool, under ``<root>/pools/<name>/``."""

    def __init__(self, root: Path, name: str, directory: Path | None = None):
        self.root = root
        self.name = name
        self.dir = directory or root / "pools" / name
        self.definition = self.dir / "pool.toml"
        self.state_dir = self.dir / "state"  # a file per slot (store.statefile)
        self.state = self.dir / "state.toml"  # schema 1, converted; then a stub for old versions
        self.state_backup = self.dir / "state.toml.bak"
        self.in_ledger = self.dir / "ledger"  # the state is in this ledger (DSN, no password)
        self.pool_lock = self.dir / "pool.lock"
        self.mirror_lock = self.dir / "mirror.lock"
        self.wait_lock = self.dir / "wait.lock"
        self.readers = self.dir / "readers.lock"  # held shared by necropool reading slots
        self.wake = self.dir / "wake.fifo"
        self.mirror_stamp = self.dir / "mirror.fetched"
        self.mirror_failed = self.dir / "mirror.failed"  # the last fetch's error, until one works
        self.locks = self.dir / "locks"
        self.mirror = self.dir / "mirror.git"
        self.slots = self.dir / "slots"
        self.events = self.dir / "events.jsonl"
        self.rescued = self.dir / "rescued"
        self.verified = self.dir / "verified.json"
        self.records = self.dir / "records"
        self.cache = self.dir / "cache"  # the prepare command's HOME, caches and TMPDIR
        self.credentials = self.dir / "credentials"  # the upstream's, owner-only

    def slot_id(self, number: int) -> str:
        return f"{self.name}-{number}"

    def slot_dir(self, number: int) -> Path:
        return self.slots / str(number)

    def slot_lock(self, number: int) -> Path:
        return self.locks / f"{self.slot_id(number)}.lock"

    def slot_record(self, number: int) -> Path:
        """What the slot's last cleanup left (kept outside the slot, out of its holder's reach)."""
        return self.records / f"{number}.json"

    KNOWN = frozenset({
        "pool.toml", "state", "state.toml", "state.toml.bak", "pool.lock", "mirror.lock",
        "wait.lock", "wake.fifo", "mirror.fetched", "mirror.failed", "locks", "mirror.git", "slots",
        "events.jsonl", "events.jsonl.1", "rescued", "verified.json", "records", "ledger",
        "state.toml.imported", "state.imported", "readers.lock", "credentials", "cache",
    })


def pools_dir(root: Path) -> Path:
    return root / "pools"


def kept_dir(root: Path) -> Path:
    """``<root>/rescued``: work saved from pools that were deleted."""
    return root / "rescued"


def private_dir(path: Path) -> None:
    """Make the directory ``path`` (its parents as usual) so that only its owner may enter
    it, whatever the umask; one that exists is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)


def make_private(path: Path) -> None:
    """Owner-only access to something moved aside under ``rescued/`` (a symlink is left as
    it is: its own mode means nothing)."""
    st = os.lstat(path)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, 0o700 if stat.S_ISDIR(st.st_mode) else 0o600, follow_symlinks=False)


def symlink_in(path: Path, root: Path) -> Path | None:
    """The first component of ``path`` below ``root`` that is a symlink, if any."""
    rel = path.relative_to(root)
    current = root
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def ensure_inside(path: Path, root: Path) -> None:
    """Refuse to act on a path that is, or passes through, a symlink below ``root``."""
    link = symlink_in(path, root)
    if link is not None:
        raise OperationFailed(f"refusing to follow symlink {link} inside the necropool root")


def remove_tree(path: Path, root: Path) -> None:
    """Delete ``path`` (a directory, file or symlink) without following any symlink."""
    parent = path.parent
    ensure_inside(parent, root)
    with storing("removing", path):
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        elif path.exists():
            if not shutil.rmtree.avoids_symlink_attacks:
                raise OperationFailed("this platform cannot delete directories safely")
            shutil.rmtree(path)


def _host_tag() -> str:
    """The host name as it appears in temp names: without dots, so that a fully qualified
    name (``build-7.example.com``) cannot be mistaken for part of the label."""
    return hostname().replace(".", "_")


def temp_name(label: str) -> str:
    """A name for work in progress that says which process owns it."""
    me = Holder.me()
    return f"{TEMP_PREFIX}{label}.{_host_tag()}.{me.pid}.{me.start}"


def trash_name(label: str) -> str:
    return temp_name(label).replace(TEMP_PREFIX, TRASH_PREFIX, 1)


def _temp_owner(name: str) -> tuple[str, int, int] | None:
    """(host tag, pid, start) of a name ``temp_name``/``trash_name`` made, else None."""
    if not name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
        return None
    try:
        _, host, pid, start = name.rsplit(".", 3)
        return host, int(pid), int(start)
    except ValueError:
        return None


def is_temp(name: str) -> bool:
    """A leftover of necropool's own work in progress (not a user's file named .tmp-x)."""
    return _temp_owner(name) is not None


def temp_owner_dead(name: str) -> bool:
    """True when a temp or trash entry's owning process is provably gone.
    Trash is already unlinked from the pool's state, but a live owner is still deleting it:
    finishing its rmtree concurrently would make the owner's own rmtree fail."""
    owner = _temp_owner(name)
    if owner is None or owner[0] != _host_tag():
        return False  # not ours, or another host's: only it can tell
    return Holder(pid=owner[1], host=hostname(), start=owner[2]).is_dead()


def sweep_temp(directory: Path, root: Path) -> list[str]:
    """Delete leftovers of dead processes in ``directory``; return their names."""
    swept: list[str] = []
    try:
        entries = [e.name for e in os.scandir(directory)]
    except OSError:
        return swept
    for name in entries:
        if temp_owner_dead(name):
            try:
                remove_tree(directory / name, root)
                swept.append(name)
            except OSError:
                pass
    return swept


def storage_error(exc: OSError, operation: str, path: Path | str) -> OSError:
    """``exc`` saying which operation on which file failed (a bare "No space left on
    device" names neither); the same class, so callers catch it as before."""
    return type(exc)(exc.errno, f"{operation} {path}: {exc.strerror}")


@contextmanager
def storing(operation: str, path: Path | str) -> Iterator[None]:
    """Run the block so that an OSError it raises says ``operation`` and ``path``
    (``storage_error``), unless an inner block already said what failed."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or exc.strerror != os.strerror(exc.errno):
            raise  # not the kernel's bare word: already says what failed
        inner = str(path) if exc.filename is None else (
            os.fsdecode(exc.filename) if isinstance(exc.filename, bytes) else str(exc.filename))
        where = str(path) if inner == str(path) else f"{path} ({inner})"  # rmtree's entry
        raise storage_error(exc, operation, where) from exc


def _fsync(path: Path, flags: int, operation: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error(exc, operation, path) from exc


def fsync_dir(path: Path) -> None:
    _fsync(path, os.O_DIRECTORY, "syncing directory")


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk (never through a symlink): work saved in it must
    survive a power loss once the slot it came from is given back."""
    _fsync(path, os.O_NOFOLLOW, "syncing")


def sync_filesystem(path: Path) -> None:
    """Flush everything written to the filesystem holding ``path`` (syncfs(2)): a tree that
    git wrote file by file (a clone, a checkout, a holder's files moved aside) is on the
    disk before a rename makes it count, which no number of directory fsyncs ensures."""
    import ctypes  # lazy: only making pools and slots, and moving trees aside, need it

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def rename_into_place(source: Path, target: Path, *, flush: bool = True) -> None:
    """Rename ``source`` (a pool, a slot, a mirror, a tree moved aside) to ``target`` so that
    both survive a power loss: its contents flushed first (``flush``; a tree git wrote is
    not durable by itself), then the rename, then an fsync of the directories it changed."""
    with storing("moving", f"{source} to {target}"):
        if flush:
            sync_filesystem(source)
        os.rename(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def write_atomic(path: Path, data: bytes, sync_dir: bool = True, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp, fsync, replace, fsync dir;
    ``sync_dir=False`` leaves the directory to a following write's fsync; ``sync=False``
    skips the file's fsync: after a power loss the file may be empty, never half old)."""
    tmp = path.parent / temp_name(path.name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)  # a pool's files are its owner's alone
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # replaces a symlink itself, never its target
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise storage_error(exc, "writing", path) from exc
        raise
    if sync_dir:
        fsync_dir(path.parent)
