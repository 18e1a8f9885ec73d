"""``rescued``: the work cleanup saved is listed with who left it and what it holds, can be
shown, restored into a clone, and pruned (dry run by default, nothing outside the root, no
symlink followed)."""

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import changes, commit_file, digest, git


@pytest.fixture
def saved(cli, pool, manager, root):
    """web-1 released by 'alice' with a local branch, a commit on it and two changed files;
    returns (lease, the bundle's path)."""
    lease = manager.allocate_slot("web", owner="alice", fetch=False)
    slot = Path(lease["path"])
    git(slot, "switch", "-q", "-c", "feature")
    commit_file(slot, "feature.txt", "a commit of the holder\n")
    (root / "pools/web/slots/1/README").write_text("changed by the holder\n")
    (root / "pools/web/slots/1/notes.txt").write_text("never added\n")
    released = manager.release_slot("web-1", lease["lease_id"], fetch=False)
    return lease, released["rescued"]


def test_list_says_who_left_what(ledger, cli, saved):
    """On both backends: the owner comes from the pool's history, which a ledger keeps."""
    lease, bundle = saved
    data = json.loads(cli("rescued", "list", "--json").stdout)
    [item] = data["items"]
    assert item["path"] == bundle and item["kind"] == "bundle" and item["pool"] == "web"
    assert item["slot_id"] == "web-1"
    assert (item["owner"], item["lease_id"]) == ("alice", lease["lease_id"])
    assert item["branches"] == ["feature"] and item["commits"] == 1
    assert sorted(item["uncommitted_files"]) == ["README", "notes.txt"]
    assert item["size_bytes"] == os.path.getsize(bundle) == data["total_bytes"]
    assert item["id"] == os.path.basename(bundle)

    plain = cli("rescued", "list", "web").stdout.splitlines()
    assert len(plain) == 1
    cells = plain[0].split("\t")
    assert cells[0] == item["id"] and cells[3:6] == ["web-1", "alice", lease["lease_id"]]
    assert cells[8:11] == ["feature", "1", "2"]

    status = json.loads(cli("status", "web", "--json").stdout)
    assert (status["rescued_count"], status["rescued_bytes"]) == (1, item["size_bytes"])


def test_show_and_restore_into_a_new_clone_and_an_existing_one(cli, saved, tmp_path, upstream):
    _, bundle = saved
    short = os.path.basename(bundle).split("Z-")[0]  # <slot>-<stamp> without the lease
    shown = cli("rescued", "show", short, "--json")
    assert shown.code == 0, shown
    assert json.loads(shown.stdout)["path"] == bundle

    fresh = tmp_path / "restored"
    result = cli("rescued", "restore", short, "--into", fresh, "--json")
    assert result.code == 0, result
    data = json.loads(result.stdout)
    assert data["cloned"] is True and data["path"] == str(fresh)
    space = f"refs/rescued/{short}Z/"
    assert sorted(data["refs"]) == sorted(space + r for r in ("HEAD", "heads/feature", "on/feature",
                                                               "uncommitted"))
    assert git(fresh, "show", f"{space}heads/feature:feature.txt") == "a commit of the holder"
    assert git(fresh, "show", f"{space}uncommitted:notes.txt") == "never added"
    assert git(fresh, "remote", "get-url", "origin") == str(upstream)

    clone = tmp_path / "mine"
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    again = cli("rescued", "restore", bundle, "--into", clone)
    assert again.code == 0, again
    assert again.stdout.strip() == str(clone)
    assert git(clone, "show", f"{space}uncommitted:README") == "changed by the holder"


def test_what_cannot_be_restored_or_found(cli, saved, root, tmp_path):
    tree = root / "pools/web/rescued/web-2-20200101T000000Z.broken"
    tree.mkdir()
    (tree / "file").write_text("kept\n")
    refused = cli("rescued", "restore", "web-2-2020", "--into", tmp_path / "x")
    assert refused.code == 5 and "not a bundle" in refused.stderr
    assert not (tmp_path / "x").exists()
    assert cli("rescued", "show", "nothing-like-it").code == 4
    not_repo = tmp_path / "plain"
    not_repo.mkdir()
    assert cli("rescued", "restore", saved[1], "--into", not_repo).code == 5


def test_prune_lists_trees_nested_bundles_and_links_and_never_leaves_the_root(
        cli, saved, root, tmp_path):
    rescued = root / "pools/web/rescued"
    _, bundle = saved
    old_tree = rescued / "web-2-20200101T000000Z.broken"
    (old_tree / ".git").mkdir(parents=True)
    (old_tree / "work.c").write_text("int main;\n")
    nested = rescued / "web-3-nested" / "sub"
    nested.mkdir(parents=True)
    old_bundle = nested / "web-3-20200101T000000000000Z-allocate.bundle"
    shutil.copy(bundle, old_bundle)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("not ours\n")
    link = rescued / "elsewhere"
    link.symlink_to(outside)
    os.utime(link, (1e9, 1e9), follow_symlinks=False)

    listed = json.loads(cli("rescued", "list", "--json").stdout)["items"]
    kinds = {item["id"]: item["kind"] for item in listed}
    assert kinds == {old_tree.name: "tree", "web-3-nested/sub/" + old_bundle.name: "bundle",
                     "elsewhere": "link", os.path.basename(bundle): "bundle"}

    before = digest(root), digest(outside)
    for dry in (["--older-than", "30d"], ["--older-than", "30d", "--dry-run"]):
        plan = cli("rescued", "prune", *dry, "--json")
        assert plan.code == 0, plan
        data = json.loads(plan.stdout)
        assert data["dry_run"] is True and data["freed_bytes"] == 0
        assert len(data["items"]) == 3
    assert (digest(root), digest(outside)) == before  # a dry run changes nothing

    done = cli("rescued", "prune", "web", "--older-than", "30d", "--yes")
    assert done.code == 0, done
    assert sorted(done.stdout.split()) == sorted(
        str(p) for p in (old_tree, old_bundle, link))
    assert os.listdir(rescued) == [os.path.basename(bundle)]  # emptied dirs go too
    assert digest(outside) == before[1]  # the link went, its target stayed
    assert not changes(before[0], digest(root)) or all(
        "rescued" in path for path in changes(before[0], digest(root)))

    both = cli("rescued", "prune", "--dry-run", "--yes")
    assert both.code == 2 and "exclude" in both.stderr


def test_a_pool_that_cannot_be_read_is_named_and_the_others_still_searched(
        cli, saved, root, manager):
    """The rule of list and status for every command over several pools: what can be read
    is shown, then the command fails (exit 3) naming the pool that cannot."""
    from necropool.ground.errors import NecropoolError

    _, bundle = saved
    (root / "pools" / "junk").mkdir()
    for command in (["rescued", "list"], ["rescued", "prune"], ["log"]):
        result = cli(*command, "--json")
        assert result.code == 3, result
        assert "pool junk:" in json.loads(result.stderr)["message"]
    assert [i["path"] for i in cli("rescued", "list", "--json").json()["items"]] == [bundle]
    assert {e["pool"] for e in cli("log", "--json").json()["events"]} == {"web"}
    assert cli("rescued", "show", os.path.basename(bundle)).code == 0
    missing = cli("rescued", "show", "nothing-like-it")
    assert missing.code == 4 and "not searched: pool junk" in missing.stderr
    with pytest.raises(NecropoolError, match="junk"):  # the API never drops it silently
        manager.rescued_list()
    assert len(manager.rescued_list("web")) == 1


def test_auto_recover_deletes_rescued_work_past_the_retention(cli, saved, root, tmp_path,
                                                              monkeypatch):
    """Opt-in (``rescued_retention_days``): the cron job keeps rescued/ from filling the disk;
    work younger than the retention stays, and a dry run only counts."""
    _, bundle = saved
    old = root / "pools/web/rescued" / "web-2-20200101T000000Z.broken"
    (old / ".git").mkdir(parents=True)
    (old / "work.c").write_text("int main;\n")
    assert cli("auto-recover", "--json").json()["rescued_pruned"] == 0  # not configured: kept
    assert old.is_dir()

    config = tmp_path / "config.toml"
    config.write_text("rescued_retention_days = 30\n")
    monkeypatch.setenv("NECROPOOL_CONFIG", str(config))
    plan = cli("auto-recover", "--dry-run", "--json")
    assert plan.code == 0 and plan.json()["rescued_pruned"] == 1, plan
    assert old.is_dir()
    done = cli("auto-recover", "--json")
    assert done.code == 0, done
    data = done.json()
    assert data["rescued_pruned"] == 1 and not old.exists() and Path(bundle).is_file()
    [action] = [a for p in data["pools"] for a in p["actions"] if a["target"] == str(old)]
    assert action["status"] == "done" and "30 days" in action["action"]
    assert cli("auto-recover", "--json").json()["rescued_pruned"] == 0

    config.write_text("rescued_retention_days = -1\n")
    refused = cli("auto-recover")
    assert refused.code == 2 and "rescued_retention_days" in refused.stderr
