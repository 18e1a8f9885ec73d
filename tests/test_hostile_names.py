"""Names a holder writes into files are data, never paths: a ref name in ``packed-refs`` or a
``ref:`` target in HEAD that climbs out of ``refs/`` makes necropool neither delete, create
nor read a file outside the slot; the slot counts as tampered (moved aside whole, re-cloned)."""

import os
from pathlib import Path

import pytest
from helpers import changes, commit_file, digest, git
from slots import assert_fresh_clone_equivalent


@pytest.fixture
def outside(tmp_path) -> Path:
    """A canary tree outside the root: a file a climbing ref name points at, and a secret."""
    top = tmp_path / "outside"
    top.mkdir()
    (top / "victim").write_text("do not touch\n")
    (top / "secret").write_text("TOP-SECRET-CONTENT\n")
    return top


@pytest.fixture
def slot(cli, pool) -> Path:
    result = cli("allocate", "web", "--no-fetch")
    assert result.code == 0, result
    return Path(result.stdout.strip())


def climbing(gitdir: Path, target: Path, prefix: str = "refs/heads/") -> str:
    """A ref name that, taken as a path under ``gitdir``, is ``target``."""
    up = "../" * prefix.count("/")
    return f"{prefix}{up}{os.path.relpath(target, gitdir)}"


def test_a_packed_ref_climbing_out_of_refs_deletes_and_creates_nothing(cli, slot, outside,
                                                                       upstream, tmp_path):
    git(slot, "checkout", "-q", "-b", "feature")
    sha = commit_file(slot, "feature.txt", "committed work\n")
    git(slot, "pack-refs", "--all")
    git(slot, "checkout", "-q", "--detach")  # (git itself reads packed-refs less then)
    gitdir = slot / ".git"
    with open(gitdir / "packed-refs", "a") as fh:
        fh.write(f"{sha} {climbing(gitdir, outside / 'victim')}\n")
        fh.write(f"{sha} {climbing(gitdir, outside / 'planted')}\n")
    before = digest(outside)
    result = cli("release", slot, "--json")
    assert changes(before, digest(outside)) == [], "a file outside the root was touched"
    assert result.code == 0, result
    cleanup = result.json()["cleanup"]
    assert cleanup["recloned"] is True, cleanup
    assert any("malformed ref name" in p for p in cleanup["tampered"]), cleanup
    aside = Path(result.json()["rescued"])
    packed = (aside / ".git" / "packed-refs").read_text()
    assert f"{sha} refs/heads/feature\n" in packed, "the holder's commit was lost"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)


def test_a_head_naming_a_file_outside_is_never_read_out(cli, slot, outside, upstream,
                                                        tmp_path):
    gitdir = slot / ".git"
    (gitdir / "HEAD").write_text(f"ref: {climbing(gitdir, outside / 'secret')}\n")
    for args in (("status", "web", "--json"), ("status", "web-1", "--json"), ("status", "web")):
        shown = cli(*args)
        assert "TOP-SECRET" not in shown.stdout + shown.stderr, args
    result = cli("release", slot, "--json")
    assert result.code == 0, result
    assert any("HEAD names a malformed ref" in p for p in result.json()["cleanup"]["tampered"])
    assert (outside / "secret").read_text() == "TOP-SECRET-CONTENT\n"
    assert_fresh_clone_equivalent(slot, upstream, tmp_path)



# --- the mirror's config is necropool's, not whoever wrote it last ------------------------------

PROGRAM_KEYS = {  # (key, value running a program that leaves a marker)
    "uploadpack": ('remote "origin"', "uploadpack", "touch {marker}; git-upload-pack"),
    "credential helper": ("credential", "helper", "!touch {marker}; echo"),
    "ssh command": ("core", "sshCommand", "touch {marker}; ssh"),
    "fsmonitor": ("core", "fsmonitor", "touch {marker}; echo"),
    "hooks path": ("core", "hooksPath", "{hooks}"),
    "ext allowed": ("protocol", "allow", "always"),
}


@pytest.mark.parametrize("key", PROGRAM_KEYS)
def test_a_program_named_in_the_mirrors_config_never_runs(cli, pool, root, upstream, tmp_path,
                                                          key):
    marker = tmp_path / "marker"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("reference-transaction", "post-update", "pre-auto-gc"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / hook).chmod(0o755)
    mirror = root / "pools" / "web" / "mirror.git"
    canonical = (mirror / "config").read_text()
    section, name, value = PROGRAM_KEYS[key]
    planted = f"[{section}]\n\t{name} = \"{value.format(marker=marker, hooks=hooks)}\"\n"
    if key == "ext allowed":  # the upstream's URL rewritten to a command
        planted += f"[url \"ext::sh -c touch% {marker}\"]\n\tinsteadOf = {upstream}\n"
    with open(mirror / "config", "a") as fh:
        fh.write(planted)
    new = commit_file(upstream, "new.txt", "new upstream work\n")  # so that allocate fetches
    grant = cli("allocate", "web", "--json")
    assert not marker.exists(), "a program named in the mirror's config ran"
    assert grant.code == 0, grant
    assert grant.json().get("fetch_error") is None, grant.json()
    assert grant.json()["current_commit"] == new
    assert (mirror / "config").read_text() == canonical
    events = cli("log", "web", "--event", "mirror_config_restored", "--json").json()["events"]
    assert len(events) == 1


def test_an_upload_pack_written_back_just_before_the_fetch_still_never_runs(pool, root,
                                                                            upstream, tmp_path):
    """A holder racing the put-back (its key back in the config just before git starts):
    git on the mirror overrides every key that names a program."""
    from necropool.git import commands

    marker = tmp_path / "marker"
    mirror = root / "pools" / "web" / "mirror.git"
    with open(mirror / "config", "a") as fh:
        fh.write(f'[remote "origin"]\n\tuploadpack = "touch {marker}; git-upload-pack"\n'
                 f'[credential]\n\thelper = "!touch {marker}; echo"\n')
    new = commit_file(upstream, "new.txt", "new upstream work\n")
    commands.fetch_mirror(mirror, timeout=60)
    assert not marker.exists(), "the mirror's upload-pack command ran"
    assert commands.read_ref(mirror, "refs/heads/main") == new


def test_every_malformed_name_in_packed_refs_is_found():
    """The quick scan that spares checking each packed name one by one misses none that
    git's rules refuse (random names from the pieces those rules are about)."""
    import random

    from necropool.git import commands
    from necropool.ground.errors import UsageError
    from necropool.ground.validate import check_refname

    pieces = ["a", "b", ".", "..", "/", "//", ".lock", "@", "{", "@{", "~", "^", ":", "?",
              "*", "[", "\\", "\x01", "\x7f", "é", "x.lock", "-"]
    rng = random.Random(21)
    for _ in range(5_000):
        name = "refs/heads/" * rng.randint(0, 1) + "".join(
            rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        try:
            check_refname(name)
            continue
        except UsageError:
            pass
        for end, peeled in ((b"\n", b"^" + b"1" * 40 + b"\n"), (b"\r\n", b""), (b"", b"")):
            data = (b"# pack-refs with: peeled \n" + b"0" * 40 + b" " + name.encode() + end
                    + peeled)
            assert commands.malformed_packed(data) == [name], (name, end)
