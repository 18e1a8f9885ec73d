"""``include``: local files (``.env``) copied into each slot at cleanup from the pool's
``include_from``, owner-only, never through a symlink and never from outside the source;
not the holder's work unless the holder changed them."""

import json
import os
import stat
from pathlib import Path

import pytest


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "secrets"
    (src / "conf").mkdir(parents=True)
    (src / ".env").write_text("TOKEN=abc\n")
    (src / "conf/local.ini").write_text("[db]\nport=5433\n")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not to be copied\n")
    os.symlink(outside, src / ".envrc")  # leads out of the source: never followed
    os.symlink(".env", src / "alias.env")  # inside it: fine
    return src


def _create(cli, upstream, source, *paths):
    args = [a for p in paths for a in ("--include", p)]
    made = cli("create", "web", upstream, "-n", "1", "--include-from", source, *args, "--json")
    assert made.code == 0, made
    return Path(json.loads(made.stdout)["path"]) / "slots/1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.slow
def test_included_files_are_copied_owner_only_and_never_through_links(
        cli, root, upstream, source, tmp_path):
    slot = _create(cli, upstream, source, ".env", "conf/local.ini", ".envrc", "alias.env",
                   "missing.env")
    for rel, text in ((".env", "TOKEN=abc\n"), ("conf/local.ini", "[db]\nport=5433\n"),
                      ("alias.env", "TOKEN=abc\n")):
        assert (slot / rel).read_text() == text and _mode(slot / rel) == 0o600, rel
    assert not os.path.lexists(slot / ".envrc")  # its link points out of the source
    assert not os.path.lexists(slot / "missing.env")
    events = json.loads(cli("log", "web", "--json").stdout)["events"]
    warnings = [w for e in events if e["event"] == "cleanup" for w in e.get("include_warnings", [])]
    assert any(w.startswith("missing.env:") for w in warnings)
    assert any(w.startswith(".envrc:") for w in warnings)

    # a holder swaps the included file for a link to a file outside the slot
    canary = tmp_path / "canary"
    canary.write_text("untouched\n")
    assert cli("allocate", "web").code == 0
    (slot / ".env").unlink()
    os.symlink(canary, slot / ".env")
    (source / ".env").write_text("TOKEN=rotated\n")
    released = cli("release", slot, "--json")
    assert released.code == 0, released
    assert canary.read_text() == "untouched\n"
    assert not (slot / ".env").is_symlink() and (slot / ".env").read_text() == "TOKEN=rotated\n"
    assert _mode(slot / ".env") == 0o600
    assert json.loads(released.stdout)["cleanup"]["included"] == [".env", "conf/local.ini",
                                                                  "alias.env"]


@pytest.mark.slow
def test_included_files_are_not_the_holders_work_unless_it_changed_them(
        cli, root, upstream, source):
    slot = _create(cli, upstream, source, ".env", "conf/local.ini")
    assert cli("allocate", "web").code == 0
    (source / ".env").write_text("TOKEN=rotated\n")  # the slot's copy is still as copied
    untouched = cli("release", slot, "--json")
    assert untouched.code == 0 and json.loads(untouched.stdout)["rescued"] is None, untouched
    assert (slot / ".env").read_text() == "TOKEN=rotated\n"

    assert cli("allocate", "web").code == 0
    (slot / "conf/local.ini").write_text("[db]\nport=9999\n")  # the holder's own setting
    changed = cli("release", slot, "--json")
    assert changed.code == 0, changed
    bundle = json.loads(changed.stdout)["rescued"]
    assert bundle is not None
    shown = json.loads(cli("rescued", "show", Path(bundle).name.removesuffix(".bundle"),
                           "--json").stdout)
    assert "conf/local.ini" in json.dumps(shown) and ".env" not in json.dumps(shown)
    assert (slot / "conf/local.ini").read_text() == "[db]\nport=5433\n"  # the source's again


@pytest.mark.slow
def test_a_slot_recloned_for_a_tampered_git_dir_gets_its_files_too(cli, root, upstream, source):
    slot = _create(cli, upstream, source, ".env")
    assert cli("allocate", "web").code == 0
    os.symlink("/etc/passwd", slot / ".git/planted")  # the audit moves the slot aside
    released = cli("release", slot, "--json")
    assert released.code == 0, released
    assert json.loads(released.stdout)["cleanup"]["recloned"] is True
    assert (slot / ".env").read_text() == "TOKEN=abc\n" and _mode(slot / ".env") == 0o600


def test_a_file_git_tracks_is_never_overwritten(cli, root, upstream, source):
    (source / "README").write_text("from the source\n")
    slot = _create(cli, upstream, source, "README", ".env")
    assert (slot / "README").read_text() == "upstream\n"
    assert (slot / ".env").read_text() == "TOKEN=abc\n"
    events = json.loads(cli("log", "web", "--json").stdout)["events"]
    assert any("README: tracked by git, not included" in e.get("include_warnings", [])
               for e in events)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", ""])
def test_a_bad_include_path_is_refused_with_nothing_made(cli, root, upstream, source, bad):
    refused = cli("create", "web", upstream, "--include-from", source, "--include", bad)
    assert refused.code == 2, refused
    assert "invalid include path" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (root / "pools/web").exists()


def test_include_needs_an_absolute_source(cli, root, upstream, tmp_path):
    alone = cli("create", "web", upstream, "--include", ".env")
    assert alone.code == 2 and "include_from" in alone.stderr, alone
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\ninclude = [".env"]\n'
                      'include_from = "relative/dir"\n')
    wrong = cli("sync", "--config", config)
    assert wrong.code == 2 and "pools.web.include" in wrong.stderr, wrong
    assert not (root / "pools/web").exists()
