"""``state.toml`` lost (a power cut, a disk error) with its backup missing, empty or older
than the event log: the leases the log shows open are given back to their holders, never
handed out to others."""

import shutil

import pytest

pytestmark = [pytest.mark.toml_only, pytest.mark.slow]  # each recovers a pool: 2-6 s


def _free_slots(cli) -> set[str]:
    """Every slot ``allocate`` hands out now (each kept allocated)."""
    got = set()
    while (result := cli("allocate", "web", "--no-fetch", "--json")).code == 0:
        got.add(result.json()["slot_id"])
    assert result.code == 75, result
    return got


def _slot(cli, slot_id: str) -> dict:
    return cli("status", slot_id, "--json").json()


@pytest.mark.parametrize("backup", ["missing", "empty"])
def test_leases_are_rebuilt_from_the_event_log(cli, pool, root, backup):
    held = cli("allocate", "web", "--no-fetch", "--owner", "alice", "--json").json()
    done = cli("allocate", "web", "--no-fetch", "--json").json()
    assert cli("release", done["slot_id"], "--lease-id", done["lease_id"]).code == 0
    pool_dir = root / "pools/web"
    (pool_dir / "state.toml").unlink()
    if backup == "missing":
        (pool_dir / "state.toml.bak").unlink()
    else:
        (pool_dir / "state.toml.bak").write_bytes(b"")

    slot = _slot(cli, held["slot_id"])
    assert (slot["state"], slot["lease_id"], slot["owner"]) == (
        "allocated", held["lease_id"], "alice"), slot
    assert cli("auto-recover", "web").code == 0  # the other slots are checked and freed
    assert held["slot_id"] not in _free_slots(cli)
    assert _slot(cli, done["slot_id"])["state"] == "allocated"  # released: handed out again
    released = cli("release", held["slot_id"], "--lease-id", held["lease_id"], "--json")
    assert released.code == 0, released  # the holder's own lease still fences in


def test_a_backup_older_than_the_event_log_is_corrected_by_it(cli, pool, root):
    pool_dir = root / "pools/web"
    shutil.copyfile(pool_dir / "state.toml", pool_dir / "old.toml")
    held = cli("allocate", "web", "--no-fetch", "--json").json()
    (pool_dir / "state.toml").unlink()
    (pool_dir / "old.toml").replace(pool_dir / "state.toml.bak")  # a write behind

    slot = _slot(cli, held["slot_id"])
    assert (slot["state"], slot["lease_id"]) == ("allocated", held["lease_id"]), slot
    assert held["slot_id"] not in _free_slots(cli)
    assert cli("release", held["slot_id"], "--lease-id", held["lease_id"]).code == 0
