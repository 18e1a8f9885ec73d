"""``create`` from an upstream on a local path takes its object files by hard link instead
of a repack, and the mirror stays the pool's own: it outlives the upstream's gc and the
upstream itself, shares no alternates, obeys none of the upstream's config or hooks, and
follows no symlink planted among its objects. ``create`` on a terminal shows a remote
clone's objects, percent and bytes, and the slots' count; nothing with --quiet or off a
terminal. Real repositories, the CLI as a process where a terminal matters."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import commit_file, git
from httpgit import HttpGitServer
from test_terminal import _stderr_on_terminal

from necropool.git.commands import mirror_config


def _packed(upstream: Path) -> Path:
    """Pack the upstream's objects (as a repository in use has them), then add a commit
    whose objects stay loose; returns its git directory."""
    git(upstream, "gc", "-q")
    commit_file(upstream, "after-gc.txt", "loose\n")
    return upstream / ".git"


def _inodes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in directory.iterdir() if p.is_file()}


def _object_files(gitdir: Path) -> list[Path]:
    return [p for p in (gitdir / "objects").rglob("*") if p.is_file()]


def test_a_local_create_hard_links_the_upstreams_packs_and_outlives_its_gc_and_itself(
        cli, upstream, root):
    gitdir = _packed(upstream)
    upstream_packs = _inodes(gitdir / "objects/pack")
    assert any(name.endswith(".pack") for name in upstream_packs)
    result = cli("create", "web", upstream, "--slots", "2")
    assert result.code == 0, result
    mirror = root / "pools/web/mirror.git"
    mirror_packs = _inodes(mirror / "objects/pack")
    for name, inode in upstream_packs.items():  # the very files, not copies
        assert mirror_packs[name] == inode, name
    for slot in ("1", "2"):
        slot_packs = _inodes(root / "pools/web/slots" / slot / ".git/objects/pack")
        assert all(slot_packs[name] == inode for name, inode in upstream_packs.items())
    for path in _object_files(mirror):  # read-only, as git makes them; nothing loose
        assert path.stat().st_mode & 0o222 == 0, path
        assert path.parent.name in ("pack", "info"), path
    assert not (mirror / "objects/info/alternates").exists()
    assert git(mirror, "rev-parse", "refs/heads/main") == git(upstream, "rev-parse", "HEAD")

    # The upstream's gc writes new packs and unlinks the old names: ours stay as they were.
    git(upstream, "gc", "-q", "--prune=now", "--aggressive")
    assert not set(upstream_packs) & set(_inodes(gitdir / "objects/pack"))
    assert git(mirror, "fsck", "--full", "--no-progress") == ""
    assert cli("add", "web").code == 0
    shutil.rmtree(upstream)  # and without the upstream at all
    assert git(mirror, "fsck", "--full", "--no-progress") == ""
    assert cli("add", "web").code == 0
    allocated = cli("allocate", "web", "--json")  # its fetch fails: allocation goes on
    assert allocated.code == 0, allocated
    slot = Path(allocated.json()["path"])
    assert (slot / "after-gc.txt").read_text() == "loose\n"
    assert git(slot, "status", "--porcelain") == ""


def test_a_file_url_takes_the_same_way(cli, upstream, root):
    gitdir = _packed(upstream)
    assert cli("create", "web", f"file://{upstream}", "--slots", "1").code == 0
    pack = next((gitdir / "objects/pack").glob("*.pack"))
    ours = root / "pools/web/mirror.git/objects/pack" / pack.name
    assert ours.stat().st_ino == pack.stat().st_ino
    assert git(root / "pools/web/mirror.git", "config", "remote.origin.url") == \
        f"file://{upstream}"


def test_a_holder_cannot_write_into_a_pack_the_slot_shares(cli, upstream, root):
    """Slot, mirror and upstream hold one inode: it is read-only, so a holder's write into
    it is refused (as the pool's owner, or another user when the test runs as root)."""
    gitdir = _packed(upstream)
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    pack_dir = root / "pools/web/slots/1/.git/objects/pack"
    pack = pack_dir / next((gitdir / "objects/pack").glob("*.pack")).name
    assert pack.stat().st_nlink >= 3 and pack.stat().st_mode & 0o777 == 0o444
    assert all(p.stat().st_mode & 0o777 == 0o444 for p in pack_dir.iterdir())
    drop = ""
    if os.geteuid() == 0:  # root writes anything: the owner is made someone else
        os.chown(pack, 65534, 65534)
        drop = "os.setgroups([]); os.setresgid(65534, 65534, 65534); " \
               "os.setresuid(65534, 65534, 65534); "
    probe = ("import os, sys; d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY); "
             + drop + "\ntry:\n os.open(sys.argv[2], os.O_RDWR, dir_fd=d)\n"
             "except PermissionError:\n print('refused')\nelse:\n print('written')")
    out = subprocess.run([sys.executable, "-c", probe, str(pack_dir), pack.name],
                         capture_output=True, text=True, check=True).stdout
    assert out == "refused\n"


def test_a_writable_upstream_pack_is_copied_read_only_not_linked(cli, upstream, root):
    gitdir = _packed(upstream)
    pack = next((gitdir / "objects/pack").glob("*.pack"))
    os.chmod(pack, 0o644)  # a pack someone could write into: never shared
    assert cli("create", "web", upstream, "--slots", "1").code == 0
    ours = root / "pools/web/mirror.git/objects/pack" / pack.name
    assert ours.stat().st_ino != pack.stat().st_ino
    assert ours.stat().st_mode & 0o777 == 0o444
    assert ours.read_bytes() == pack.read_bytes()
    idx = pack.with_suffix(".idx")  # the read-only index beside it is still linked
    assert (ours.with_suffix(".idx")).stat().st_ino == idx.stat().st_ino


def test_an_upstream_on_another_filesystem_is_copied(cli, upstream, root):
    """No hard link crosses filesystems: the pack files are copied, read-only."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == root.parent.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) to put the upstream on")
    gitdir = _packed(upstream)
    elsewhere = Path(tempfile.mkdtemp(dir=shm)) / "upstream"
    try:
        shutil.copytree(upstream, elsewhere, symlinks=True)
        assert cli("create", "web", elsewhere, "--slots", "1").code == 0
        for pack in (gitdir / "objects/pack").iterdir():
            ours = root / "pools/web/mirror.git/objects/pack" / pack.name
            assert ours.read_bytes() == pack.read_bytes()
            assert ours.stat().st_nlink == 2 and ours.stat().st_mode & 0o777 == 0o444
    finally:
        shutil.rmtree(elsewhere.parent)
    assert git(root / "pools/web/mirror.git", "fsck", "--no-progress") == ""


def test_the_upstreams_config_and_hooks_are_neither_copied_nor_obeyed(cli, upstream, root,
                                                                     tmp_path):
    gitdir = _packed(upstream)
    marker = tmp_path / "pwned"
    hook = gitdir / "hooks/post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git(upstream, "config", "core.hooksPath", str(gitdir / "hooks"))
    git(upstream, "config", "core.fsmonitor", f"touch {marker}")
    git(upstream, "config", "remote.origin.url", "https://evil.example/x.git")
    result = cli("create", "web", upstream, "--slots", "1")
    assert result.code == 0, result
    mirror = root / "pools/web/mirror.git"
    pack = next((gitdir / "objects/pack").glob("*.pack"))  # taken by its files
    assert (mirror / "objects/pack" / pack.name).stat().st_ino == pack.stat().st_ino
    assert (mirror / "config").read_text() == mirror_config(str(upstream.resolve()))
    assert not (mirror / "hooks/post-checkout").exists()
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pack", "loose"])
def test_a_symlink_among_the_upstreams_objects_is_never_followed(cli, upstream, root, tmp_path,
                                                                 kind):
    """git's own ``--local`` once hard-linked what such links named (CVE-2024-32021): here
    another repository's pack, or one of its loose objects."""
    gitdir = _packed(upstream)
    other = tmp_path / "other"
    git(tmp_path, "init", "-q", str(other))
    commit_file(other, "private.txt", "another repository's\n")
    private = git(other, "rev-parse", "HEAD:private.txt")
    if kind == "pack":
        git(other, "gc", "-q")
        theirs = sorted((other / ".git/objects/pack").glob("pack-*"))
    else:
        theirs = [other / ".git/objects" / private[:2] / private[2:]]
    for path in theirs:
        planted = gitdir / path.relative_to(other / ".git")
        planted.parent.mkdir(exist_ok=True)
        planted.symlink_to(path)
    result = cli("create", "web", upstream, "--slots", "1")
    assert result.code == 0, result
    linked = {p.stat().st_ino for p in theirs}
    for path in (root / "pools/web").rglob("*"):
        assert not path.is_symlink(), path
        assert not path.is_file() or path.stat().st_ino not in linked, path
    mirror = root / "pools/web/mirror.git"
    assert subprocess.run(["git", "-C", str(mirror), "cat-file", "-e", private]).returncode != 0


def test_an_upstream_with_alternates_gives_a_mirror_of_its_own(cli, upstream, root, tmp_path):
    _packed(upstream)
    shared = tmp_path / "shared"
    git(tmp_path, "clone", "-q", "--shared", str(upstream), str(shared))
    assert (shared / ".git/objects/info/alternates").exists()
    assert cli("create", "web", shared, "--slots", "1").code == 0
    mirror = root / "pools/web/mirror.git"
    assert not (mirror / "objects/info/alternates").exists()
    shutil.rmtree(upstream)  # the objects the alternates named
    assert git(mirror, "fsck", "--full", "--no-progress") == ""


@pytest.fixture
def remote(tmp_path, upstream) -> str:
    for i in range(300):  # enough objects for git to count them
        (upstream / "many" / f"f{i}.txt").parent.mkdir(exist_ok=True)
        (upstream / "many" / f"f{i}.txt").write_text(f"{i}\n" * 50)
    git(upstream, "add", ".")
    git(upstream, "commit", "-q", "-m", "many")
    with HttpGitServer(tmp_path / "srv") as server:
        server.add_repo("repo", source=upstream)
        yield server.url("repo")


@pytest.mark.slow
def test_create_from_a_remote_shows_objects_percent_and_bytes_on_a_terminal(remote, root):
    code, _, screen = _stderr_on_terminal(["create", "web", remote, "--slots", "2"])
    assert code == 0, screen
    assert "creating web: mirror: receiving objects" in screen
    assert "%)" in screen and "/3" in screen  # of 300-odd objects, with the percent
    assert " KiB" in screen or " bytes" in screen
    assert "creating web: 2/2 slots" in screen
    code, _, screen = _stderr_on_terminal(["add", "web", "--count", "2"])
    assert code == 0 and "adding to web: 2/2 slots" in screen
    code, _, screen = _stderr_on_terminal(["create", "lib", remote, "--slots", "1",
                                           "--fetch-backend", "libgit2"])
    assert code == 0 and "creating lib: mirror: receiving objects" in screen
    assert "(100%)" in screen and "creating lib: 1/1 slot" in screen


def test_a_local_create_shows_the_object_files_taken_on_a_terminal(upstream, root):
    _packed(upstream)
    code, _, screen = _stderr_on_terminal(["create", "web", upstream, "--slots", "2"])
    assert code == 0, screen
    assert "creating web: mirror: taking objects" in screen and " files (100%), " in screen
    assert "creating web: 2/2 slots" in screen


@pytest.mark.slow
def test_no_progress_with_quiet_or_off_a_terminal(cli, remote, root):
    code, out, screen = _stderr_on_terminal(["--quiet", "create", "web", remote, "-n", "1"])
    assert code == 0 and out.strip() == str(root / "pools/web")
    assert screen == ""
    piped = cli("create", "two", remote, "-n", "1")
    assert piped.code == 0
    assert piped.stderr == "created pool two: 1 slot on main\n"
