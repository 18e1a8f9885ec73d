"""Release really cleans: whatever a holder did to a slot, the next holder gets a slot that
equals a fresh clone at the newest upstream tip, and the holder's work is kept in a bundle."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import commit_file, git
from slots import assert_fresh_slot, fresh_clone, restore, show

from necropool.ground.config import PoolSpec


def allocate_path(cli, pool_name: str = "web") -> Path:
    result = cli("allocate", pool_name)
    assert result.code == 0, result
    return Path(result.stdout.strip())


def test_release_cleans_everything_and_rescues_the_holders_work(cli, pool, root, upstream,
                                                                tmp_path):
    slot = allocate_path(cli)
    base = git(slot, "rev-parse", "HEAD")
    # The holder starts a branch and commits on it.
    git(slot, "checkout", "-q", "-b", "feature")
    local_commit = commit_file(slot, "feature.txt", "local work\n", "local commit")
    # ... then leaves uncommitted work of every kind on top of it.
    (slot / "src/pkg0/mod0.py").write_text("value = 'modified'\n")           # modified
    (slot / "README").write_text("staged edit\n")
    git(slot, "add", "README")                                                # staged
    (slot / "new_staged.txt").write_text("staged new file\n")
    git(slot, "add", "new_staged.txt")                                        # staged, new
    (slot / "src/pkg1/mod1.py").unlink()                                      # deleted
    os.chmod(slot / "src/pkg2/mod2.py", 0o755)                               # mode change
    (slot / "notes.txt").write_text("untracked notes\n")                      # untracked
    (slot / "spaced name ü.txt").write_text("odd name\n")                     # untracked
    (slot / "deep/a/b/c").mkdir(parents=True)
    (slot / "deep/a/b/c/file.txt").write_text("nested untracked\n")           # nested dirs
    (slot / "empty/dir").mkdir(parents=True)                                  # empty dirs
    (slot / "build").mkdir()
    (slot / "build/out.bin").write_bytes(b"\0artifact")                       # ignored dir
    (slot / "src/pkg3/mod3.o").write_bytes(b"object")                         # ignored file
    outside = tmp_path / "outside.txt"
    outside.write_text("not the slot's\n")
    (slot / "scratch-link").symlink_to(outside)                               # untracked link
    (slot / ".git/index.lock").write_text("")                                 # stale git lock
    # Upstream moves on while the slot is held.
    new_tip = commit_file(upstream, "later.txt", "new upstream work\n")
    assert new_tip != base

    released = cli("release", slot, "--json")
    assert released.code == 0, released
    data = released.json()
    assert data["schema_version"] == 1
    assert data["slot_id"] == "web-1" and data["cleaned"] is True
    assert data["commit"] == new_tip
    assert_fresh_slot(slot, upstream, new_tip, tmp_path)
    assert outside.read_text() == "not the slot's\n", "cleanup followed a symlink"

    # The work is in a bundle under <pool>/rescued/ ...
    bundle = data["rescued"]
    assert Path(bundle).parent == root / "pools" / "web" / "rescued"
    status = cli("status", "web-1", "--json").json()
    assert status["state"] == "available" and status["last_rescue"] == bundle
    # ... and a user can get all of it back in a fresh clone of the upstream.
    repo = restore(upstream, bundle, tmp_path / "restored")
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/rescued").splitlines()
    assert "refs/rescued/heads/feature" in refs
    assert git(repo, "rev-parse", "refs/rescued/heads/feature") == local_commit
    assert show(repo, "refs/rescued/heads/feature", "feature.txt") == "local work"
    saved = "refs/rescued/uncommitted"
    assert git(repo, "rev-parse", f"{saved}^") == local_commit
    assert show(repo, saved, "src/pkg0/mod0.py") == "value = 'modified'"
    assert show(repo, saved, "README") == "staged edit"
    assert show(repo, saved, "new_staged.txt") == "staged new file"
    assert show(repo, saved, "notes.txt") == "untracked notes"
    assert show(repo, saved, "spaced name ü.txt") == "odd name"
    assert show(repo, saved, "deep/a/b/c/file.txt") == "nested untracked"
    assert show(repo, saved, "feature.txt") == "local work"
    files = git(repo, "ls-tree", "-r", "--name-only", saved).splitlines()
    assert "src/pkg1/mod1.py" not in files, "the holder's deletion was not saved"
    assert git(repo, "ls-tree", saved, "src/pkg2/mod2.py").startswith("100755")


def test_keep_ignored_keeps_build_caches_but_removes_the_rest(manager, upstream, cli, tmp_path):
    manager.create_pool(PoolSpec(name="cache", url=str(upstream), num_slots=1,
                                 keep_ignored=True))
    slot = allocate_path(cli, "cache")
    (slot / "build/deep").mkdir(parents=True)
    (slot / "build/deep/cache.bin").write_bytes(b"expensive cache")
    (slot / "src/pkg0/mod0.o").write_bytes(b"object file")
    (slot / "untracked.txt").write_text("gone after release\n")
    (slot / "newdir/sub").mkdir(parents=True)
    (slot / "newdir/sub/x.txt").write_text("gone too\n")
    (slot / "README").write_text("modified\n")
    git(slot, "checkout", "-q", "-b", "topic")
    new_tip = commit_file(upstream, "later.txt", "new upstream work\n")

    released = cli("release", "cache-1", "--json")
    assert released.code == 0, released
    assert git(slot, "rev-parse", "HEAD") == new_tip
    assert git(slot, "symbolic-ref", "-q", "HEAD", check=False) == ""
    assert git(slot, "for-each-ref", "refs/heads") == ""
    assert git(slot, "status", "--porcelain", "--untracked-files=all") == ""
    assert (slot / "build/deep/cache.bin").read_bytes() == b"expensive cache"
    assert (slot / "src/pkg0/mod0.o").read_bytes() == b"object file"
    assert not (slot / "untracked.txt").exists()
    assert not (slot / "newdir").exists()
    assert (slot / "README").read_text() == "upstream\n"
    ignored = sorted(git(slot, "status", "--porcelain", "--ignored").splitlines())
    assert ignored == ["!! build/", "!! src/pkg0/mod0.o"]


def test_releasing_an_untouched_slot_saves_nothing(cli, pool, root, upstream, tmp_path):
    slot = allocate_path(cli)
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert released.json()["rescued"] is None
    assert list((root / "pools/web/rescued").iterdir()) == []
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)


def saved_contents(upstream: Path, rescued: Path, dest: Path, name: str) -> set[str]:
    """Every version of file ``name`` that ``rescued/`` keeps: in any ref of any bundle, or
    in a working copy that recover moved aside whole (``*.broken``), or in its refs."""
    repo = fresh_clone(upstream, dest)
    for i, bundle in enumerate(sorted(rescued.glob("*.bundle"))):
        git(repo, "fetch", "-q", str(bundle), f"refs/necropool/rescue/*:refs/b{i}/*")
    found = set()
    for ref in git(repo, "for-each-ref", "--format=%(refname)").splitlines():
        found.add(git(repo, "show", f"{ref}:{name}", check=False))
    for broken in rescued.glob("*.broken"):
        if (broken / name).is_file():
            found.add((broken / name).read_text().strip())
        for ref in git(broken, "for-each-ref", "--format=%(refname)",
                       "refs/necropool").splitlines():
            found.add(git(broken, "show", f"{ref}:{name}", check=False))
    return found - {""}


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_a_release_loses_no_work(cli, pool, root, upstream, tmp_path):
    # Ctrl-C reaches necropool and its git children alike, whether they save the work,
    # write the bundle or reset the slot. The release says "interrupted" (never a failure),
    # and finishing it (release again, or recover a slot left in cleaning) bundles the work.
    written, duration, startup = set(), 0.0, 0.0
    for n, moment in enumerate((None, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)):
        slot = allocate_path(cli)
        for i in range(200):
            (slot / f"dir{i % 20}").mkdir(exist_ok=True)
            (slot / f"dir{i % 20}" / f"f{i}.txt").write_text(f"scratch {n}\n")
        (slot / "work.txt").write_text(f"work {n}\n")
        written.add(f"work {n}")
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "necropool", "release", "web-1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        if moment is None:  # the first release runs whole: its length sets the moments
            proc.communicate(timeout=60)
            duration = time.monotonic() - started
            started = time.monotonic()  # Python's own start-up is no moment of the release:
            assert cli("--version").code == 0  # an interrupt there never reaches necropool
            startup = min(time.monotonic() - started, duration)
            continue
        time.sleep(startup + (duration - startup) * moment)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        # (-SIGINT: the interrupt came as Python exited; a shell shows 130 for it too)
        assert proc.returncode in (0, 130, -signal.SIGINT), (moment, proc.returncode, err)
        state = cli("status", "web-1", "--json").json()["state"]
        if state == "allocated":
            assert cli("release", "web-1").code == 0
        elif state != "available":
            assert cli("recover", "web-1").code == 0
        assert cli("status", "web-1", "--json").json()["state"] == "available"
        (tmp_path / str(n)).mkdir()
        assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path / str(n))
    assert written <= saved_contents(upstream, root / "pools/web/rescued", tmp_path / "all",
                                     "work.txt")


def test_an_index_damaged_after_the_last_cleanup_is_rebuilt(cli, pool, upstream, tmp_path):
    # Releases skip re-hashing an index that is still the file the last cleanup left; one
    # a holder's tool rewrote in place must still be checked, and rebuilt when damaged.
    slot = allocate_path(cli)
    assert cli("release", "web-1").code == 0
    slot = allocate_path(cli)
    index = slot / ".git" / "index"
    with open(index, "r+b") as fh:
        fh.seek(40)  # inside the first entry's stat data: git itself would not notice
        byte = fh.read(1)
        fh.seek(40)
        fh.write(bytes([byte[0] ^ 0xFF]))
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert released.json()["cleanup"].get("index_rebuilt") is True
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)
    again = cli("release", allocate_path(cli), "--json")
    assert "index_rebuilt" not in again.json()["cleanup"]


def test_commits_on_a_detached_head_are_rescued(cli, pool, upstream, tmp_path):
    slot = allocate_path(cli)
    first = commit_file(slot, "one.txt", "first\n")
    second = commit_file(slot, "two.txt", "second\n")
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    tip = git(upstream, "rev-parse", "HEAD")
    assert_fresh_slot(slot, upstream, tip, tmp_path)
    repo = restore(upstream, released.json()["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/HEAD") == second
    assert git(repo, "rev-parse", "refs/rescued/HEAD^") == first
    assert show(repo, "refs/rescued/HEAD", "one.txt") == "first"


def test_a_stash_does_not_leak_to_the_next_holder_and_is_rescued(cli, pool, upstream,
                                                                 tmp_path):
    slot = allocate_path(cli)
    (slot / "README").write_text("older stashed edit\n")
    git(slot, "stash", "push", "-q", "-m", "older")
    (slot / "README").write_text("stashed edit\n")
    git(slot, "stash", "push", "-q", "-m", "wip")
    assert git(slot, "status", "--porcelain") == ""
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)
    data = released.json()
    assert "rescued" in data, "the stashed work was dropped without being saved"
    repo = restore(upstream, data["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/stash", "README") == "stashed edit"
    assert show(repo, "refs/rescued/stash-1", "README") == "older stashed edit"


def test_a_leftover_save_whose_work_is_upstream_by_now_does_not_block_cleanup(cli, pool,
                                                                             upstream):
    # A save that never made it into a bundle left a ref; its commit has reached upstream
    # since. git refuses to write an empty bundle: cleanup must drop the ref, not fail.
    slot = allocate_path(cli)
    git(slot, "update-ref", "refs/necropool/rescue/HEAD", "HEAD")
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert released.json()["rescued"] is None
    assert git(slot, "for-each-ref", "refs/necropool") == ""


def test_a_killed_save_leaves_no_lock_that_stops_the_next_one(cli, pool, upstream, tmp_path):
    # A cleanup killed while git added the holder's files to its temporary index leaves
    # that index's lock file behind; the next cleanup removes it and saves the work.
    slot = allocate_path(cli)
    (slot / "notes.txt").write_text("unsaved notes\n")
    (slot / ".git" / "necropool-rescue.index.lock").write_text("")
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    data = released.json()
    assert ".git/necropool-rescue.index.lock" in data["cleanup"]["git_locks_removed"]
    repo = restore(upstream, data["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/uncommitted", "notes.txt") == "unsaved notes"
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)


def test_work_whose_bundle_fails_stays_in_the_slot_until_a_later_cleanup_bundles_it(
        cli, pool, upstream, tmp_path):
    # The bundle is written while the slot is reset; if it fails, the holder's commit must
    # survive in the slot's refs, and the next cleanup must put it in a bundle.
    slot = allocate_path(cli)
    git(slot, "checkout", "-q", "-b", "feature")
    work = commit_file(slot, "feature.txt", "precious\n", "local work")
    blob = git(slot, "rev-parse", f"{work}:feature.txt")
    loose = slot / ".git/objects" / blob[:2] / blob[2:]
    aside = tmp_path / "blob"
    loose.rename(aside)  # the bundle cannot read it: git bundle fails
    (slot / "feature.txt").unlink()  # (or saving the uncommitted work would hash it again)

    released = cli("release", "web-1", "--json")
    assert released.code == 3, released
    assert "refs/necropool/rescue/heads/feature" in json.loads(released.stderr)["message"]
    assert git(slot, "rev-parse", "refs/necropool/rescue/heads/feature") == work
    assert cli("status", "web-1", "--json").json()["state"] == "error"

    aside.rename(loose)
    recovered = cli("recover", "web-1", "--json")
    assert recovered.code == 0, recovered
    assert git(slot, "for-each-ref", "refs/necropool") == ""
    bundles = sorted((slot.parent.parent / "rescued").glob("*.bundle"))
    assert len(bundles) == 1, bundles
    repo = restore(upstream, str(bundles[0]), tmp_path / "restored")
    saved = git(repo, "for-each-ref", "--format=%(refname)", "refs/rescued").splitlines()
    feature = [ref for ref in saved if ref.endswith("/heads/feature")]
    assert feature, saved
    assert show(repo, feature[0], "feature.txt") == "precious"
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)


def test_a_tracked_directory_replaced_by_a_file_is_restored(cli, pool, upstream, tmp_path):
    slot = allocate_path(cli)
    for child in (slot / "src/pkg2").iterdir():
        child.unlink()
    (slot / "src/pkg2").rmdir()
    (slot / "src/pkg2").write_text("a file where a directory was\n")
    (slot / "README").unlink()
    (slot / "README").mkdir()
    (slot / "README/inner.txt").write_text("a directory where a file was\n")
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)


def test_a_holder_changing_the_git_config_is_undone(cli, pool, upstream, tmp_path):
    slot = allocate_path(cli)
    git(slot, "config", "remote.origin.url", "/somewhere/else")
    git(slot, "config", "core.hooksPath", "/tmp/evil-hooks")
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)
    assert git(slot, "config", "--get", "core.hooksPath", check=False) == ""


@pytest.mark.parametrize("lock_name", ["index.lock", "HEAD.lock", "refs/heads/x.lock"])
def test_stale_git_locks_alone_do_not_block_release(cli, pool, upstream, tmp_path, lock_name):
    slot = allocate_path(cli)
    (slot / "src/pkg0/mod0.py").write_text("dirty\n")
    lock = slot / ".git" / lock_name
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert not lock.exists()
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)


def test_empty_directories_alone_are_removed(cli, pool, upstream, tmp_path):
    slot = allocate_path(cli)
    (slot / "out/empty/nested").mkdir(parents=True)
    (slot / "src/pkg0/__pycache__").mkdir()
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    assert not (slot / "out").exists() and not (slot / "src/pkg0/__pycache__").exists()
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)


def test_a_slot_that_cannot_be_cleaned_is_in_error_not_handed_out(cli, pool, root):
    slot = allocate_path(cli)
    (slot / "README").write_text("the holder's work\n")
    for entry in (slot / ".git/objects").iterdir():  # the holder wrecked the repository
        if entry.is_dir():
            for child in entry.iterdir():
                child.chmod(0o644)
                child.unlink() if child.is_file() else None
    (slot / ".git/HEAD").write_text("garbage\n")
    released = cli("release", "web-1", "--json")
    assert released.code == 3, released
    assert "in error until recovered" in released.stderr
    status = cli("status", "web-1", "--json").json()
    assert status["state"] == "error" and status["error"]
    assert (slot / "README").read_text() == "the holder's work\n", "work destroyed"
    handed = [cli("allocate", "web").stdout.strip() for _ in range(2)]
    assert str(slot) not in handed
    assert cli("allocate", "web").code == 75


def test_a_broken_slot_never_makes_git_act_on_a_repository_around_the_root(
        tmp_path, upstream, monkeypatch):
    """A root inside a user's own repository (a dotfiles repo in $HOME, say): cleaning a
    slot whose .git is broken must fail, not reset, clean or write into the outer one."""
    from helpers import run_cli

    outer = tmp_path / "home"
    outer.mkdir()
    git(outer, "init", "-q", "-b", "main")
    commit_file(outer, ".gitignore", "necropool/\n")
    commit_file(outer, "dotfile", "precious\n")
    git(tmp_path, "clone", "-q", "--bare", str(outer), str(tmp_path / "dotfiles.git"))
    git(outer, "remote", "add", "origin", str(tmp_path / "dotfiles.git"))
    git(outer, "fetch", "-q", "origin")  # everything pushed: nothing there needs rescuing
    outer_head = git(outer, "rev-parse", "HEAD")
    objects_before = git(outer, "count-objects", "-v")
    monkeypatch.setenv("NECROPOOL_HOME", str(outer / "necropool"))
    assert run_cli("create", "web", upstream, "--slots", "1").code == 0
    slot = Path(run_cli("allocate", "web").stdout.strip())
    (slot / ".git/HEAD").write_text("garbage\n")
    commit_file(upstream, "later.txt", "upstream moved on\n")

    released = run_cli("release", "web-1")
    assert released.code == 3, released
    assert git(outer, "rev-parse", "HEAD") == outer_head
    assert git(outer, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(outer, "for-each-ref", "--format=%(refname)").splitlines() == [
        "refs/heads/main", "refs/remotes/origin/main"]
    assert git(outer, "rev-parse", "refs/remotes/origin/main") == outer_head
    assert git(outer, "count-objects", "-v") == objects_before
    assert (outer / "dotfile").read_text() == "precious\n"
    assert (slot / "README").read_text() == "upstream\n", "the slot's files were cleaned away"


def add_keeping_mtimes(slot: Path) -> None:
    """A file added and every directory's modification time set back: only the change time
    (which nobody can set) still tells."""
    times = {d: d.stat() for d in (slot, slot / "src")}
    (slot / "src" / "hidden.py").write_text("x\n")
    for d, st in times.items():
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
def test_a_release_after_any_change_to_the_tree_still_cleans_everything(cli, pool, root):
    """The shortcut for untouched slots (no directory changed since the last cleanup, so no
    walk by git) must never miss a change: each kind of change, alone, after a clean cycle."""
    def cycle():
        path = Path(cli("allocate", "web", "--no-fetch").stdout.strip())
        assert cli("release", path, "--no-fetch").code == 0
        return path

    changes = {
        "empty dir": lambda p: (p / "src" / "pkg1" / "empty").mkdir(),
        "nested empty dirs": lambda p: (p / "a" / "b" / "c").mkdir(parents=True),
        "untracked file": lambda p: (p / "src" / "new.py").write_text("x\n"),
        "ignored file": lambda p: (p / "out.o").write_text("x\n"),
        "modified file": lambda p: (p / "README").write_text("changed\n"),
        "deleted file": lambda p: (p / "README").unlink(),
        "new file, directory times put back (as tar does)": add_keeping_mtimes,
    }
    for what, change in changes.items():
        path = cycle()
        assert cycle() == path  # most recently released first: the same slot again
        record = root / "pools" / "web" / "records" / f"{path.name}.json"
        assert record.exists(), "the record of the last cleanup is kept outside the slot"
        assert not any(n.startswith("necropool-") for n in os.listdir(path / ".git"))
        path = Path(cli("allocate", "web", "--no-fetch").stdout.strip())
        change(path)
        assert cli("release", path, "--no-fetch").code == 0, what
        assert git(path, "status", "--porcelain", "--ignored") == "", what
        leftovers = [d for d in path.rglob("*") if d.is_dir() and ".git" not in d.parts
                     and not any(d.iterdir())]
        assert leftovers == [], (what, leftovers)


def test_a_release_leaves_an_index_that_needs_no_rehashing(cli, pool):
    """Files written in the same second as the index are "racily clean": git re-reads
    every one of them on each status until the index is written again. A release writes
    the refreshed index, so neither the next cleanup nor the holder's own git pays that."""
    slot = allocate_path(cli)
    # The slot as a checkout leaves it, but a minute ago: the files and the index written
    # in one second, the index recording the files' times as they are.
    tracked = [slot / name for name in git(slot, "ls-files", "-z").split("\0") if name]
    then = (int(time.time()) - 60) * 10**9
    for path in tracked:
        os.utime(path, ns=(then, then), follow_symlinks=False)
    git(slot, "update-index", "-q", "--refresh")
    index = slot / ".git" / "index"
    os.utime(index, ns=(then, then))
    newest_file = max(int(path.stat().st_mtime) for path in tracked)
    assert int(index.stat().st_mtime) == newest_file  # racily clean
    assert cli("release", "web-1").code == 0
    assert int(index.stat().st_mtime) > newest_file


def test_an_edit_in_the_second_of_its_files_checkout_is_saved(cli, pool, upstream, tmp_path):
    """The holder checks a file out and edits it at once, to the same size (a version
    bumped): git's index alone cannot tell that file from the checked-out one, only the
    index file's own time can (git then reads the content). The edit is saved all the
    same, the release being seconds later."""
    slot = allocate_path(cli)
    readme = slot / "README"
    for _ in range(20):  # until the edit lands in the second that the checkout recorded
        readme.write_text("changed\n")
        git(slot, "checkout", "--", "README")
        before = readme.stat()
        with open(readme, "r+b") as fh:
            fh.write(b"U")
        os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))
        if int(readme.stat().st_ctime) == int(before.st_ctime):
            break
    else:
        pytest.skip("no edit landed in its checkout's second")
    time.sleep(1.1)  # the save's copy of the index made in a later second
    released = cli("release", "web-1", "--json")
    assert released.code == 0, released
    repo = restore(upstream, released.json()["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/uncommitted", "README") == "Upstream"
