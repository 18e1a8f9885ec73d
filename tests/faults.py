"""Fault injection for the health tests: real damage to real repositories and real processes
(no mocks). Each helper breaks one thing the way a crash, a disk or a careless user would."""

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w
from helpers import git

# --- processes ------------------------------------------------------------------------------


class Procs:
    """Processes a test started; whatever is still running is killed (by its own handle)
    when the test ends."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def sleeper(self) -> subprocess.Popen:
        """A live process to name as a slot's holder (``allocate --pid``)."""
        proc = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
        self.started.append(proc)
        return proc

    def start(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)
        self.started.append(proc)
        return proc

    def cleaning_worker(self, pool: str, number: int, junk: bool = True) -> subprocess.Popen:
        """A process that claims an available slot for cleaning exactly as necropool's own
        workers do (state ``cleaning`` + the slot lock, under the pool lock), leaves a
        half-done mess in the working copy, says ``ready`` and then works "forever"."""
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, pool, str(number),
                                 "1" if junk else "0"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.started.append(proc)
        line = proc.stdout.readline().strip()
        assert line == "ready", f"cleaning worker failed to start: {line!r}"
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill a process and reap it, so its pid is provably gone."""
    proc.send_signal(sig)
    proc.wait(timeout=30)


_WORKER = r"""
import sys, time
from necropool.ground.config import load_settings
from necropool.pool.pool import Pool
from necropool.ground.proc import Holder
from necropool.store.model import AVAILABLE, CLEANING

pool = Pool(load_settings(), sys.argv[1])
number = int(sys.argv[2])
with pool.transaction() as current:
    slot = current.slots[number]
    assert slot.state == AVAILABLE, slot.state
    lock = pool.slot_lock(number)
    assert lock.try_acquire()
    slot.state, slot.worker = CLEANING, Holder.me()
if sys.argv[3] == "1":
    (pool.slot_dir(number) / "half-cleaned.tmp").write_text("left by a worker\n")
print("ready", flush=True)
time.sleep(600)
"""

# --- damage to files ------------------------------------------------------------------------


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte of a file in place (same inode), even if it is read-only."""
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IWUSR)
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        at = size // 2 if offset is None else offset
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(mode)


def packs(objects_dir: Path) -> list[Path]:
    found = sorted((objects_dir / "pack").glob("*.pack"))
    assert found, f"no pack file under {objects_dir}"
    return found


def corrupt_pack_copy(slot: Path) -> Path:
    """Replace the slot's pack (a hard link of the mirror's) by a corrupted copy with its own
    inode, so only this slot is damaged."""
    pack = packs(slot / ".git" / "objects")[0]
    before = pack.stat()
    assert before.st_nlink > 1, "expected the slot's pack to be hard-linked to the mirror's"
    copy = pack.with_name(pack.name + ".copy")
    shutil.copyfile(pack, copy)
    flip_byte(copy)
    copy.chmod(0o444)
    os.replace(copy, pack)
    assert pack.stat().st_ino != before.st_ino
    return pack


def corrupt_loose_object(slot: Path) -> str:
    """Write a loose object into the slot, then flip a byte of its compressed data."""
    oid = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=slot, check=True,
                         input=b"a blob that will rot\n" * 20, capture_output=True
                         ).stdout.decode().strip()
    flip_byte(slot / ".git" / "objects" / oid[:2] / oid[2:], offset=8)
    return oid


def truncate(path: Path, keep: int = 10) -> None:
    data = path.read_bytes()
    assert len(data) > keep
    path.write_bytes(data[:keep])


def set_state_fields(pool_dir: Path, number: int, **fields) -> None:
    """Edit one slot's state file in place (atomically), as a careless hand would;
    or its row, when the pool is in a ledger (``NECROPOOL_LEDGER``)."""
    dsn = os.environ.get("NECROPOOL_LEDGER")
    if dsn:
        import psycopg

        sets = ", ".join(f'"{key}" = %s' for key in fields)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE slots SET {sets} WHERE pool = %s AND number = %s",
                         (*fields.values(), pool_dir.name, number))
        return
    path = pool_dir / "state" / f"{number}.toml"
    data = tomllib.loads(path.read_text())
    data["slot"].update(fields)
    tmp = path.with_name("edit.tmp")
    tmp.write_bytes(tomli_w.dumps(data).encode())
    os.replace(tmp, path)


# --- observing ------------------------------------------------------------------------------


def tree_digest(top: Path, exclude: tuple[str, ...] = ("events.jsonl",)) -> dict[str, tuple]:
    """Every entry under ``top`` (never following symlinks): type, mode, inode, mtime and a
    content hash, keyed by relative path. Two equal digests mean nothing changed."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(top))
            if rel in exclude:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, st.st_ino)
            else:
                content = hashlib.sha1(path.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode, st.st_ino, st.st_mtime_ns, content)
    return out


def clean_at(slot: Path, commit: str) -> None:
    """Assert a working copy is pristine at ``commit``: nothing modified, untracked or
    ignored, HEAD detached there. Read only: a status that refreshed the index would write
    into the slot, and a free slot written into is cleaned again before its next hand-out."""
    assert git(slot, "rev-parse", "HEAD") == commit
    assert git(slot, "--no-optional-locks", "status", "--porcelain", "--ignored") == ""
    assert git(slot, "symbolic-ref", "-q", "HEAD", check=False) == ""
