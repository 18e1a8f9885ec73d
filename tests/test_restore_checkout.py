"""``rescued restore --checkout``: the holder's state comes back as it was before release,
file by file and as ``git status`` sees it (branch or detached HEAD, staged, unstaged and
untracked changes), also from a deleted pool's saved work."""

import json
import os
from pathlib import Path

import pytest
from helpers import commit_file, git


def tree_files(top: Path) -> dict[str, bytes]:
    """Every file outside .git, by path: its content (a link: where it points)."""
    found = {}
    for here, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            path = os.path.join(here, name)
            rel = os.path.relpath(path, top)
            found[rel] = (os.readlink(path).encode() if os.path.islink(path)
                          else Path(path).read_bytes() + (b"+x" if os.access(path, os.X_OK)
                                                          else b""))
    return found


def holder_state(slot: Path) -> tuple:
    """(git status, HEAD's commit, its branch or "", every file)."""
    return (git(slot, "status", "--porcelain=v1", "--untracked-files=all"),
            git(slot, "rev-parse", "HEAD"), git(slot, "symbolic-ref", "-q", "--short", "HEAD",
                                               check=False), tree_files(slot))


def make_work(slot: Path) -> None:
    """Every kind of change: staged, unstaged, both, added, deleted either way, renamed,
    untracked, a new executable and a symlink."""
    (slot / "src/pkg0/mod0.py").write_text("staged\n")
    git(slot, "add", "src/pkg0/mod0.py")
    (slot / "src/pkg1/mod1.py").write_text("unstaged\n")
    (slot / "src/pkg2/mod2.py").write_text("staged once\n")
    git(slot, "add", "src/pkg2/mod2.py")
    (slot / "src/pkg2/mod2.py").write_text("staged once, then changed again\n")
    (slot / "added.txt").write_text("new and staged\n")
    git(slot, "add", "added.txt")
    git(slot, "rm", "-q", "src/pkg3/mod3.py")
    (slot / "src/pkg3/mod7.py").unlink()
    git(slot, "mv", "src/pkg0/mod4.py", "src/pkg0/renamed.py")
    (slot / "notes/todo.txt").parent.mkdir()
    (slot / "notes/todo.txt").write_text("untracked\n")
    (slot / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(slot / "run.sh", 0o755)
    os.symlink("README", slot / "link")
    git(slot, "rm", "-q", "--cached", "src/pkg1/mod5.py")  # tracked, made untracked


@pytest.mark.parametrize("on_branch", [True, False], ids=["branch", "detached"])
def test_restore_checkout_puts_the_holder_state_back(cli, pool, manager, tmp_path, on_branch):
    lease = manager.allocate_slot("web", owner="alice", fetch=False)
    slot = Path(lease["path"])
    if on_branch:
        git(slot, "switch", "-q", "-c", "feature")
    commit_file(slot, "feature.txt", "a commit of the holder\n")
    make_work(slot)
    before = holder_state(slot)
    assert before[0].count("\n") >= 10 and before[2] == ("feature" if on_branch else ""), before
    released = manager.release_slot("web-1", lease["lease_id"], fetch=False)
    assert released["rescued"]

    target = tmp_path / "back"
    result = cli("rescued", "restore", Path(released["rescued"]).name, "--into", target,
                 "--checkout", "--json")
    assert result.code == 0, result
    done = json.loads(result.stdout)["checkout"]
    assert done == {"branch": "feature" if on_branch else None, "commit": before[1],
                    "uncommitted": True}
    assert holder_state(target) == before


def test_restore_checkout_into_an_existing_clone(cli, pool, manager, tmp_path, upstream):
    """An existing clone: its branch moves forward to the holder's; one with changes, or
    whose branch went elsewhere, is refused and left as it was."""
    lease = manager.allocate_slot("web", owner="alice", fetch=False)
    slot = Path(lease["path"])
    git(slot, "switch", "-q", "-c", "main")
    commit_file(slot, "feature.txt", "a commit of the holder\n")
    (slot / "README").write_text("unstaged\n")
    before = holder_state(slot)
    bundle = manager.release_slot("web-1", lease["lease_id"], fetch=False)["rescued"]

    mine = tmp_path / "mine"
    git(tmp_path, "clone", "-q", str(upstream), str(mine))
    (mine / "scratch.txt").write_text("mine\n")
    refused = cli("rescued", "restore", bundle, "--into", mine, "--checkout")
    assert refused.code == 5 and "has changes of its own" in refused.stderr, refused
    assert git(mine, "for-each-ref", "refs/rescued") == ""
    (mine / "scratch.txt").unlink()

    elsewhere = tmp_path / "elsewhere"
    git(tmp_path, "clone", "-q", str(upstream), str(elsewhere))
    commit_file(elsewhere, "other.txt", "another line of work\n")
    refused = cli("rescued", "restore", bundle, "--into", elsewhere, "--checkout")
    assert refused.code == 5 and "branch 'main'" in refused.stderr, refused
    assert (elsewhere / "other.txt").exists() and not (elsewhere / "feature.txt").exists()

    result = cli("rescued", "restore", bundle, "--into", mine, "--checkout")
    assert result.code == 0, result
    assert "checked out branch main" in result.stderr
    assert holder_state(mine) == before


def test_work_of_a_deleted_pool_is_listed_shown_and_restored(cli, pool, manager, tmp_path,
                                                             upstream, root):
    lease = manager.allocate_slot("web", owner="alice", fetch=False)
    slot = Path(lease["path"])
    git(slot, "switch", "-q", "-c", "feature")
    (slot / "README").write_text("staged\n")
    git(slot, "add", "README")
    (slot / "new.txt").write_text("untracked\n")
    before = holder_state(slot)
    manager.release_slot("web-1", lease["lease_id"], fetch=False)
    assert cli("delete", "web", "--force").code == 0
    kept = [p.name for p in (root / "rescued").iterdir()]
    assert len(kept) == 1 and kept[0].startswith("web-")

    listed = json.loads(cli("rescued", "list", "--json").stdout)["items"]
    [item] = listed
    assert item["pool"] == "web" and item["kind"] == "bundle" and item["deleted"] is True
    assert item["id"].startswith(kept[0] + "/web-1-")
    # (feature is at the upstream's tip: only where HEAD was is saved)
    assert sorted(item["refs"]) == ["index", "on/feature", "uncommitted"], item
    assert cli("rescued", "list", "web", "--json").stdout == cli("rescued", "list",
                                                                 "--json").stdout
    shown = cli("rescued", "show", item["id"][:len(kept[0]) + 20], "--json")
    assert shown.code == 0 and json.loads(shown.stdout)["path"] == item["path"], shown

    no_mirror = cli("rescued", "restore", item["id"], "--into", tmp_path / "new")
    assert no_mirror.code == 2 and "--into" in no_mirror.stderr, no_mirror
    assert not (tmp_path / "new").exists()
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    result = cli("rescued", "restore", item["id"], "--into", clone, "--checkout")
    assert result.code == 0, result
    assert holder_state(clone) == before
