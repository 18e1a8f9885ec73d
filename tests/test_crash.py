"""Crash injection: real ``python -m necropool`` processes killed with SIGKILL at random
moments, and the invariants that must survive every kill.

One pool over a small upstream is reused by every trial. Each trial runs one command
(allocate, release of a dirtied slot, add, remove, recover, auto-recover, sync) and kills it
(alone, or with its whole process group, so git children die mid-write too) after a random
0-500 ms. After every trial:

- every slot's state file (and its backup) parses, and every slot that existed still exists
  exactly once (only the target of a ``remove`` may go);
- no slot is ``available`` while its tree is dirty, off its clean commit or carrying refs a
  fresh slot does not have, and every ``available``/``allocated`` slot has its directory;
- ``.tmp-`` leftovers of a killed command are swept by the next command that completes.

Every ``CHECK_EVERY`` trials and at the end, once every holder is dead: one ``auto-recover``
makes every slot ``available``, ``detect`` exits 0, there are no stray or temporary
entries, and every slot can be allocated (at the upstream tip) and released again.

Reproduce a failure with ``NECROPOOL_CRASH_SEED=<seed printed>``; size the run with
``NECROPOOL_CRASH_TRIALS`` (default 200).
"""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import commit_file, git

from necropool.ground.config import PoolSpec
from necropool.ground.layout import PoolPaths

TRIALS = int(os.environ.get("NECROPOOL_CRASH_TRIALS", "200"))
SEED = int(os.environ.get("NECROPOOL_CRASH_SEED", str(time.time_ns() % 2**32)))
CHECK_EVERY = 25
POOL = "crash"
SIDE = "side"  # created by sync
MIN_SLOTS, MAX_SLOTS = 3, 6
KILL_WINDOW = 0.5
OPS = ("allocate", "release", "add", "remove", "recover", "auto-recover", "sync")
KNOWN = PoolPaths.KNOWN  # every name a pool directory may hold


@dataclass
class Outcome:
    args: list[str]
    code: int | None  # None when killed
    stdout: str
    stderr: str
    killed: str | None  # "process", "group" or None
    delay: float

    def __str__(self) -> str:
        how = f"killed ({self.killed}) after {self.delay * 1000:.0f} ms" if self.killed \
            else f"exit {self.code}"
        return f"necropool {' '.join(self.args)}: {how}; stderr={self.stderr[-400:]!r}"


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        if fields[0] not in (b"Z", b"X") and int(fields[3]) == sid:
            members.append(int(name))
    return members


class Harness:
    def __init__(self, root: Path, upstream: Path, config: Path, rng: random.Random):
        self.root = root
        self.upstream = upstream
        self.config = config
        self.rng = rng
        self.pool_dir = root / "pools" / POOL
        self.sleepers: list[subprocess.Popen] = []
        self.history: list[str] = []
        self.kills = 0
        self.completed = 0
        self.ops = {op: 0 for op in OPS}

    # --- processes ----------------------------------------------------------------------------
    def launch(self, args: list[str], delay: float | None) -> Outcome:
        """Run the CLI; with ``delay``, SIGKILL it (or its group) if still running by then."""
        proc = subprocess.Popen([sys.executable, "-m", "necropool", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        killed = None
        try:
            out, err = proc.communicate(timeout=delay if delay is not None else 120)
        except subprocess.TimeoutExpired:
            if delay is None:
                proc.kill()
                proc.communicate()
                raise
            killed = "group" if self.rng.random() < 0.5 else "process"
            try:
                if killed == "group":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
            out, err = proc.communicate(timeout=60)
            if proc.returncode != -signal.SIGKILL:
                killed = None  # it finished just before the signal
        self.drain(proc.pid)
        outcome = Outcome(args, None if killed else proc.returncode, out, err, killed,
                          delay or 0.0)
        self.history.append(str(outcome))
        if killed:
            self.kills += 1
        else:
            self.completed += 1
        return outcome

    def drain(self, sid: int) -> None:
        """Let a killed command's orphaned git children finish (they would, after a crash),
        so the next command does not race a half-dead one."""
        deadline = time.monotonic() + 30
        while session_members(sid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sid, signal.SIGKILL)
            time.sleep(0.01)

    def cli(self, *args: str) -> Outcome:
        """A command that must run to completion."""
        return self.launch(list(args), None)

    def sleeper(self) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
        self.sleepers.append(proc)
        return proc

    def kill_sleepers(self) -> None:
        for proc in self.sleepers:
            proc.kill()
            proc.wait()
        self.sleepers.clear()

    # --- observing ----------------------------------------------------------------------------
    def slots(self) -> dict[int, dict]:
        """Each slot's entry under the schema stub of ``state.toml``: from its main file
        (``state/<n>.toml``), else from its backup (a kill between the two writes or the
        two deletions leaves one), as the store reads them; each must parse."""
        assert tomllib.loads((self.pool_dir / "state.toml").read_text()) == {
            "schema_version": 2}
        found: dict[int, dict] = {}
        for path in sorted((self.pool_dir / "state").iterdir()):  # n.toml before n.toml.bak
            stem, _, kind = path.name.partition(".")
            if stem.isdigit() and kind in ("toml", "toml.bak") and int(stem) not in found:
                found[int(stem)] = tomllib.loads(path.read_text())["slot"]
        return found

    def temps(self) -> set[Path]:
        found = set()
        for directory in (self.root / "pools", self.pool_dir, self.pool_dir / "state",
                          self.pool_dir / "slots", self.pool_dir / "locks"):
            with contextlib.suppress(FileNotFoundError):
                found |= {directory / n for n in os.listdir(directory)
                          if n.startswith((".tmp-", ".trash-"))}
        return found

    def slot_path(self, number: int) -> Path:
        return self.pool_dir / "slots" / str(number)

    def fail(self, message: str):
        tail = "\n  ".join(self.history[-8:])
        pytest.fail(f"{message}\n(seed {SEED}; last commands:\n  {tail})")

    # --- holder activity ----------------------------------------------------------------------
    def dirty(self, number: int) -> None:
        """What a holder leaves: edits, many untracked files, ignored build output, and
        sometimes a local branch with a commit or a stash."""
        path = self.slot_path(number)
        rng = self.rng
        with open(path / "README", "a") as fh:
            fh.write("holder edit\n")
        junk = path / "junk"
        junk.mkdir(exist_ok=True)
        for i in range(rng.randint(20, 300)):
            (junk / f"f{i}.txt").write_text(f"junk {i}\n" * 10)
        (path / "build").mkdir(exist_ok=True)
        (path / "build" / "out.o").write_bytes(os.urandom(2048))
        roll = rng.random()
        if roll < 0.25:
            git(path, "checkout", "-q", "-b", f"work-{rng.randrange(10**6)}")
            git(path, "add", "-A", "junk")
            git(path, "commit", "-q", "-m", "holder work")
        elif roll < 0.4:
            git(path, "stash", "-q")

    def allocate_held(self) -> int | None:
        """Allocate a slot to a live sleeper (uninterrupted) and dirty it."""
        holder = self.sleeper()
        out = self.cli("allocate", POOL, "--no-fetch", "--pid", str(holder.pid), "--json")
        if out.code == 75:
            return None
        if out.code != 0:
            self.fail(f"setup allocate failed: {out}")
        number = int(json.loads(out.stdout)["slot_id"].rsplit("-", 1)[1])
        self.dirty(number)
        return number

    # --- one trial ----------------------------------------------------------------------------
    def by_state(self, wanted: str) -> list[int]:
        return sorted(n for n, s in self.slots().items() if s["state"] == wanted)

    def trial(self, op: str) -> tuple[Outcome, set[int]]:
        """Prepare ``op``, run it under a random kill; return the outcome and the slots it
        may legitimately remove."""
        rng = self.rng
        delay = rng.uniform(0, KILL_WINDOW)
        count = len(self.slots())
        if op == "remove" and count <= MIN_SLOTS:
            op = "add"
        if op in ("add", "sync") and count >= MAX_SLOTS:
            op = "remove"
        self.ops[op] += 1
        may_remove: set[int] = set()
        if op == "allocate":
            if not self.by_state("available"):
                self.release_one()
            holder = self.sleeper()
            args = ["allocate", POOL, "--pid", str(holder.pid), "--json"]
            if rng.random() < 0.3:
                args.append("--no-fetch")
            out = self.launch(args, delay)
            if out.code == 0:
                self.dirty(int(json.loads(out.stdout)["slot_id"].rsplit("-", 1)[1]))
            return self.expect(out, (0, 75)), may_remove
        if op == "release":
            held = self.by_state("allocated") or [self.allocate_held()]
            if held[0] is None:
                return self.skip(op), may_remove
            number = rng.choice(held)
            lease = self.slots()[number]["lease"]["lease_id"]
            args = ["release", f"{POOL}-{number}", "--lease-id", lease]
            if rng.random() < 0.3:
                args.append("--no-fetch")
            return self.expect(self.launch(args, delay), (0,)), may_remove
        if op == "add":
            return self.expect(self.launch(["add", POOL], delay), (0,)), may_remove
        if op == "remove":
            candidates = self.by_state("available")
            args = ["remove"]
            if not candidates or rng.random() < 0.3:
                candidates = self.by_state("allocated") or candidates
                args.append("--force")
            if not candidates:
                return self.skip(op), may_remove
            number = rng.choice(candidates)
            may_remove.add(number)
            out = self.launch([*args, f"{POOL}-{number}"], delay)
            return self.expect(out, (0,)), may_remove
        if op == "recover":
            slots = self.slots()
            number = rng.choice(sorted(slots))
            args = ["recover", f"{POOL}-{number}"]
            if slots[number]["state"] == "allocated":
                args.append("--force")  # takes it from a live holder, saving its work
            return self.expect(self.launch(args, delay), (0,)), may_remove
        if op == "auto-recover":
            # Something to heal: a holder that died with a dirty slot.
            if not self.by_state("allocated"):
                self.allocate_held()
            if self.sleepers:
                victim = self.sleepers.pop(rng.randrange(len(self.sleepers)))
                victim.kill()
                victim.wait()
            return self.expect(self.launch(["auto-recover"], delay), (0,)), may_remove
        if op == "sync":
            # grows this pool and creates (or grows) a second one, so a kill can also land
            # in the middle of a pool's creation
            if (self.root / "pools" / SIDE).exists() and rng.random() < 0.5:
                out = self.cli("delete", SIDE, "--force")
                if out.code != 0:
                    self.fail(f"setup delete failed: {out}")
            self.config.write_text(
                f'[pools.{POOL}]\nurl = "{self.upstream}"\nnum_slots = {count + 1}\n'
                f'[pools.{SIDE}]\nurl = "{self.upstream}"\nnum_slots = {rng.randint(1, 2)}\n')
            out = self.launch(["--config", str(self.config), "sync"], delay)
            return self.expect(out, (0,)), may_remove
        raise AssertionError(op)

    def skip(self, op: str) -> Outcome:
        out = Outcome([op], 0, "", "", None, 0.0)
        self.history.append(f"{op}: skipped (no candidate)")
        return out

    def expect(self, out: Outcome, codes: tuple[int, ...]) -> Outcome:
        if not out.killed and out.code not in codes:
            self.fail(f"command that was not killed failed: {out}")
        if out.killed is None and "Traceback" in out.stderr:
            self.fail(f"traceback on stderr: {out}")
        return out

    def release_one(self) -> None:
        for number in self.by_state("allocated"):
            lease = self.slots()[number]["lease"]["lease_id"]
            out = self.cli("release", f"{POOL}-{number}", "--lease-id", lease, "--no-fetch")
            if out.code != 0:
                self.fail(f"setup release failed: {out}")
            return

    # --- invariants ---------------------------------------------------------------------------
    def check_after_trial(self, before: set[int], may_remove: set[int]) -> None:
        try:
            slots = self.slots()
        except (OSError, tomllib.TOMLDecodeError, KeyError, AssertionError) as exc:
            self.fail(f"a state file does not parse after the kill: {exc!r}")
        lost = before - set(slots) - may_remove
        if lost:
            self.fail(f"slots {sorted(lost)} vanished from the state")
        for number, slot in sorted(slots.items()):
            path = self.slot_path(number)
            if slot["state"] in ("available", "allocated") and not (path / ".git").is_dir():
                self.fail(f"slot {number} is {slot['state']} but {path} is not a working copy")
            if slot["state"] != "available":
                continue
            if slot.get("needs_cleanup"):
                self.fail(f"slot {number} is available with needs_cleanup (nobody asked for it)")
            dirty = git(path, "status", "--porcelain", "--ignored")
            if dirty:
                self.fail(f"slot {number} is available but dirty:\n{dirty[:500]}")
            head = git(path, "rev-parse", "HEAD")
            if slot.get("commit") and head != slot["commit"]:
                self.fail(f"slot {number} is available at {head}, not its commit "
                          f"{slot['commit']}")
            refs = git(path, "for-each-ref", "--format=%(refname)").split()
            extra = [r for r in refs if not r.startswith("refs/remotes/origin/")]
            if extra:
                self.fail(f"slot {number} is available with leftover refs {extra}")
            if git(path, "symbolic-ref", "-q", "HEAD", check=False):
                self.fail(f"slot {number} is available on a branch, not detached")

    def check_healed(self, tip: str) -> None:
        """Every holder is dead: one auto-recover must bring the pool back whole."""
        out = self.cli("auto-recover", "--json")
        if out.code != 0:
            self.fail(f"auto-recover after crashes failed: {out} {out.stdout[-1500:]}")
        slots = self.slots()
        bad = {n: s["state"] for n, s in slots.items() if s["state"] != "available"}
        if bad:
            self.fail(f"after auto-recover, slots not available: {bad}\n{out.stdout[-1500:]}")
        detect = self.cli("detect", "--json")
        if detect.code != 0:
            self.fail(f"detect after auto-recover found anomalies: {detect.stdout[-1500:]}")
        leftovers = self.temps()
        if leftovers:
            self.fail(f"temporary entries left after auto-recover: {sorted(map(str, leftovers))}")
        on_disk = set(os.listdir(self.pool_dir / "slots"))
        if on_disk != {str(n) for n in slots}:
            self.fail(f"slot directories {sorted(on_disk)} != slots in state {sorted(slots)}")
        strays = set(os.listdir(self.pool_dir)) - KNOWN
        if strays:
            self.fail(f"stray entries in the pool directory: {sorted(strays)}")
        if os.listdir(self.pool_dir / "locks"):
            self.fail(f"lock files left: {os.listdir(self.pool_dir / 'locks')}")
        self.check_after_trial(set(slots), set())
        granted = {}
        for _ in slots:
            out = self.cli("allocate", POOL, "--json")
            if out.code != 0:
                self.fail(f"allocating every slot after auto-recover failed: {out}")
            data = json.loads(out.stdout)
            if data["current_commit"] != tip:
                self.fail(f"{data['slot_id']} handed out at {data['current_commit']}, "
                          f"upstream tip is {tip}")
            granted[data["slot_id"]] = data["lease_id"]
        if len(granted) != len(slots):
            self.fail(f"the same slot was handed out twice: {granted}")
        extra = self.cli("allocate", POOL, "--no-fetch")
        if extra.code != 75:
            self.fail(f"allocating beyond the pool's size: {extra}")
        for slot_id, lease in granted.items():
            out = self.cli("release", slot_id, "--lease-id", lease, "--no-fetch")
            if out.code != 0:
                self.fail(f"release after the healed allocation failed: {out}")


@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_the_pool(root, upstream, manager, tmp_path,
                                                         capsys):
    rng = random.Random(SEED)
    with capsys.disabled():
        print(f"\n[crash] seed={SEED} trials={TRIALS} (NECROPOOL_CRASH_SEED / "
              "NECROPOOL_CRASH_TRIALS to reproduce or resize)", flush=True)
    manager.create_pool(PoolSpec(name=POOL, url=str(upstream), num_slots=4))
    h = Harness(root, upstream, tmp_path / "config.toml", rng)
    started = time.monotonic()
    previous_temps: set[Path] = set()
    checks = 0
    try:
        for i in range(1, TRIALS + 1):
            if rng.random() < 0.1:  # upstream moves on now and then
                commit_file(upstream, f"up/{i}.txt", f"upstream change {i}\n")
            before = set(h.slots())
            out, may_remove = h.trial(rng.choice(OPS))
            if out.killed is None and previous_temps & h.temps():
                h.fail(f"{out} completed, but the leftovers of the command killed before it "
                       f"are still there: {sorted(map(str, previous_temps & h.temps()))}")
            h.check_after_trial(before, may_remove)
            previous_temps = {p for p in h.temps() if out.killed}
            if i % CHECK_EVERY == 0 or i == TRIALS:
                h.kill_sleepers()
                tip = commit_file(upstream, f"check/{i}.txt", f"checkpoint {i}\n")
                h.check_healed(tip)
                checks += 1
                previous_temps = set()
    finally:
        h.kill_sleepers()
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"[crash] seed={SEED}: {TRIALS} trials in {elapsed:.1f}s, {h.kills} killed "
              f"mid-command, {h.completed} completed commands, {checks} full heal checks; "
              f"ops {h.ops}", flush=True)


def test_leftovers_are_swept_on_a_host_with_a_dotted_name(monkeypatch, tmp_path):
    """Temp names carry the owner's host, pid and start time; a fully qualified host name
    (dots) must not stop necropool from recognising its own dead processes' leftovers, nor
    make it touch a live process's or another host's."""
    from necropool.ground import layout, proc

    monkeypatch.setattr(proc, "hostname", lambda: "build-7.ci.example.com")
    monkeypatch.setattr(layout, "hostname", proc.hostname)
    victim = subprocess.Popen(["sleep", "30"])
    start = proc.Holder.of(victim.pid).start
    victim.kill()
    victim.wait()
    mine = layout.temp_name("state.toml")  # this (live) process's
    prefix = mine.rsplit(".", 2)[0]
    dead = f"{prefix}.{victim.pid}.{start}"
    foreign = mine.replace("build-7_ci_example_com", "other_host")
    assert foreign != mine
    for name in (mine, dead, foreign, layout.trash_name("3")):
        (tmp_path / name).write_text("x")
    swept = layout.sweep_temp(tmp_path, tmp_path)
    assert swept == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted([mine, foreign, layout.trash_name("3")])
