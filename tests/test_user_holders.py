"""Holders as other users: run as root, ``allocate --user`` / ``run --user`` hand a slot to
a local user for the lease. That user works and commits in its slot, and can reach nothing
else of the pool (a real EACCES, from a process running as that user); the release takes
the slot back (its processes ended, a walk that never follows a link), saves its work
owner-only and hands the slot on clean and the owner's; nothing outside the root changes.

Runs only as root; where not root it is skipped, except with CI set: then it fails.
"""

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import clock_at, git, run_cli
from test_privilege import OWNER, as_owner, made_scene, tree_hash

from necropool import PoolManager
from necropool.ground import confine, proc
from necropool.ground.config import PoolSpec
from necropool.ground.errors import Conflict, TryAgain, UsageError
from necropool.ground.users import lookup
from necropool.lease import handover
from necropool.lease.allocate import AllocateRequest
from necropool.store import journal

NOBODY = 65534
NOBODY_NAME = "nobody"

if os.geteuid() != 0:
    if os.environ.get("CI"):
        pytest.fail("the user-holder suite must run as root in CI", pytrace=False)
    pytestmark = pytest.mark.skip(reason="the user-holder suite needs root (with CI set: fails)")

# What a process of the holder's tries, path by path: errno names (0: it worked).
PROBE = r"""
import errno, json, os, sys
out = {}
for op, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if op == "read":
            open(path, "rb").read()
        elif op == "list":
            os.listdir(path)
        elif op == "write":
            open(path, "ab").close()
        elif op == "create":
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
        out[op + " " + path] = 0
    except OSError as exc:
        out[op + " " + path] = errno.errorcode.get(exc.errno, exc.errno)
print(json.dumps(out))
"""


def as_user(uid: int, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A shell command run as ``uid`` (its own group, no others), outside any slot."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "sh", "-c", script], capture_output=True, text=True, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}, **kwargs)


def probe(uid: int, *pairs: tuple[str, Path]) -> dict[str, Any]:
    argv = [str(x) for pair in pairs for x in pair]
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "/usr/bin/python3", "-I", "-c", PROBE, *argv], cwd="/",
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class Scene:
    """A pool owned by root under ``home``, canary trees beside it (root's, and one of the
    holder's own, which the take-back must not chown through a link)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.canary_root = base / "canary-root"
        self.canary_user = base / "canary-user"
        self.manager = PoolManager.from_config_file(root=str(self.home))

    @property
    def pool(self) -> Any:
        return self.manager.get_pool("web")

    def cli(self, *args: str, **kwargs: Any) -> Any:
        return run_cli(*args, env={"NECROPOOL_HOME": str(self.home)}, **kwargs)

    def canaries(self) -> dict[str, Any]:
        return {"root": tree_hash(self.canary_root), "user": tree_hash(self.canary_user)}


def _canary(top: Path, uid: int) -> None:
    for rel in ("a/1/f", "a/2/g", "b/h"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            (top / f"{rel}{i}").write_text(f"canary {rel}{i}\n")
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(top)], check=True)


@pytest.fixture
def scene(upstream, monkeypatch) -> Iterator[Scene]:
    with _made(upstream, monkeypatch) as s:
        yield s


@pytest.fixture
def ledger_scene(ledger_dsn, upstream, monkeypatch) -> Iterator[Scene]:
    """The scene with the pool in a shared ledger, as host alpha of its fleet."""
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    monkeypatch.setenv("NECROPOOL_HOST", "alpha")
    proc.hostname.cache_clear()  # (learnt once a process: this one's name is alpha now)
    try:
        with _made(upstream, monkeypatch) as s:
            yield s
    finally:
        monkeypatch.delenv("NECROPOOL_HOST")
        proc.hostname.cache_clear()


@contextlib.contextmanager
def _made(upstream: Path, monkeypatch: Any) -> Iterator[Scene]:
    base = Path(tempfile.mkdtemp(prefix="necropool-user-", dir="/tmp"))
    base.chmod(0o755)  # the holder must reach the root's directory
    try:
        monkeypatch.setenv("NECROPOOL_HOME", str(base / "home"))
        s = Scene(base)
        repo = base / "upstream"
        shutil.copytree(upstream, repo, symlinks=True)
        _canary(s.canary_root, 0)
        _canary(s.canary_user, NOBODY)
        s.manager.create_pool(PoolSpec(name="web", url=str(repo), num_slots=2,
                                       fetch_on_allocate=False))
        yield s
    finally:
        shutil.rmtree(base, ignore_errors=True)


def owners(tree: Path) -> set[int]:
    """Who owns the entries of ``tree``, but the pack files it shares with the mirror (hard
    links, which stay the pool owner's)."""
    found = {os.lstat(tree).st_uid}
    for top, dirs, files in os.walk(tree):
        for name in dirs + files:
            st = os.lstat(os.path.join(top, name))
            if not (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                found.add(st.st_uid)
    return found


# --- a holder as nobody ---------------------------------------------------------------------

def test_a_user_holder_works_in_its_slot_and_reaches_nothing_else(scene):
    s = scene
    before = s.canaries()
    result = s.cli("allocate", "web", "--user", NOBODY_NAME, "--owner", "ci-7", "--json")
    assert result.code == 0, result
    lease = json.loads(result.stdout)
    assert (lease["user"], lease["user_uid"], lease["owner"]) == (NOBODY_NAME, NOBODY, "ci-7")
    slot = Path(lease["path"])
    assert owners(slot / "src") == {NOBODY}

    # it works and commits in its slot (as itself)
    work = as_user(NOBODY, f"""set -e; cd {slot}
        echo mine > work.txt && echo edited >> README
        git -c user.name=n -c user.email=n@x checkout -q -b feature
        git -c user.name=n -c user.email=n@x commit -qam 'holder commit'
        echo uncommitted > later.txt
        ln -s {s.canary_root}/a out-root && ln -s {s.canary_user}/a out-user
        ln -s {s.canary_user}/b/h2 src/pkg1/linked
        ln {s.canary_user}/b/h1 hardlink""")
    assert work.returncode == 0, work.stderr

    # ... and nothing else of the pool: a real EACCES for each
    paths = s.pool.paths
    other = paths.slot_dir(2)
    denied = probe(NOBODY,
                   ("read", paths.definition), ("read", paths.events), ("read", paths.state),
                   ("read", paths.state_dir / "1.toml"), ("read", paths.mirror / "config"),
                   ("read", paths.mirror / "HEAD"), ("read", other / "README"),
                   ("read", paths.records / "2.json"),
                   ("list", paths.dir), ("list", paths.slots), ("list", other),
                   ("list", paths.mirror), ("list", paths.rescued), ("list", paths.state_dir),
                   ("list", s.home), ("write", paths.events), ("write", paths.pool_lock),
                   ("write", other / "README"), ("create", paths.dir / "x"),
                   ("create", paths.slots / "x"), ("create", other / "x"),
                   ("create", paths.rescued / "x"), ("create", s.home / "x"))
    assert set(denied.values()) == {"EACCES"}, denied
    assert {stat.S_IMODE(os.lstat(p).st_mode) for p in (
        s.home, s.home / "pools", paths.dir, paths.slots)} == {0o711}
    assert {stat.S_IMODE(os.lstat(p).st_mode) for p in (
        paths.mirror, paths.state_dir, paths.rescued, paths.records, other)} == {0o700}

    status = s.cli("status", "web", "--json")
    [mine] = [x for x in json.loads(status.stdout)["slots"] if x["slot_id"] == "web-1"]
    assert (mine["user"], mine["user_uid"]) == (NOBODY_NAME, NOBODY)

    # released by root: its work saved owner-only, the slot the owner's and clean again
    released = s.cli("release", lease["slot_id"], "--json")
    assert released.code == 0, released
    bundle = Path(json.loads(released.stdout)["rescued"])
    st = os.lstat(bundle)
    assert (st.st_uid, stat.S_IMODE(st.st_mode), bundle.parent) == (0, 0o600, paths.rescued)
    heads = git(paths.mirror, "bundle", "list-heads", str(bundle))
    assert {"heads/feature", "uncommitted", "on/feature"} <= {
        line.split()[1].removeprefix("refs/necropool/rescue/") for line in heads.splitlines()
    }, heads
    git(paths.mirror, "bundle", "verify", "-q", str(bundle))
    assert owners(slot) == {0}
    assert git(slot, "status", "--porcelain", "--ignored") == ""
    assert not (slot / "work.txt").exists() and (slot / "README").read_text() == "upstream\n"
    assert git(slot, "for-each-ref", "refs/heads/") == ""
    assert probe(NOBODY, ("list", slot), ("read", slot / "README")) == {
        f"list {slot}": "EACCES", f"read {slot / 'README'}": "EACCES"}
    assert s.canaries() == before  # no link followed, the hard-linked file not chowned

    events = json.loads(s.cli("log", "web", "--json").stdout)["events"]
    seen = {(e["event"], e.get("user"), e.get("user_uid")) for e in events}
    assert {("allocate", NOBODY_NAME, NOBODY), ("release", NOBODY_NAME, NOBODY)} <= seen, seen


def test_the_holders_pass_saves_and_cleans_as_that_user(scene):
    """Before the slot is taken back, its work is saved (into the slot's rescue refs) and
    the tree cleaned by a process of the holder's own uid: what that pass wrote is the
    user's, and root wrote nothing into the user's tree."""
    s = scene
    lease = s.manager.allocate_slot("web", user=NOBODY_NAME)
    slot = Path(lease["path"])
    assert as_user(NOBODY, f"cd {slot} && git checkout -q -b topic && git -c user.name=n "
                           "-c user.email=n@x commit -q --allow-empty -m t && echo w > w.txt "
                           "&& echo e >> README").returncode == 0
    handover.save_as_user(s.pool, 1 if lease["slot_id"] == "web-1" else 2)
    saved = as_user(NOBODY, f"cd {slot} && git for-each-ref --format='%(refname)' refs/ && "
                            "git status --porcelain --ignored")
    refs = set(saved.stdout.split())
    assert {"refs/necropool/rescue/uncommitted", "refs/necropool/rescue/heads/topic"} <= refs
    assert all(r.startswith(("refs/necropool/rescue/", "refs/remotes/origin/"))
               for r in refs), saved  # the branch saved, then dropped; the tree clean
    assert owners(slot) == {NOBODY}  # (the refs and objects it wrote are the user's)
    assert not (slot / "w.txt").exists() and (slot / "README").read_text() == "upstream\n"
    released = s.manager.release_slot(lease["slot_id"], lease["lease_id"])
    heads = git(s.pool.paths.mirror, "bundle", "list-heads", released["rescued"])
    assert "refs/necropool/rescue/uncommitted" in heads and "heads/topic" in heads, heads
    assert git(slot, "for-each-ref", "refs/necropool/") == ""  # bundled, then dropped


def test_root_reads_nothing_through_a_user_holders_links(scene):
    """A HEAD linked to a root-only file: root's status does not read it, and the release
    moves the tampered tree aside whole (the owner's, owner-only) and re-clones the slot."""
    s = scene
    secret = s.base / "secret"
    secret.write_text("root-only-secret\n")
    secret.chmod(0o600)
    lease = s.manager.allocate_slot("web", user=NOBODY_NAME)
    slot = Path(lease["path"])
    assert as_user(NOBODY, f"cd {slot} && echo w > w.txt && ln -sf {secret} .git/HEAD"
                   ).returncode == 0
    for command in (["status", "--json"], ["status", "web"], ["detect", "--json"]):
        result = s.cli(*command)
        assert result.code in (0, 1) and "root-only-secret" not in result.stdout, result
    assert s.cli("release", lease["slot_id"]).code == 0
    [aside] = s.pool.paths.rescued.glob("*.tampered")
    assert owners(aside) == {0} and stat.S_IMODE(os.lstat(aside).st_mode) == 0o700
    assert (aside / "w.txt").read_text() == "w\n"
    assert git(slot, "status", "--porcelain", "--ignored") == "" and owners(slot) == {0}
    assert secret.read_text() == "root-only-secret\n" and os.lstat(secret).st_uid == 0


def test_run_as_a_user_runs_the_command_as_that_user(scene):
    s = scene
    result = s.cli("run", "web", "--user", NOBODY_NAME, "--", "id", "-u")
    assert (result.code, result.stdout) == (0, f"{NOBODY}\n"), result
    result = s.cli("run", "web", "--user", NOBODY_NAME, "--", "sh", "-c",
                   'echo "$USER $LOGNAME $HOME"; id -g; id -G; touch mine; '
                   "(sleep 60 &) ; exec sleep 0")
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == f"{NOBODY_NAME} {NOBODY_NAME} /nonexistent", lines
    assert lines[1] == str(os.getpgid(0) and __import__("pwd").getpwnam(NOBODY_NAME).pw_gid)
    assert "0" not in lines[2].split(), lines  # root's groups dropped
    for n in (1, 2):  # back the owner's, clean, and the double-forked sleep ended with it
        assert owners(s.pool.slot_dir(n)) == {0}
        assert git(s.pool.slot_dir(n), "status", "--porcelain", "--ignored") == ""
    assert subprocess.run(["pgrep", "-u", str(NOBODY), "-f", "^sleep 60$"]).returncode == 1


def test_a_running_user_command_is_not_taken_from_it(scene):
    """Root's release or auto-recover of a slot a ``run --user`` works in refuses (it holds
    the slot): the command lives on in a slot still its user's, until ``run`` ends."""
    import sys

    s = scene
    runner = subprocess.Popen(
        [sys.executable, "-m", "necropool", "run", "web", "--user", NOBODY_NAME, "--ttl", "1h",
         "--", "sh", "-c", "touch started; exec sleep 60"],
        env=dict(os.environ, NECROPOOL_HOME=str(s.home)), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any((s.pool.slot_dir(n) / "started").exists() for n in (1, 2)):
            assert runner.poll() is None and time.monotonic() < deadline, runner.stderr
            time.sleep(0.05)
        [number] = [n for n in (1, 2) if (s.pool.slot_dir(n) / "started").exists()]
        refused = s.cli("release", f"web-{number}", "--force")
        assert refused.code == 5, refused
        assert s.cli("auto-recover", "--force-release-long-allocated",
                     "--max-allocation-hours", "0.0001").code in (0, 3)
        assert owners(s.pool.slot_dir(number) / "src") == {NOBODY}
        assert runner.poll() is None
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=60)
    assert owners(s.pool.slot_dir(number)) == {0}
    assert s.manager.slot_status(f"web-{number}")["state"] == "available"


def test_user_refused_where_it_means_nothing(scene):
    """Unknown, root, the owner itself, or not root: exit 2, one line, nothing changed."""
    s = scene
    paths = s.pool.paths
    state = {p: p.read_bytes() for p in paths.state_dir.iterdir()}
    events = paths.events.read_bytes()
    for name in ("no-such-user-" + uuid.uuid4().hex[:8], "root", "0"):
        for command in (["allocate", "web"], ["run", "web"]):
            tail = ["--", "true"] if command[0] == "run" else []
            result = s.cli(*command, "--user", name, *tail)
            assert result.code == 2, result
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "--user" in result.stderr
    assert {p: p.read_bytes() for p in paths.state_dir.iterdir()} == state
    assert paths.events.read_bytes() == events
    assert oct(stat.S_IMODE(os.lstat(paths.dir).st_mode)) == oct(0o700)  # nothing opened

    def unprivileged() -> str:
        try:
            s.manager.allocate_slot("web", AllocateRequest(user=NOBODY_NAME))
        except UsageError as exc:
            return f"{exc.exit_code} {exc.message}"
        return "allocated"

    assert confine.run_confined(unprivileged, policy=None, user=OWNER) == (
        "2 --user needs root: only root can hand a slot to another user")


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    """A local user made for the test and removed after it."""
    name = "np" + uuid.uuid4().hex[:10]
    subprocess.run(["useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                    name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def test_a_users_slot_of_another_owners_pool_comes_back_to_that_owner(
        upstream, monkeypatch, throwaway_user):
    """The pool is nobody's, the holder a user of its own: root hands the slot over and
    takes it back, the owner's child cleans it, root leaves no file of its own."""
    import pwd

    uid = pwd.getpwnam(throwaway_user).pw_uid
    with made_scene(upstream, monkeypatch) as s:
        refused = run_cli("allocate", "web", "--user", "nobody",
                          env={"NECROPOOL_HOME": str(s.home)})
        assert refused.code == 2 and "owns pool" in refused.stderr, refused
        lease = s.manager.allocate_slot("web", user=throwaway_user)
        slot = Path(lease["path"])
        assert as_user(uid, f"cd {slot} && echo w > w.txt && echo e >> README && "
                            "chmod 700 . .git").returncode == 0
        assert probe(uid, ("read", s.pool.paths.events))[
            f"read {s.pool.paths.events}"] == "EACCES"
        # root's healing leaves a live holder's slot alone, though its owner cannot read it
        for command in (["detect", "--deep", "--json"], ["auto-recover", "--json"]):
            result = run_cli(*command, env={"NECROPOOL_HOME": str(s.home)})
            assert result.code == 0 and '"count": 0' in result.stdout or (
                command[0] == "auto-recover" and result.code == 0), result
        assert owners(slot) == {uid} and (slot / "w.txt").exists()
        released = s.manager.release_slot(lease["slot_id"], lease["lease_id"])
        bundle = Path(released["rescued"])
        assert (os.lstat(bundle).st_uid, stat.S_IMODE(os.lstat(bundle).st_mode)) == (
            OWNER.uid, 0o600)
        assert owners(slot) == {OWNER.uid}
        assert s.root_owned() == []
        assert as_owner(lambda: PoolManager.from_config_file(root=str(s.home))
                        .allocate_slot("web")["state"]) == "allocated"


@pytest.mark.parametrize("where", ["scene", "ledger_scene"])
def test_auto_recover_reclaims_a_dead_user_holders_slot(where, request):
    s = request.getfixturevalue(where)
    holder = subprocess.Popen(["sleep", "60"])
    lease = s.manager.allocate_slot("web", pid=holder.pid, user=NOBODY_NAME)
    slot = Path(lease["path"])
    as_user(NOBODY, f"cd {slot} && echo w > w.txt && sleep 60 >/dev/null 2>&1 &")
    holder.kill()
    holder.wait()
    result = s.cli("auto-recover", "--json")
    assert result.code == 0, result
    assert json.loads(result.stdout)["abandoned_released"] == 1, result
    status = s.manager.slot_status(lease["slot_id"])
    assert status["state"] == "available" and status["last_rescue"], status
    assert owners(slot) == {0} and not (slot / "w.txt").exists()


# --- a pool in a shared ledger ----------------------------------------------------------------

def test_a_user_holder_in_a_ledger_pool_as_in_a_local_one(ledger_scene):
    """The ledger records the lease's user: status and the events show it, the host's
    memory of the lease equals the ledger's (no divergence found), and root's release
    takes the tree back before the owner saves and cleans it."""
    s = ledger_scene
    got = s.cli("allocate", "web", "--user", NOBODY_NAME, "--json")
    assert got.code == 0, got
    lease = json.loads(got.stdout)
    assert (lease["user"], lease["user_uid"]) == (NOBODY_NAME, NOBODY)
    slot, number = Path(lease["path"]), int(lease["slot_id"].rpartition("-")[2])
    assert owners(slot / "src") == {NOBODY}
    [row] = [x for x in s.pool.store.snapshot().slots.values() if x.lease]
    assert row.lease is not None and row.lease.user == lookup(NOBODY_NAME)
    assert journal.recall(s.pool.paths, number).lease == row.lease
    shown = json.loads(s.cli("status", lease["slot_id"], "--json").stdout)
    assert (shown["user"], shown["user_uid"]) == (NOBODY_NAME, NOBODY)
    found = s.cli("detect", "--json")
    assert found.code == 0 and json.loads(found.stdout)["ledger_divergences"] == [], found

    assert as_user(NOBODY, f"cd {slot} && echo mine > work.txt && echo e >> README && git -c "
                           "user.name=n -c user.email=n@x commit -qam w").returncode == 0
    released = s.cli("release", lease["slot_id"], "--json")
    assert released.code == 0, released
    heads = git(s.pool.paths.mirror, "bundle", "list-heads", json.loads(released.stdout)[
        "rescued"])
    assert "rescue/uncommitted" in heads and "rescue/HEAD" in heads, heads  # (detached)
    assert owners(slot) == {0} and git(  # (a status that writes no index: as sealed)
        slot, "--no-optional-locks", "status", "--porcelain", "--ignored") == ""
    events = json.loads(s.cli("log", "web", "--json").stdout)["events"]
    seen = {(e["event"], e.get("user"), e.get("user_uid")) for e in events}
    assert {("allocate", NOBODY_NAME, NOBODY), ("release", NOBODY_NAME, NOBODY)} <= seen, seen

    ran = s.cli("run", "web", "--user", NOBODY_NAME, "--", "sh", "-c", "id -u; touch mine")
    assert (ran.code, ran.stdout) == (0, f"{NOBODY}\n"), ran
    for n in (1, 2):
        assert owners(s.pool.slot_dir(n)) == {0} and not (s.pool.slot_dir(n) / "mine").exists()
    found = s.cli("detect", "--json")
    assert found.code == 0 and json.loads(found.stdout)["ledger_divergences"] == [], found


def test_another_host_cannot_end_a_lease_handed_to_a_user(ledger_scene):
    """Only the slot's own host can take its tree back from the user: a release from
    another host, though it names the lease, is refused (exit 2, one line, nothing
    changed); there, as root, the release takes it back and cleans it."""
    s = ledger_scene
    lease = s.manager.allocate_slot("web", user=NOBODY_NAME, ttl=3600)
    slot = Path(lease["path"])
    log = s.cli("log", "web", "--json").stdout
    beta = {"NECROPOOL_HOME": str(s.base / "beta"), "NECROPOOL_HOST": "beta"}
    got = run_cli("release", f"{lease['slot_id']}@alpha", "--lease-id", lease["lease_id"],
                  env=beta)
    assert got.code == 2 and len(got.stderr.strip().splitlines()) == 1, got
    assert (f"handed to local user {NOBODY_NAME!r} on host alpha: release it there"
            in got.stderr), got
    assert s.cli("log", "web", "--json").stdout == log
    held = s.manager.slot_status(lease["slot_id"])
    assert (held["state"], held["lease_id"], held["user"]) == (
        "allocated", lease["lease_id"], NOBODY_NAME)
    assert owners(slot / "src") == {NOBODY}
    both = s.cli("allocate", "web", "--user", NOBODY_NAME, "--any-host")
    assert both.code == 2 and "--any-host" in both.stderr, both
    assert s.cli("release", lease["slot_id"], "--lease-id", lease["lease_id"]).code == 0
    assert owners(slot) == {0}


@pytest.mark.parametrize("where", ["scene", "ledger_scene"])
def test_auto_recover_takes_back_an_expired_user_lease_before_cleaning(where, request,
                                                                       monkeypatch):
    s = request.getfixturevalue(where)
    lease = s.manager.allocate_slot("web", user=NOBODY_NAME, ttl=60)
    slot = Path(lease["path"])
    assert as_user(NOBODY, f"cd {slot} && echo w > w.txt").returncode == 0
    clock_at(monkeypatch, 3600)
    result = s.cli("auto-recover", "--json")
    assert result.code == 0 and json.loads(result.stdout)["expired_released"] == 1, result
    status = s.manager.slot_status(lease["slot_id"])
    assert status["state"] == "available" and status["last_rescue"], status
    assert owners(slot) == {0} and not (slot / "w.txt").exists()
    assert "rescue/uncommitted" in git(s.pool.paths.mirror, "bundle", "list-heads",
                                       status["last_rescue"])


# --- races: the holder swaps directories and plants links while root releases ----------------

RELEASES = 100


@pytest.mark.slow
def test_swap_loop_of_a_user_holder_changes_nothing_outside(scene):
    """A holder process outside the slot renames directories to and fro and plants links
    to outside directories while root releases its slot, 100 times."""
    s = scene
    before = s.canaries()
    held = s.manager.allocate_slot("web")["slot_id"]  # the other slot goes round
    target, number = ("web-2", 2) if held == "web-1" else ("web-1", 1)
    slot = s.pool.slot_dir(number)
    loop = (f"S={slot}; while :; do mkdir -p $S/t/a/1 $S/t/b 2>/dev/null && "
            "touch $S/t/a/1/f1 $S/t/b/h1 2>/dev/null; "
            "mv -T $S/t $S/u 2>/dev/null; ln -sfn "
            f"{s.canary_root} $S/t 2>/dev/null; mv -T $S/src/pkg0 $S/p0 2>/dev/null; "
            f"ln -sfn {s.canary_user} $S/src/pkg0 2>/dev/null; rm -f $S/t; "
            "mv -T $S/u $S/t 2>/dev/null; rm -f $S/src/pkg0; mv -T $S/p0 $S/src/pkg0 "
            "2>/dev/null; done")
    racer = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                              "--clear-groups", "sh", "-c", loop], cwd="/",
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    done = failed = acted = 0
    try:
        for _ in range(RELEASES):
            for _attempt in range(50):
                try:
                    lease = s.manager.allocate_slot("web", user=NOBODY_NAME)
                    break
                except TryAgain:
                    s.manager.recover_slot(target, force=True)
            assert lease["slot_id"] == target
            time.sleep(0.01)  # the racer at work in its slot
            try:
                released = s.manager.release_slot(target, stop=True)
                done += 1
                acted += bool(released["rescued"])
            except (Conflict, Exception):  # failed safely: the slot in error, recovered
                failed += 1
                with contextlib.suppress(Exception):
                    s.manager.recover_slot(target, force=True)
    finally:
        os.killpg(racer.pid, signal.SIGKILL)
        racer.wait()
    assert done + failed == RELEASES and done > RELEASES // 2, (done, failed)
    assert acted > RELEASES // 4, acted  # the racer was at work in the slot it was handed
    assert s.canaries() == before
    assert owners(slot) == {0}
