"""Regression tests for the defects found when necropool was tried as a new user would
(issue 11): each test names the defect it pins down."""

import json


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


