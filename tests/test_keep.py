"""``keep``: the ignored paths a pool's patterns name (build caches, installed
dependencies) survive cleanup, holder after holder; every other ignored or untracked file
goes, and so does a symlink in a kept path that leads out of the slot."""

import json
import os
from pathlib import Path

import pytest
from helpers import commit_file


@pytest.mark.slow
def test_kept_caches_survive_two_holders_and_nothing_else_does(cli, root, upstream, tmp_path):
    commit_file(upstream, ".gitignore", "build/\n*.o\nnode_modules/\n.venv/\n")
    made = cli("create", "web", upstream, "-n", "1", "--keep", "node_modules/",
               "--keep", ".venv/", "--json")
    assert made.code == 0, made
    assert json.loads(made.stdout)["keep"] == ["node_modules/", ".venv/"]
    outside = tmp_path / "outside"
    outside.mkdir()

    slot = Path(cli("allocate", "web", "--no-fetch").stdout.strip())
    (slot / "node_modules/pkg").mkdir(parents=True)
    (slot / "node_modules/pkg/index.js").write_text("module.exports = 1\n")
    (slot / "node_modules/pkg/native.o").write_text("ignored by *.o too\n")
    (slot / "node_modules/.bin").mkdir()
    os.symlink("../pkg/index.js", slot / "node_modules/.bin/pkg")  # inside: kept
    os.symlink(outside, slot / "node_modules/escape")  # out of the slot: removed
    os.symlink("/etc/passwd", slot / "node_modules/pkg/passwd")
    (slot / ".venv/bin").mkdir(parents=True)
    (slot / ".venv/bin/python").write_text("#!/bin/sh\n")
    (slot / "build").mkdir()
    (slot / "build/out.o").write_text("not kept\n")
    (slot / "top.o").write_text("not kept\n")
    (slot / "scratch.txt").write_text("untracked: saved, then removed\n")
    kept = {"node_modules/pkg/index.js", "node_modules/pkg/native.o",
            "node_modules/.bin/pkg", ".venv/bin/python"}

    for _holder in range(2):
        released = cli("release", slot, "--json")
        assert released.code == 0, released
        for rel in kept:
            assert os.path.lexists(slot / rel), rel
        for rel in ("node_modules/escape", "node_modules/pkg/passwd", "build", "top.o",
                    "scratch.txt"):
            assert not os.path.lexists(slot / rel), rel
        assert os.readlink(slot / "node_modules/.bin/pkg") == "../pkg/index.js"
        assert outside.is_dir()  # the link's target is never touched
        again = cli("allocate", "web", "--no-fetch").stdout.strip()
        assert again == str(slot)
        (slot / "build").mkdir()
        (slot / "build/out.o").write_text("built again\n")
    assert cli("release", slot).code == 0
    assert not (slot / "build").exists() and (slot / "node_modules/pkg/index.js").exists()


def test_a_bad_keep_pattern_is_refused(cli, root, upstream, tmp_path):
    bad = cli("create", "web", upstream, "--keep", "!node_modules/")
    assert bad.code == 2 and "keep pattern" in bad.stderr and not (root / "pools/web").exists()
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nkeep = "node_modules/"\n')
    wrong = cli("sync", "--config", config)
    assert wrong.code == 2 and "pools.web.keep" in wrong.stderr, wrong
