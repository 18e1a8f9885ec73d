"""Hermetic hand-out: a free slot changed after its cleanup (a late holder, a person poking
around) is never handed out as it is. ``allocate`` proves a free slot untouched by change
times alone (its directories, ``.git`` and the tracked files its index lists), cleans a
changed one first and files what it found as work of no holder; ``detect`` reports it
(``tampered_free_slots``), and ``auto-recover`` cleans it."""

import os
from pathlib import Path

import pytest
from helpers import commit_file, git

pytestmark = pytest.mark.toml_only


def _released(cli, pool: str = "web") -> Path:
    """A slot allocated and released: free, cleaned, and the next one allocate picks."""
    grant = cli("allocate", pool, "--no-fetch", "--json").json()
    assert cli("release", grant["slot_id"], "--no-fetch").code == 0
    return Path(grant["path"])


def _events(root: Path, kind: str) -> int:
    return (root / "pools/web/events.jsonl").read_text().count(f'"event":"{kind}"')


def _tamper(slot: Path, how: str) -> None:
    if how == "untracked":
        (slot / "src" / "pkg1" / "left.txt").write_text("a late holder's file\n")
    elif how == "edited in place":  # same size: only the file's ctime tells
        with open(slot / "README", "r+b") as fh:
            fh.write(b"U")
    elif how == "appended, times put back":  # as ``echo >> file`` then ``touch -r``
        readme = slot / "README"
        before = readme.stat()
        with open(readme, "a") as fh:
            fh.write("appended after release\n")
        os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif how == "branch":
        git(slot, "checkout", "-q", "-b", "late-work")
        commit_file(slot, "late.txt", "committed on a branch after release\n")
    elif how == "hook":
        hook = slot / ".git" / "hooks" / "post-checkout"
        hook.write_text("#!/bin/sh\nexit 0\n")
        hook.chmod(0o755)


@pytest.fixture
def single(cli, upstream) -> str:
    """A pool of one slot: allocate has no other to hand out."""
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    return "web"


@pytest.mark.parametrize("how", ["untracked", "edited in place", "appended, times put back",
                                 "branch", "hook"])
def test_a_free_slot_changed_after_its_cleanup_is_cleaned_before_it_is_handed_out(
        cli, single, root, upstream, how):
    slot = _released(cli)
    tip = git(upstream, "rev-parse", "HEAD")
    assert cli("detect", "web").code == 0  # detect reads the slot: it does not count
    _tamper(slot, how)

    found = cli("detect", "web", "--json")
    assert found.code == 1
    [tampered] = found.json()["tampered_free_slots"]
    assert tampered["slot_id"] == "web-1" and "changed since its cleanup" in tampered["evidence"]

    grant = cli("allocate", "web", "--no-fetch", "--json").json()
    assert grant["path"] == str(slot) and grant["current_commit"] == tip
    assert grant["current_branch"] is None
    assert git(slot, "status", "--porcelain", "--ignored") == ""
    assert git(slot, "for-each-ref", "refs/heads") == ""
    assert not (slot / ".git/hooks/post-checkout").exists()
    saved = cli("rescued", "list", "--json").json()["items"]
    if how != "hook":  # a hook is put back, not work
        [item] = saved
        assert (item["label"], item["lease_id"], item["owner"]) == ("no-holder", None, None)
    released = cli("release", grant["slot_id"], "--lease-id", grant["lease_id"], "--json")
    assert released.json()["rescued"] is None  # nothing filed under the new holder's name


def test_an_untouched_slot_is_handed_out_without_a_cleanup(cli, pool, root):
    assert cli("allocate", "web", "--no-fetch").code == 0  # a fresh slot: sealed at create
    slot = _released(cli)
    cleanups = _events(root, "cleanup")
    assert cli("detect", "web", "--deep").code == 0
    grant = cli("allocate", "web", "--no-fetch", "--json").json()
    assert grant["path"] == str(slot)
    assert _events(root, "cleanup") == cleanups
    assert _events(root, "tampered_free_slot") == 0


def test_another_free_slot_is_handed_out_first(cli, pool, root):
    slot = _released(cli)
    (slot / "late.txt").write_text("written after release\n")
    grant = cli("allocate", "web", "--no-fetch", "--json").json()
    assert grant["path"] != str(slot)
    assert (slot / "late.txt").exists()  # left for auto-recover (or the next allocate)


@pytest.mark.parametrize("how", ["untracked", "edited in place"])
def test_auto_recover_cleans_a_tampered_free_slot(cli, pool, root, how):
    slot = _released(cli)
    _tamper(slot, how)
    [found] = cli("detect", "web", "--json").json()["tampered_free_slots"]
    assert found["slot_id"] == "web-1"
    healed = cli("auto-recover", "web", "--json")
    assert healed.code == 0, healed
    assert healed.json()["tampered_cleaned"] == 1
    assert git(slot, "--no-optional-locks", "status", "--porcelain", "--ignored") == ""
    assert cli("detect", "web").code == 0
    [item] = cli("rescued", "list", "--json").json()["items"]
    assert item["owner"] is None and item["label"] == "no-holder"
    assert os.path.isfile(item["path"])
