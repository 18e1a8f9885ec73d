"""necropool.ground.confine against the real kernel: forked children, Landlock, real git, no
mocks. Where the kernel has no Landlock, or a test needs root, it is skipped; under CI (env CI
set) that is a failure instead, since CI must prove the confinement."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from necropool.ground import confine
from necropool.ground.confine import ConfinedChildError, Identity, Policy, run_confined

GIT = shutil.which("git") or "/usr/bin/git"


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def abi() -> int:
    version = confine.abi_version()
    if version == 0:
        skip_or_fail("this kernel offers no Landlock (missing, or disabled at boot)")
    return version


@pytest.fixture
def inside(tmp_path: Path) -> Path:
    path = tmp_path / "inside"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("original\n")
    return path


@pytest.fixture
def policy(inside: Path) -> Policy:
    return Policy(write=(str(inside),))


def write(path: Path, text: str = "written\n") -> str:
    path.write_text(text)
    return path.read_text()


# --- (a) writes ----------------------------------------------------------------------------


def test_write_outside_is_denied_and_inside_allowed(abi, policy, inside, outside):
    with pytest.raises(PermissionError) as caught:
        run_confined(write, outside / "new", policy=policy)
    assert caught.value.errno == errno.EACCES
    assert not (outside / "new").exists()
    with pytest.raises(PermissionError):
        run_confined(write, outside / "victim", policy=policy)
    assert (outside / "victim").read_text() == "original\n"

    assert run_confined(write, inside / "new", policy=policy) == "written\n"
    (inside / "sub").mkdir()
    assert run_confined(write, inside / "sub" / "deep", policy=policy) == "written\n"


def test_truncate_outside_is_denied(abi, policy, outside):
    if abi < 3:
        pytest.skip(f"truncate(2) is governed from Landlock ABI 3; this kernel has {abi}")
    with pytest.raises(PermissionError):
        run_confined(os.truncate, outside / "victim", 0, policy=policy)
    assert (outside / "victim").read_text() == "original\n"


def test_devices_stay_writable(abi, policy):
    def sinks() -> str:
        with open("/dev/null", "w") as fh:
            fh.write("into the void")
        return subprocess.run(["sh", "-c", "echo x > /dev/null && echo ok"], check=True,
                              capture_output=True, text=True).stdout

    assert run_confined(sinks, policy=policy) == "ok\n"


# --- (b) renames, unlinks, links ----------------------------------------------------------


def test_rename_and_unlink_outside_are_denied(abi, policy, inside, outside):
    victim = outside / "victim"
    with pytest.raises(PermissionError):
        run_confined(os.rename, victim, outside / "moved", policy=policy)
    with pytest.raises(PermissionError):
        run_confined(os.unlink, victim, policy=policy)
    with pytest.raises(OSError) as caught:  # out of the slot: EXDEV (REFER) or EACCES
        run_confined(os.rename, victim, inside / "stolen", policy=policy)
    assert caught.value.errno in (errno.EACCES, errno.EXDEV)
    assert victim.read_text() == "original\n"
    assert not (outside / "moved").exists() and not (inside / "stolen").exists()

    (inside / "a").write_text("a\n")
    run_confined(os.rename, inside / "a", inside / "b", policy=policy)
    run_confined(os.unlink, inside / "b", policy=policy)
    assert list(inside.iterdir()) == []


def test_a_symlink_inside_does_not_lead_outside(abi, policy, inside, outside):
    (inside / "to-victim").symlink_to(outside / "victim")
    (inside / "to-new").symlink_to(outside / "new")
    (inside / "to-outside").symlink_to(outside)
    for target in ("to-victim", "to-new"):
        with pytest.raises(PermissionError):
            run_confined(write, inside / target, policy=policy)
    with pytest.raises(PermissionError):
        run_confined(write, inside / "to-outside" / "new2", policy=policy)
    assert (outside / "victim").read_text() == "original\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_a_hard_link_to_an_outside_file_cannot_be_made(abi, policy, inside, outside):
    with pytest.raises(OSError) as caught:
        run_confined(os.link, outside / "victim", inside / "link", policy=policy)
    assert caught.value.errno in (errno.EACCES, errno.EXDEV)
    assert not (inside / "link").exists()


def test_a_write_directory_that_is_a_symlink_is_refused(abi, tmp_path, outside):
    (tmp_path / "slot").symlink_to(outside)
    with pytest.raises(OSError, match="symlink"):
        run_confined(write, outside / "x", policy=Policy(write=(str(tmp_path / "slot"),)))
    assert not (outside / "x").exists()


def test_policy_paths_are_a_sequence_not_one_string():
    with pytest.raises(TypeError):
        Policy(write="/tmp")  # type: ignore[arg-type]


# --- (c) execution -------------------------------------------------------------------------


def run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True).stdout


def test_a_program_outside_the_execute_dirs_cannot_run(abi, policy, inside):
    planted = inside / "true"
    shutil.copy2("/usr/bin/true", planted)
    run(planted)  # unconfined it runs: the denial below is Landlock's, not noexec's
    with pytest.raises(PermissionError):
        run_confined(run, planted, policy=policy)

    assert run_confined(run, GIT, "--version", policy=policy).startswith("git version")
    assert run_confined(run, sys.executable, "-c", "print(6 * 7)", policy=policy) == "42\n"


# --- (d) git -------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GIT, "-c", "user.name=Confined", "-c", "user.email=c@example.invalid",
                           "-c", "init.defaultBranch=main", *args], cwd=repo,
                          capture_output=True, text=True)


def test_git_works_in_the_write_dir(abi, policy, inside):
    def work() -> str:
        assert git(inside, "init", "-q").returncode == 0
        (inside / "file.txt").write_text("content\n")
        (inside / "sub").mkdir()
        (inside / "sub" / "more.txt").write_text("more\n")
        for args in (("add", "."), ("commit", "-q", "-m", "confined commit"), ("gc", "-q"),
                     ("rm", "-q", "sub/more.txt"), ("commit", "-q", "-m", "second")):
            result = git(inside, *args)
            assert result.returncode == 0, (args, result.stderr)
        return git(inside, "rev-parse", "HEAD").stdout.strip()

    head = run_confined(work, policy=policy)
    assert git(inside, "log", "--format=%H %s").stdout.splitlines() == [
        f"{head} second", git(inside, "rev-parse", "HEAD~").stdout.strip() + " confined commit"]


def test_a_hook_planted_in_the_slot_does_not_run(abi, policy, inside):
    assert git(inside, "init", "-q").returncode == 0
    hook = inside / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\ntouch hook-ran\n")
    hook.chmod(0o755)
    (inside / "f").write_text("f\n")
    assert git(inside, "add", "f").returncode == 0

    result = run_confined(git, inside, "commit", "-q", "-m", "m", policy=policy)
    assert not (inside / "hook-ran").exists(), result
    # git refuses to commit when it cannot run the hook: a failure, never a bypass.
    assert result.returncode != 0 and "Permission denied" in result.stderr
    git(inside, "commit", "-q", "-m", "m")  # the control: unconfined, the hook runs
    assert (inside / "hook-ran").exists()


# --- (e) identity --------------------------------------------------------------------------


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A directory everyone may traverse (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="necropool-confine-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_the_child_runs_as_another_user(world_tmp):
    if os.getuid() != 0:
        skip_or_fail("changing identity needs root")
    locked = world_tmp / "locked"  # root's, 0755
    locked.mkdir(mode=0o755)
    locked.chmod(0o755)
    theirs = world_tmp / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)

    def work() -> tuple[int, int, int, list[int], str]:
        write(theirs / "mine")
        with pytest.raises(PermissionError):
            write(locked / "not-mine")
        return os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), (theirs / "mine").read_text()

    # The Landlock policy allows both directories: what denies ``locked`` is the uid.
    policy = Policy(write=(str(locked), str(theirs))) if confine.abi_version() else None
    user = Identity(65534, 65534, (65534,))
    assert run_confined(work, policy=policy, user=user) == (65534, 65534, 65534, [65534],
                                                            "written\n")
    assert run_confined(work, policy=None, user=(65534, 65534))[:3] == (65534, 65534, 65534)
    assert not (locked / "not-mine").exists()
    assert (theirs / "mine").stat().st_uid == 65534


def test_identity_of_a_directory_is_its_owner(tmp_path):
    me = Identity.of_path(tmp_path)
    assert (me.uid, me.gid) == (os.stat(tmp_path).st_uid, os.stat(tmp_path).st_gid)
    assert me.gid in me.groups
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(NotADirectoryError):
        Identity.of_path(tmp_path / "link")
    if os.getuid() == 0:
        stranger = tmp_path / "stranger"  # a uid no password entry names
        stranger.mkdir()
        os.chown(stranger, 54321, 54322)
        assert Identity.of_path(stranger) == Identity(54321, 54322, (54322,))


# --- (f) results and failures crossing the pipe ------------------------------------------


class Unloadable(Exception):
    """Pickles, but cannot be unpickled: __init__ wants two arguments, args holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def test_values_and_exceptions_cross(policy):
    assert run_confined(lambda a, b: {"sum": a + b, "pid": os.getpid()}, 2, 3,
                        policy=policy)["sum"] == 5
    assert run_confined(lambda: os.getpid(), policy=None) != os.getpid()
    big = run_confined(lambda: b"x" * 5_000_000, policy=None)  # more than a pipe's buffer
    assert len(big) == 5_000_000

    def fails() -> None:
        raise ValueError("from the child")

    with pytest.raises(ValueError, match="from the child") as caught:
        run_confined(fails, policy=policy)
    assert "raised in the confined child" in "".join(caught.value.__notes__)

    class Local(Exception):  # not importable by name: not picklable
        pass

    def local() -> None:
        raise Local("local")

    with pytest.raises(RuntimeError, match="Local"):
        run_confined(local, policy=None)

    def unloadable() -> None:
        raise Unloadable("a", "b")

    with pytest.raises(RuntimeError, match="Unloadable"):
        run_confined(unloadable, policy=None)
    with pytest.raises(RuntimeError, match="return value"):
        run_confined(lambda: threading.Lock(), policy=None)


def test_a_child_that_dies_without_a_result(policy):
    with pytest.raises(ConfinedChildError, match="SIGKILL") as caught:
        run_confined(lambda: os.kill(os.getpid(), signal.SIGKILL), policy=policy)
    assert caught.value.status == -signal.SIGKILL
    with pytest.raises(ConfinedChildError, match="status 3"):
        run_confined(os._exit, 3, policy=policy)
    with pytest.raises(ConfinedChildError, match=r"sys.exit\(4\)") as caught:
        run_confined(sys.exit, 4, policy=policy)  # not a SystemExit that would end us too
    assert caught.value.status == 4


def test_setup_failures_are_raised_with_a_clear_message(abi, tmp_path):
    with pytest.raises(FileNotFoundError, match="write path"):
        run_confined(lambda: None, policy=Policy(write=(str(tmp_path / "missing"),)))

    def threaded_apply() -> int:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            return confine.apply(Policy(write=(str(tmp_path),)))
        finally:
            stop.set()
            thread.join()

    with pytest.raises(RuntimeError, match="only the calling thread"):
        run_confined(threaded_apply, policy=None)


def test_timeout_kills_the_child(tmp_path):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        run_confined(time.sleep, 30, policy=None, timeout=0.3)
    assert time.monotonic() - started < 3


def test_interrupting_the_parent_kills_the_child(tmp_path):
    pidfile = tmp_path / "pid"

    def sleeper() -> None:
        pidfile.write_text(str(os.getpid()))
        time.sleep(30)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_confined(sleeper, policy=Policy(write=(str(tmp_path),)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not Path(f"/proc/{pidfile.read_text()}").exists()


def test_a_threaded_parent(policy):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: run_confined(lambda: (n * 2, os.getpid()),
                                                       policy=policy), range(12)))
    assert [r[0] for r in results] == [n * 2 for n in range(12)]
    assert len({r[1] for r in results}) == 12


def test_signals_stay_within_the_child(abi, policy):
    if abi < 6:
        pytest.skip(f"signal scoping needs Landlock ABI 6; this kernel has {abi}")
    outsider = os.getpid()  # signal 0: only asks whether the signal would be allowed
    with pytest.raises(PermissionError):
        run_confined(os.kill, outsider, 0, policy=policy)
    run_confined(os.kill, outsider, 0, policy=Policy(write=policy.write, scope_signals=False))


# --- (g) subreaper -------------------------------------------------------------------------


def parent_of(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def test_an_orphan_is_adopted_by_the_subreaper_and_killed():
    def work() -> tuple[int, int, int, bool, bool, list[int], bool]:
        confine.set_child_subreaper()
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:  # a daemon's double fork: the grandchild is orphaned at once
            grandchild = os.fork()
            if grandchild == 0:
                time.sleep(30)
                os._exit(0)
            os.write(w, str(grandchild).encode())
            os._exit(0)
        os.close(w)
        os.waitpid(middle, 0)
        orphan = int(os.read(r, 64))
        parent = parent_of(orphan)
        adopted = orphan in confine.children()
        by_stat = orphan in confine._children_by_stat()
        killed = confine.kill_orphans(signal.SIGKILL)
        return (os.getpid(), parent, orphan, adopted, by_stat, killed,
                Path(f"/proc/{orphan}").exists())

    me, parent, orphan, adopted, by_stat, killed, alive = run_confined(work, policy=None)
    assert parent == me and adopted and by_stat
    assert killed == [orphan] and not alive


def test_what_the_work_leaves_running_is_killed(policy):
    def leave_behind() -> int:
        return subprocess.Popen(["sleep", "30"], start_new_session=True).pid

    leftover = run_confined(leave_behind, policy=policy)
    assert not Path(f"/proc/{leftover}").exists()


# --- (h) a confined thread: run_in_thread ---------------------------------------------------


@pytest.fixture
def scoping(abi: int) -> int:
    if abi < 6:
        skip_or_fail(f"a confined thread needs Landlock's signal scoping (ABI 6); this "
                     f"kernel has {abi}")
    return abi


def _status(field: str) -> str:
    """A field of the process's (its main thread's) /proc status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(field)


def test_a_confined_thread_confines_itself_and_what_it_starts_and_nothing_else(
        scoping, policy, inside, outside):
    def work() -> tuple[str, int, str]:
        with pytest.raises(PermissionError):
            (outside / "victim").write_text("changed\n")
        shell = subprocess.run(["sh", "-c", f"echo changed > {outside}/victim"],
                               capture_output=True, text=True)
        (inside / "new").write_text("written\n")
        return shell.stderr, threading.get_ident(), Path("/proc/thread-self/status").read_text()

    stderr, ident, status = confine.run_in_thread(work, policy=policy)
    assert "Permission denied" in stderr  # the shell it started inherited the confinement
    assert ident != threading.get_ident() and "NoNewPrivs:\t1" in status
    assert (outside / "victim").read_text() == "original\n"
    assert (inside / "new").read_text() == "written\n"
    # the rest of the process, and the process after the work, are as they were
    assert _status("NoNewPrivs") == "0"
    assert confine._prctl(confine._PR_GET_DUMPABLE, 0, "PR_GET_DUMPABLE") == 1
    write(outside / "after")


def test_a_confined_threads_exception_is_raised_as_itself(scoping, policy):
    class Unpicklable(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a} {b}")

    def fails() -> None:
        raise Unpicklable(1, 2)

    with pytest.raises(Unpicklable, match="1 2"):
        confine.run_in_thread(fails, policy=policy)


def test_the_confined_threads_sweep_ends_the_works_processes_and_no_one_elses(
        scoping, policy, inside):
    """What the work leaves running, double-forked or not, is killed; a child the caller
    started before the work (outside its domain, so its signals cannot reach it) lives."""
    mine = subprocess.Popen(["sleep", "30"])
    try:
        def leave_behind() -> int:
            subprocess.run(["sh", "-c", f"(sleep 31 & echo $! > {inside}/daemon) ; exit 0"],
                           check=True)
            return subprocess.Popen(["sleep", "32"], start_new_session=True).pid

        leftover = confine.run_in_thread(leave_behind, policy=policy)
        daemon = int((inside / "daemon").read_text())
        assert not Path(f"/proc/{leftover}").exists()
        assert not Path(f"/proc/{daemon}").exists()
        assert mine.poll() is None
    finally:
        mine.kill()
        mine.wait()


def test_interrupting_a_confined_thread_ends_its_work(scoping, policy, inside):
    main = threading.get_ident()
    timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))

    def sleeper() -> None:
        subprocess.run(["sh", "-c", f"echo $$ > {inside}/pid; exec sleep 30"], check=True)

    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            confine.run_in_thread(sleeper, policy=policy)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert not Path(f"/proc/{(inside / 'pid').read_text().strip()}").exists()


# --- ABI handling ----------------------------------------------------------------------------


def test_the_rights_handled_follow_the_abi():
    reads = confine.FS_READ_FILE | confine.FS_READ_DIR
    later = {2: confine.FS_REFER, 3: confine.FS_TRUNCATE, 5: confine.FS_IOCTL_DEV}
    for abi in range(1, 8):
        handled = confine.handled_access(abi)
        assert handled & reads == 0  # reading stays allowed everywhere
        assert handled & confine.FS_EXECUTE and handled & confine.FS_WRITE_FILE
        for since, right in later.items():
            assert bool(handled & right) == (abi >= since), (abi, since)
    assert confine.abi_version() >= 0
