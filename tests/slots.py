"""Checks on slots shared by the cleanup and hostile-holder tests: is a slot what a fresh
clone is, and what did a bundle save."""

import os
import stat
from pathlib import Path

from helpers import git, run_cli


def tree_snapshot(path: Path) -> dict[str, object]:
    """Every file (content and executable bit), symlink and directory below ``path``
    except ``.git``: what a user of the working copy sees."""
    snap: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not (dirpath == str(path) and d == ".git")]
        rel_dir = os.path.relpath(dirpath, path)
        for d in dirs:
            snap[os.path.normpath(os.path.join(rel_dir, d)) + "/"] = "dir"
        for f in files:
            full = Path(dirpath, f)
            rel = os.path.normpath(os.path.join(rel_dir, f))
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                snap[rel] = ("link", os.readlink(full))
            elif not stat.S_ISREG(mode):
                snap[rel] = ("special", stat.S_IFMT(mode))
            else:
                snap[rel] = (full.read_bytes(), bool(mode & stat.S_IXUSR))
    return snap


def fresh_clone(upstream: Path, dest: Path) -> Path:
    git(dest.parent, "clone", "-q", str(upstream), str(dest))
    return dest


def assert_fresh_slot(slot: Path, upstream: Path, tip: str, tmp_path: Path) -> None:
    """The slot equals a freshly cloned slot at ``tip`` (read only: a status refreshing the
    index would write into the free slot, to be cleaned again before its next hand-out)."""
    assert git(slot, "rev-parse", "HEAD") == tip
    detached = git(slot, "symbolic-ref", "-q", "HEAD", check=False)
    assert detached == "", f"HEAD is on a branch: {detached}"
    assert git(slot, "--no-optional-locks", "status", "--porcelain", "--ignored",
               "--untracked-files=all") == ""
    assert git(slot, "for-each-ref", "refs/heads") == "", "local branches survived release"
    assert git(slot, "stash", "list") == "", "the previous holder's stash survived release"
    leftover = [p.name for p in (slot / ".git").iterdir()
                if p.name.endswith(".lock") or p.name.startswith("necropool-rescue")]
    assert leftover == [], f"lock files or a temporary index left: {leftover}"
    assert git(slot, "config", "remote.origin.url") == str(upstream)
    reference = fresh_clone(upstream, tmp_path / f"reference-{tip[:8]}")
    assert git(reference, "rev-parse", "HEAD") == tip
    assert tree_snapshot(slot) == tree_snapshot(reference)


def restore(upstream: Path, bundle: str, dest: Path) -> Path:
    """What a user does to get the holder's work back: fetch the bundle into a clone."""
    assert Path(bundle).is_file(), f"bundle {bundle} does not exist"
    repo = fresh_clone(upstream, dest)
    git(repo, "fetch", "-q", bundle, "refs/necropool/rescue/*:refs/rescued/*")
    return repo


def show(repo: Path, rev: str, path: str) -> str:
    return git(repo, "show", f"{rev}:{path}")




def git_metadata(slot: Path) -> dict[str, object]:
    """What decides how git sees a slot, beyond its files: refs, config, hooks, info/,
    the entries at the top of .git, index flags, worktrees, reflogs."""
    gitdir = slot / ".git"
    top = {n for n in os.listdir(gitdir) if n not in ("logs", "FETCH_HEAD", "packed-refs")}
    return {
        "refs": git(slot, "for-each-ref", "--format=%(refname) %(objectname)"),
        "config": (gitdir / "config").read_text(),
        "hooks": sorted(os.listdir(gitdir / "hooks")) if (gitdir / "hooks").is_dir() else [],
        "info": {n: (gitdir / "info" / n).read_bytes() for n in os.listdir(gitdir / "info")},
        "top": sorted(top),
        "index flags": sorted({line[:2] for line in git(slot, "ls-files", "-v").splitlines()}),
        "worktrees": git(slot, "worktree", "list", "--porcelain").count("worktree "),
        "reflogs of refs": (gitdir / "logs" / "refs").exists(),
        "modules": (gitdir / "modules").exists(),
    }


def fresh_slot(pool: str = "web") -> Path:
    """A slot just added to the pool: the reference a cleaned slot must equal."""
    added = run_cli("add", pool, "--json")
    assert added.code == 0, added
    [slot_id] = added.json()["added"]
    return Path(run_cli("status", slot_id, "--json").json()["path"])


def assert_fresh_clone_equivalent(slot: Path, upstream: Path, tmp_path: Path,
                                  reference: Path | None = None) -> None:
    """The slot equals a fresh clone at the upstream's tip in its files, and a freshly
    added slot in everything git looks at."""
    assert_fresh_slot(slot, upstream, git(upstream, "rev-parse", "HEAD"), tmp_path)
    assert git_metadata(slot) == git_metadata(reference or fresh_slot())
