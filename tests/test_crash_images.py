"""Power loss, for real: a root on an ext4 filesystem on a loop device; the moment a command
returns, the image file behind the device is copied. The copy holds what reached the
device, not what the mounted filesystem still keeps in memory (a control file written
without fsync just before each copy shows that it is left out), so it is the disk as a
power cut at that instant would leave it. Each copy is checked with ``e2fsck -fy`` and
mounted read-only: a dirty ``release``, a ``reclaim`` by ``auto-recover`` and a ``create``
must each have left their result there (the work in a bundle that ``git bundle verify``
accepts, the state saying so, the new pool whole).

Needs root (loop devices, mount); skipped without it, a failure where CI is set.
"""

import contextlib
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import git, run_cli, skip_unless_ci, slot_entries

pytestmark = pytest.mark.slow

IMAGES = 20  # per kind of command
CONTROL = os.urandom(64 << 10)  # written without fsync before each copy


@dataclass
class Disk:
    image: Path
    device: str
    mount: Path

    @property
    def root(self) -> Path:
        return self.mount / "root"


def _sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=True)


@pytest.fixture
def disk(tmp_path, monkeypatch) -> Iterator[Disk]:
    """A fresh ext4 filesystem on a loop device, mounted, holding NECROPOOL_HOME."""
    tools = ("losetup", "mkfs.ext4", "e2fsck", "mount", "umount")
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        skip_unless_ci(f"crash images need root and {', '.join(tools)} (missing: "
                       f"{', '.join(missing) or 'root'})")
    image, mount = tmp_path / "disk.img", tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(96 << 20)
    _sh("mkfs.ext4", "-q", "-F", str(image))
    device = _sh("losetup", "-f", "--show", str(image)).stdout.strip()
    try:
        _sh("mount", "-t", "ext4", device, str(mount))
        try:
            disk = Disk(image, device, mount)
            monkeypatch.setenv("NECROPOOL_HOME", str(disk.root))
            monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
            monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
            yield disk
        finally:
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


class Images:
    """Copies of the disk taken at once, checked one by one."""

    def __init__(self, disk: Disk, tmp_path: Path):
        self.disk, self.tmp = disk, tmp_path
        self.control_lost = 0
        self.taken = 0

    def take(self) -> Path:
        """Write the control file (no fsync), then copy the device's image file."""
        self.taken += 1
        control = self.disk.mount / f"control-{self.taken}"
        control.write_bytes(CONTROL)
        copy = self.tmp / f"copy-{self.taken}.img"
        _sh("cp", "--sparse=always", str(self.disk.image), str(copy))
        return copy

    @contextlib.contextmanager
    def mounted(self, copy: Path) -> Iterator[Path]:
        """The copy repaired as a boot would (journal replayed, e2fsck -fy), mounted
        read-only; where it would be after a power cut now."""
        fsck = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
        assert fsck.returncode in (0, 1, 2), ("e2fsck could not repair the image",
                                              fsck.stdout[-2000:], fsck.stderr[-2000:])
        where = self.tmp / f"seen-{self.taken}"
        where.mkdir()
        _sh("mount", "-t", "ext4", "-o", "loop,ro", str(copy), str(where))
        try:
            try:
                got = (where / f"control-{self.taken}").read_bytes()
            except FileNotFoundError:
                got = b""
            self.control_lost += got != CONTROL
            yield where
        finally:
            _sh("umount", str(where))
            copy.unlink()

    def check_premise(self) -> None:
        """The copies leave out data that was never flushed: otherwise they prove nothing."""
        assert self.control_lost > 0, (
            f"all {self.taken} copies held a file written without fsync just before them: "
            "they do not show what a power cut loses")


def _inside(path: str, disk: Disk, seen: Path) -> Path:
    return seen / Path(path).relative_to(disk.mount)


def _state(root: Path, pool: str) -> dict[str, dict]:
    """The pool's slots as their state files say, by number (as text, as state.toml had)."""
    return {"slots": {str(n): e for n, e in slot_entries(root / "pools" / pool).items()}}


def _assert_saved(seen: Path, disk: Disk, pool: str, upstream: Path, number: int,
                  bundle: str, what: str) -> None:
    """The image's state says the slot is free, its work saved to ``bundle``, and the bundle
    is there whole: it verifies and holds the holder's uncommitted work."""
    slot = _state(seen / "root", pool)["slots"][str(number)]
    assert slot["state"] == "available" and slot["last_rescue"] == bundle, slot
    copy = _inside(bundle, disk, seen)
    verify = subprocess.run(["git", "bundle", "verify", str(copy)], cwd=upstream,
                            capture_output=True, text=True)
    assert verify.returncode == 0, (f"{what}: the saved work's bundle does not verify",
                                    copy.stat().st_size if copy.exists() else "missing",
                                    verify.stderr)
    assert "refs/necropool/rescue/uncommitted" in git(upstream, "bundle", "list-heads",
                                                      str(copy))


def _dirty(path: Path, i: int) -> None:
    (path / "README").write_text(f"edited by holder {i}\n")
    (path / f"notes-{i}.txt").write_text(f"work of holder {i}\n" * 50)


def _pool(upstream: Path, name: str = "crash", slots: int = 1) -> None:
    result = run_cli("create", name, upstream, "--slots", slots)
    assert result.code == 0, result


def test_dirty_release_survives_a_power_cut(disk, upstream, tmp_path):
    _pool(upstream)
    images = Images(disk, tmp_path)
    for i in range(IMAGES):
        grant = run_cli("allocate", "crash", "--json").json()
        _dirty(Path(grant["path"]), i)
        result = run_cli("release", grant["slot_id"], "--json")
        copy = images.take()
        assert result.code == 0, result
        bundle = result.json()["rescued"]
        with images.mounted(copy) as seen:
            _assert_saved(seen, disk, "crash", upstream, 1, bundle, f"release {i}")
    images.check_premise()


def test_reclaimed_work_survives_a_power_cut(disk, upstream, tmp_path):
    _pool(upstream)
    images = Images(disk, tmp_path)
    for i in range(IMAGES):
        holder = subprocess.Popen(["sleep", "600"])
        grant = run_cli("allocate", "crash", "--pid", holder.pid, "--json").json()
        _dirty(Path(grant["path"]), i)
        holder.kill()
        holder.wait()
        result = run_cli("auto-recover", "--json")
        copy = images.take()
        assert result.code == 0, result
        bundle = _state(disk.root, "crash")["slots"]["1"]["last_rescue"]
        assert f"-{grant['lease_id']}" in bundle, (bundle, result.stdout)
        with images.mounted(copy) as seen:
            _assert_saved(seen, disk, "crash", upstream, 1, bundle, f"reclaim {i}")
    images.check_premise()


def test_created_pool_survives_a_power_cut(disk, upstream, tmp_path):
    tip = git(upstream, "rev-parse", "HEAD")
    images = Images(disk, tmp_path)
    for i in range(IMAGES):
        _pool(upstream, f"new{i}")
        copy = images.take()
        with images.mounted(copy) as seen:
            pool = seen / "root" / "pools" / f"new{i}"
            assert tomllib.loads((pool / "pool.toml").read_text())["name"] == f"new{i}"
            slots = _state(seen / "root", f"new{i}")["slots"]
            assert [s["state"] for s in slots.values()] == ["available"], slots
            assert git(pool / "mirror.git", "rev-parse", "refs/heads/main") == tip
            slot = pool / "slots" / "1"
            assert git(slot, "rev-parse", "HEAD") == tip
            assert git(slot, "--no-optional-locks", "status", "--porcelain") == "", \
                f"create {i}: the new slot's files did not reach the disk"
    images.check_premise()


def test_control_is_what_a_power_cut_keeps(disk, tmp_path):
    """The premise alone, quickly: a file written without fsync is not in the copy, one
    fsynced is."""
    images = Images(disk, tmp_path)
    synced = disk.mount / "synced"
    synced.write_bytes(b"kept\n")
    for path in (synced, disk.mount):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    with images.mounted(images.take()) as seen:
        assert (seen / "synced").read_bytes() == b"kept\n"
    images.check_premise()
