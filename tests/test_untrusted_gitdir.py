"""A slot, ``.git`` included, is untrusted input. Whatever a holder leaves in it, a release or
an auto-recover reclaim never writes or deletes outside the pool root, saves the holder's
work in a bundle (or moves it aside whole), and hands the next holder a slot that equals a
fresh one in everything git looks at."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import GIT_ENV, changes, commit_file, digest, git
from slots import assert_fresh_clone_equivalent, fresh_slot, restore, show

ALLOW_FILE = ("-c", "protocol.file.allow=always")


@pytest.fixture
def outside(tmp_path, upstream) -> Path:
    """A canary tree outside the root: plain files, a directory a planted link may point
    at, and another repository whose refs and objects must stay as they are."""
    top = tmp_path / "outside"
    (top / "dir").mkdir(parents=True)
    (top / "dir" / "precious.txt").write_text("precious\n")
    (top / "file.txt").write_text("do not touch\n")
    other = top / "other"
    git(tmp_path, "clone", "-q", str(upstream), str(other))
    commit_file(other, "mine.txt", "someone else's work\n")
    return top


@pytest.fixture
def slot(cli, pool) -> Path:
    result = cli("allocate", "web", "--no-fetch")
    assert result.code == 0, result
    return Path(result.stdout.strip())


def holder_work(slot: Path) -> str:
    """What a holder leaves: a commit on a branch and an uncommitted file."""
    git(slot, "checkout", "-q", "-b", "feature")
    sha = commit_file(slot, "feature.txt", "committed work\n")
    (slot / "notes.txt").write_text("uncommitted work\n")
    return sha


def dead_holders_grant(cli) -> dict:
    """A slot allocated to a process that has died since: auto-recover reclaims it."""
    holder = subprocess.Popen(["sleep", "600"])
    grant = cli("allocate", "web", "--no-fetch", "--pid", holder.pid, "--json")
    holder.kill()
    holder.wait()
    assert grant.code == 0, grant
    return grant.json()


def release(cli, slot: Path) -> dict:
    result = cli("release", slot, "--json")
    assert result.code == 0, result
    return result.json()


# --- a tampered .git is moved aside whole and the slot re-cloned ----------------------------

def _link(path: Path, target: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(
        missing_ok=True)
    path.symlink_to(target)


TAMPERING = {
    "refs/heads dir": lambda g, o: _link(g / "refs" / "heads", o / "dir"),
    "reflog dir": lambda g, o: _link(g / "logs", o / "dir"),
    "rescue ref dir": lambda g, o: (g / "refs" / "necropool").symlink_to(o / "dir"),
    "loose object dir": lambda g, o: (g / "objects" / "ff").symlink_to(o / "dir"),
    "info dir": lambda g, o: _link(g / "info", o / "dir"),
    "hooks dir": lambda g, o: _link(g / "hooks", o / "dir"),
    "config file": lambda g, o: _link(g / "config", o / "file.txt"),
    "index file": lambda g, o: _link(g / "index", o / "file.txt"),
    "packed-refs": lambda g, o: _link(g / "packed-refs", o / "file.txt"),
    "commondir": lambda g, o: (g / "commondir").write_text(str(o / "other" / ".git") + "\n"),
    "alternates": lambda g, o: (g / "objects" / "info" / "alternates").write_text(
        str(o / "other" / ".git" / "objects") + "\n"),
    "hard link": lambda g, o: (g / "description").unlink() or os.link(o / "file.txt",
                                                                      g / "description"),
    "fifo": lambda g, o: os.mkfifo(g / "refs" / "heads" / "pipe"),
    "gitdir file": lambda g, o: shutil.rmtree(g) or g.write_text(
        f"gitdir: {o / 'other' / '.git'}\n"),
}


@pytest.mark.parametrize("how", TAMPERING)
def test_a_tampered_git_dir_is_moved_aside_and_the_slot_recloned(cli, pool, slot, upstream,
                                                                  outside, tmp_path, how):
    sha = holder_work(slot)
    before = digest(outside)
    TAMPERING[how](slot / ".git", outside)
    result = release(cli, slot)
    assert changes(before, digest(outside)) == [], "a file outside the root was touched"
    cleanup = result["cleanup"]
    assert cleanup["recloned"] is True and cleanup["tampered"], cleanup
    aside = Path(result["rescued"])
    assert aside.parent == slot.parent.parent / "rescued" and aside.name.endswith(".tampered")
    assert (aside / "notes.txt").read_text() == "uncommitted work\n", "the work was not kept"
    feature = aside / ".git" / "refs" / "heads" / "feature"
    if how not in ("gitdir file", "refs/heads dir"):  # (those destroyed the ref themselves)
        assert feature.read_text().strip() == sha, "the holder's commit was not kept"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_a_tampered_slot_reclaimed_by_auto_recover_stays_inside_the_root(cli, pool, upstream,
                                                                         outside, tmp_path):
    slot = Path(dead_holders_grant(cli)["path"])
    holder_work(slot)
    before = digest(outside)
    _link(slot / ".git" / "refs" / "heads", outside / "dir")
    healed = cli("auto-recover", "--json")
    assert healed.code == 0, healed
    assert changes(before, digest(outside)) == []
    rescued = sorted((slot.parent.parent / "rescued").glob("*.tampered"))
    assert len(rescued) == 1 and (rescued[0] / "notes.txt").exists()
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


# --- work that used to be lost while release reported success --------------------------------

def test_a_nested_repository_is_saved_commits_and_files(cli, pool, slot, upstream, tmp_path):
    inner = slot / "vendor" / "lib"
    inner.mkdir(parents=True)
    git(inner, "init", "-q", "-b", "trunk")
    sha = commit_file(inner, "lib.c", "int lib;\n")
    (inner / "draft.c").write_text("int draft;\n")
    ignored = slot / "build" / "dep"  # under an ignored directory: git clean removes it too
    ignored.mkdir(parents=True)
    git(ignored, "init", "-q")
    dep = commit_file(ignored, "dep.txt", "dependency work\n")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/nested/vendor/lib/refs/heads/trunk") == sha
    assert show(repo, "refs/rescued/nested/vendor/lib/files", "draft.c") == "int draft;"
    assert show(repo, "refs/rescued/nested/build/dep/HEAD", "dep.txt") == "dependency work"
    assert git(repo, "rev-parse", "refs/rescued/nested/build/dep/HEAD") == dep
    assert sorted(result["cleanup"]["nested_saved"]) == ["build/dep", "vendor/lib"]
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


@pytest.fixture
def with_submodule(tmp_path, upstream) -> Path:
    """The upstream gains a submodule ``lib``."""
    lib = tmp_path / "lib"
    lib.mkdir()
    git(lib, "init", "-q", "-b", "main")
    commit_file(lib, "lib.txt", "library\n")
    git(upstream, *ALLOW_FILE, "submodule", "add", "-q", str(lib), "lib")
    git(upstream, "commit", "-q", "-m", "add lib")
    return lib


def test_a_submodules_commits_and_files_are_saved_and_it_is_emptied(
        cli, root, upstream, with_submodule, tmp_path):
    assert cli("create", "web", upstream, "--slots", "2").code == 0
    slot = Path(cli("allocate", "web").stdout.strip())
    git(slot, *ALLOW_FILE, "submodule", "update", "-q", "--init")
    sub = slot / "lib"
    sha = commit_file(sub, "lib.txt", "patched library\n")
    (sub / "scratch.txt").write_text("uncommitted in the submodule\n")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/nested/lib/HEAD") == sha
    assert show(repo, "refs/rescued/nested/lib/files", "scratch.txt") == (
        "uncommitted in the submodule")
    assert list(sub.iterdir()) == [], "the submodule's checkout survived the release"
    assert git(slot, "ls-files", "-s", "lib").startswith("160000"), "the gitlink was lost"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_worktrees_inside_and_outside_the_slot_are_saved_and_unregistered(
        cli, pool, slot, upstream, outside, tmp_path):
    git(slot, "worktree", "add", "-q", "-b", "side", "wt")
    side = commit_file(slot / "wt", "side.txt", "worktree commit\n")
    (slot / "wt" / "wip.txt").write_text("worktree edit\n")
    far = outside / "far-wt"
    git(slot, "worktree", "add", "-q", "--detach", str(far))
    far_commit = commit_file(far, "far.txt", "far work\n")
    before = digest(outside)
    result = release(cli, slot)
    assert changes(before, digest(outside)) == [], "the worktree outside the root was touched"
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/heads/side") == side
    assert show(repo, "refs/rescued/nested/wt/files", "wip.txt") == "worktree edit"
    saved = git(repo, "for-each-ref", "--format=%(objectname)", "refs/rescued/nested")
    assert far_commit in saved.split(), "the outside worktree's detached commit was lost"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


@pytest.mark.parametrize("hide", ["info/exclude", "global excludes", "assume-unchanged",
                                  "skip-worktree"])
def test_edits_hidden_from_git_status_are_saved(cli, pool, slot, upstream, tmp_path, hide):
    if hide == "global excludes":  # the user's own ~/.config/git/ignore
        (tmp_path / "xdg-config" / "git").mkdir(parents=True)
        (tmp_path / "xdg-config" / "git" / "ignore").write_text("*.secret\n")
        (slot / "notes.secret").write_text("hidden work\n")
        path = "notes.secret"
    elif hide == "info/exclude":
        (slot / ".git" / "info" / "exclude").write_text("secret/\n")
        (slot / "secret").mkdir()
        (slot / "secret" / "notes.txt").write_text("hidden work\n")
        path = "secret/notes.txt"
    else:
        git(slot, "update-index", f"--{hide}", "README")
        (slot / "README").write_text("hidden work\n")
        path = "README"
    assert git(slot, "status", "--porcelain") == "", "the edit is not hidden from git status"
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/uncommitted", path) == "hidden work"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_a_sparse_checkout_is_undone_without_a_false_rescue(cli, pool, slot, upstream, tmp_path):
    git(slot, "sparse-checkout", "set", "--no-cone", "src/pkg0/")
    assert not (slot / "README").exists()
    result = release(cli, slot)
    assert result.get("rescued") is None, "files left out by sparse-checkout were 'saved'"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_local_tags_notes_and_replace_refs_are_saved_and_removed(cli, pool, slot, upstream,
                                                                  tmp_path):
    tip = git(slot, "rev-parse", "HEAD")
    tagged = commit_file(slot, "tagged.txt", "only reachable from a tag\n")
    git(slot, "tag", "mine")
    git(slot, "checkout", "-q", "--detach", tip)
    git(slot, "notes", "add", "-m", "a note", tip)
    fake = commit_file(slot, "README", "replaced content\n")
    git(slot, "checkout", "-q", "--detach", tip)
    git(slot, "replace", tip, fake)
    assert "replaced" in git(slot, "show", "HEAD:README")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/tags/mine") == tagged
    assert git(repo, "rev-parse", "--verify", "-q", "refs/rescued/refs/notes/commits")
    assert show(slot, "HEAD", "README") == "upstream", "replace refs still change the slot"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_hooks_grafts_shallow_and_holder_leftovers_are_removed(cli, pool, slot, upstream,
                                                               tmp_path):
    gitdir = slot / ".git"
    (gitdir / "hooks" / "post-checkout").write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    (gitdir / "hooks" / "post-checkout").chmod(0o755)
    tip = git(slot, "rev-parse", "HEAD")
    (gitdir / "info" / "grafts").write_text(f"{tip}\n")
    (gitdir / "info" / "attributes").write_text("* -text\n")
    commit_file(slot, "x.txt", "x\n", "holder's secret commit message")
    git(slot, "reset", "-q", "--hard", tip)  # ORIG_HEAD, COMMIT_EDITMSG and reflogs remain
    assert (gitdir / "ORIG_HEAD").exists() and (gitdir / "COMMIT_EDITMSG").exists()
    release(cli, slot)
    assert "secret commit message" not in git(slot, "reflog", "--format=%gs %s")
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_special_files_in_the_tree_are_removed(cli, pool, slot, upstream, tmp_path):
    os.mkfifo(slot / "src" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(slot / "sock"))
    sock.close()
    result = release(cli, slot)
    assert result["cleanup"]["special_files_removed"] == 2
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_a_damaged_index_is_rebuilt_before_the_work_is_judged(cli, root, upstream,
                                                              with_submodule, tmp_path):
    """A flipped byte in the index used to "save" a commit deleting every gitlink."""
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    slot = Path(cli("allocate", "web").stdout.strip())
    index = slot / ".git" / "index"
    data = bytearray(index.read_bytes())
    data[40] ^= 0xFF  # inside the first entry's stat data
    index.write_bytes(bytes(data))
    result = release(cli, slot)
    assert result["cleanup"]["index_rebuilt"] is True
    assert result.get("rescued") is None, "an untouched slot's damaged index made a rescue"
    assert git(slot, "ls-files", "-s", "lib").startswith("160000")
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_a_branch_name_that_is_not_utf8_is_saved_not_a_crash(cli, pool, slot, upstream,
                                                            tmp_path):
    sha = commit_file(slot, "w.txt", "work\n")
    env = dict(os.environ, **GIT_ENV)
    subprocess.run([b"git", b"update-ref", b"refs/heads/caf\xe9", sha.encode()], cwd=slot,
                   env=env, check=True)
    subprocess.run([b"git", b"checkout", b"-q", b"caf\xe9"], cwd=slot, env=env, check=True)
    result = release(cli, slot)
    assert result["cleanup"]["branches_deleted"] == ["caf\\xe9"]
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert sha in git(repo, "for-each-ref", "--format=%(objectname)", "refs/rescued")
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_slots_keep_their_refs_packed_as_a_clone_does(cli, root, upstream, tmp_path):
    for i in range(300):
        git(upstream, "tag", f"v{i}")
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    slot = Path(cli("allocate", "web").stdout.strip())
    git(slot, "tag", "holders-own")
    release(cli, slot)
    loose = [p for p in (slot / ".git" / "refs").rglob("*") if p.is_file()]
    assert len(loose) <= 2, loose
    assert len(git(slot, "tag").split()) == 300
    reference = fresh_slot()
    assert not [p for p in (reference / ".git" / "refs").rglob("*") if p.is_file()
                and "remotes" not in p.parts]
    assert_fresh_clone_equivalent(slot, upstream, tmp_path, reference)


# --- an unprivileged holder, and necropool run by root as cron runs it ------------------------

@pytest.fixture
def open_root(monkeypatch):
    """A root that another user can reach (pytest's temp directories are private)."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="necropool-test-"))
    top.chmod(0o755)
    monkeypatch.setenv("NECROPOOL_HOME", str(top))
    yield top
    shutil.rmtree(top)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_root_reclaims_an_unprivileged_holders_slot_safely(cli, open_root, upstream, outside,
                                                           tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert cli("create", "web", upstream, "--slots", "2").code == 0
    for directory in (open_root / "pools", open_root / "pools" / "web",
                      open_root / "pools" / "web" / "slots"):
        directory.chmod(0o711)  # private by default: opened for holders of another uid
    grant = dead_holders_grant(cli)
    slot, lease = Path(grant["path"]), grant["lease_id"]
    for path in [slot, *slot.rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    script = (f"import os\nos.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})\n"
              "os.chdir(os.environ['SLOT'])\n"
              "open('notes.txt', 'w').write('unprivileged work\\n')\n"
              "os.rename('.git/hooks', '.git/hooks-away')\n"
              "os.symlink(os.environ['OUT'], '.git/hooks')\n")
    holder = subprocess.run([sys.executable, "-c", script], env=dict(
        os.environ, SLOT=str(slot), OUT=str(outside / "dir")), capture_output=True, text=True)
    assert holder.returncode == 0, holder.stderr
    before = digest(outside)
    healed = cli("auto-recover", "--json")  # root, as from cron
    assert healed.code == 0, healed
    assert changes(before, digest(outside)) == []
    moved = sorted((slot.parent.parent / "rescued").glob(f"*{lease}*"))
    assert moved and (moved[0] / "notes.txt").read_text() == "unprivileged work\n"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_root_cleans_a_slot_that_an_unprivileged_holder_owns(cli, open_root, upstream,
                                                             tmp_path, monkeypatch):
    """git refuses to discover a repository another user owns; root's cleanup names the
    slot's repository outright (after putting its config back), so it still works."""
    import pwd

    for key, value in {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
                       "GIT_CONFIG_VALUE_0": "*"}.items():  # for this test's own git only:
        monkeypatch.setenv(key, value)  # necropool drops GIT_CONFIG_* from its environment

    nobody = pwd.getpwnam("nobody")
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    slot = Path(cli("allocate", "web").stdout.strip())
    for path in [slot, *slot.rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    (slot / "notes.txt").write_text("work\n")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/uncommitted", "notes.txt") == "work"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_a_nested_repository_made_after_a_clean_cycle_is_found(cli, pool, slot, upstream,
                                                               tmp_path):
    """After a cleanup, the next one reads only the directories that changed since (and
    new ones below them): a repository made deep in an existing directory is still found."""
    release(cli, slot)
    again = Path(cli("allocate", "web", "--no-fetch").stdout.strip())
    assert again == slot
    inner = slot / "src" / "pkg1" / "inner"
    inner.mkdir()
    git(inner, "init", "-q")
    sha = commit_file(inner, "deep.txt", "deep work\n")
    os.mkfifo(slot / "src" / "pkg2" / "pipe")
    result = release(cli, slot)
    assert result["cleanup"]["nested_saved"] == ["src/pkg1/inner"]
    assert result["cleanup"]["special_files_removed"] == 1
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/nested/src/pkg1/inner/HEAD") == sha
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_a_remote_ref_pointed_at_the_holders_commit_does_not_hide_it(cli, pool, slot,
                                                                     upstream, tmp_path):
    """The bundle leaves out what ``--remotes`` reaches: a holder's commit named by a
    remote-tracking ref (origin/HEAD, origin/main, a remote of their own) must still be
    saved, and those refs come back as a fresh slot has them."""
    sha = commit_file(slot, "w.txt", "work only a remote ref names\n")
    git(slot, "update-ref", "--no-deref", "refs/remotes/origin/HEAD", sha)
    git(slot, "update-ref", "refs/remotes/origin/main", sha)
    git(slot, "update-ref", "refs/remotes/mine/topic", sha)
    git(slot, "checkout", "-q", "--detach", "HEAD~1")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert sha in git(repo, "for-each-ref", "--format=%(objectname)", "refs/rescued").split()
    assert git(slot, "symbolic-ref", "refs/remotes/origin/HEAD") == "refs/remotes/origin/main"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)
