"""Regression tests for the defects found when necropool was tried as a new user would
(issue 11): each test names the defect it pins down."""

import json
import time

from helpers import digest, git, run_cli


def create(cli, upstream, *names: str, slots: int = 1) -> None:
    for name in names:
        result = cli("create", name, upstream, "--slots", str(slots))
        assert result.code == 0, result


def test_auto_recover_carries_on_past_an_action_that_raises_os_error(cli, upstream, root):
    """Defect 1: an OSError in one action (here: the stray's aside name is longer than the
    filesystem allows) is recorded in errors, exit 3, and every other action and pool runs."""
    create(cli, upstream, "a", "b")
    (root / "pools" / "a" / ("x" * 240)).mkdir()
    (root / "pools" / "a" / "locks" / "a-9.lock").write_text("")
    (root / "pools" / "b" / "slots" / "junk").mkdir()

    healed = cli("auto-recover", "--json")
    assert healed.code == 3, healed
    data = healed.json()
    [error] = data["errors"]
    assert error.startswith("a: ") and "too long" in error
    assert json.loads(healed.stderr.splitlines()[-1])["exit_code"] == 3
    by_pool = {p["pool"]: p for p in data["pools"]}
    [failed] = [a for a in by_pool["a"]["actions"] if a["status"] == "failed"]
    assert "too long" in failed["error"]
    assert by_pool["a"]["orphaned_locks_cleaned"] == 1
    assert by_pool["b"]["stray_paths_moved"] == 1
    assert not (root / "pools" / "b" / "slots" / "junk").exists()
    assert (root / "pools" / "a" / ("x" * 240)).is_dir(), "nothing was lost"




def test_an_unreachable_upstream_or_an_old_fetch_is_a_stale_mirror(cli, upstream, root):
    """Defect 7: with the upstream gone every allocate warns, and detect, status and the
    metrics say so too; a fetch that works again clears it. A stamp too old or in the future
    is stale as well."""
    create(cli, upstream, "web")
    assert cli("detect").code == 0
    gone = upstream.with_name("gone")
    upstream.rename(gone)
    held = cli("allocate", "web", "--json")
    assert held.code == 0 and held.json()["fetch_error"], held

    found = cli("detect", "--json")
    assert found.code == 1, found
    [stale] = found.json()["stale_mirrors"]
    assert stale["path"] == str(root / "pools/web/mirror.git")
    assert stale["evidence"].startswith("last fetch failed at ")
    status = cli("status", "web", "--json").json()
    assert status["mirror_stale"] == stale["evidence"]
    assert "stale mirror" in cli("status").stderr
    metrics = cli("status", "--format", "prometheus").stdout
    assert 'necropool_mirror_stale{pool="web"} 1' in metrics

    gone.rename(upstream)
    assert cli("release", "web-1").code == 0  # fetches: the upstream answers again
    assert cli("detect").code == 0
    assert cli("status", "web", "--json").json()["mirror_stale"] is None
    assert 'necropool_mirror_stale{pool="web"} 0' in cli("status", "--format",
                                                          "prometheus").stdout

    stamp = root / "pools/web/mirror.fetched"
    for offset, words in ((2 * 86400, "in the future"), (-2 * 86400, "not fetched since")):
        stamp.write_text(f"{time.time() + offset}\n")
        again = cli("detect", "--json")
        assert again.code == 1 and words in again.json()["stale_mirrors"][0]["evidence"], again


def test_list_and_status_follow_one_rule_for_an_unusable_pool(cli, upstream, root):
    """Defect 6: a directory under pools/ without pool.toml is not usable (never "does not
    exist"); list and status both show the readable pools, name it, and exit 3."""
    create(cli, upstream, "web")
    (root / "pools" / "half").mkdir()
    for command in ("list", "status"):
        result = cli(command, "--json")
        assert result.code == 3, result
        entries = {p["pool"]: p for p in result.json()["pools"]}
        assert "counts" in entries["web"]
        assert entries["half"].keys() == {"pool", "error"}
        assert "no pool.toml" in entries["half"]["error"]
        assert "half" in json.loads(result.stderr)["message"]
        plain = cli(command)
        assert plain.code == 3 and "half" in plain.stderr and "web" in plain.stdout, plain
    named = cli("status", "half")
    assert named.code == 3 and "not usable" in named.stderr and "does not exist" not in named.stderr
    assert cli("status", "nosuch").code == 4


def test_a_dry_run_counts_what_it_plans(cli, upstream, root):
    """Defect 8: auto-recover --dry-run printed all-zero counters beside its plan."""
    create(cli, upstream, "web")
    (root / "pools" / "web" / "slots" / "junk").mkdir()
    (root / "pools" / "web" / "locks" / "web-9.lock").write_text("")
    pdir = root / "pools" / "web"
    before = [digest(pdir / part) for part in ("slots", "locks", "rescued")]
    planned = cli("auto-recover", "--dry-run", "--json")
    assert planned.code == 0, planned
    data = planned.json()
    assert data["dry_run"] is True
    assert (data["stray_paths_moved"], data["orphaned_locks_cleaned"]) == (1, 1)
    assert {a["status"] for a in data["pools"][0]["actions"]} == {"planned"}
    plain = cli("auto-recover", "--dry-run")
    assert "planned: " in plain.stderr and "stray_paths_moved=1" in plain.stderr, plain
    assert [digest(pdir / part) for part in ("slots", "locks", "rescued")] == before
    done = cli("auto-recover", "--json").json()
    assert (done["stray_paths_moved"], done["orphaned_locks_cleaned"]) == (1, 1)


def test_a_relative_root_in_the_config_is_relative_to_the_config_file(upstream, tmp_path,
                                                                      monkeypatch):
    """Defect 2: cron (cwd /) and a shell (cwd anywhere) must see the same root."""
    monkeypatch.delenv("NECROPOOL_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.toml").write_text('root = "data"\n')
    env = {"NECROPOOL_CONFIG": str(etc / "config.toml")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_cli("create", "web", upstream, "--slots", "1", env=env, cwd=elsewhere).code == 0
    assert (etc / "data" / "pools" / "web" / "pool.toml").is_file()
    assert not (elsewhere / "data").exists()
    listed = run_cli("list", "--json", env=env, cwd="/")
    assert [p["pool"] for p in listed.json()["pools"]] == ["web"], listed
    assert listed.json()["pools"][0]["path"] == str(etc / "data" / "pools" / "web")


def test_sync_fetches_before_refusing_a_branch(cli, upstream, root, tmp_path):
    """Defect 3: a branch pushed upstream after the pool was made is not yet in the mirror;
    sync fetches, then decides. A branch that is really missing: the error says where."""
    create(cli, upstream, "web")
    git(upstream, "branch", "feature")
    config = tmp_path / "config.toml"
    env = {"NECROPOOL_CONFIG": str(config)}
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 1\nbranch = "feature"\n')
    synced = cli("sync", "--json", env=env)
    assert synced.code == 0, synced
    [entry] = synced.json()["actions"]
    assert entry["action"] == "updated" and entry["changed"] == {"branch": ["main", "feature"]}

    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 1\nbranch = "nope"\n')
    refused = cli("sync", "--json", env=env)
    assert refused.code == 3, refused
    [entry] = refused.json()["actions"]
    assert entry["action"] == "failed"
    assert "'nope'" in entry["error"] and str(upstream) in entry["error"]
    assert str(root / "pools/web/mirror.git") in entry["error"]
    assert cli("status", "web", "--json").json()["branch"] == "feature"


def test_bare_necropool_prints_the_help(cli):
    """Defect 4: bare ``necropool`` printed one line of usage and exited 2."""
    bare = cli()
    assert bare.code == 0 and bare.stderr == "", bare
    assert bare.stdout == cli("--help").stdout
    assert "Commands" in bare.stdout and "auto-recover" in bare.stdout
