"""Releases at the edges of what a holder can leave: an orphan branch, an unborn HEAD, 100,000
refs, paths longer than PATH_MAX, a submodule with a config of its own, an ignored link out
of the slot. Each release finishes (exit 0), the work is in the bundle, the slot is fresh."""

import os
from pathlib import Path

import pytest
from helpers import changes, commit_file, digest, git
from slots import assert_fresh_clone_equivalent, restore, show

from necropool.ground.config import PoolSpec

ALLOW_FILE = ("-c", "protocol.file.allow=always")


@pytest.fixture
def slot(cli, pool) -> Path:
    result = cli("allocate", "web", "--no-fetch")
    assert result.code == 0, result
    return Path(result.stdout.strip())


def release(cli, slot: Path, timeout: float = 120) -> dict:
    result = cli("release", slot, "--json", timeout=timeout)
    assert result.code == 0, result
    return result.json()


def test_an_orphan_branch_is_bundled_and_the_release_finishes(cli, slot, upstream, tmp_path):
    git(slot, "checkout", "-q", "--orphan", "lonely")
    git(slot, "rm", "-rfq", ".")
    sha = commit_file(slot, "alone.txt", "history of its own\n")
    (slot / "draft.txt").write_text("uncommitted on the orphan branch\n")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/heads/lonely") == sha
    assert show(repo, "refs/rescued/uncommitted", "draft.txt") == (
        "uncommitted on the orphan branch")
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_an_unborn_head_with_staged_work_is_saved(cli, slot, upstream, tmp_path):
    git(slot, "checkout", "-q", "--orphan", "unborn")
    (slot / "staged.txt").write_text("staged on an unborn branch\n")
    git(slot, "add", "staged.txt")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/uncommitted", "staged.txt") == "staged on an unborn branch"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


@pytest.mark.slow
def test_a_hundred_thousand_refs_are_saved_and_dropped(cli, slot, upstream, tmp_path):
    sha = commit_file(slot, "tagged.txt", "work under many names\n")
    git(slot, "checkout", "-q", "--detach", "HEAD~1")
    with open(slot / ".git" / "packed-refs", "a") as fh:
        fh.writelines(f"{sha} refs/tags/t{i:06d}\n" for i in range(100_000))
    result = release(cli, slot, timeout=900)  # (git bundle takes 20 s of CPU for them)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert git(repo, "rev-parse", "refs/rescued/tags/t099999") == sha
    assert git(repo, "for-each-ref", "--count=100001", "refs/rescued/tags").count("\n") == 99_999
    assert git(slot, "for-each-ref", "refs/tags") == ""
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def deep_dir(top: Path, length: int) -> None:
    """Make a chain of directories under ``top`` whose path is longer than ``length``
    (each ``mkdir`` relative to its parent's descriptor), a file ``leaf.txt`` at its end."""
    name, rel = "d" * 200, b""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(rel) <= length:
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
            rel += name.encode() + b"/"
        with os.fdopen(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd),
                       "w") as fh:
            fh.write("deep work\n")
    finally:
        os.close(fd)


def read_deep(top: Path) -> str:
    """The leaf file at the bottom of a chain of single directories under ``top``, read
    through directory descriptors."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while "leaf.txt" not in os.listdir(fd):
            [name] = os.listdir(fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        with os.fdopen(os.open("leaf.txt", os.O_RDONLY, dir_fd=fd)) as fh:
            return fh.read()
    finally:
        os.close(fd)


def test_paths_longer_than_path_max_are_saved_and_cleaned(cli, slot, upstream, tmp_path):
    deep_dir(slot, 4096 + 200)
    (slot / "note.txt").write_text("shallow work\n")
    result = release(cli, slot)
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/uncommitted", "note.txt") == "shallow work"
    assert not any(name.startswith("d") for name in os.listdir(slot)), "the deep tree is left"
    [aside] = result["cleanup"]["moved_aside"]  # the part git cannot read, kept whole
    assert read_deep(Path(aside)) == "deep work\n"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


@pytest.fixture
def with_submodule(tmp_path, upstream) -> Path:
    """The upstream gains a submodule ``lib``."""
    lib = tmp_path / "lib"
    lib.mkdir()
    git(lib, "init", "-q", "-b", "main")
    commit_file(lib, "lib.txt", "library\n")
    git(upstream, *ALLOW_FILE, "submodule", "add", "-q", str(lib), "lib")
    git(upstream, "commit", "-q", "-m", "add lib")
    return lib


def test_a_submodules_own_config_is_not_obeyed(cli, root, upstream, with_submodule, tmp_path):
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    slot = Path(cli("allocate", "web").stdout.strip())
    git(slot, *ALLOW_FILE, "submodule", "update", "-q", "--init")
    sub = slot / "lib"
    marker = tmp_path / "marker"
    git(sub, "config", "filter.evil.clean", f"ps -o args= -p $PPID >> {marker}; cat")
    git(sub, "config", "filter.evil.smudge", f"ps -o args= -p $PPID >> {marker}; cat")
    git(sub, "config", "core.fsmonitor", f"ps -o args= -p $PPID >> {marker}; true")
    (sub / ".gitattributes").write_text("* filter=evil\n")
    (sub / "lib.txt").write_text("LIBRARY\n")  # (the same size: only content tells)
    marker.unlink(missing_ok=True)  # (the holder's own git ran them just now)
    result = release(cli, slot)
    assert not marker.exists(), f"the submodule's filter ran, for {marker.read_text()}"
    repo = restore(upstream, result["rescued"], tmp_path / "restored")
    assert show(repo, "refs/rescued/nested/lib/files", "lib.txt") == "LIBRARY"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_keep_ignored_never_hands_on_a_link_out_of_the_slot(manager, upstream, cli, tmp_path):
    manager.create_pool(PoolSpec(name="cache", url=str(upstream), num_slots=1,
                                 keep_ignored=True))
    slot = Path(cli("allocate", "cache").stdout.strip())
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "precious.txt").write_text("precious\n")
    (slot / "build").mkdir()
    (slot / "build" / "cache.bin").write_bytes(b"expensive cache")
    (slot / "build" / "out").symlink_to(outside / "dir")
    (slot / "build" / "inside").symlink_to(slot / "build" / "cache.bin")
    (slot / "escape.o").symlink_to(outside / "dir" / "precious.txt")
    before = digest(outside)
    release(cli, slot)
    assert changes(before, digest(outside)) == []
    assert (slot / "build" / "cache.bin").read_bytes() == b"expensive cache"
    assert os.path.islink(slot / "build" / "inside"), "a link within the slot was removed"
    assert not os.path.lexists(slot / "build" / "out"), "a link out of the slot was handed on"
    assert not os.path.lexists(slot / "escape.o"), "a link out of the slot was handed on"

