"""The kernel bounds what slot work can touch: a step of cleanup that tries to write, or
run a program, outside what its confinement allows is refused (EACCES), whatever path a
holder made it take."""

import errno
import os
import subprocess
from pathlib import Path

import pytest
from helpers import git

from necropool.ground import confine
from necropool.slot import cleanup, confined
from necropool.slot.gitdir import write_record

# Where the kernel has no Landlock these are skipped, except with CI set: then they fail.
landlock = pytest.mark.skipif(
    confine.abi_version() == 0 and not os.environ.get("CI"),
    reason="this kernel has no Landlock (with CI set: a failure)")


@pytest.fixture(params=["thread", "fork"])
def mode(request, monkeypatch) -> str:
    """Both ways slot work is confined: a thread of its own (where the kernel scopes
    signals, as here) and the forked child of older kernels."""
    if request.param == "fork":
        monkeypatch.setattr(confine, "threads_confinable", lambda policy: False)
    elif confine.abi_version() < 6:
        pytest.skip("a confined thread needs Landlock ABI 6")
    return str(request.param)


def _slot(manager, pool) -> tuple[Path, object]:
    lease = manager.allocate_slot(pool, fetch=False)
    return Path(lease["path"]), manager.get_pool(pool)


@landlock
def test_a_write_through_a_holders_symlink_out_of_the_slot_is_refused(
        manager, pool, tmp_path, mode):
    slot, _ = _slot(manager, pool)
    outside = tmp_path / "outside"
    outside.mkdir()
    (slot / "build").symlink_to(outside)  # the holder's link, followed by a careless step
    with pytest.raises(PermissionError) as raised:
        confined.run(write_record, slot / "build" / "config", "x\n",
                     write=(slot,))
    assert raised.value.errno == errno.EACCES
    assert list(outside.iterdir()) == []
    # the same write into the slot is allowed: the rule is "beneath the slot", not "nowhere"
    confined.run(write_record, slot / "inside.txt", "x\n", write=(slot,))
    assert (slot / "inside.txt").read_text() == "x\n"


@landlock
def test_the_cleanup_entry_cannot_save_outside_its_directories(manager, pool, tmp_path, mode):
    """The real cleanup, its bundle pointed outside what it may write: git is refused,
    nothing appears outside, and the work stays in the slot's refs (as when a disk is
    full) for the next cleanup to save."""
    slot, p = _slot(manager, pool)
    (slot / "work.txt").write_text("the holder's work\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    p.paths.records.mkdir(exist_ok=True)
    with pytest.raises(Exception) as raised:
        confined.run(cleanup._clean_confined, slot, cleanup.Target(
            mirror=p.paths.mirror, url=p.definition.url, branch=p.definition.branch,
            tip=p.tip(), rescue_to=outside / "stolen.bundle", record=p.paths.slot_record(1)),
            write=(slot,))
    assert "Permission denied" in str(raised.value)
    assert list(outside.iterdir()) == []
    saved = git(slot, "for-each-ref", "--format=%(refname)", "refs/necropool/rescue/")
    assert "refs/necropool/rescue/uncommitted" in saved.split()


@landlock
def test_a_program_the_holder_planted_cannot_be_run(manager, pool, mode):
    """Execution only from the system's directories: a hook or filter the holder wrote
    into its slot does not run even if some step would start it."""
    slot, _ = _slot(manager, pool)
    marker = slot / "ran"
    program = slot / "filter.sh"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    with pytest.raises(PermissionError) as raised:
        confined.run(subprocess.run, [str(program)], write=(slot,))
    assert raised.value.errno == errno.EACCES
    assert not marker.exists()
    assert confined.run(git, slot, "rev-parse", "--is-inside-work-tree",
                        write=(slot,)) == "true"  # system programs run


@landlock
def test_status_and_detect_say_what_confines_slot_work(cli, pool):
    import json

    status = json.loads(cli("status", pool, "--json").stdout)
    detect = json.loads(cli("detect", "--json").stdout)
    assert status["confinement"] == detect["confinement"] == \
        f"landlock ABI {confine.abi_version()}"


def test_without_landlock_slot_work_runs_and_status_says_it_is_unconfined(
        manager, pool, monkeypatch):
    """A kernel without Landlock (its ABI query answers 0): cleanup still runs, in this
    process, and status says the work is not confined."""
    monkeypatch.setattr(confine, "abi_version", lambda: 0)
    lease = manager.allocate_slot(pool, fetch=False)
    (Path(lease["path"]) / "work.txt").write_text("work\n")
    released = manager.release_slot(lease["slot_id"], lease["lease_id"])
    assert released["cleaned"] and released["rescued"]
    assert not (Path(lease["path"]) / "work.txt").exists()
    assert manager.pool_status(pool)["confinement"] == "none (kernel without Landlock)"
