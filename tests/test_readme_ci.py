"""README.md's "For CI" recipe, run as written (``sh``) by two jobs one after the other: each
finds the dependencies ``prepare`` installed when the slot was made (``keep``: not
installed again for the second), and no other ignored file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import commit_file

import necropool

README = (Path(__file__).parent.parent / "README.md").read_text()
NPM = """#!/bin/sh
case "$1" in
  ci) mkdir -p node_modules/left-pad && echo installed >>node_modules/.ci-runs ;;
  test) test -d node_modules/left-pad && test ! -e build.o && touch build.o ;;
esac
"""


@pytest.mark.slow
def test_two_ci_jobs_share_the_installed_dependencies(root, upstream, tmp_path):
    section = README.split("\n## For CI\n", 1)[1].split("\n## ", 1)[0]
    [config] = re.findall(r"```toml\n(.*?)```", section, re.S)
    [job] = re.findall(r"```sh\n(.*?)```", section, re.S)
    commit_file(upstream, ".gitignore", "node_modules/\n*.o\n")
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
               NECROPOOL_CONFIG=str(tmp_path / "config.toml"))
    for number in (1, 2):
        done = subprocess.run(["sh", "-ec", job], cwd=tmp_path, capture_output=True, text=True,
                              timeout=180, env=dict(env, CI_JOB_ID=str(number)))
        assert done.returncode == 0, done
        assert "run:" not in done.stderr  # -q: no notes
    slots = sorted((root / "pools/web/slots").iterdir())
    assert len(slots) == 4
    for slot in slots:  # prepared once when made; the jobs at the same tip reused it
        assert (slot / "node_modules/.ci-runs").read_text() == "installed\n", slot
