"""Pool administration end to end: create, add, remove, delete, list, status, sync, and the
durable state behind them. Real git repositories in temp dirs; the CLI runs as a process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import commit_file, git, slot_files, state_files

from necropool.ground.config import PoolSpec

# --- helpers ----------------------------------------------------------------------------------

# Every test twice: state in local TOML files, then in a PostgreSQL ledger.
pytestmark = pytest.mark.usefixtures("ledger")


def entries(directory: Path) -> list[str]:
    """Names in a directory (hidden ones too); [] when it does not exist."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def leftovers(root: Path) -> list[str]:
    """Temp or trash entries anywhere under the root's pools directory."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root / "pools"):
        dirnames[:] = [d for d in dirnames if d != "mirror.git" and d != ".git"]
        for name in dirnames + filenames:
            if name.startswith((".tmp-", ".trash-")):
                found.append(os.path.join(dirpath, name))
    return found


def status_json(cli, *args) -> dict:
    result = cli("status", *args, "--json")
    assert result.code == 0, result
    return result.json()


def slot_ids(cli, pool: str) -> list[str]:
    return [s["slot_id"] for s in status_json(cli, pool)["slots"]]


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- create -----------------------------------------------------------------------------------


def test_create_makes_independent_slots_detached_at_tip(cli, upstream, root):
    tip = git(upstream, "rev-parse", "HEAD")
    result = cli("create", "web", upstream, "--slots", "2", "--json")
    assert result.code == 0, result
    data = result.json()
    assert data["pool"] == "web" and data["branch"] == "main" and data["num_slots"] == 2
    assert data["counts"]["available"] == 2
    assert data["mirror_commit"] == tip
    mirror_packs = {os.stat(p).st_ino for p in (root / "pools/web/mirror.git/objects/pack")
                    .glob("*.pack")}
    paths = [Path(s["path"]) for s in data["slots"]]
    assert paths == [root / "pools/web/slots/1", root / "pools/web/slots/2"]
    for path in paths:
        assert (path / ".git").is_dir()  # its own repository, not a worktree's .git file
        assert git(path, "rev-parse", "--show-toplevel") == str(path)
        assert git(path, "rev-parse", "HEAD") == tip
        assert git(path, "symbolic-ref", "-q", "HEAD", check=False) == ""  # detached
        assert git(path, "remote", "get-url", "origin") == str(upstream)
        assert git(path, "status", "--porcelain") == ""
        assert (path / "src/pkg3/mod19.py").read_text() == "value = 19\n"
        packs = list((path / ".git/objects/pack").glob("*.pack"))
        assert packs, "the slot has no pack file"
        for pack in packs:
            st = os.stat(pack)
            assert st.st_nlink > 1 or st.st_ino in mirror_packs  # hard-linked, not copied
    # One slot's HEAD moving does not touch its sibling (own HEAD, index, refs).
    new = commit_file(paths[0], "only-in-one.txt", "x\n")
    assert git(paths[1], "rev-parse", "HEAD") == tip
    assert subprocess.run(["git", "-C", str(paths[1]), "cat-file", "-e", new],
                          capture_output=True).returncode != 0


def _git_version() -> tuple[int, ...]:
    out = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    return tuple(int(p) for p in out.split()[2].split(".")[:2])


@pytest.mark.skipif(_git_version() < (2, 45), reason="reftable needs git 2.45 or newer")
def test_a_git_that_defaults_to_reftable_still_makes_pools_with_ref_files(cli, upstream,
                                                                           tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[init]\n\tdefaultRefFormat = reftable\n")
    env = {"HOME": str(home), "GIT_DEFAULT_REF_FORMAT": "reftable"}
    assert cli("create", "rt", str(upstream), "--slots", "1", env=env).code == 0
    slot = Path(cli("allocate", "rt", "--no-fetch", env=env).stdout.strip())
    for gitdir in (slot.parent.parent / "mirror.git", slot / ".git"):
        config = (gitdir / "config").read_text().lower()
        assert "reftable" not in config and not (gitdir / "reftable").exists()
    tip = git(upstream, "rev-parse", "HEAD")
    assert cli("status", "rt-1", "--json", env=env).json()["current_commit"] == tip


def test_slot_keeps_working_when_the_mirror_is_gone(cli, upstream, root):
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    slot = root / "pools/web/slots/1"
    shutil.rmtree(root / "pools/web/mirror.git")
    fsck = subprocess.run(["git", "-C", str(slot), "fsck", "--no-dangling"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert git(slot, "log", "-1", "--format=%s") == "initial"


def test_create_with_a_relative_path_records_it_absolute(cli, upstream, tmp_path):
    result = cli("create", "web", "upstream", "--slots", "1", "--json", cwd=tmp_path)
    assert result.code == 0, result
    assert result.json()["url"] == str(upstream)
    slot = Path(result.json()["slots"][0]["path"])
    assert git(slot, "remote", "get-url", "origin") == str(upstream)


def test_create_defaults_to_upstream_head_and_honours_branch(cli, upstream):
    main_tip = git(upstream, "rev-parse", "HEAD")
    git(upstream, "checkout", "-q", "-b", "release")
    release_tip = commit_file(upstream, "RELEASE", "1.0\n")
    git(upstream, "checkout", "-q", "main")

    default = cli("create", "web", upstream, "--slots", "1", "--json")
    assert default.code == 0, default
    assert default.json()["branch"] == "main"
    assert git(default.json()["slots"][0]["path"], "rev-parse", "HEAD") == main_tip

    chosen = cli("create", "rel", upstream, "--slots", "2", "--branch", "release", "--json")
    assert chosen.code == 0, chosen
    data = chosen.json()
    assert data["branch"] == "release"
    for slot in data["slots"]:
        assert git(slot["path"], "rev-parse", "HEAD") == release_tip
        assert git(slot["path"], "symbolic-ref", "-q", "HEAD", check=False) == ""
        assert Path(slot["path"], "RELEASE").read_text() == "1.0\n"
    assert status_json(cli, "rel")["branch"] == "release"


def test_create_follows_a_non_main_default_branch(cli, tmp_path):
    repo = tmp_path / "trunky"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "trunk")
    tip = commit_file(repo, "file", "x\n")
    result = cli("create", "t", repo, "--slots", "1", "--json")
    assert result.code == 0, result
    assert result.json()["branch"] == "trunk"
    assert result.json()["slots"][0]["current_commit"] == tip


def test_create_with_unknown_branch_fails_and_leaves_nothing(cli, upstream, root):
    result = cli("create", "web", upstream, "--branch", "nosuch")
    assert result.code == 3, result
    assert "nosuch" in result.stderr
    assert entries(root / "pools") == []
    assert cli("create", "web", upstream, "--slots", "1").code == 0


def test_create_refuses_an_invalid_branch_name(cli, upstream, root):
    result = cli("create", "web", upstream, "--branch", "a..b")
    assert result.code == 2, result
    assert entries(root / "pools") == []


def test_create_existing_pool_is_a_conflict_and_keeps_the_pool(cli, pool, upstream, root):
    before = status_json(cli, "web")
    result = cli("create", "web", upstream, "--slots", "1")
    assert result.code == 5, result
    assert "exists" in result.stderr
    after = status_json(cli, "web")
    assert [s["slot_id"] for s in after["slots"]] == ["web-1", "web-2", "web-3"]
    assert after["slots"] == before["slots"]
    assert leftovers(root) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "", "a" * 64, "Web", ".hidden", "-x"])
def test_create_refuses_bad_pool_names(cli, upstream, root, tmp_path, name):
    result = cli("create", "--slots", "1", "--", name, upstream)
    assert result.code == 2, result
    assert "invalid pool name" in result.stderr
    assert entries(root / "pools") == []
    assert not (root / "x").exists() and not (tmp_path / "x").exists()


def test_create_accepts_the_longest_valid_name(cli, upstream):
    name = "a" * 62 + "9"
    result = cli("create", name, upstream, "--slots", "1", "--json")
    assert result.code == 0, result
    assert result.json()["slots"][0]["slot_id"] == f"{name}-1"


@pytest.mark.parametrize("url", ["", "-uhoh", "--upload-pack=touch pwned",
                                 "ext::sh -c touch% pwned", "ext::sh"])
def test_create_refuses_dangerous_or_empty_urls(cli, root, tmp_path, url):
    # ``create web -- URL``: the URL must reach validation, not be taken as an option.
    result = cli("create", "web", "--", url, cwd=tmp_path)
    assert result.code == 2, result
    assert "URL" in result.stderr
    assert not (tmp_path / "pwned").exists()
    assert entries(root / "pools") == []


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_failed_clone_exits_3_and_leaves_nothing(cli, upstream, root, tmp_path, scheme):
    missing = tmp_path / "nowhere"
    result = cli("create", "web", f"{scheme}{missing}", "--slots", "2")
    assert result.code == 3, result
    assert str(missing) in result.stderr  # the user is told what could not be cloned
    assert "Traceback" not in result.stderr
    assert entries(root / "pools") == []
    again = cli("create", "web", upstream, "--slots", "2", "--json")
    assert again.code == 0, again
    assert len(again.json()["slots"]) == 2
    assert entries(root / "pools") == ["web"]
    assert leftovers(root) == []


def test_missing_local_repository_fails_at_once(cli, root, tmp_path):
    """A path that does not exist is not a network hiccup: no retries with backoff, even
    when the path happens to contain words like 'ssl' or '502'."""
    missing = tmp_path / "openssl-502-timed out"
    started = time.monotonic()
    result = cli("create", "web", missing)
    elapsed = time.monotonic() - started
    assert result.code == 3, result
    assert elapsed < 2.5, f"took {elapsed:.1f}s: a permanent failure was retried"


def test_leftovers_of_a_crashed_create_are_swept(cli, upstream, root):
    """A create killed mid-way leaves a temp dir named after its (now dead) process; the
    next create removes it, and it never shows up as a pool."""
    (root / "pools").mkdir(parents=True)
    code = ("import os, sys; from necropool.ground.layout import temp_name; "
            "d = os.path.join(sys.argv[1], temp_name('web')); "
            "os.makedirs(os.path.join(d, 'mirror.git')); print(d)")
    left = subprocess.run([sys.executable, "-c", code, str(root / "pools")],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert Path(left).is_dir()
    listed = cli("list", "--json")
    assert listed.code == 4 and listed.stdout == ""  # not a pool: the root holds none
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    assert entries(root / "pools") == ["web"]


@pytest.mark.parametrize("command", ["create", "add"])
def test_an_interrupt_mid_clone_leaves_only_whole_slots(cli, root, tmp_path, command):
    """Ctrl-C while slots are being cloned (several at once): exit 130 with one line, no
    clone left running or half-made, nothing half-registered; a retry then succeeds."""
    big = tmp_path / "big"
    big.mkdir()
    git(big, "init", "-q", "-b", "main")
    for i in range(3000):
        (big / f"d{i % 30}").mkdir(exist_ok=True)
        (big / f"d{i % 30}" / f"f{i}.txt").write_text(f"{i}\n" * 20)
    git(big, "add", ".")
    git(big, "commit", "-q", "-m", "many files")
    if command == "add":
        assert cli("create", "web", big, "--slots", "1").code == 0
    args = ["create", "web", big, "--slots", "8"] if command == "create" else [
        "add", "web", "--count", "8"]
    proc = subprocess.Popen([sys.executable, "-m", "necropool", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((root / "pools").glob("**/.tmp-*/.git" if command == "add" else
                                         ".tmp-web*/slots/*/.git")):
        assert time.monotonic() < deadline and proc.poll() is None, "no clone started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["necropool: error: interrupted"]
    assert leftovers(root) == []
    if command == "create":
        assert entries(root / "pools") == []
    else:  # slots finished before the interrupt stay, each complete and registered
        ids = slot_ids(cli, "web")
        assert entries(root / "pools/web/slots") == sorted(i.split("-")[1] for i in ids)
        for slot in ids:
            assert git(root / "pools/web/slots" / slot.split("-")[1], "status",
                       "--porcelain") == ""
    assert cli(*args[:-1], "2").code == 0


# --- add --------------------------------------------------------------------------------------


def test_add_count_clones_more_slots(cli, pool, upstream, root):
    result = cli("add", "web", "--count", "2")
    assert result.code == 0, result
    assert result.stdout.split() == ["web-4", "web-5"]
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    tip = git(upstream, "rev-parse", "HEAD")
    for n in (4, 5):
        path = root / f"pools/web/slots/{n}"
        assert git(path, "rev-parse", "HEAD") == tip
        assert git(path, "remote", "get-url", "origin") == str(upstream)
        assert git(path, "status", "--porcelain") == ""
    default = cli("add", "web", "--json")
    assert default.code == 0, default
    assert default.json()["added"] == ["web-6"]
    assert leftovers(root) == []


def test_add_reuses_the_lowest_free_number(cli, pool):
    assert cli("remove", "web-2").code == 0
    result = cli("add", "web", "--json")
    assert result.json()["added"] == ["web-2"]
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]


def test_add_errors(cli, pool):
    assert cli("add", "nosuch").code == 4
    assert cli("add", "web", "--count", "0").code == 2
    assert cli("add", "Web").code == 2
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]


# --- remove -----------------------------------------------------------------------------------


def test_remove_by_id_and_by_path(cli, pool, root):
    assert cli("remove", "web-2").code == 0
    assert not (root / "pools/web/slots/2").exists()
    result = cli("remove", root / "pools/web/slots/3", "--json")
    assert result.code == 0, result
    assert result.json()["slot_id"] == "web-3"
    assert not (root / "pools/web/slots/3").exists()
    assert slot_ids(cli, "web") == ["web-1"]
    assert entries(root / "pools/web/slots") == ["1"]
    assert leftovers(root) == []


def test_remove_allocated_slot_needs_force(cli, pool, manager, root):
    slot = manager.allocate_slot("web", fetch=False)
    assert slot["slot_id"] == "web-1"
    refused = cli("remove", "web-1")
    assert refused.code == 5, refused
    assert "--force" in refused.stderr
    assert (root / "pools/web/slots/1/.git").is_dir()
    kept = status_json(cli, "web-1")
    assert kept["state"] == "allocated" and kept["lease_id"] == slot["lease_id"]
    forced = cli("remove", "web-1", "--force")
    assert forced.code == 0, forced
    assert not (root / "pools/web/slots/1").exists()
    assert slot_ids(cli, "web") == ["web-2", "web-3"]


def test_remove_errors(cli, pool, root):
    assert cli("remove", "web-9").code == 4
    assert cli("remove", "nosuch-1").code == 4
    assert cli("remove", "web").code == 2
    assert cli("remove", "web-0").code == 2
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]


# --- delete -----------------------------------------------------------------------------------


def test_delete_leaves_nothing_and_the_name_is_free_again(cli, pool, upstream, root):
    result = cli("delete", "web", "--json")
    assert result.code == 0, result
    assert result.json()["deleted"] is True
    assert entries(root / "pools") == []
    assert cli("status", "web").code == 4
    assert cli("list", "--json").code == 4  # no pool left under the root
    assert cli("create", "web", upstream, "--slots", "1").code == 0


def test_delete_refuses_slots_in_use_unless_forced(cli, pool, manager, root):
    manager.allocate_slot("web", fetch=False)
    refused = cli("delete", "web")
    assert refused.code == 5, refused
    assert "web-1" in refused.stderr
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]
    assert (root / "pools/web/slots/1/.git").is_dir()
    forced = cli("delete", "web", "--force")
    assert forced.code == 0, forced
    assert entries(root / "pools") == []


def test_delete_errors_touch_nothing(cli, pool, root):
    outside = root / "x"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    assert cli("delete", "nosuch").code == 4
    assert cli("delete", "../x", "--force").code == 2
    assert cli("delete", "a/b").code == 2
    assert (outside / "keep").read_text() == "precious"
    assert entries(root / "pools") == ["web"]


def test_delete_never_follows_a_symlinked_pool(cli, pool, root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "slots/1").mkdir(parents=True)
    (outside / "pool.toml").write_text((root / "pools/web/pool.toml").read_text())
    (outside / "slots/1/precious").write_text("keep me")
    (root / "pools/evil").symlink_to(outside)
    result = cli("delete", "evil", "--force")
    assert result.code != 0, result
    assert (outside / "slots/1/precious").read_text() == "keep me"
    assert (root / "pools/evil").is_symlink()


def test_slot_ids_of_a_hyphenated_pool(cli, manager, upstream, root):
    manager.create_pool(PoolSpec(name="my-app.v2", url=str(upstream), num_slots=2))
    assert status_json(cli, "my-app.v2-2")["path"] == str(root / "pools/my-app.v2/slots/2")
    assert cli("remove", "my-app.v2-1").code == 0
    assert slot_ids(cli, "my-app.v2") == ["my-app.v2-2"]


# --- list and status --------------------------------------------------------------------------


def test_list_reports_every_pool_with_counts(cli, pool, manager, upstream):
    manager.create_pool(PoolSpec(name="api", url=str(upstream), num_slots=1))
    manager.allocate_slot("web", fetch=False)
    data = cli("list", "--json").json()
    by_name = {p["pool"]: p for p in data["pools"]}
    assert sorted(by_name) == ["api", "web"]
    assert by_name["web"]["num_slots"] == 3
    assert by_name["web"]["counts"] == {"available": 2, "allocated": 1, "cleaning": 0,
                                        "error": 0}
    assert by_name["api"]["counts"]["available"] == 1
    assert by_name["web"]["url"] == str(upstream)


def test_status_of_all_of_a_pool_of_a_slot_and_of_a_path(cli, pool, manager, upstream, root):
    manager.create_pool(PoolSpec(name="api", url=str(upstream), num_slots=1))
    everything = status_json(cli)
    assert [p["pool"] for p in everything["pools"]] == ["api", "web"]
    assert [s["slot_id"] for p in everything["pools"] for s in p["slots"]] == \
        ["api-1", "web-1", "web-2", "web-3"]

    one = status_json(cli, "web")
    assert one["pool"] == "web" and len(one["slots"]) == 3

    slot = status_json(cli, "web-2")
    assert slot["slot_id"] == "web-2" and slot["pool"] == "web"
    assert slot["path"] == str(root / "pools/web/slots/2")
    assert slot["state"] == "available"
    assert slot["current_commit"] == git(upstream, "rev-parse", "HEAD")

    assert status_json(cli, root / "pools/web/slots/3")["slot_id"] == "web-3"
    inside = root / "pools/web/slots/3/src/pkg1"
    assert status_json(cli, inside)["slot_id"] == "web-3"
    here = cli("status", ".", "--json", cwd=root / "pools/web/slots/1")
    assert here.code == 0, here
    assert here.json()["slot_id"] == "web-1"


def test_status_of_unknown_things(cli, pool, root, tmp_path):
    assert cli("status", "nosuch").code == 4
    assert cli("status", "web-9").code == 4
    assert cli("status", "nosuch-1").code == 4
    assert cli("status", root / "pools/web/slots/9").code == 4
    assert cli("status", tmp_path / "does-not-exist").code == 2  # can never be a slot
    assert cli("status", tmp_path).code == 2  # a real path, but not in any slot


def test_status_and_list_with_no_pools(cli, root):
    """Not an empty answer: an error naming the root (a typo, or cron without the root)."""
    for args in (["list", "--json"], ["status", "--json"], ["list"], ["status"]):
        result = cli(*args)
        assert result.code == 4 and result.stdout == "", (args, result)
        assert str(root) in result.stderr


# --- sync -------------------------------------------------------------------------------------


def test_sync_creates_grows_and_only_prunes_when_asked(cli, upstream, root, tmp_path, manager):
    config = tmp_path / "necropool.toml"

    def declare(**pools):
        text = "".join(f'[pools.{name}]\nurl = "{upstream}"\nnum_slots = {n}\n'
                       f'branch = "main"\n' for name, n in pools.items())
        write_config(config, text)

    def sync(*flags):
        result = cli("--config", config, "sync", *flags, "--json")
        assert result.code == 0, result
        return {a["pool"]: a for a in result.json()["actions"]}

    declare(web=2, api=1)
    actions = sync()
    assert actions["web"]["action"] == "created" and actions["api"]["action"] == "created"
    assert slot_ids(cli, "web") == ["web-1", "web-2"]
    assert slot_ids(cli, "api") == ["api-1"]

    declare(web=3, api=1)
    actions = sync()
    assert actions["web"] == {"pool": "web", "action": "grown", "added": ["web-3"]}
    assert actions["api"]["action"] == "unchanged"
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]

    declare(web=1)  # fewer slots, and api no longer declared: nothing shrinks without --prune
    sync()
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]
    assert slot_ids(cli, "api") == ["api-1"]

    manager.allocate_slot("web", fetch=False)
    manager.allocate_slot("web", fetch=False)
    actions = sync("--prune")
    assert actions["web"]["action"] == "shrunk"
    assert actions["web"]["removed"] == ["web-3"]  # slots in use are never pruned
    assert actions["api"]["action"] == "deleted"
    assert slot_ids(cli, "web") == ["web-1", "web-2"]
    assert entries(root / "pools") == ["web"]
    assert not (root / "pools/web/slots/3").exists()


def test_sync_prune_does_not_delete_a_pool_in_use(cli, manager, upstream, tmp_path):
    """The refused delete is reported in its pool's entry (exit 3) and does not hide what
    was done to the other pools."""
    config = write_config(tmp_path / "c.toml", f'[pools.web]\nurl = "{upstream}"\nnum_slots = 3\n')
    assert cli("--config", config, "sync").code == 0  # web made by sync: prune may delete it
    config = write_config(tmp_path / "c.toml", f'[pools.api]\nurl = "{upstream}"\nnum_slots = 1\n')
    manager.allocate_slot("web", fetch=False)
    result = cli("--config", config, "sync", "--prune", "--json")
    assert result.code == 3, result
    api, web = result.json()["actions"]
    assert api == {"pool": "api", "action": "created", "slots": 1}
    assert web["pool"] == "web" and web["action"] == "failed" and "in use" in web["error"]
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]
    assert slot_ids(cli, "api") == ["api-1"]
    plain = cli("--config", config, "sync", "--prune")
    assert plain.code == 3, plain
    assert plain.stdout.splitlines()[0] == "api\tunchanged\t1"
    assert plain.stdout.splitlines()[1].startswith("web\tfailed\tpool 'web' has slots in use")


def test_sync_goes_on_after_a_failed_clone(cli, upstream, root, tmp_path):
    missing = tmp_path / "nowhere"
    config = write_config(tmp_path / "c.toml",
                          f'[pools.bad]\nurl = "{missing}"\nnum_slots = 1\n'
                          f'[pools.web]\nurl = "{upstream}"\nnum_slots = 1\n')
    result = cli("--config", config, "sync", "--json")
    assert result.code == 3, result
    bad, web = result.json()["actions"]
    assert bad["action"] == "failed" and str(missing) in bad["error"]
    assert json.loads(result.stderr)["message"].startswith("sync: bad: ")
    assert web == {"pool": "web", "action": "created", "slots": 1}
    assert entries(root / "pools") == ["web"]
    assert leftovers(root) == []


def test_sync_converges_the_settings_its_tables_declare(cli, manager, upstream, root, tmp_path):
    git(upstream, "checkout", "-q", "-b", "release")
    release_tip = commit_file(upstream, "RELEASE", "1\n")
    git(upstream, "checkout", "-q", "main")
    manager.create_pool(PoolSpec(name="web", url=str(upstream), num_slots=1, keep_ignored=True))
    config = tmp_path / "c.toml"

    def sync(table: str, code: int = 0) -> dict:
        write_config(config, f'[pools.web]\nurl = "{upstream}"\n{table}')
        result = cli("--config", config, "sync", "--json")
        assert result.code == code, result
        [action] = result.json()["actions"]
        return action

    # keep_ignored is not in the table: it stays as create set it, not reset to the default
    assert sync('num_slots = 2\nbranch = "release"\nfetch_on_allocate = false\n') == {
        "pool": "web", "action": "grown", "added": ["web-2"],
        "changed": {"branch": ["main", "release"], "fetch_on_allocate": [True, False]}}
    web = status_json(cli, "web")
    assert (web["branch"], web["keep_ignored"], web["fetch_on_allocate"]) == ("release", True,
                                                                              False)
    assert web["mirror_commit"] == release_tip
    assert (root / "pools/web/pool.toml").read_text().count('branch = "release"') == 1
    assert [s["current_commit"] for s in web["slots"]][1] == release_tip  # added on the new branch
    # The slot already at the tip is handed out first; the old one is moved up before it is.
    held = [manager.allocate_slot("web") for _ in range(2)]
    assert [h["current_commit"] for h in held] == [release_tip, release_tip]
    for each in held:
        manager.release_slot(each["slot_id"], each["lease_id"])
    assert {s["current_commit"] for s in status_json(cli, "web")["slots"]} == {release_tip}

    assert sync('num_slots = 2\nkeep_ignored = false\nfetch_backend = "git"\n') == {
        "pool": "web", "action": "updated", "slots": 2, "changed": {"keep_ignored": [True, False]}}
    assert sync('num_slots = 2\nkeep_ignored = false\n') == {
        "pool": "web", "action": "unchanged", "slots": 2}
    assert [e["changed"] for e in manager.log("web") if e["event"] == "update"] == [
        {"branch": ["main", "release"], "fetch_on_allocate": [True, False]},
        {"keep_ignored": [True, False]}]
    write_config(config, f'[pools.web]\nurl = "{upstream}"\nnum_slots = 2\nkeep_ignored = true\n')
    plain = cli("--config", config, "sync")
    assert plain.stdout.splitlines() == ["web\tupdated\t2; keep_ignored false -> true"]


def test_sync_never_applies_a_new_url_or_a_missing_branch(cli, pool, manager, upstream, root,
                                                         tmp_path):
    manager.create_pool(PoolSpec(name="api", url=str(upstream), num_slots=1))
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    commit_file(other, "README", "other\n")
    definitions = {p: (root / "pools" / p / "pool.toml").read_bytes() for p in ("web", "api")}
    config = write_config(tmp_path / "c.toml",
                          f'[pools.web]\nurl = "{other}"\nkeep_ignored = true\n'
                          f'[pools.api]\nurl = "{upstream}"\nbranch = "nope"\n'
                          f'[pools.new]\nurl = "{upstream}"\nnum_slots = 1\n')
    result = cli("--config", config, "sync", "--json")
    assert result.code == 3, result
    web, api, new = result.json()["actions"]
    assert web["action"] == "failed" and "delete and re-create" in web["error"]
    assert api["action"] == "failed" and "'nope'" in api["error"]
    assert new == {"pool": "new", "action": "created", "slots": 1}
    assert {p: (root / "pools" / p / "pool.toml").read_bytes() for p in definitions} == definitions


def test_sync_plain_output_is_one_line_per_pool(cli, upstream, tmp_path):
    config = write_config(tmp_path / "c.toml", f'[pools.web]\nurl = "{upstream}"\nnum_slots = 1\n')
    result = cli("--config", config, "sync")
    assert result.code == 0, result
    assert result.stdout.splitlines() == ["web\tcreated\t1"]
    again = cli("--config", config, "sync")
    assert again.stdout.splitlines() == ["web\tunchanged\t1"]


def test_sync_without_a_config_file_is_a_usage_error(cli, pool, root):
    """No config file means nothing was declared: ``sync --prune`` must not read that as
    'delete every pool'."""
    result = cli("sync", "--prune")
    assert result.code == 2, result
    assert "config" in result.stderr
    assert slot_ids(cli, "web") == ["web-1", "web-2", "web-3"]


# --- durable state ----------------------------------------------------------------------------


@pytest.mark.toml_only
def test_garbage_state_falls_back_to_the_backup(cli, pool, manager, root):
    manager.allocate_slot("web", fetch=False)
    state = slot_files(root / "pools/web", 1)[0]
    state.write_text("this is [not toml\x00")
    data = status_json(cli, "web")
    assert data["state_source"] == "state.toml.bak"
    assert [(s["slot_id"], s["state"]) for s in data["slots"]] == [
        ("web-1", "allocated"), ("web-2", "available"), ("web-3", "available")]
    assert cli("list", "--json").json()["pools"][0]["counts"]["allocated"] == 1
    # The next write puts a good main copy back.
    assert cli("add", "web").code == 0
    assert status_json(cli, "web")["state_source"] == "state.toml"
    assert "schema_version" in state.read_text()


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing"])
@pytest.mark.toml_only
def test_both_state_copies_lost_rebuilds_from_slot_dirs(cli, pool, root, damage):
    if damage == "missing":
        shutil.rmtree(root / "pools/web/state")
    for path in state_files(root / "pools/web"):
        if damage == "garbage":
            path.write_bytes(b"\xff\xfe garbage = = =")
        elif damage == "empty":
            path.write_bytes(b"")
        else:
            path.unlink()
    data = status_json(cli, "web")
    assert data["state_source"] == "rebuilt"
    assert [(s["slot_id"], s["state"]) for s in data["slots"]] == [
        ("web-1", "error"), ("web-2", "error"), ("web-3", "error")]
    assert all(s["error"] for s in data["slots"])
    for n in (1, 2, 3):  # nothing on disk was destroyed by the rebuild
        assert (root / f"pools/web/slots/{n}/.git").is_dir()
    assert status_json(cli)["pools"][0]["num_slots"] == 3
    listed = cli("list", "--json").json()["pools"][0]
    assert listed["counts"]["error"] == 3
    assert status_json(cli, "web-2")["state"] == "error"


@pytest.mark.toml_only
def test_an_unreadable_slot_entry_is_shown_not_hidden(cli, pool, root):
    for path in slot_files(root / "pools/web", 1):
        path.write_text(path.read_text().replace('state = "available"', 'state = "bogus"', 1))
    data = status_json(cli, "web")
    assert [s["slot_id"] for s in data["slots"]] == ["web-1", "web-2", "web-3"]
    assert data["slots"][0]["state"] == "error"
    assert "bogus" in data["slots"][0]["error"]
    assert [s["state"] for s in data["slots"][1:]] == ["available", "available"]


@pytest.mark.toml_only
def test_future_schema_version_is_refused_and_left_untouched(cli, pool, root):
    state = root / "pools/web/state.toml"
    future = ('schema_version = 3\n\n[slots.1]\nstate = "available"\nshiny = "new"\n\n'
              '[slots.2]\nstate = "teleporting"\n')
    state.write_text(future)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in state_files(root / "pools/web")}
    for args in (["status", "web"], ["status", "web-1"], ["add", "web"], ["remove", "web-2"],
                 ["allocate", "web", "--no-fetch"]):
        result = cli(*args)
        assert result.code == 3, (args, result)
        assert "schema_version 3" in result.stderr and "newer" in result.stderr, result
        assert len(result.stderr.splitlines()) == 1
    assert state.read_text() == future
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in state_files(root / "pools/web")} == before
    assert entries(root / "pools/web/slots") == ["1", "2", "3"]
    listed = cli("list", "--json")
    assert listed.code == 3, listed  # as status: shown with its error, and a failure
    assert "schema_version 3" in listed.json()["pools"][0]["error"]


@pytest.mark.toml_only
def test_one_unreadable_pool_does_not_hide_the_others(cli, pool, manager, upstream, root):
    manager.create_pool(PoolSpec(name="api", url=str(upstream), num_slots=1))
    (root / "pools/web/state.toml").write_text("schema_version = 9\n")
    result = cli("status", "--json")
    assert result.code == 3, result
    shown = {p["pool"]: p for p in result.json()["pools"]}
    assert [s["slot_id"] for s in shown["api"]["slots"]] == ["api-1"]
    assert "schema_version 9" in shown["web"]["error"]
    error = json.loads(result.stderr)
    assert error["exit_code"] == 3 and "web" in error["message"]

    plain = cli("status")
    assert plain.code == 3
    assert [line.split("\t")[0] for line in plain.stdout.splitlines()] == ["api-1"]
    assert len(plain.stderr.splitlines()) == 1 and "web" in plain.stderr
