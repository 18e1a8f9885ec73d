"""Privilege: root heals a pool another user owns, whose holder is hostile.

The pool belongs to an unprivileged user (uid 65534, "nobody"), which is also its holders'
uid: a holder may do anything that user can. Root runs ``release`` and ``auto-recover`` on
it. Whatever the holder plants or renames, nothing outside the pool changes (a canary tree
of root's and one of the owner's, hashed before and after), no program of the holder's
runs (marker files), root leaves no file of its own in the pool, the owner can go on using
the pool, the pool's files are the owner's alone, and another local user is denied.

Runs only as root; where not root it is skipped, except with CI set: then it fails.
"""

import contextlib
import errno
import hashlib
import importlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import git, run_cli

from necropool import PoolManager
from necropool.ground import confine
from necropool.ground.config import PoolSpec
from necropool.ground.errors import Conflict, TryAgain
from necropool.ground.owner import run_as
from necropool.manager import facade
from necropool.slot.lastclean import seal

OWNER = confine.Identity(65534, 65534, (65534,))  # nobody: the pool's owner and its holders
STRANGER = confine.Identity(65533, 65533, (65533,))  # another local user (no name needed)

if os.geteuid() != 0:
    if os.environ.get("CI"):
        pytest.fail("the privilege suite must run as root in CI", pytrace=False)
    pytestmark = pytest.mark.skip(reason="the privilege suite needs root (with CI set: fails)")


class Scene:
    """A pool owned by OWNER under ``home``, canary trees beside it, a place for markers."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.markers = base / "markers"  # where a holder's program would leave its trace
        self.canary_root = base / "canary-root"  # root's: only the identity drop guards it
        self.canary_owner = base / "canary-owner"  # the owner's: only Landlock guards it
        self.manager = PoolManager.from_config_file(root=str(self.home))

    @property
    def pool(self) -> Any:
        return self.manager.get_pool("web")

    def holder(self, script: str) -> subprocess.CompletedProcess[str]:
        """A shell command as the holder (OWNER), outside any slot."""
        return subprocess.run(["setpriv", f"--reuid={OWNER.uid}", f"--regid={OWNER.gid}",
                               "--clear-groups", "sh", "-c", script], cwd=self.base,
                              capture_output=True, text=True, check=True)

    def holder_loop(self, script: str) -> subprocess.Popen[bytes]:
        """A holder process that keeps going (its own session, ended by ``stop``)."""
        return subprocess.Popen(["setpriv", f"--reuid={OWNER.uid}", f"--regid={OWNER.gid}",
                                 "--clear-groups", "sh", "-c", f"while :; do {script}; done"],
                                cwd=self.base, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def as_root(self, *args: str) -> Any:
        result = run_cli(*args, env={"NECROPOOL_HOME": str(self.home)})
        return result

    def canaries(self) -> dict[str, Any]:
        return {"root": tree_hash(self.canary_root), "owner": tree_hash(self.canary_owner)}

    def markers_found(self) -> list[str]:
        return sorted(os.listdir(self.markers))

    def root_owned(self) -> list[str]:
        found = []
        for top, dirs, files in os.walk(self.home):
            for name in [*dirs, *files]:
                if os.lstat(os.path.join(top, name)).st_uid == 0:
                    found.append(os.path.join(top, name))
        if os.lstat(self.home).st_uid == 0:
            found.append(str(self.home))
        return found


def tree_hash(top: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``top``: its mode, owner and content (a link: its target)."""
    out = {}
    for current, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            path = os.path.join(current, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                what = ""
            out[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, what)
    return out


def _canary(top: Path, uid: int) -> None:
    """The names a holder's trees have (``FRESH``'s, and the tracked ``src/pkg0``'s), so
    that whatever path a racing cleanup takes through a swapped link would meet a file."""
    for rel, count in (("a/1/f", FILES), ("a/2/g", 6), ("b/h", 6)):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            (top / f"{rel}{i}").write_text(f"canary {rel}{i}\n")
    (top / "pkg0").mkdir()
    for i in range(0, 20, 4):
        (top / "pkg0" / f"mod{i}.py").write_text(f"canary {i}\n")
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(top)], check=True)


def _preload() -> None:
    """What an owner's child imports as it works, loaded while we may still read it."""
    for module in facade._OWNER_WORK:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def as_owner(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a process that is the owner (not root acting as it)."""
    _preload()
    return run_as(OWNER, fn, *args)


@contextlib.contextmanager
def made_scene(upstream: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    base = Path(tempfile.mkdtemp(prefix="necropool-privilege-", dir="/tmp"))
    base.chmod(0o755)  # the owner must reach its pool; root's canary stays root's
    try:
        monkeypatch.setenv("NECROPOOL_HOME", str(base / "home"))
        s = Scene(base)
        repo = base / "upstream"
        shutil.copytree(upstream, repo, symlinks=True)
        s.markers.mkdir()
        s.markers.chmod(0o1777)  # anyone's program could leave its trace here
        _canary(s.canary_root, 0)
        _canary(s.canary_owner, OWNER.uid)
        s.manager.create_pool(PoolSpec(name="web", url=str(repo), num_slots=2,
                                       fetch_on_allocate=False))
        for path in (repo, s.home):  # now the owner's, as if that user had made them
            subprocess.run(["chown", "-R", f"{OWNER.uid}:{OWNER.gid}", str(path)], check=True)
        pool_dir = s.home / "pools" / "web"
        for n in (1, 2):  # the chown changed every file: sealed again, as the owner
            as_owner(seal, pool_dir / "slots" / str(n), pool_dir / "records" / f"{n}.json")
        yield s
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def scene(upstream, monkeypatch) -> Iterator[Scene]:
    with made_scene(upstream, monkeypatch) as s:
        yield s


def plant_hostile_things(s: Scene, slot: Path) -> None:
    """As the holder: programs git would run (hooks, filters, fsmonitor, a hooks path),
    links out of the slot, and work worth saving."""
    m = s.markers
    s.holder(f"""
        set -e
        cd {slot}
        printf '#!/bin/sh\\ntouch {m}/hook-$(basename $0)\\n' > .git/hooks/post-checkout
        chmod +x .git/hooks/post-checkout
        for h in pre-commit post-commit reference-transaction pre-auto-gc post-index-change; do
            cp .git/hooks/post-checkout .git/hooks/$h; done
        mkdir -p evilhooks && cp .git/hooks/post-checkout evilhooks/post-checkout
        printf '#!/bin/sh\\ntouch {m}/program\\ncat\\n' > evil.sh && chmod +x evil.sh
        cat >> .git/config <<EOF
[core]
	hooksPath = {slot}/evilhooks
	fsmonitor = {slot}/evil.sh
	pager = sh -c 'touch {m}/pager'
[filter "evil"]
	clean = sh -c 'touch {m}/filter-clean; cat'
	smudge = sh -c 'touch {m}/filter-smudge; cat'
	process = {slot}/evil.sh
[diff "evil"]
	textconv = sh -c 'touch {m}/textconv; cat'
EOF
        printf '* filter=evil diff=evil\\n' > .gitattributes
        printf '* filter=evil\\n' > .git/info/attributes
        ln -s {s.canary_owner} out-owner
        ln -s {s.canary_root} out-root
        mkdir -p build && ln -s {s.canary_owner} build/cache
        echo 'local work' > work.txt
        echo 'edited' > README
    """)


# --- root heals, as the owner ----------------------------------------------------------------

def test_root_reclaims_a_hostile_holders_slot_as_the_owner(scene):
    s = scene
    before = s.canaries()
    holder = subprocess.Popen(["sleep", "60"])
    lease = s.manager.allocate_slot("web", pid=holder.pid)  # root allocates, as the owner
    slot = Path(lease["path"])
    plant_hostile_things(s, slot)
    holder.kill()
    holder.wait()
    result = s.as_root("auto-recover", "--json")
    assert result.code == 0, result
    assert '"abandoned_released":1' in result.stdout.replace(" ", ""), result
    assert s.canaries() == before
    assert s.markers_found() == []
    assert s.root_owned() == []
    status = s.manager.slot_status(lease["slot_id"])
    assert status["state"] == "available" and status["last_rescue"], status
    assert not (slot / "work.txt").exists()

    # the owner, as itself, goes on using its pool and gets the holder's work back
    def use() -> bytes:
        manager = PoolManager.from_config_file(root=str(s.home))
        again = manager.allocate_slot("web")
        manager.release_slot(again["slot_id"], again["lease_id"])
        return Path(status["last_rescue"]).read_bytes()

    assert as_owner(use).startswith(b"# v")  # a bundle: the work is the owner's to read
    assert s.root_owned() == []


def test_root_releases_a_tampered_slot_and_recloned_it_as_the_owner(scene):
    """A symlink planted in .git: the slot is moved aside whole and re-cloned, by the owner
    (root could not re-clone a tree another user owns), with nothing of root's left."""
    s = scene
    before = s.canaries()
    lease = s.manager.allocate_slot("web")
    slot = Path(lease["path"])
    s.holder(f"cd {slot} && ln -s {s.canary_root} .git/evil && echo work > work.txt")
    result = s.as_root("release", lease["slot_id"], "--json")
    assert result.code == 0, result
    assert s.canaries() == before
    assert s.root_owned() == []
    [aside] = s.pool.paths.rescued.glob("*.tampered")
    assert stat.S_IMODE(os.lstat(aside).st_mode) == 0o700
    assert (aside / "work.txt").read_text() == "work\n"
    assert git(slot, "-c", "safe.directory=*", "status", "--porcelain") == ""
    assert as_owner(lambda: PoolManager.from_config_file(root=str(s.home))
                    .allocate_slot("web")["state"]) == "allocated"


def test_root_reading_a_pool_creates_nothing_in_it(scene):
    """``detect`` (which takes the pool lock) and ``status`` as root leave no root-owned
    file, so the owner's next allocate or release is not locked out."""
    s = scene
    for lock in s.home.rglob("*.lock"):
        lock.unlink()
    for command in (["detect", "--json"], ["status", "--json"], ["status", "web"],
                    ["rescued", "list"], ["log"]):
        result = s.as_root(*command)
        assert result.code == 0, result
    assert s.root_owned() == []
    assert as_owner(lambda: PoolManager.from_config_file(root=str(s.home))
                    .allocate_slot("web")["state"]) == "allocated"


def test_root_works_as_the_owner_on_a_pool_in_a_ledger(ledger_dsn, upstream, monkeypatch):
    """The owner's child connects to the ledger afresh (never on root's connection)."""
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    with made_scene(upstream, monkeypatch) as s:
        for _ in range(3):
            lease = s.manager.allocate_slot("web")
            s.holder(f"cd {lease['path']} && echo work > work.txt")
            assert s.manager.slot_status(lease["slot_id"])["state"] == "allocated"
            released = s.manager.release_slot(lease["slot_id"], lease["lease_id"])
            assert released["cleaned"] and released["rescued"], released
        assert s.manager.pool_status("web")["state_source"] == "ledger"
        assert s.root_owned() == []


# Runs the CLI as root, counting what the owner's child imports after it became the owner
# (root's Python may live where the owner cannot read: such an import would fail there).
_LATE_IMPORTS = """
import importlib.abc, runpy, sys
from necropool.ground import owner

settled = owner._settled


class Late(importlib.abc.MetaPathFinder):
    found = []

    def find_spec(self, name, path=None, target=None):
        if name not in sys.builtin_module_names:
            self.found.append(name)
        return None  # (imported as usual: only counted)


def counted(uid, fn, args):
    sys.meta_path.insert(0, Late())
    value = settled(uid, fn, args)
    if Late.found:
        raise RuntimeError("imported after becoming the owner: " + " ".join(Late.found))
    return value


owner._settled = counted
sys.argv = ["necropool", *sys.argv[1:]]
runpy.run_module("necropool", run_name="__main__")
"""


def test_the_owners_child_imports_nothing_after_the_drop(scene):
    """``_OWNER_WORK`` is complete for the commands root runs from cron or by hand: a
    dirty release (the index changed: its checksum is hashed), detect, auto-recover,
    isolate and recover, the saved work listed, each a process of its own."""
    s = scene
    lease = s.manager.allocate_slot("web")
    s.holder(f"cd {lease['path']} && echo work > work.txt && git add work.txt && "
             "echo more > README")
    env = dict(os.environ, NECROPOOL_HOME=str(s.home))
    for command in (["release", lease["slot_id"]], ["detect", "--json"],
                    ["auto-recover", "--json"], ["isolate", lease["slot_id"]],
                    ["recover", lease["slot_id"]], ["rescued", "list"]):
        proc = subprocess.run([sys.executable, "-c", _LATE_IMPORTS, *command], env=env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and "after becoming" not in proc.stderr, (command, proc)


# --- private by default -----------------------------------------------------------------------

def test_a_pools_files_are_its_owners_alone(scene):
    s = scene
    lease = s.manager.allocate_slot("web")
    s.holder(f"cd {lease['path']} && umask 022 && echo secret > secret.txt && chmod 600 "
             "secret.txt")
    assert s.as_root("release", lease["slot_id"]).code == 0
    paths = s.pool.paths
    [bundle] = paths.rescued.glob("*.bundle")
    modes = {p.name: stat.S_IMODE(os.lstat(p).st_mode) for p in (
        paths.dir, paths.rescued, paths.records, bundle, paths.state, paths.events,
        paths.pool_lock, paths.definition, paths.records / "1.json")}
    assert modes == {paths.dir.name: 0o700, "rescued": 0o700, "records": 0o700,
                     bundle.name: 0o600, "state.toml": 0o600, "events.jsonl": 0o600,
                     "pool.lock": 0o600, "pool.toml": 0o600, "1.json": 0o600}, modes
    assert stat.S_IMODE(os.lstat(s.home).st_mode) == 0o700


def test_another_local_user_can_neither_read_saved_work_nor_wedge_the_pool(scene):
    s = scene
    lease = s.manager.allocate_slot("web")
    s.holder(f"cd {lease['path']} && echo secret > secret.txt")
    assert s.as_root("release", lease["slot_id"]).code == 0
    paths = s.pool.paths
    [bundle] = paths.rescued.glob("*.bundle")
    for directory in (s.home, s.home / "pools", paths.dir, paths.rescued):
        directory.chmod(0o755)  # even with the directories opened up by hand

    def attempt(path: str) -> int:
        try:
            os.close(os.open(path, os.O_RDONLY))
        except OSError as exc:
            return exc.errno
        return 0

    for path in (bundle, paths.pool_lock, paths.state, paths.events):
        assert confine.run_confined(attempt, str(path), policy=None,
                                    user=STRANGER) == errno.EACCES, path


# --- races: a holder outside the slot renames things while root releases ----------------------

RELEASES = 100


def release_loop(s: Scene, loop: str, rounds: int = RELEASES) -> tuple[int, int]:
    """``rounds`` allocate-release rounds by root while a holder loop runs ``loop``
    (``$S``: the slot; the holder only renames and unlinks there, never writes through a
    link of its own); returns (releases that finished, releases that failed). The slot is
    handed out again once the holder is gone: nothing lost."""
    lease = s.manager.allocate_slot("web")
    slot, number = lease["path"], lease["slot_id"]
    with contextlib.suppress(TryAgain):  # the other slots held: the next allocate is this
        while True:                      # one's (a changed free slot is the last choice)
            s.manager.allocate_slot("web")
    holder = s.holder_loop(f"S={slot}; {loop}")
    done = failed = 0
    try:
        for _ in range(rounds):
            for _attempt in range(5):
                try:
                    s.manager.release_slot(number, stop=True)
                    done += 1
                    break
                except Conflict:
                    time.sleep(0.01)
                except Exception:  # the slot ends in error: recovered for the next round
                    failed += 1
                    for _again in range(3):
                        if s.manager.recover_slot(number, force=True)["recovered"]:
                            break
                    break
            for _attempt in range(50):  # the same slot again, for the next round
                try:
                    got = s.manager.allocate_slot("web")["slot_id"]
                except TryAgain:
                    got = None
                if got == number:
                    break
                if s.manager.slot_status(number)["state"] == "error":
                    failed += 1  # the cleanup allocate gives a slot changed since its own
                    s.manager.recover_slot(number, force=True)  # lost the race: healed
            else:  # the holder won every cleanup of this round (a loaded machine): so be it
                failed += 1
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    for _attempt in range(5):  # the holder gone, the slot is had again: nothing lost
        status = s.manager.slot_status(number)
        if status["state"] == "allocated":
            break
        if status["state"] == "error":
            s.manager.recover_slot(number, force=True)
        with contextlib.suppress(TryAgain):
            if s.manager.allocate_slot("web")["slot_id"] == number:
                break
    else:
        raise AssertionError(f"slot lost: {s.manager.slot_status(number)}")
    return done, failed


# A fresh untracked tree, made under a name never linked (its parent is never made: a
# holder that recreated a removed slot would keep it from being re-cloned), then renamed
# into place; ``src/pkg0`` (tracked) made a real directory again and edited.
FILES = 300
FRESH = (
    "rm -rf $S/t; mkdir $S/t && mkdir -p $S/t/a/1 $S/t/a/2 $S/t/b && "
    f"seq -f $S/t/a/1/f%g 1 {FILES} | xargs touch && "
    "seq -f $S/t/a/2/g%g 1 6 | xargs touch && seq -f $S/t/b/h%g 1 6 | xargs touch; "
    "if [ -L $S/src/pkg0 ]; then rm -f $S/src/pkg0; mv -T $S/pkg0.x $S/src/pkg0; fi; "
    "[ -L $S/src/pkg0 ] || echo edited > $S/src/pkg0/mod0.py; "
)


@pytest.mark.slow
def test_blind_swap_loop_changes_nothing_outside(scene):
    """An untracked directory, and a tracked one with an edited file, renamed to and fro
    with symlinks to the owner's canary."""
    s = scene
    before = s.canaries()
    done, failed = release_loop(
        s, FRESH + "mv -T $S/d $S/old 2>/dev/null; mv -T $S/t $S/d 2>/dev/null; "
                   f"rm -rf $S/old; mv -T $S/d $S/old 2>/dev/null; ln -sfn {s.canary_owner} "
                   "$S/d; mv -T $S/src/pkg0 $S/pkg0.x && "
                   f"ln -sfn {s.canary_owner}/pkg0 $S/src/pkg0; sleep 0.002; rm -rf $S/old")
    # every round cleaned the slot under attack: finished, or failed safely (error, then
    # recovered); the holder racing every cleanup (allocate's too) makes many fail
    assert done + failed >= RELEASES and done > 0, (done, failed)
    assert s.canaries() == before
    assert s.markers_found() == []
    assert s.root_owned() == []


@pytest.mark.slow
def test_git_clean_swap_changes_nothing_outside(scene):
    """Untracked directories full of files (what ``git clean`` removes) swapped, while
    cleanup runs, for links to the same names in the owner's canary and in root's."""
    s = scene
    before = s.canaries()
    done, failed = release_loop(
        s, FRESH + "mv -T $S/u $S/old 2>/dev/null; mv -T $S/t $S/u 2>/dev/null; rm -rf $S/old; "
                   "sleep 0.005; mv -T $S/u/a $S/a.x 2>/dev/null; mv -T $S/u/b $S/b.x; "
                   f"ln -sfn {s.canary_owner}/a $S/u/a; ln -sfn {s.canary_root}/b $S/u/b; "
                   "sleep 0.005; rm -f $S/u/a $S/u/b; mv -T $S/a.x $S/u/a 2>/dev/null; "
                   "mv -T $S/b.x $S/u/b 2>/dev/null")
    # every round cleaned the slot under attack: finished, or failed safely (error, then
    # recovered); the holder racing every cleanup (allocate's too) makes many fail
    assert done + failed >= RELEASES and done > 0, (done, failed)
    assert s.canaries() == before
    assert s.markers_found() == []
    assert s.root_owned() == []


@pytest.mark.slow
def test_config_put_back_race_runs_no_holder_program(scene):
    """The holder keeps putting a config with a filter and an fsmonitor back after cleanup
    restored it, from outside the slot. Git may read it between the put-back and its run
    (the holder has the owner's uid): what it runs is confined as the cleanup, and its
    marker outside the slot is never written."""
    s = scene
    before = s.canaries()
    evil = s.base / "evil-config"
    evil.write_text(f"""[core]
\trepositoryformatversion = 0
\tbare = false
\tfsmonitor = "sh -c 'touch {s.markers}/fsmonitor'"
[filter "evil"]
\tclean = "sh -c 'touch {s.markers}/clean; cat'"
\tsmudge = "sh -c 'touch {s.markers}/smudge; cat'"
\trequired = true
""")
    evil.chmod(0o644)
    done, failed = release_loop(
        s, f"cp {evil} $S/.git/config.new 2>/dev/null && "
           "mv -f $S/.git/config.new $S/.git/config 2>/dev/null; "
           "echo '* filter=evil' > $S/.gitattributes 2>/dev/null; echo x >> $S/README",
        rounds=10)  # (its filter runs for each file git reads: a round takes seconds)
    assert done + failed >= 10, (done, failed)
    assert s.canaries() == before
    assert s.markers_found() == []
    assert s.root_owned() == []


def test_root_prepares_a_slot_as_the_owner(scene):
    """The pool's prepare command, run because root allocated, runs as the owner: what it
    writes and the record of it are the owner's, and root leaves nothing in the pool."""
    s = scene
    definition = s.home / "pools/web/pool.toml"
    with definition.open("a") as fh:
        fh.write('prepare = "mkdir -p build && id -u > build/uid && touch $HOME/cached"\n')
    got = s.as_root("allocate", "web", "--json")
    assert got.code == 0, got
    slot = Path(json.loads(got.stdout)["path"])
    assert (slot / "build/uid").read_text().strip() == str(OWNER.uid)
    assert json.loads(got.stdout)["prepared"]["current"]
    assert (s.home / "pools/web/cache/home/cached").stat().st_uid == OWNER.uid
    assert s.root_owned() == []
