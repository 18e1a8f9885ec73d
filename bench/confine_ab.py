"""What confinement costs a release: the same tree with and without it, A/B, alternating.

    python bench/confine_ab.py [--rounds 30] [--also REF ...] [--json FILE]

Each round releases a clean and a dirty slot (the dirty work of bench/run.py) with every
variant in turn, the order reversed every other round, so that a load that drifts (a shared
machine) weighs on all alike. Variants, each ``necropool/`` exported from git into a temp
dir and run as ``python -m necropool`` on a pool of its own (2,000 files, as release-small):

- ``unconfined``: HEAD with confinement switched off (``slot.confined.run`` calls the work
  in place without importing ``ground/confine``; ``owner_of`` asks nothing);
- ``confined``: HEAD as it is;
- ``--also REF``: another commit as it is (the fork-per-release confinement, say).

Prints the medians of wall time, CPU time (the process and its children: robust to load)
and minor page faults, and each variant's ratio to ``unconfined`` (also the median of the
per-round ratios).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repos import GIT_ENV, make_repo  # noqa: E402
from run import Bench, run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Confinement off, as before it was written: the work runs in place, ground/confine (and
# ctypes) is not imported, and root does not look up a pool's owner (each fails loudly if
# the code it patches has moved).
UNCONFINED = {
    "necropool/slot/confined.py": [
        ("from necropool.ground import confine\n", ""),
        ("    if confine.abi_version() == 0:\n        return fn(*args)\n",
         "    return fn(*args)\n"),
        ('report it."""\n', 'report it."""\n    from necropool.ground import confine\n\n')],
    "necropool/ground/owner.py": [
        ("    if os.geteuid() != 0:\n        return None\n", "    return None\n")],
}


def export(ref: str, into: Path, patches: dict[str, list[tuple[str, str]]]) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "necropool"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name, replacements in patches.items():
        path = into / name
        text = path.read_text()
        for old, new in replacements:
            if old not in text:
                raise SystemExit(f"{name} at {ref} has moved: cannot switch confinement off")
            text = text.replace(old, new, 1)
        path.write_text(text)
    return into


def measured(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and minor faults of one process and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, after.ru_minflt - before.ru_minflt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds (default 30)")
    parser.add_argument("--also", action="append", default=[], metavar="REF",
                        help="another commit to time as it is (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="necropool-confine-ab-"))
    try:
        variants = {"unconfined": export("HEAD", work / "unconfined", UNCONFINED),
                    "confined": export("HEAD", work / "confined", {})}
        for ref in args.also:
            variants[ref] = export(ref, work / f"also-{len(variants)}", {})
        repo = make_repo(work / "small", 2000, 50)
        bench = Bench(work, quick=False, reps=0)  # for its dirty(): the holder's work
        envs = {}
        for label, code in variants.items():
            env = dict(os.environ, NECROPOOL_HOME=str(work / f"root-{label}"),
                       PYTHONPATH=str(code), **GIT_ENV)
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env.pop("NECROPOOL_CONFIG", None)
            envs[label] = env
            np = [sys.executable, "-m", "necropool"]
            run([*np, "create", "rel", str(repo), "--slots", "1", "--no-fetch-on-allocate"],
                cwd=work, env=env)
            for _ in range(2):  # bytecode cached, files warm
                slot = run([*np, "allocate", "rel", "--no-fetch"], cwd=work, env=env).strip()
                run([*np, "release", slot, "--no-fetch"], cwd=work, env=env)
        samples: dict[str, dict[str, list[tuple[float, float, int]]]] = {
            label: {"clean": [], "dirty": []} for label in variants}
        labels = list(variants)
        for n in range(args.rounds):
            for kind in ("clean", "dirty"):
                for label in labels if n % 2 == 0 else labels[::-1]:
                    env = envs[label]
                    np = [sys.executable, "-m", "necropool"]
                    slot = Path(run([*np, "allocate", "rel", "--no-fetch"], cwd=work,
                                    env=env).strip())
                    if kind == "dirty":
                        bench.dirty(slot, n)
                    os.sync()
                    samples[label][kind].append(
                        measured([*np, "release", str(slot), "--no-fetch"], env, work))
            print(f"round {n + 1}/{args.rounds}", file=sys.stderr)
        for kind in ("clean", "dirty"):
            for i, what in enumerate(("wall ms", "CPU ms", "faults")):
                base = [s[i] for s in samples["unconfined"][kind]]
                for label in variants:
                    mine = [s[i] for s in samples[label][kind]]
                    paired = statistics.median(a / b for a, b in zip(mine, base, strict=True))
                    scale = 1 if i == 2 else 1000
                    print(f"{kind:5} {what:7} {label:12} {statistics.median(mine) * scale:9.1f}"
                          f"  x{statistics.median(mine) / statistics.median(base):.3f}"
                          f"  (paired x{paired:.3f})")
        if args.json:
            Path(args.json).write_text(json.dumps(samples) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
