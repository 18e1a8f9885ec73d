"""The commands a job runs on every use stay lean: ``allocate`` and ``release`` never import
pygit2 or rich (each costs tens of milliseconds of start-up)."""

import json
import subprocess
import sys

import pytest

# Runs the CLI in this interpreter, then lists the heavy packages it imported.
_WRAPPER = """
import runpy, sys
sys.argv = ["necropool", *sys.argv[1:]]
try:
    runpy.run_module("necropool", run_name="__main__")
except SystemExit:
    pass
print("HEAVY", *sorted(m for m in sys.modules if m.split(".")[0] in ("pygit2", "rich")),
      file=sys.stderr)
"""


def run_listing_heavy(*args: str) -> tuple[str, list[str]]:
    """The command's stdout, and the heavy modules it imported."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("HEAVY"), proc.stderr
    return proc.stdout, last.split()[1:]


@pytest.mark.parametrize("json_out", [[], ["--json"]])
def test_allocate_and_release_import_neither_pygit2_nor_rich(pool, json_out):
    path, heavy = run_listing_heavy("allocate", pool, "--no-fetch", *json_out)
    assert heavy == []
    slot = json.loads(path)["path"] if json_out else path.strip()
    assert run_listing_heavy("release", slot, *json_out)[1] == []
