"""Soak with hostile and careless holders: for a while, holders allocate, write work, and then
release cleanly, plant symlinks in the slot's .git and release, or crash (SIGKILL) leaving
background processes that keep writing in the slot, while ``auto-recover`` and ``detect``
run in loops beside them. Afterwards: no slot was ever held by two live holders, nothing
outside the root changed, every holder's work is in a bundle or a tree moved aside, and
every slot is back, available and equal to a fresh one."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import changes, digest, git
from slots import assert_fresh_clone_equivalent

HOLDERS = 6
SECONDS = float(os.environ.get("NECROPOOL_SOAK_SECONDS", "30"))

_CYCLE = r"""
import fcntl, json, os, random, signal, subprocess, sys, uuid
from pathlib import Path

ledger, tokens, canary, seed = sys.argv[1:5]
rng = random.Random(seed)


def ledger_lines(edit):
    with open(ledger, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        lines = edit(fh.read().splitlines())
        fh.seek(0)
        fh.truncate()
        fh.write("".join(line + "\n" for line in lines))


def np(*args):
    return subprocess.run([sys.executable, "-m", "necropool", *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


grant = np("allocate", "web", "--no-fetch", "--pid", str(os.getpid()), "--wait", "20s", "--json")
if grant.returncode != 0:
    sys.exit(0 if grant.returncode == 75 else grant.returncode)
slot = Path(json.loads(grant.stdout)["path"])
me = f"{slot} {os.getpid()}"


def claim(lines):  # who holds what: another live holder of the slot is a double hold
    for line in lines:
        path, pid = line.rsplit(" ", 1)
        if path == str(slot):
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                continue
            print(f"DOUBLE HOLD of {slot} with {pid}", file=sys.stderr)
            os._exit(9)
    return [*lines, me]


ledger_lines(claim)
token = uuid.uuid4().hex
(slot / f"work-{token}.txt").write_text(token + "\n")
action = rng.choice(["release", "release", "symlink", "crash", "crash-with-leftovers"])
with open(tokens, "a") as fh:
    fh.write(f"{token} {action}\n")
if action == "symlink":
    link = slot / ".git" / rng.choice(["refs/necropool", "objects/ee", "config", "logs"])
    subprocess.run(["rm", "-rf", str(link)])
    link.symlink_to(canary)
if action == "crash-with-leftovers":
    subprocess.Popen(["sh", "-c", "while :; do echo x >> leftover.txt; sleep 0.05; done"],
                     cwd=slot, start_new_session=True, stdout=subprocess.DEVNULL)
if action.startswith("crash"):
    os.kill(os.getpid(), signal.SIGKILL)
ledger_lines(lambda lines: [line for line in lines if line != me])
released = np("release", str(slot), "--no-fetch", "--json")
sys.exit(0 if released.returncode == 0 else 10 + released.returncode)
"""


def _loop(argv: list[str], deadline: float) -> subprocess.Popen:
    script = ("import subprocess, sys, time\n"
              f"while time.time() < {deadline}:\n"
              f"    subprocess.run({argv!r}, capture_output=True)\n"
              "    time.sleep(0.3)\n")
    return subprocess.Popen([sys.executable, "-c", script])


@pytest.mark.slow
def test_soak_with_hostile_and_careless_holders(cli, root, upstream, tmp_path):
    assert cli("create", "web", upstream, "--slots", 3, "--no-fetch-on-allocate").code == 0
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "file.txt").write_text("outside the root\n")
    ledger, tokens = tmp_path / "ledger", tmp_path / "tokens"
    before = digest(canary)
    deadline = time.time() + SECONDS
    np = [sys.executable, "-m", "necropool"]
    loops = [_loop([*np, "auto-recover"], deadline), _loop([*np, "detect"], deadline)]
    cycles, failures = 0, []
    holders: list[subprocess.Popen] = []
    while time.time() < deadline or holders:
        for proc in [p for p in holders if p.poll() is not None]:
            holders.remove(proc)
            cycles += 1
            if proc.returncode not in (0, -9):
                failures.append((proc.returncode, proc.stderr.read()))
        while time.time() < deadline and len(holders) < HOLDERS:
            holders.append(subprocess.Popen(
                [sys.executable, "-c", _CYCLE, str(ledger), str(tokens), str(canary),
                 str(cycles + len(holders))], stderr=subprocess.PIPE, text=True))
        time.sleep(0.05)
    for loop in loops:
        loop.wait(timeout=120)
    for _ in range(5):  # reclaim what the last crashed holders left
        healed = cli("auto-recover", "--json")
        if all(s["state"] == "available" for s in cli("status", "web", "--json").json()["slots"]):
            break
        time.sleep(1)
    print(f"soak: {cycles} holder cycles in {SECONDS:g} s; last auto-recover: {healed.stdout}")

    assert [f for f in failures if f[0] == 9] == [], "a slot was held by two live holders"
    assert failures == [], failures
    assert changes(before, digest(canary)) == [], "a file outside the root was touched"
    status = cli("status", "web", "--json").json()
    assert {s["state"] for s in status["slots"]} == {"available"}, status
    rescued = root / "pools" / "web" / "rescued"
    saved = _saved_tokens(rescued, upstream, tmp_path / "restored")
    log = [line.split() for line in tokens.read_text().splitlines()]
    written = {token for token, _ in log}
    kinds = {kind: sum(1 for _, k in log if k == kind) for _, kind in log}
    print(f"soak: holders' choices {kinds}; {len(saved)} pieces of work found saved")
    assert written and written <= saved, f"{len(written - saved)} holders' work was lost"
    for slot in status["slots"]:
        (tmp_path / slot["slot_id"]).mkdir()
        assert_fresh_clone_equivalent(Path(slot["path"]), upstream, tmp_path / slot["slot_id"])


def _saved_tokens(rescued: Path, upstream: Path, repo: Path) -> set[str]:
    """Every work token found in a bundle (fetched into one clone) or a tree moved aside."""
    found: set[str] = set()
    git(upstream.parent, "clone", "-q", str(upstream), str(repo))
    for i, bundle in enumerate(sorted(rescued.glob("*.bundle"))):
        git(repo, "fetch", "-q", str(bundle), f"refs/necropool/rescue/*:refs/b{i}/*")
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/").split()
    for ref in refs:
        for name in git(repo, "ls-tree", "--name-only", ref).split():
            if name.startswith("work-"):
                found.add(name[5:-4])
    for moved in rescued.iterdir():
        if moved.is_dir():
            found |= {p.name[5:-4] for p in moved.rglob("work-*.txt")}
    return found
