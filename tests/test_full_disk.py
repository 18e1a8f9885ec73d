"""A pool on a disk that is full, in bytes or in inodes (a size-limited tmpfs mounted at the
root): every storage error says which operation on which file failed, in one line, and a
command that fails for it leaves the pool as it was, or finishes once space is back."""

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import git, run_cli

pytestmark = pytest.mark.toml_only


class Disk:
    """The tmpfs the root lives on, filled up and freed on demand."""

    def __init__(self, top: Path):
        self.top = top
        self.fill = top / "fill"

    def fill_up(self, inodes: bool = False) -> None:
        """Take every free byte (or, with ``inodes``, every free inode)."""
        self.fill.mkdir(exist_ok=True)
        if inodes:
            n = 0
            while True:
                try:
                    (self.fill / str(n)).touch()
                except OSError:
                    return
                n += 1
        fd = os.open(self.fill / "bytes", os.O_WRONLY | os.O_CREAT, 0o600)
        size = 1 << 20
        while size:  # then smaller and smaller pieces, down to the last byte
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
        os.close(fd)

    def spare(self, size: int, inodes: bool = False) -> None:
        """Give ``size`` bytes back (with ``inodes``: ``size`` inodes and 4 KiB pages)."""
        if inodes:
            for name in sorted(os.listdir(self.fill))[:size]:
                (self.fill / name).unlink()
            return
        filler = self.fill / "bytes"
        os.truncate(filler, max(0, filler.stat().st_size - size))

    def free(self) -> None:
        subprocess.run(["rm", "-rf", str(self.fill)], check=True)


@pytest.fixture
def disk(root: Path) -> Iterator[Disk]:
    """The root on a tmpfs of 16 MiB and 4,000 inodes of its own; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=4000,mode=0700",
                           "tmpfs", str(root)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.strip()}")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.fixture
def web(disk: Disk, upstream: Path) -> Disk:
    made = run_cli("create", "web", upstream, "--slots", "2")
    assert made.code == 0, made
    return disk


def _one_line(result) -> str:
    [line] = result.stderr.splitlines()
    return line


def test_a_lock_file_that_cannot_be_made_is_named(web: Disk, root: Path):
    for lock in (root / "pools/web/locks").iterdir():
        lock.unlink()
    before = run_cli("status", "web", "--json").json()["slots"]
    web.fill_up(inodes=True)
    got = run_cli("allocate", "web", "--no-fetch")
    assert got.code == 3, got
    line = _one_line(got)
    assert f"creating lock file {root}/pools/web/" in line and ".lock: " in line, line
    assert line.endswith("No space left on device"), line
    assert run_cli("status", "web", "--json").json()["slots"] == before
    web.free()
    assert run_cli("allocate", "web", "--no-fetch").code == 0


def test_a_metrics_file_that_cannot_be_written_is_named(web: Disk, root: Path):
    web.fill_up()
    target = root / "necropool.prom"
    got = run_cli("status", "--format", "prometheus", "--output", target)
    assert got.code == 3, got
    line = _one_line(got)
    assert f"writing {target}: No space left on device" in line, line
    assert not target.exists() and not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_a_bundle_that_cannot_be_written_names_it_and_the_work_stays(web: Disk, root: Path):
    grant = run_cli("allocate", "web", "--no-fetch", "--json").json()
    slot = Path(grant["path"])
    git(slot, "checkout", "-q", "-b", "work")  # a 3 MiB blob in history alone: a reset
    (slot / "big.bin").write_bytes(os.urandom(3 << 20))  # frees nothing for the bundle
    git(slot, "add", "big.bin")
    git(slot, "commit", "-q", "-m", "big")
    git(slot, "rm", "-q", "big.bin")
    git(slot, "commit", "-q", "-m", "gone again")
    web.fill_up()
    web.spare(256 << 10)
    got = run_cli("release", grant["slot_id"], "--no-fetch", "--json")
    assert got.code == 3, got
    message = json.loads(got.stderr)["message"]
    assert f"could not save the holder's work to {root}/pools/web/rescued/" in message, message
    assert "Out of diskspace" in message or "No space left" in message, message
    web.free()
    healed = run_cli("recover", grant["slot_id"], "--json")
    assert healed.code == 0, healed
    [item] = run_cli("rescued", "list", "--json").json()["items"]
    assert item["size_bytes"] > 3 << 20 and item["lease_id"] == grant["lease_id"]  # whole


@pytest.mark.parametrize("inodes", [True, False], ids=["inodes", "bytes"])
def test_remove_force_on_a_full_disk_finishes_or_rolls_back(web: Disk, root: Path, inodes):
    """``remove --force`` of a slot in use, with the disk full but for 0, 1, 2, ... inodes
    (or 4 KiB pages): saving the holder's work fails for space at some step (the tree is
    then moved aside whole), the state write at another. Whatever failed, the slot is
    either removed with its work saved, or still registered with its directory and work;
    never registered without one. Once there is space the same command finishes."""
    grant = run_cli("allocate", "web", "--no-fetch", "--json").json()
    slot, sid = Path(grant["path"]), grant["slot_id"]
    (slot / "work.txt").write_text("the holder's work\n")
    removed = None
    for spare in range(16):
        web.fill_up(inodes=inodes)
        web.spare(spare if inodes else spare * 4096, inodes=inodes)
        got = run_cli("remove", sid, "--force", "--json")
        web.free()
        registered = sid in {s["slot_id"] for s in
                             run_cli("status", "web", "--json").json()["slots"]}
        if got.code == 0:
            assert not registered and not slot.exists(), (spare, got)
            removed = got.json()["rescued"]
            break
        assert got.code == 3 and registered, (spare, got)
        assert (slot / "work.txt").read_text() == "the holder's work\n", (spare, got)
        assert sorted(os.listdir(slot.parent)) == ["1", "2"], spare  # nothing half made
    if removed is None:
        done = run_cli("remove", sid, "--force", "--json")
        assert done.code == 0, done
        removed = done.json()["rescued"]
    assert not slot.exists()
    assert [s["slot_id"] for s in run_cli("status", "web", "--json").json()["slots"]] == ["web-2"]
    [item] = run_cli("rescued", "list", "--json").json()["items"]
    assert item["path"] == removed


def test_a_clone_that_cannot_be_written_names_where(web: Disk, root: Path, upstream: Path):
    web.fill_up()
    got = run_cli("create", "api", upstream, "--slots", "1")
    assert got.code == 3, got
    line = _one_line(got)
    assert f"(into {root}/" in line and ("No space left" in line or "diskspace" in line), line
    assert [p["pool"] for p in run_cli("list", "--json").json()["pools"]] == ["web"]  # no half
