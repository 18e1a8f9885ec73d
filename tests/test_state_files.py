"""The TOML store's files: a file per slot that a lease transaction alone reads and writes,
a pool in the one-file schema 1 converted by its first write, a damaged slot file that costs
only that slot, and a free list that is only ever a hint."""

import os
import shutil
import tomllib
from pathlib import Path

import tomli_w
from helpers import slot_entries, slot_files, state_files

from necropool.ground.clock import now
from necropool.store import freelist
from necropool.store.model import ALLOCATED, AVAILABLE, Lease, Slot


def new_lease(lease_id: str) -> Lease:
    return Lease(lease_id=lease_id, owner="ci", allocated_at=now())


def stamps(pool_dir) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in state_files(pool_dir)}


def test_a_lease_transaction_writes_only_the_slot_it_changes(manager, pool, root):
    store = manager.get_pool(pool).store
    pool_dir = root / "pools" / pool
    before = stamps(pool_dir)
    slot = store.claim(new_lease("mine"), take=lambda s: True)
    store.end_lease(slot.number, "mine")
    after = stamps(pool_dir)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {f"{slot.number}.toml", f"{slot.number}.toml.bak", "free"}
    assert slot_entries(pool_dir)[slot.number]["state"] == "cleaning"


def test_a_schema_1_state_is_read_then_converted_by_the_first_write(manager, pool, root, cli):
    held = manager.allocate_slot(pool, fetch=False)
    pool_dir = root / "pools" / pool
    legacy = {"schema_version": 1,
              "slots": {str(n): entry for n, entry in sorted(slot_entries(pool_dir).items())}}
    shutil.rmtree(pool_dir / "state")  # as an older necropool left the pool
    (pool_dir / "state.toml.bak").unlink()
    for name in ("state.toml", "state.toml.bak"):
        (pool_dir / name).write_text(tomli_w.dumps(legacy))
    old = (pool_dir / "state.toml").read_bytes()

    shown = cli("status", pool, "--json").json()
    assert shown["state_source"] == "state.toml"
    assert [(s["slot_id"], s["state"]) for s in shown["slots"]] == [
        (f"{pool}-{n}", "allocated" if f"{pool}-{n}" == held["slot_id"] else "available")
        for n in (1, 2, 3)]
    assert (pool_dir / "state.toml").read_bytes() == old, "reading converts nothing"
    assert not (pool_dir / "state").exists()

    assert cli("release", held["slot_id"], "--no-fetch").code == 0  # the first write
    stub = tomllib.loads((pool_dir / "state.toml").read_text())
    assert stub == {"schema_version": 2}, "an older necropool finds a newer schema: refuses"
    assert tomllib.loads((pool_dir / "state.toml.bak").read_text()) == stub
    entries = slot_entries(pool_dir)
    assert sorted(entries) == [1, 2, 3]
    assert {e["state"] for e in entries.values()} == {"available"}
    for n, entry in entries.items():  # what the old file held is kept, leases counted
        assert entry["created_at"] == legacy["slots"][str(n)]["created_at"]
    assert sum(e.get("allocation_count", 0) for e in entries.values()) == 1
    assert cli("status", pool, "--json").json()["state_source"] == "state.toml"
    assert len({manager.allocate_slot(pool, fetch=False)["slot_id"] for _ in range(3)}) == 3


def test_a_slot_whose_two_copies_are_lost_is_rebuilt_alone(manager, pool, root, cli):
    held = manager.allocate_slot(pool, fetch=False)
    (Path(held["path"]) / "draft.txt").write_text("work saved nowhere else\n")
    number = int(held["slot_id"].rsplit("-", 1)[1])
    idle, untouched = [n for n in (1, 2, 3) if n != number]
    for n in (number, idle):
        for path in slot_files(root / "pools" / pool, n):
            path.write_bytes(b"\x00 not toml [[[")
    data = cli("status", pool, "--json").json()
    assert data["state_source"] == "rebuilt"
    shown = {s["slot_id"]: s for s in data["slots"]}
    assert shown[f"{pool}-{untouched}"]["state"] == "available", "the others keep theirs"
    assert shown[f"{pool}-{idle}"]["state"] == "error"
    assert "state rebuilt from disk" in shown[f"{pool}-{idle}"]["error"]
    # the held slot's lease comes back from the event log, under its own id
    assert shown[held["slot_id"]]["state"] == "allocated"
    assert shown[held["slot_id"]]["lease_id"] == held["lease_id"]
    assert cli("auto-recover", pool).code == 0
    shown = {s["slot_id"]: s for s in cli("status", pool, "--json").json()["slots"]}
    assert shown[f"{pool}-{idle}"]["state"] == "available"
    assert shown[held["slot_id"]]["state"] == "allocated", "its holder's: never handed out"
    assert (Path(held["path"]) / "draft.txt").read_text() == "work saved nowhere else\n"
    assert cli("release", held["slot_id"], "--lease-id", held["lease_id"]).code == 0


def listed(free) -> list[int]:
    return [int(entry.rsplit(" ", 1)[1]) for entry in free.read_text().splitlines()[1:]]


def test_the_free_list_is_a_hint_the_slot_files_decide(manager, pool, root):
    store = manager.get_pool(pool).store
    free = root / "pools" / pool / "state" / "free"
    first = store.claim(new_lease("a"), take=lambda s: True)
    boot = free.read_text().splitlines()[0]
    # A list that names the leased slot first (a process killed between two writes): the
    # claim reads that slot's file, passes it over and drops it from the list.
    ahead = Slot(number=first.number, state=AVAILABLE, last_released_at=now())
    others = [Slot(number=n, state=AVAILABLE) for n in (1, 2, 3) if n != first.number]
    lines = [freelist.line(s).decode() for s in (ahead, *others)]
    free.write_text("\n".join([boot, *lines, ""]))
    assert listed(free)[0] == first.number
    second = store.claim(new_lease("b"), take=lambda s: True)
    assert second is not None and second.number != first.number
    assert listed(free) == [n for n in (1, 2, 3) if n not in (first.number, second.number)]
    # A list this store did not write is not trusted: rebuilt from the slot files.
    free.write_text(f"{boot}\nnot a line of ours\n")
    third = store.claim(new_lease("c"), take=lambda s: True)
    assert third is not None and third.number not in (first.number, second.number)
    assert store.claim(new_lease("d"), take=lambda s: True) is None
    # Nor is a list from another boot (a power loss may have lost its last write): this
    # one says nothing is free, yet the slot given back is found.
    store.update_slot(third.number, lambda s: setattr(s, "state", AVAILABLE))
    free.write_text("boot 00000000-0000-0000-0000-000000000000\n")
    assert store.claim(new_lease("e"), take=lambda s: True).number == third.number
    states = {n: s.state for n, s in store.snapshot().slots.items()}
    assert states == {1: ALLOCATED, 2: ALLOCATED, 3: ALLOCATED}
    store.update_slot(first.number, lambda s: setattr(s, "state", AVAILABLE))
    assert listed(free) == [first.number]


def test_the_free_list_keeps_allocation_order(manager, pool, root):
    """Clean slots first, the most recently released first, then by number."""
    store = manager.get_pool(pool).store
    for lease_id in ("a", "b", "c"):
        slot = store.claim(new_lease(lease_id), take=lambda s: True)
        store.end_lease(slot.number, lease_id)
    store.update_slot(2, lambda s: setattr(s, "state", AVAILABLE))
    store.update_slot(3, lambda s: (setattr(s, "state", AVAILABLE),
                                    setattr(s, "needs_cleanup", True)))
    store.update_slot(1, lambda s: setattr(s, "state", AVAILABLE))
    free = root / "pools" / pool / "state" / "free"
    assert listed(free) == [2, 1, 3]  # released in the order 1, 2, 3
    store.update_slot(1, lambda s: setattr(s, "last_released_at", now()))
    assert listed(free) == [1, 2, 3]
    assert [store.claim(new_lease(f"l{i}"), take=lambda s: True).number
            for i in range(3)] == [1, 2, 3]


def test_no_temporary_file_is_left_in_the_state_directory(manager, pool, root):
    store = manager.get_pool(pool).store
    for i in range(3):
        slot = store.claim(new_lease(f"l{i}"), take=lambda s: True)
        store.end_lease(slot.number, f"l{i}")
    names = os.listdir(root / "pools" / pool / "state")
    assert sorted(names) == sorted(["free", *(f"{n}.toml{b}" for n in (1, 2, 3)
                                              for b in ("", ".bak"))])
