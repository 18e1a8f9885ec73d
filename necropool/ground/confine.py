"""Kernel confinement for work on untrusted slots: Landlock, a privilege drop, a subreaper.

A holder controls everything inside its slot: symlinks, hard links, ``.git/config``, hooks.
When necropool (maybe root, from cron) cleans a slot, the work should run in a forked child
(``run_confined``) or on a thread of its own (``run_in_thread``, no copy of the process)
that may write only beneath the slot (``Policy.write``), may execute only programs from
system directories (``Policy.execute``: no hook or planted binary runs); a child may also
run as the slot's owner (``Identity``). Reading stays allowed everywhere and the network
is not restricted: a cleanup needs both, and neither lets it change what it must not.

Linux only, stdlib and ctypes only, and nothing from necropool, so the module can move.

Limits (Landlock's, by design; the caller must know them):

- chmod, chown, utimes, xattrs are not governed: a confined *root* may still chmod or chown
  any file. Where the caller is root, pass ``user=`` as well.
- Rules are about paths: a hard link that already exists beneath a write directory reaches
  its inode wherever that lives. ``fs.protected_hardlinks=1`` stops a holder linking files
  it may not write; making such a link while confined is denied (EXDEV/EACCES).
- EXECUTE governs execve(2) only: ``sh hook`` or ``python hook.py`` still interpret a file,
  and mmap(PROT_EXEC) of shared libraries needs no rule.
- Before ABI 2 no file may be renamed or linked into another directory at all (REFER), even
  between write directories; before ABI 3 truncate(2) is not governed; before ABI 5 neither
  are ioctls on devices.
- ``apply`` confines the calling thread only (and what it starts later): hence
  ``run_confined``, whose child is single-threaded, and ``run_in_thread``, which confines
  a thread of its own on purpose (ABI 6+: its sweep relies on signal scoping).
"""

import contextlib
import ctypes
import errno
import functools
import os
import pwd
import select
import signal
import stat
import struct
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

T = TypeVar("T")

# Syscall numbers: the generic table, shared by x86_64, aarch64 and every architecture
# that joined the unified numbering (all but alpha).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_PR_SET_PDEATHSIG = 1
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_PR_SET_NO_NEW_PRIVS = 38
_CAP_SYS_PTRACE = 19

# Filesystem access rights (uapi linux/landlock.h), with the ABI that introduced them.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_ABI1_FS = (1 << 13) - 1
_READ = FS_READ_FILE | FS_READ_DIR
# Beneath a write directory: everything that changes files, but no execution, no device
# nodes (a root child could mknod the disk and write to it) and no ioctls on devices.
_WRITE = (
    FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SOCK
    | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER | FS_TRUNCATE
)
# Harmless sinks that programs open for writing (git redirects to /dev/null, with O_TRUNC
# from a shell's ``>``).
_DEVICE = FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV

SYSTEM_EXECUTE = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/alternatives")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full")


class UnconfinedWarning(RuntimeWarning):
    """``run_confined`` ran ``fn`` without Landlock because this kernel does not offer it."""


class ConfinedChildError(ChildProcessError):
    """The confined child ended without sending a result: killed by a signal, or it exited
    (os._exit) from inside ``fn``."""

    def __init__(self, message: str, pid: int, status: int) -> None:
        super().__init__(message)
        self.pid = pid
        self.status = status  # as os.waitstatus_to_exitcode: negative for a signal

    def __reduce__(self) -> tuple[type["ConfinedChildError"], tuple[str, int, int]]:
        return type(self), (str(self.args[0]), self.pid, self.status)


# --- ctypes ------------------------------------------------------------------------------


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded once and before any fork (dlopen in a forked child of a threaded parent
    can deadlock on the loader's lock)."""
    return ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args: int) -> int:
    """syscall(2) with integer arguments; -errno on failure, so callers choose the message."""
    fn = _libc().syscall
    fn.restype = ctypes.c_long
    ctypes.set_errno(0)
    result = int(fn(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))
    return -ctypes.get_errno() if result == -1 else result


def _prctl(option: int, arg: int, what: str) -> int:
    fn = _libc().prctl
    fn.restype = ctypes.c_int
    result = int(fn(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0),
                    ctypes.c_ulong(0), ctypes.c_ulong(0)))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({what}) failed: {os.strerror(err)}")
    return result


# --- Landlock ------------------------------------------------------------------------------


@functools.cache
def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing (ENOSYS) or disabled
    at boot (EOPNOTSUPP). Any other error (a seccomp filter's EPERM, say) raises, so that
    a caller who requires confinement fails closed."""
    if not sys.platform.startswith("linux"):
        return 0
    result = _syscall(_SYS_LANDLOCK_CREATE_RULESET, 0, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    if result >= 0:
        return result
    if -result in (errno.ENOSYS, errno.EOPNOTSUPP):
        return 0
    raise OSError(-result, f"cannot ask the kernel for its Landlock ABI: {os.strerror(-result)}")


def handled_access(abi: int) -> int:
    """The filesystem rights a ruleset denies unless a rule allows them, at ``abi``: every
    right the ABI knows except reading (reads stay allowed everywhere)."""
    rights = _ABI1_FS
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights & ~_READ


def default_execute() -> tuple[str, ...]:
    """The system directories that exist, plus the directory of this Python interpreter
    (resolved) when none of them holds it, so ``sys.executable`` stays runnable. That
    directory must not be writable by holders."""
    dirs = [d for d in SYSTEM_EXECUTE if os.path.isdir(d)]
    if sys.executable:
        interpreter = os.path.dirname(os.path.realpath(sys.executable))
        roots = {os.path.realpath(d) for d in dirs}
        if not any(interpreter == r or interpreter.startswith(r.rstrip("/") + "/")
                   for r in roots):
            dirs.append(interpreter)
    return tuple(dirs)


@dataclass(frozen=True)
class Policy:
    """What a confined process may do besides reading: write beneath ``write``, execute
    from beneath ``execute``, write to the ``devices`` files.

    Write directories are opened without following a final symlink (a holder could make
    its slot a link to /etc): pass resolved paths. ``scope_signals`` (ABI 6+) keeps the
    child from signalling any process outside its own descendants, so a confined root
    cannot kill holders or necropool itself; turn it off if the work must signal others.
    Abstract unix sockets are not scoped: like the network, they are left alone.
    """

    write: tuple[str, ...] = ()
    execute: tuple[str, ...] = field(default_factory=default_execute)
    devices: tuple[str, ...] = DEVICES
    scope_signals: bool = True

    def __post_init__(self) -> None:
        for name in ("write", "execute", "devices"):
            value = getattr(self, name)
            if isinstance(value, str | bytes):
                raise TypeError(f"Policy.{name} is a sequence of paths, not one path: {value!r}")
            object.__setattr__(self, name, tuple(os.path.abspath(p) for p in value))


def _only_thread() -> None:
    """Refuse to confine one thread of many: the others would stay free, and a caller who
    believed the process confined would be wrong."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return
    if threads > 1:
        raise RuntimeError(
            f"Landlock confines only the calling thread and this process has {threads}: "
            "call apply() in a single-threaded process (run_confined's child is one)")


def _add_rule(ruleset: int, path: str, access: int, *, kind: str) -> None:
    flags = os.O_PATH | os.O_CLOEXEC
    if kind == "write":
        flags |= os.O_DIRECTORY | os.O_NOFOLLOW
    elif kind == "execute":
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = "is a symlink" if kind == "write" and os.path.islink(path) else exc.strerror
        raise OSError(exc.errno, f"cannot open the {kind} path {path!r} for a Landlock rule: "
                                 f"{why}", path) from None
    try:
        attr = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        result = _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
                          ctypes.addressof(attr), 0)
    finally:
        os.close(fd)
    if result < 0:
        raise OSError(-result, f"landlock_add_rule({kind} {path!r}, access={access:#x}) "
                               f"failed: {os.strerror(-result)}", path)


def apply(policy: Policy) -> int:
    """Confine the calling (single-threaded) process for good: no new privileges (no setuid
    program undoes it), then a Landlock ruleset per ``policy``. Returns the ABI used; raises
    OSError where Landlock is unavailable or a rule cannot be made, RuntimeError in a
    multi-threaded process. Device files that do not exist are skipped; write and execute
    directories that do not exist are an error."""
    _only_thread()
    return _restrict(policy)


def _restrict(policy: Policy) -> int:
    """``apply`` for the calling thread alone (and what it starts later)."""
    abi = abi_version()
    if abi == 0:
        raise OSError(errno.EOPNOTSUPP,
                      "Landlock is not available (kernel without it, or disabled at boot)")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    handled = handled_access(abi)
    scoped = SCOPE_SIGNAL if abi >= 6 and policy.scope_signals else 0
    attr = _RulesetAttr(handled_access_fs=handled, handled_access_net=0, scoped=scoped)
    # The size the ABI knows: an older kernel refuses a larger struct only when its extra
    # fields are non-zero, but saying exactly what we mean costs nothing.
    size = 8 if abi < 4 else 16 if abi < 6 else ctypes.sizeof(_RulesetAttr)
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), size, 0)
    if ruleset < 0:
        raise OSError(-ruleset, f"landlock_create_ruleset(handled={handled:#x}, scoped="
                                f"{scoped:#x}) failed: {os.strerror(-ruleset)}")
    try:
        for path in policy.write:
            _add_rule(ruleset, path, _WRITE & handled, kind="write")
        for path in policy.execute:
            _add_rule(ruleset, path, FS_EXECUTE, kind="execute")
        for path in policy.devices:
            if os.path.exists(path):
                _add_rule(ruleset, path, _DEVICE & handled, kind="device")
        result = _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
        if result < 0:
            raise OSError(-result, f"landlock_restrict_self failed: {os.strerror(-result)}")
    finally:
        os.close(ruleset)
    return abi


# --- identity ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Whom a confined child becomes: uid, gid and the supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))

    @classmethod
    def of_path(cls, path: str | os.PathLike[str]) -> "Identity":
        """The owner of directory ``path`` (not followed: a symlink is refused, since its
        target's owner is not whoever made the link), with the group of the directory and,
        where the user is in the password database, that user's groups; else just the
        directory's group."""
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory (or a symlink)",
                                     os.fspath(path))
        try:
            user = pwd.getpwuid(st.st_uid)
        except KeyError:
            return cls(st.st_uid, st.st_gid, (st.st_gid,))
        groups = [st.st_gid, user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)]
        return cls(st.st_uid, st.st_gid, tuple(dict.fromkeys(groups)))


def _as_identity(user: "Identity | tuple[int, int] | None") -> Identity | None:
    if user is None or isinstance(user, Identity):
        return user
    uid, gid = user
    return Identity(uid, gid, (gid,))


def _become(who: Identity) -> None:
    """Take ``who``'s groups, gid and uid (real, effective and saved, in that order: once
    the uid is gone the rest could no longer change), then check that each stuck and that
    root cannot be regained. Raises OSError naming what failed."""
    wanted_groups = set(who.groups)
    if (os.getresuid() == (who.uid,) * 3 and os.getresgid() == (who.gid,) * 3
            and set(os.getgroups()) == wanted_groups):
        return  # already so; a non-root caller could not call setgroups even to no effect
    try:
        os.setgroups(list(who.groups))
        os.setresgid(who.gid, who.gid, who.gid)
        os.setresuid(who.uid, who.uid, who.uid)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot become uid={who.uid} gid={who.gid} groups="
                                 f"{list(who.groups)}: {exc.strerror}") from None
    if (os.getresuid() != (who.uid,) * 3 or os.getresgid() != (who.gid,) * 3
            or set(os.getgroups()) != wanted_groups):
        raise OSError(errno.EPERM, f"the identity uid={who.uid} gid={who.gid} did not stick")
    if who.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise OSError(errno.EPERM, f"uid {who.uid} could regain root")
        with contextlib.suppress(OSError), open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:") and int(line.split()[1], 16):
                    raise OSError(errno.EPERM, f"uid {who.uid} kept capabilities: {line}")
    # The kernel already clears this on a change of credentials; said again so that the
    # holder's own processes (same uid) can never ptrace this one and forge its result.
    _prctl(_PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")


# --- subreaper -----------------------------------------------------------------------------


def set_child_subreaper(enable: bool = True) -> None:
    """Make this process the subreaper of its descendants: an orphan (its parent died, as
    with a daemon's double fork) becomes our child rather than init's, so
    ``kill_orphans`` can find it."""
    _prctl(_PR_SET_CHILD_SUBREAPER, int(enable), "PR_SET_CHILD_SUBREAPER")


def _children_by_stat() -> list[int]:
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue  # gone meanwhile
        # The command (field 2) may hold spaces and parentheses: split after the last ')'.
        if int(data[data.rindex(b")") + 2 :].split()[1]) == me:
            found.append(int(name))
    return sorted(found)


def children() -> list[int]:
    """This process's children (of all its threads), from /proc/self/task/*/children, or
    where the kernel lacks that file (CONFIG_PROC_CHILDREN) by scanning /proc/*/stat for
    our pid as the parent. A child forked while we read may be missed: callers loop."""
    if not os.path.exists("/proc/thread-self/children"):
        return _children_by_stat()
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                found.update(int(pid) for pid in fh.read().split())
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return sorted(found)


def kill_orphans(sig: int = signal.SIGKILL, *, keep: Collection[int] = (),
                 wait: float = 1.0, scoped: bool = False) -> list[int]:
    """Signal every child of this process except ``keep``, then reap those that end within
    ``wait`` seconds; returns the pids signalled. Meant for a subreaper, whose children are
    orphans of its descendants, but it signals *all* children: pass in ``keep`` those the
    caller still waits for (a subprocess.Popen's pid), or their status is taken from it.
    ``scoped``: called from a thread whose Landlock domain scopes signals, where a child
    the kernel refuses to signal is outside that domain, so not the thread's: left alone.

    The pids are safe to signal: a child's pid cannot be reused until we reap it. One left
    unreaped (still running after ``wait``, or in uninterruptible sleep) is a child still,
    and is found again by the next call."""
    pids = []
    for pid in children():
        if pid in keep:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            if not scoped:
                raise
            continue
        pids.append(pid)
    pending = set(pids)
    deadline = time.monotonic() + wait
    while pending:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid  # reaped by someone else
            if done:
                pending.discard(pid)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    return pids


def sweep_orphans(scoped: bool = False) -> None:
    """In a subreaper (the confined child after ``fn``, ``run`` after its command): kill
    every descendant still alive, round after round (killing one orphans its children onto
    us), so no process of the work outlives it. One that does not die within a second
    (uninterruptible sleep) is not waited for again. ``scoped``: as in ``kill_orphans``."""
    stuck: set[int] = set()
    for _ in range(64):
        killed = kill_orphans(signal.SIGKILL, keep=stuck, wait=1.0, scoped=scoped)
        if not killed:
            return
        stuck |= set(children()) & set(killed)


# --- run_confined --------------------------------------------------------------------------

_HEADER = struct.Struct("!Q")


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _encode(message: tuple[str, Any, str]) -> bytes:
    """Pickle the child's result, checked to unpickle again (an exception whose __init__
    wants other arguments pickles but does not load); what cannot cross becomes a
    RuntimeError carrying its repr."""
    import pickle  # lazy: loaded by run_confined before its fork; threads need none

    kind, value, tb = message
    try:
        data = pickle.dumps(message)
        pickle.loads(data)
        return data
    except Exception as exc:
        what = "the return value" if kind == "ok" else "the exception"
        substitute = RuntimeError(f"{what} {value!r} cannot cross from the confined child: "
                                  f"{exc!r}")
        return pickle.dumps(("err", substitute, tb))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _child(wfd: int, fn: Callable[..., Any], args: tuple[object, ...],
           policy: Policy | None, who: Identity | None, parent: int) -> NoReturn:
    """The forked child: its own process group and subreaper, confined, then ``who``, then
    ``fn``; the result goes up the pipe and the child leaves by os._exit, whatever
    happens, so none of the parent's cleanup or atexit handlers runs here."""
    code = 0
    try:
        try:
            os.setpgid(0, 0)
            set_child_subreaper()
            if policy is not None:
                apply(policy)
            if who is not None:
                _become(who)
            # After _become: a change of credentials clears the death signal.
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
            if os.getppid() != parent:
                os._exit(75)  # the parent died before the death signal was armed
            message: tuple[str, Any, str] = ("ok", fn(*args), "")
        except SystemExit as exc:  # re-raised in the parent it would end the parent too
            wanted = exc.code if isinstance(exc.code, int) else 1
            message = ("err", ConfinedChildError(
                f"the confined child (pid {os.getpid()}) called sys.exit({exc.code!r})",
                os.getpid(), wanted), traceback.format_exc())
        except BaseException as exc:
            message = ("err", exc, traceback.format_exc())
        sweep_orphans()
        _flush_std()
        data = _encode(message)
        _write_all(wfd, _HEADER.pack(len(data)) + data)
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _exited(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _receive(rfd: int, pid: int, deadline: float | None) -> bytes:
    """Read the child's message until the child has exited (not until EOF: a descendant
    that inherited the pipe could hold it open). Raises TimeoutError at ``deadline``."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (OSError, AttributeError):
        pidfd = None  # kernel < 5.3: poll the child's state every 50 ms instead
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    buf = bytearray()
    try:
        while True:
            wait_ms: float | None = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the confined child (pid {pid}) did not finish in "
                                       "time and was killed")
                wait_ms = remaining * 1000
            if pidfd is None:
                wait_ms = 50 if wait_ms is None else min(wait_ms, 50)
            ready = {fd for fd, _ in poller.poll(wait_ms)}
            if rfd in ready:
                chunk = os.read(rfd, 1 << 16)
                buf += chunk
                if not chunk:
                    poller.unregister(rfd)
            if (pidfd in ready) if pidfd is not None else _exited(pid):
                os.set_blocking(rfd, False)
                with contextlib.suppress(BlockingIOError):
                    while chunk := os.read(rfd, 1 << 16):
                        buf += chunk
                return bytes(buf)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_and_reap(pid: int) -> int:
    """Kill what is left of the child's process group, then reap the child; its pid (the
    group's id) stays ours until reaped, so the signal cannot reach a stranger."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # in case setpgid lost a race and it has no group
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_confined(fn: Callable[..., T], *args: object, policy: Policy | None,
                 user: Identity | tuple[int, int] | None = None,
                 timeout: float | None = None, require: bool = False) -> T:
    """Run ``fn(*args)`` in a forked child confined by ``policy`` (None: no Landlock) and as
    ``user`` (None: as we are), and return its value or raise its exception here.

    Where the kernel has no Landlock the child runs unconfined with an UnconfinedWarning,
    or, with ``require``, OSError is raised and nothing runs. The child leads its own
    process group and is its descendants' subreaper: when ``fn`` returns every descendant
    still alive is killed, and when we are interrupted (KeyboardInterrupt), time out
    (TimeoutError) or the child ends, its group is killed. A child that ends without a
    result (a signal, os._exit) or calls sys.exit raises ConfinedChildError. The child is
    killed (SIGKILL) if the thread that called us dies. Safe from a threaded parent: the
    child runs only ``fn`` and leaves by os._exit; ``fn`` must not need a lock that another
    thread held at the fork. What ``fn`` returns is unpickled here: run untrusted
    code only in ``fn``'s subprocesses, never in ``fn``'s own interpreter. The environment
    (HOME, TMPDIR) is the caller's to set; a TMPDIR must be beneath ``policy.write``."""
    who = _as_identity(user)
    if policy is not None and abi_version() == 0:
        if require:
            raise OSError(errno.EOPNOTSUPP, "Landlock is not available (kernel without it, "
                                            "or disabled at boot): not running unconfined")
        warnings.warn(UnconfinedWarning("Landlock is not available: running unconfined"),
                      stacklevel=2)
        policy = None
    _libc()  # loaded here, not after the fork
    import pickle  # lazy: 1.5 ms that the confined thread does without; before the fork
    deadline = None if timeout is None else time.monotonic() + timeout
    _flush_std()
    parent = os.getpid()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(wfd, fn, args, policy, who, parent)
    try:
        os.close(wfd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # as the child does: whichever runs first
        data = _receive(rfd, pid, deadline)
    except BaseException:
        _kill_and_reap(pid)
        raise
    finally:
        os.close(rfd)
    status = _kill_and_reap(pid)
    if len(data) < _HEADER.size or len(data) < _HEADER.size + _HEADER.unpack_from(data)[0]:
        how = (f"was killed by {_signal_name(-status)}" if status < 0
               else f"exited with status {status}")
        raise ConfinedChildError(f"the confined child (pid {pid}) {how} without a result",
                                 pid, status)
    try:
        kind, value, tb = pickle.loads(data[_HEADER.size:])
    except Exception as exc:
        raise RuntimeError(f"the confined child's result cannot be read: {exc!r}") from None
    if kind == "ok":
        return cast(T, value)
    if isinstance(value, BaseException):
        value.add_note(f"(raised in the confined child, pid {pid})\n{tb}".rstrip())
        raise value
    raise RuntimeError(f"the confined child sent {kind!r}: {value!r}")


# --- run_in_thread -------------------------------------------------------------------------

_guard_lock = threading.Lock()
_guarding = 0
_unguarded = (0, 1)  # the subreaper and dumpable settings to restore when the last ends


def threads_confinable(policy: Policy) -> bool:
    """Whether ``run_in_thread`` can confine ``policy``'s work here: its sweep needs the
    kernel to scope signals (Landlock ABI 6 and later)."""
    return policy.scope_signals and abi_version() >= 6


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    """While confined threads work, this process is its descendants' subreaper (the work's
    orphans become our children, for the sweep) and not dumpable: no process of the work
    may ptrace or process_vm_writev the confined thread, whose memory is the whole
    process's (the same uid could, and Landlock allows it within one domain)."""
    global _guarding, _unguarded
    with _guard_lock:
        if _guarding == 0:
            was = ctypes.c_int(0)
            _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(was), "PR_GET_CHILD_SUBREAPER")
            _unguarded = (was.value, _prctl(_PR_GET_DUMPABLE, 0, "PR_GET_DUMPABLE"))
            set_child_subreaper()
            _prctl(_PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
        _guarding += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guarding -= 1
            if _guarding == 0:  # every process of the work was killed (a SIGKILLed one in
                reaper, dumpable = _unguarded  # uninterruptible sleep dies as it wakes)
                set_child_subreaper(bool(reaper))
                _prctl(_PR_SET_DUMPABLE, dumpable, "PR_SET_DUMPABLE")


def _thread_body(box: list[tuple[str, Any]], done: threading.Event, fn: Callable[..., Any],
                 args: tuple[object, ...], policy: Policy) -> None:
    try:
        if os.geteuid() == 0:  # root's programs must not ptrace us either: their exec
            _prctl(_PR_CAPBSET_DROP, _CAP_SYS_PTRACE, "PR_CAPBSET_DROP")  # gets no such right
        _restrict(policy)
    except BaseException as exc:
        box.append(("err", exc))
        done.set()
        return  # not confined: nothing ran, and a sweep here could signal anyone's child
    try:
        box.append(("ok", fn(*args)))
    except BaseException as exc:
        box.append(("err", exc))
    finally:
        try:
            sweep_orphans(scoped=True)  # the kernel lets it signal the work's processes only
        finally:
            done.set()


def _end_work_of(worker: threading.Thread, done: threading.Event) -> None:
    """After an interrupt: kill the confined thread's children until it is done (its git
    fails, it sweeps what is left); they are our process's unreaped children, safe to
    signal. Told by ``done``, not by join: a join that a signal interrupts marks a thread
    still running as stopped (CPython 3.11)."""
    while not done.is_set():
        if worker.native_id is not None:
            with contextlib.suppress(OSError), open(
                    f"/proc/self/task/{worker.native_id}/children") as fh:
                for pid in map(int, fh.read().split()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(KeyboardInterrupt):  # the first one is raised after
            done.wait(0.05)


def run_in_thread(fn: Callable[..., T], *args: object, policy: Policy) -> T:
    """``run_confined`` without the fork: ``fn(*args)`` on a new thread of this process
    that confines itself per ``policy`` (Landlock confines the calling thread, and the
    processes it starts inherit it), its value or exception returned or raised here as is.
    When ``fn`` ends every process of the work still alive is killed: the process is a
    subreaper meanwhile, and the thread's Landlock domain scopes signals, so the kernel
    lets its sweep reach the work's processes and no one else's. Only where
    ``threads_confinable(policy)``; not for a change of identity (glibc's setuid changes
    every thread: that stays ``run_confined(user=...)``'s child)."""
    if not threads_confinable(policy):
        raise OSError(errno.EOPNOTSUPP, "a confined thread needs Landlock's signal scoping "
                                        "(ABI 6 or later)")
    box: list[tuple[str, Any]] = []
    done = threading.Event()
    with _guarded():
        worker = threading.Thread(target=_thread_body, args=(box, done, fn, args, policy),
                                  name="necropool-confined", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no thread could be made: nothing runs
            raise
        except BaseException:  # interrupted while it started: it runs
            _end_work_of(worker, done)
            raise
        try:
            done.wait()
        except BaseException:
            _end_work_of(worker, done)
            raise
    kind, value = box[0]
    if kind == "err":
        raise value
    return cast(T, value)
