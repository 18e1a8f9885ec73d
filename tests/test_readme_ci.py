"""README.md's "For CI" recipe, run as written (``sh``) by two jobs one after the other, each
at its own commit (``--ref``, the second a pull request's) with its slot's port: each finds
the dependencies ``prepare`` installed (when the slot was made, and again only at a new
commit, ``keep`` holding them across holders), and no other ignored file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import commit_file, git

import necropool

README = (Path(__file__).parent.parent / "README.md").read_text()
NPM = """#!/bin/sh
case "$1" in
  ci) mkdir -p node_modules/left-pad && echo installed >>node_modules/.ci-runs ;;
  test) test -d node_modules/left-pad && test ! -e build.o && touch build.o &&
        echo "$(git rev-parse HEAD) $PORT" >>"$TEST_LOG" ;;
esac
"""


@pytest.mark.slow
def test_two_ci_jobs_share_the_installed_dependencies(root, upstream, tmp_path):
    section = README.split("\n## For CI\n", 1)[1].split("\n## ", 1)[0]
    [config] = re.findall(r"```toml\n(.*?)```", section, re.S)
    [job] = re.findall(r"```sh\n(.*?)```", section, re.S)
    commit_file(upstream, ".gitignore", "node_modules/\n*.o\n")
    git(upstream, "checkout", "-q", "-b", "topic")
    pr = commit_file(upstream, "feature.txt", "a pull request\n")
    git(upstream, "update-ref", "refs/pull/1/head", pr)
    git(upstream, "checkout", "-q", "main")
    git(upstream, "branch", "-q", "-D", "topic")
    tip = commit_file(upstream, "later.txt", "main moves on\n")
    (tmp_path / "config.toml").write_text(
        config.replace("https://example.com/org/web.git", str(upstream)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(NPM)
    (bin_dir / "necropool").write_text(f'#!/bin/sh\nexec {sys.executable} -m necropool "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(Path(necropool.__file__).parent.parent),
               NECROPOOL_CONFIG=str(tmp_path / "config.toml"), TEST_LOG=str(tmp_path / "test.log"))
    for number, commit in ((1, tip), (2, pr)):
        done = subprocess.run(["sh", "-ec", job], cwd=tmp_path, capture_output=True, text=True,
                              timeout=180, env=dict(env, CI_JOB_ID=str(number),
                                                    CI_COMMIT_SHA=commit))
        assert done.returncode == 0, done
        assert "run:" not in done.stderr  # -q: no notes
    # each job at its commit, both in the most recently released slot (ports 2 per slot)
    lines = [line.split() for line in (tmp_path / "test.log").read_text().splitlines()]
    assert [commit for commit, _ in lines] == [tip, pr]
    port = int(lines[0][1])
    assert int(lines[1][1]) == port and port in (20000, 20002, 20004, 20006)
    used = root / "pools/web/slots" / str((port - 20000) // 2 + 1)
    slots = sorted((root / "pools/web/slots").iterdir())
    assert len(slots) == 4
    for slot in slots:  # prepared when made; again only where the pull request ran, at its
        runs = "installed\n" * (3 if slot == used else 1)  # commit and back at the tip
        assert (slot / "node_modules/.ci-runs").read_text() == runs, slot
