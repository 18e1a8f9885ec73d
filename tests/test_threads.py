"""necropool through its Python API from many threads of one process (a service handing
out slots, the fleet benchmark's allocators)."""

import subprocess
import sys

FIRST_LOCKS = r"""
import sys, tempfile, threading
from pathlib import Path
from necropool.ground.locks import FileLock

tmp = Path(tempfile.mkdtemp())
errors = []

def take(i):
    try:
        FileLock(tmp / f"{i}.lock").try_acquire()
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=take, args=(i,)) for i in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(errors), errors[:1])
"""


def test_threads_taking_their_first_locks_at_once_all_get_them():
    """The lock library is loaded on first use: threads that arrive meanwhile wait for it
    instead of finding a half-loaded module. Each run is a fresh process (a first use)."""
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", FIRST_LOCKS], capture_output=True,
                             text=True, check=True).stdout
        assert out.startswith("0 "), out
