"""``rescued prune`` and ``rescued restore`` SIGKILLed at 20 points, each later than the one
before, as real processes: every item is whole or gone (never half deleted and still
listed), a restore's target is whole or absent, and the rerun finishes with nothing lost
and nothing half made left behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import git

pytestmark = [pytest.mark.slow, pytest.mark.toml_only]

KILLS = 20
FILES = 3000


def _killed_after(argv: list[str], delay: float) -> bool:
    """Run ``necropool ARGV``, SIGKILL it and its children after ``delay`` seconds; True
    when it was still running then."""
    proc = subprocess.Popen([sys.executable, "-m", "necropool", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(delay)
    running = proc.poll() is None
    if running:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return running


def _files(top: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(top))


def _big_tree(path: Path) -> None:
    """An old working copy moved aside (``.broken``), thousands of files to delete."""
    for i in range(FILES):
        (path / f"d{i % 40}").mkdir(parents=True, exist_ok=True)
        (path / f"d{i % 40}" / f"f{i}").write_text(f"{i}\n")


def test_a_killed_prune_leaves_items_whole_or_gone(cli, pool, root):
    grant = cli("allocate", "web", "--no-fetch", "--json").json()
    (Path(grant["path"]) / "work.txt").write_text("recent work: never pruned\n")
    recent = cli("release", grant["slot_id"], "--no-fetch", "--json").json()["rescued"]
    kept = Path(recent).read_bytes()
    rescued = root / "pools/web/rescued"
    old = rescued / "web-2-20200101T000000000000Z.broken"
    prune = ["rescued", "prune", "--older-than", "30d", "--yes"]
    _big_tree(old)
    started = time.monotonic()  # a whole run, timed: the kills are spread across one
    assert subprocess.run([sys.executable, "-m", "necropool", *prune],
                          capture_output=True).returncode == 0
    whole = time.monotonic() - started
    hits = 0
    for n in range(KILLS):
        if not old.exists():
            _big_tree(old)
        hits += _killed_after(prune, whole * (n + 0.5) / KILLS)
        listed = {i["path"] for i in cli("rescued", "list", "--json").json()["items"]}
        assert recent in listed and Path(recent).read_bytes() == kept, n
        if str(old) in listed:
            assert _files(old) == FILES, f"kill {n}: a half-deleted item is listed as saved"
    assert hits >= KILLS // 2  # most kills landed while it worked
    done = cli("rescued", "prune", "--older-than", "30d", "--yes", "--json")
    assert done.code == 0, done
    assert not old.exists()
    assert os.listdir(rescued) == [Path(recent).name]  # the killed runs' trash went too


def test_a_killed_restore_leaves_its_target_whole_or_absent(cli, root, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    git(big, "init", "-q", "-b", "main")
    _big_tree(big)
    git(big, "add", ".")
    git(big, "commit", "-q", "-m", "many files")
    assert cli("create", "web", big, "--slots", "1").code == 0
    grant = cli("allocate", "web", "--no-fetch", "--json").json()
    (Path(grant["path"]) / "work.txt").write_text("the holder's work\n")
    bundle = cli("release", grant["slot_id"], "--json").json()["rescued"]
    place = tmp_path / "restores"
    place.mkdir()
    target = place / "mine"
    hits = 0
    for n in range(KILLS):
        hits += _killed_after(["rescued", "restore", bundle, "--checkout", "--into", target],
                              0.05 + n * 0.05)
        if target.exists():  # whole, or not there at all
            assert git(target, "status", "--porcelain") == "?? work.txt", n
            subprocess.run(["rm", "-rf", str(target)], check=True)
    assert hits >= KILLS // 2
    again = cli("rescued", "restore", bundle, "--checkout", "--into", target, "--json")
    assert again.code == 0, again
    assert (target / "work.txt").read_text() == "the holder's work\n"
    assert git(target, "status", "--porcelain") == "?? work.txt"
    assert os.listdir(place) == ["mine"]  # nothing the killed runs left beside it
