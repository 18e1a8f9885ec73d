"""Filesystem safety: symlinks planted in the root never lead necropool outside it, a full
disk never costs the previous state, and necropool's own git calls never run code a slot's
repository configures (hooks, fsmonitor, sshCommand, filters, ...).

Every check runs the real CLI as a process against real repositories.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    changes,
    commit_file,
    digest,
    git,
    state_files,
    template_pool,
    wait_until_queued,
)

# --- helpers ----------------------------------------------------------------------------------


def run(*args, env: dict | None = None, preexec_fn=None, timeout: float = 120):
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "necropool", *map(str, args)], env=full,
                          text=True, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=timeout, preexec_fn=preexec_fn)


def no_traceback(proc) -> None:
    report = f"exit {proc.returncode}: stdout={proc.stdout[-600:]!r} stderr={proc.stderr!r}"
    assert proc.returncode != 70, f"internal error: {report}"
    assert "Traceback" not in proc.stderr + proc.stdout, report
    assert len(proc.stderr.strip().splitlines()) <= 3, report


def dirty(slot: Path) -> None:
    """What a holder leaves: an edit, an untracked file, ignored output, a local commit."""
    with open(slot / "README", "a") as fh:
        fh.write("holder edit\n")
    (slot / "notes.txt").write_text("untracked work\n")
    (slot / "build").mkdir(exist_ok=True)
    (slot / "build" / "out.o").write_bytes(b"\x7fELF")


# --- the template pool ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A pool ``web`` of 3 slots, ``web-1`` allocated (to no live process) and dirtied."""
    base = tmp_path_factory.mktemp("fs-safety-template")
    dirty(Path(template_pool(base)["path"]))
    return base


@pytest.fixture
def env(template, tmp_path, monkeypatch):
    """A private copy of the template root (the upstream is shared, read-only)."""
    root = tmp_path / "root"
    shutil.copytree(template / "root", root, symlinks=True)
    upstream = tmp_path / "upstream"
    shutil.copytree(template / "upstream", upstream, symlinks=True)
    pool = root / "pools" / "web"
    for path in [pool / "pool.toml", pool / "mirror.git" / "config",
                 *pool.glob("slots/*/.git/config")]:
        path.write_text(path.read_text().replace(str(template / "upstream"), str(upstream)))
    monkeypatch.setenv("NECROPOOL_HOME", str(root))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
    return {"root": root, "pool": root / "pools" / "web", "upstream": upstream,
            "tmp": tmp_path, "lease": (template / "lease").read_text()}


# --- symlinks out of the root -----------------------------------------------------------------


def _outside_working_copy(e) -> Path:
    """A real git working copy outside the root, dirty, with files named like ours: cleaning
    it, resetting it or unlinking its locks would destroy them."""
    target = e["tmp"] / "outside"
    git(e["tmp"], "clone", "-q", str(e["upstream"]), str(target))
    (target / "canary.txt").write_text("must survive\n")
    (target / "build").mkdir()
    (target / "build" / "canary.o").write_text("ignored but precious\n")
    with open(target / "README", "a") as fh:
        fh.write("uncommitted precious edit\n")
    (target / ".git" / "index.lock").write_text("")  # looks like a stale git lock
    return target


def _outside(e, *precious: str) -> Path:
    """A directory outside the root holding files that must survive every command."""
    target = e["tmp"] / "outside"
    target.mkdir(exist_ok=True)
    for name in precious:
        (target / name).write_text("precious\n")
    return target


def _replace_by_link(link: Path, target: Path) -> Path:
    """Put a symlink to ``target`` where the pool's ``link`` entry was."""
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    return link


def link_slot(e) -> tuple[Path, Path]:
    target = _outside_working_copy(e)
    return _replace_by_link(e["pool"] / "slots" / "1", target), target


def link_locks(e) -> tuple[Path, Path]:
    target = _outside(e, "web-1.lock", "web-2.lock", "web-9.lock", "other.lock", "canary.txt")
    return _replace_by_link(e["pool"] / "locks", target), target


def link_mirror(e) -> tuple[Path, Path]:
    outside = _outside(e, "canary.txt")
    shutil.copytree(e["pool"] / "mirror.git", outside / "mirror.git")
    link = _replace_by_link(e["pool"] / "mirror.git", outside / "mirror.git")
    commit_file(e["upstream"], "new.txt", "upstream moved on\n")  # a fetch would write
    return link, outside


def link_state(e) -> tuple[Path, Path]:
    outside = _outside(e, "canary.txt")
    shutil.copyfile(e["pool"] / "state.toml", outside / "state.toml")
    return _replace_by_link(e["pool"] / "state.toml", outside / "state.toml"), outside


def link_rescued(e) -> tuple[Path, Path]:
    target = _outside(e, "canary.txt")
    return _replace_by_link(e["pool"] / "rescued", target), target


def link_slots_dir(e) -> tuple[Path, Path]:
    """The whole ``slots/`` directory replaced by a link to a directory of working copies."""
    target = _outside(e)
    for n in ("1", "2", "3", "7"):
        git(e["tmp"], "clone", "-q", str(e["upstream"]), str(target / n))
        (target / n / "canary.txt").write_text("must survive\n")
    return _replace_by_link(e["pool"] / "slots", target), target


def link_events(e) -> tuple[Path, Path]:
    """The history replaced by a link: appending through it would grow a file outside."""
    outside = _outside(e, "events.jsonl")
    return _replace_by_link(e["pool"] / "events.jsonl", outside / "events.jsonl"), outside


LINKS = {"slot": link_slot, "locks": link_locks, "mirror": link_mirror, "state": link_state,
         "rescued": link_rescued, "slots": link_slots_dir, "events": link_events}
COMMANDS = {
    "release": ["release", "web-1"],
    "allocate": ["allocate", "web"],
    "recover-held": ["recover", "web-1", "--force"],
    "recover": ["recover", "web-2"],
    "remove": ["remove", "web-1", "--force"],
    "delete": ["delete", "web", "--force"],
    "auto-recover": ["auto-recover"],
    "auto-recover-force": ["auto-recover", "--force-release-long-allocated",
                           "--max-allocation-hours", "0.0001"],
    "detect": ["detect", "--deep"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", sorted(LINKS))
def test_symlink_out_of_the_root_is_never_followed(env, kind, command):
    link, outside = LINKS[kind](env)
    before = digest(outside)
    proc = run(*COMMANDS[command])
    no_traceback(proc)
    changed = changes(before, digest(outside))
    assert changed == [], (f"`necropool {' '.join(COMMANDS[command])}` changed {changed} "
                           f"outside the root through {link}: {proc.stderr}")


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_detect_reports_the_symlink(env, kind):
    link, outside = LINKS[kind](env)
    before = digest(outside)
    proc = run("detect", "--json")
    no_traceback(proc)
    assert proc.returncode == 1, proc
    found = json.loads(proc.stdout)
    named = [a for items in found.values() if isinstance(items, list) for a in items
             if a.get("path") == str(link)]
    assert named, f"{link} is not reported: {json.dumps(found, indent=1)}"
    assert any("symlink" in a["evidence"] for a in named), named
    assert changes(before, digest(outside)) == []


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_auto_recover_removes_the_link_and_heals(env, kind):
    """The link itself goes (its target untouched); a second pass leaves a healthy pool."""
    link, outside = LINKS[kind](env)
    before = digest(outside)
    for _ in range(2):
        no_traceback(run("auto-recover"))
    assert not link.is_symlink()
    assert changes(before, digest(outside)) == []
    # web-1's allocation (no holder process named) is left to its holder by auto-recover;
    # the operator takes it back explicitly
    recover = run("recover", "web-1", "--force")
    assert recover.returncode == 0, recover
    detect = run("detect")
    assert detect.returncode == 0, detect
    assert changes(before, digest(outside)) == []


# --- a full disk --------------------------------------------------------------------------------


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("args", [["allocate", "web", "--no-fetch"], ["isolate", "web-2"],
                                  ["release", "web-1", "--no-fetch"], ["add", "web"]],
                         ids=lambda a: a[0])  # (a remove only deletes its slot's files)
def test_a_state_write_that_runs_out_of_space_keeps_the_previous_state(env, args):
    limit = 128  # bytes: less than any slot's state file
    state = {p: p.read_bytes() for p in state_files(env["pool"]) if p.name != "free"}
    assert min(len(data) for p, data in state.items() if p.parent.name == "state") > limit
    before = digest(env["root"])
    proc = run(*args, preexec_fn=_limit_file_size(limit))
    no_traceback(proc)
    assert proc.returncode == 3, proc
    assert "too large" in proc.stderr.lower() or "no space" in proc.stderr.lower(), proc
    for path, data in state.items():
        assert path.read_bytes() == data, f"{path.name} changed"
    leftovers = [n for d in (env["pool"], env["pool"] / "state") for n in os.listdir(d)
                 if n.startswith(".tmp-")]
    assert leftovers == []
    changed = [p for p in changes(before, digest(env["root"]))
               if not p.startswith("pools/web/slots/")  # git may refresh a slot's index
               and p != "pools/web/state/free"]  # a hint that may name a slot too many
    assert changed == [], changed
    # and the pool still works once there is space again
    assert run("status", "web").returncode == 0
    detect = run("detect", "web", "--json")
    assert detect.returncode in (0, 1), detect
    assert not json.loads(detect.stdout)["corrupted_slots"], detect.stdout


# --- git hygiene ------------------------------------------------------------------------------

HOOKS = ("post-checkout", "pre-commit", "post-commit", "reference-transaction",
         "post-index-change", "pre-auto-gc", "post-rewrite", "pre-push", "post-merge",
         "fsmonitor-watchman", "push-to-checkout", "pre-receive", "update", "post-update")


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """A script that records every time anything runs it."""
    marker = tmp_path / "evil-ran"
    script = tmp_path / "evil.sh"
    script.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\ncat >/dev/null 2>&1 &\nexit 0\n')
    script.chmod(0o755)
    return script, marker


def plant_hooks(gitdir: Path, script: Path) -> None:
    hooks = gitdir / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    for name in HOOKS:
        shutil.copyfile(script, hooks / name)
        (hooks / name).chmod(0o755)


def plant_config(slot: Path, script: Path) -> str:
    """A .git/config that would run ``script`` from any of a dozen places, plus attributes
    that route every file through its filter. Returns the text planted."""
    extra = slot.parent / f"include-{slot.name}.config"
    extra.write_text(f"[core]\n\tfsmonitor = {script}\n\tsshCommand = {script}\n")
    text = (f"[core]\n\trepositoryformatversion = 0\n\tbare = false\n"
            f"\tfsmonitor = {script}\n\tsshCommand = {script}\n\thooksPath = {slot}/.git/hooks\n"
            f"\tpager = {script}\n\teditor = {script}\n\taskPass = {script}\n"
            f"\tgitProxy = {script}\n"
            f"[include]\n\tpath = {extra}\n"
            f'[filter "evil"]\n\tclean = {script}\n\tsmudge = {script}\n'
            f"\trequired = false\n"
            f'[diff "evil"]\n\ttextconv = {script}\n\tcommand = {script}\n'
            f"[gc]\n\tauto = 1\n\tautoPackLimit = 1\n"
            f"[uploadpack]\n\tpackObjectsHook = {script}\n"
            f"[credential]\n\thelper = !{script}\n"
            f'[remote "origin"]\n\turl = ext::{script}\n\tuploadpack = {script}\n'
            f"\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
            f"[alias]\n\tstatus = !{script}\n\tclean = !{script}\n")
    (slot / ".git" / "config").write_text(text)
    (slot / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (slot / ".git" / "info").mkdir(exist_ok=True)
    (slot / ".git" / "info" / "attributes").write_text("* filter=evil diff=evil\n")
    return text


@pytest.fixture
def hooked_home(tmp_path, evil) -> dict:
    """A HOME whose git template puts hooks into every repository git creates, as an
    upstream's conventions or a developer's setup would."""
    script, _ = evil
    home = tmp_path / "home"
    template = home / "git-template"
    plant_hooks(template, script)
    (home / ".gitconfig").write_text(f"[init]\n\ttemplateDir = {template}\n")
    return {"HOME": str(home)}


NO_HOOKS = ("-c", "core.hooksPath=/dev/null")  # the test's own git calls run no hooks


def quiet_commit(repo: Path, name: str, content: str) -> None:
    (repo / name).write_text(content)
    git(repo, *NO_HOOKS, "add", name)
    git(repo, *NO_HOOKS, "commit", "-q", "-m", f"change {name}")


def canonical_config(root: Path, number: int) -> str:
    return (root / "pools" / "web" / "slots" / str(number) / ".git" / "config").read_text()


def test_hooks_never_run_during_create_cleanup_or_recover(root, upstream, evil, hooked_home):
    script, marker = evil
    plant_hooks(upstream / ".git", script)
    assert run("create", "web", upstream, "--slots", "3", env=hooked_home).returncode == 0
    pool = root / "pools" / "web"
    plant_hooks(pool / "mirror.git", script)
    for n in (1, 2, 3):
        plant_hooks(pool / "slots" / str(n) / ".git", script)
    quiet_commit(upstream, "later.txt", "upstream moves\n")

    path = Path(run("allocate", "web", env=hooked_home).stdout.strip())
    dirty(path)
    git(path, *NO_HOOKS, "checkout", "-q", "-b", "feature")
    quiet_commit(path, "feature.txt", "unpushed work\n")
    dirty(path)
    assert run("release", path, env=hooked_home).returncode == 0
    assert run("recover", "web-2", env=hooked_home).returncode == 0
    assert run("add", "web", env=hooked_home).returncode == 0
    holder = subprocess.Popen(["sleep", "60"])
    try:
        held = json.loads(run("allocate", "web", "--pid", holder.pid, "--json",
                              env=hooked_home).stdout)
        dirty(Path(held["path"]))
    finally:
        holder.kill()
        holder.wait()
    assert run("auto-recover", env=hooked_home).returncode == 0
    assert run("detect", "--deep", env=hooked_home).returncode == 0
    assert not marker.exists(), f"a hook ran: {marker.read_text()}"


@pytest.mark.parametrize("how", ["release", "recover", "auto-recover", "allocate-stale",
                                 "detect"])
def test_slot_git_config_never_runs_code_and_is_restored(root, pool, evil, how):
    script, marker = evil
    canonical = canonical_config(root, 2)
    holder = None
    if how == "release":
        slot = Path(run("allocate", "web").stdout.strip())
        args = ["release", slot]
    elif how == "recover":
        slot = root / "pools" / "web" / "slots" / "2"
        args = ["recover", "web-2"]
    elif how == "auto-recover":
        holder = subprocess.Popen(["sleep", "60"])
        slot = Path(json.loads(run("allocate", "web", "--pid", holder.pid, "--json")
                               .stdout)["path"])
        args = ["auto-recover"]
    elif how == "allocate-stale":
        # the other slots are busy, so the next allocate must clean this one first
        slot = Path(run("allocate", "web").stdout.strip())
        for _ in range(2):
            assert run("allocate", "web").returncode == 0
        assert run("release", slot, "--no-cleanup").returncode == 0
        args = ["allocate", "web"]
    else:
        slot = root / "pools" / "web" / "slots" / "2"
        args = ["detect", "--deep"]
    dirty(slot)
    planted = plant_config(slot, script)
    plant_hooks(slot / ".git", script)
    if holder:
        holder.kill()
        holder.wait()
    proc = run(*args)
    no_traceback(proc)
    assert not marker.exists(), f"`necropool {' '.join(map(str, args))}` ran repository " \
                                f"code: {marker.read_text()}"
    config = (slot / ".git" / "config").read_text()
    if how == "detect":
        assert config == planted  # detect only looks
    else:
        assert proc.returncode == 0, proc
        assert config == canonical, "cleanup did not restore the slot's config"
        assert git(slot, "status", "--porcelain", "--ignored") == ""


def test_a_config_symlink_in_a_slot_is_replaced_not_written_through(root, pool, tmp_path):
    """A holder that turns .git/config into a symlink to a file of theirs gets the link
    replaced by cleanup; the file it pointed at is never written."""
    victim = tmp_path / "victim.config"
    victim.write_text("[user]\n\tname = precious\n")
    before = victim.read_bytes()
    slot = Path(run("allocate", "web").stdout.strip())
    (slot / ".git" / "config").unlink()
    (slot / ".git" / "config").symlink_to(victim)
    proc = run("release", slot)
    no_traceback(proc)
    assert victim.read_bytes() == before
    assert not (slot / ".git" / "config").is_symlink()


@pytest.mark.parametrize("name", ["necropool-rescue.index", "necropool-tree.json",
                                  "necropool-index"])
def test_a_symlink_in_place_of_cleanups_own_files_is_not_written_through(root, pool, tmp_path,
                                                                         name):
    """cleanup keeps a temporary index and two records in the slot's .git; a holder who put
    symlinks there never gets the files they point at written."""
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    slot = Path(run("allocate", "web").stdout.strip())
    dirty(slot)
    (slot / ".git" / name).unlink(missing_ok=True)
    (slot / ".git" / name).symlink_to(victim)
    proc = run("release", slot)
    no_traceback(proc)
    assert proc.returncode == 0, proc
    assert victim.read_bytes() == b"precious"


def test_a_wake_fifo_symlink_is_neither_followed_nor_needed(env):
    """A symlink in place of wake.fifo, to a FIFO outside the root that would accept pokes:
    nothing is written through it, and a waiting allocate still gets the slot released."""
    outside = env["tmp"] / "outside.fifo"
    os.mkfifo(outside)
    reader = os.open(outside, os.O_RDWR | os.O_NONBLOCK)  # so a poke through it would land
    try:
        (env["pool"] / "wake.fifo").symlink_to(outside)
        for _ in range(2):  # web-2 and web-3: the pool is full
            assert run("allocate", "web", "--no-fetch").returncode == 0
        waiter = subprocess.Popen([sys.executable, "-m", "necropool", "allocate", "web",
                                   "--no-fetch", "--wait", "20s"], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until_queued(env["pool"], waiter)
        assert run("release", "web-2", "--no-fetch").returncode == 0
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        with pytest.raises(BlockingIOError):
            os.read(reader, 1)
    finally:
        os.close(reader)
    assert (env["pool"] / "wake.fifo").is_symlink()


def test_a_users_file_that_looks_like_a_temp_name_is_never_swept(env):
    """Only names necropool made (label, host, pid, start time) are swept; a user's
    ``.tmp-notes`` is reported as a stray and moved aside by auto-recover, never deleted."""
    notes = env["pool"] / "slots" / ".tmp-notes"
    notes.write_text("mine\n")
    for args in (["allocate", "web", "--no-fetch"], ["add", "web"], ["detect"]):
        no_traceback(run(*args))
        assert notes.read_text() == "mine\n"
    found = json.loads(run("detect", "--json").stdout)
    assert str(notes) in {a["path"] for a in found["stray_paths"]}
    no_traceback(run("auto-recover"))
    moved = list((env["pool"] / "rescued").glob("stray-slots-.tmp-notes-*"))
    assert [m.read_text() for m in moved] == ["mine\n"]


def test_a_state_write_survives_the_waiter_leaving_as_it_is_woken(tmp_path):
    """A write pokes the head waiter's FIFO; the waiter may close it between the poke's open
    and its write (its allocation timed out, or got a slot): that is nobody to wake, not a
    failed release (it was: BrokenPipeError)."""
    from necropool.ground import wakeup

    fifo = tmp_path / "wake.fifo"
    os.mkfifo(fifo, 0o600)
    waiters = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "end = time.monotonic() + 1.5\n"
        "while time.monotonic() < end:\n"
        "    os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK))\n"), str(fifo)])
    pokes = 0
    try:
        while waiters.poll() is None:
            wakeup.poke(fifo)
            pokes += 1
    finally:
        waiters.wait()
    assert waiters.returncode == 0 and pokes > 1000
