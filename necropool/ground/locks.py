"""File locks (portalocker over flock): the pool lock, slot locks, the mirror lock.

Protocol:
- ``pool.lock`` guards each read-modify-write of the state (``store.statefile``) and is
  held for milliseconds. Every slot lock is taken or tested while holding it.
- ``locks/<slot>.lock`` exists only while a live process holds it (a cleaning worker,
  a repair, ``run``'s holder); the holder unlinks it before unlocking. After locking, the
  path is re-checked to still name the locked inode, so an unlink cannot split a lock.
- ``mirror.lock`` serialises upstream fetches and mirror rebuilds.
"""

import importlib
import importlib.util
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path
from types import FrameType
from typing import NoReturn, Self

from necropool.ground.errors import TryAgain
from necropool.ground.layout import storing

_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def jitter() -> float:
    """A factor in [0.5, 1.5) that spreads retries apart (without importing ``random``)."""
    return 0.5 + os.urandom(1)[0] / 256


class _Alarm(Exception):
    """The timer of a blocking lock wait ran out."""


def _alarm(_signum: int, _frame: FrameType | None) -> NoReturn:
    raise _Alarm


_LOADED: types.ModuleType | None = None
_LOADING = threading.Lock()


def _portalocker() -> types.ModuleType:
    """portalocker's lock primitives, loaded once per process: a thread that finds another
    one loading them waits for it (a module half-initialised in ``sys.modules`` has not its
    names yet)."""
    global _LOADED
    if _LOADED is None:
        with _LOADING:
            if _LOADED is None:
                _LOADED = _load_portalocker()
    return _LOADED


def _load_portalocker() -> types.ModuleType:
    """portalocker's lock primitives (``portalocker.portalocker``: ``lock``, ``LockFlags``,
    ``exceptions``) without running the package's ``__init__``, which imports its Redis
    lock, its utils (logging, random, tempfile, json) and ``__about__`` (an
    importlib.metadata lookup): 10-30 ms of every command's start-up for classes necropool
    never uses. The package shell is registered only while the submodule loads, so a later
    plain ``import portalocker`` still runs the whole package and shares these modules."""
    loaded = sys.modules.get("portalocker.portalocker")
    if loaded is not None:
        return loaded
    if "portalocker" in sys.modules:
        return importlib.import_module("portalocker.portalocker")
    spec = importlib.util.find_spec("portalocker")
    if spec is None:
        raise ImportError("portalocker is not installed")
    shell = importlib.util.module_from_spec(spec)
    sys.modules["portalocker"] = shell
    try:
        return importlib.import_module("portalocker.portalocker")
    except ImportError:  # a portalocker laid out otherwise: the whole package, as usual
        pass
    finally:
        if sys.modules.get("portalocker") is shell:
            del sys.modules["portalocker"]
    import portalocker  # lazy: see _portalocker

    return portalocker


class FileLock:
    """An exclusive lock on a file; ``release(unlink=True)`` removes the file first."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def _try_once(self, create: bool) -> bool:
        pl = _portalocker()
        try:
            with storing("creating lock file", self.path):
                fd = os.open(self.path, _OPEN_FLAGS | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if create:
                raise
            return False
        try:
            pl.lock(fd, pl.LockFlags.EXCLUSIVE | pl.LockFlags.NON_BLOCKING)
        except pl.exceptions.LockException:
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # unlinked (and maybe recreated) between open and lock: try again
            os.close(fd)
            return self._try_once(create) if create else False
        self.fd = fd
        return True

    def try_acquire(self, create: bool = True) -> bool:
        """Take the lock without waiting; with ``create=False`` a missing file is 'not taken'."""
        return self._try_once(create)

    def acquire(self, timeout: float, what: str = "lock") -> "FileLock":
        """Wait up to ``timeout`` seconds, then raise TryAgain. In the main thread the wait
        blocks in the kernel (woken the moment the holder lets go, in arrival order);
        elsewhere it polls with short sleeps."""
        if self._try_once(create=True):
            return self
        if threading.current_thread() is threading.main_thread():
            return self._acquire_blocking(timeout, what)
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while not self._try_once(create=True):
            if time.monotonic() >= deadline:
                raise self._timeout(timeout, what)
            time.sleep(delay * jitter())
            delay = min(delay * 1.5, 0.01)
        return self

    def _timeout(self, timeout: float, what: str) -> TryAgain:
        return TryAgain(f"timed out after {timeout:g}s waiting for the {what} ({self.path})")

    def _acquire_blocking(self, timeout: float, what: str) -> "FileLock":
        pl = _portalocker()
        deadline = time.monotonic() + timeout
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                with storing("creating lock file", self.path):
                    fd = os.open(self.path, _OPEN_FLAGS | os.O_CREAT, 0o600)
                try:
                    signal.setitimer(signal.ITIMER_REAL, remaining)
                    try:
                        pl.lock(fd, pl.LockFlags.EXCLUSIVE)
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                    if os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                        self.fd = fd
                        return self
                except (_Alarm, FileNotFoundError):
                    pass
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)
            raise self._timeout(timeout, what)
        finally:
            signal.signal(signal.SIGALRM, previous)

    def release(self, unlink: bool = False) -> None:
        if self.fd is None:
            return
        if unlink:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_free(path: Path) -> bool:
    """Whether no live process holds the lock file at ``path`` (a missing file is free).
    Never creates the file."""
    probe = FileLock(path)
    if probe.try_acquire(create=False):
        probe.release()
        return True
    return not path.exists()
