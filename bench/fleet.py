"""Fleet benchmark: one PostgreSQL ledger, HOSTS simulated hosts x SLOTS slots, PROCS x
THREADS concurrent allocators (one process per simulated host, one connection per thread)
on loopback, with its own throw-away PostgreSQL server (fsync on: commits durable).

    python bench/fleet.py [--quick] [--json FILE] [--hold-ms MS] [--seconds S]

Closed loop by default (each allocator holds its slot ~5 ms: the ledger saturated); with
holds of seconds (--hold-ms 10000 --seconds 60) the same allocators offer a paced load and
pgbench runs at their rate.

Phases: steady load; pgbench running the same claim SQL with as many clients (the floor);
chaos (10 % of the allocator processes SIGKILLed at random moments, ``necropool
auto-recover`` run on every simulated host during and after); PostgreSQL restarted
(``pg_ctl restart -m fast``) in the middle of the load. After each phase the ledger is
audited: every slot available, none half-claimed, no lease a journal records left behind.
A cycle is at the store level (see bench/fleet_worker.py; git cleanup left out). Exits 1
when a double hold or a lost lease was seen. How a claim grows with the ledger's size, the
CLI in the loop, through PgBouncer and over a distant link: bench/fleet_scale.py.
"""

import argparse
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from fleet_scale import DURABLE  # noqa: E402
from fleet_worker import alive  # noqa: E402
from pgcluster import Cluster  # noqa: E402
from repos import GIT_ENV, make_small_repo  # noqa: E402

from necropool.store.pg import schema as ledger  # noqa: E402

PYTHON = sys.executable
WORKER = [PYTHON, str(HERE / "fleet_worker.py")]
POOL = "web"
FULL = {"hosts": 50, "slots": 20, "threads": 10, "seconds": 30.0, "hold_ms": 5.0}
QUICK = {"hosts": 5, "slots": 4, "threads": 4, "seconds": 4.0, "hold_ms": 5.0}


def host_name(i: int) -> str:
    return f"host-{i:02d}"


def percentiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49], 2), "p95_ms": round(cuts[94], 2),
            "p99_ms": round(cuts[98], 2)}


class Fleet:
    def __init__(self, work: Path, cluster: Cluster, cfg: dict):
        self.work, self.cluster, self.cfg = work, cluster, cfg
        self.hosts = [host_name(i + 1) for i in range(cfg["hosts"])]
        self.config = work / "config.toml"
        self.config.write_text("")
        self.dsn = cluster.create_database("ledger")
        ledger.migrate(self.dsn)

    def env(self, host: str) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "NECROPOOL_"))}
        return {**clean, **GIT_ENV, "NECROPOOL_HOME": str(self.work / "hosts" / host),
                "NECROPOOL_HOST": host, "NECROPOOL_LEDGER": self.dsn,
                "NECROPOOL_CONFIG": str(self.config)}

    def necropool(self, host: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "necropool", *args], env=self.env(host),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def setup(self) -> dict:
        upstream = make_small_repo(self.work / "upstream")
        started = time.perf_counter()

        def create(host: str) -> None:
            proc = self.necropool(host, "create", POOL, str(upstream), "--slots",
                                  str(self.cfg["slots"]))
            if proc.returncode:
                raise RuntimeError(f"create on {host} exited {proc.returncode}: {proc.stderr}")

        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            list(pool.map(create, self.hosts))
        return {"seconds": round(time.perf_counter() - started, 1),
                "slots": self.audit()["slots"]}

    def probe(self, cycles: int) -> dict:
        out = self.work / "probe.json"
        subprocess.run([*WORKER, "probe", "--cycles", str(cycles), "--out", str(out)],
                       env=self.env(self.hosts[0]), check=True)
        return json.loads(out.read_text())

    def load(self, name: str, during=None) -> dict:
        """Every host's allocators for ``seconds``; ``during(procs, go)`` runs meanwhile."""
        phase = self.work / name
        phase.mkdir()
        procs = {}
        for host in self.hosts:
            argv = [*WORKER, "cycles", "--threads", str(self.cfg["threads"]),
                    "--hold-ms", str(self.cfg["hold_ms"]), "--seconds", str(self.cfg["seconds"]),
                    "--go", str(phase / "go"), "--ready", str(phase / f"{host}.ready"),
                    "--journal", str(phase / f"{host}.journal"),
                    "--out", str(phase / f"{host}.json")]
            with open(phase / f"{host}.err", "w") as err:
                procs[host] = subprocess.Popen(argv, env=self.env(host), stderr=err,
                                               stdin=subprocess.DEVNULL)
        try:
            return self.run(phase, procs, during)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()

    def run(self, phase: Path, procs: dict, during) -> dict:
        go = phase / "go"
        while not all((phase / f"{h}.ready").exists() for h in self.hosts):
            dead = [h for h, p in procs.items() if p.poll() not in (None, 0)]
            if dead:
                raise RuntimeError(f"the allocators of {dead[0]} died before the start: "
                                   + (phase / f"{dead[0]}.err").read_text()[-2000:])
            time.sleep(0.05)
        before = self.audit()["allocation_count"]
        start = time.time()
        go.write_text(str(start))
        extra = during(procs, start) if during else {}
        codes = {h: p.wait() for h, p in procs.items()}
        elapsed = time.time() - start
        extra = extra() if callable(extra) else extra
        result = self.collect(phase, codes)
        audit = self.audit(result.pop("open_leases"))
        result["ledger_grants"] = audit["allocation_count"] - before
        result.update(seconds=round(elapsed, 1),
                      throughput=round(result["cycles"] / self.cfg["seconds"], 1),
                      audit=audit, **extra)
        return result

    def collect(self, phase: Path, codes: dict[str, int]) -> dict:
        timings: dict[str, list[float]] = {"claim": [], "end": [], "release": []}
        totals: dict = {"cycles": 0, "double_holds": 0, "exit_codes": set(), "errors": [],
                        "doubles": []}
        open_leases: list[str] = []
        claims = held_by_killed = 0
        for host, code in codes.items():
            tried, claimed, ended = set(), set(), set()
            for line in (phase / f"{host}.journal").read_text().splitlines():
                kind, lease = line.split()[:2]
                {"T": tried, "C": claimed, "E": ended}[kind].add(lease)
            claims += len(claimed)
            totals["cycles"] += len(ended)
            open_leases += (tried - ended)
            if code != 0:  # killed: its journal is all there is
                held_by_killed += len(claimed - ended)
                continue
            data = json.loads((phase / f"{host}.json").read_text())
            for key, values in data.pop("timings_ms").items():
                timings[key] += values
            for key, value in data.items():
                if isinstance(value, int) and key not in ("pid", "cycles"):
                    totals[key] = totals.get(key, 0) + value
            totals["exit_codes"] |= set(data["exit_codes"])
            totals["errors"] += data["errors"]
            totals["doubles"] += data["doubles"]
        totals.update(claims_journaled=claims, claim_samples=len(timings["claim"]),
                      leases_held_by_killed=held_by_killed,
                      end_lease=percentiles(timings["end"]),
                      release_transaction=percentiles(timings["release"]),
                      exit_codes=sorted(totals["exit_codes"]), errors=totals["errors"][:5],
                      open_leases=open_leases, killed=sorted(h for h, c in codes.items() if c),
                      **percentiles(timings["claim"]))
        return totals

    def audit(self, leases: list[str] | None = None) -> dict:
        """The ledger after a phase: every slot accounted for, none half-claimed, and which
        of ``leases`` (leases journaled but not ended) are still there."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT state, lease_id, allocated_at, holder_pid, "
                                "allocation_count FROM slots WHERE pool = %s",
                                (POOL,)).fetchall()
            left = conn.execute("SELECT count(*) FROM slots WHERE lease_id = ANY(%s)",
                                (leases or [],)).fetchone()[0]
        states: dict[str, int] = {}
        for state, *_ in rows:
            states[state] = states.get(state, 0) + 1
        half = sum(1 for s, lease, at, *_ in rows
                   if (s == "allocated") != (lease is not None and at is not None))
        dead = sum(1 for s, _, _, pid, _ in rows
                   if s == "allocated" and not (pid is not None and alive(pid)))
        expected = self.cfg["hosts"] * self.cfg["slots"]
        return {"slots": len(rows), "missing": expected - len(rows), "states": states,
                "half_claimed": half, "allocated_to_dead": dead,
                "journaled_leases_left": left,
                "allocation_count": sum(r[4] for r in rows)}

    def recover(self, host: str) -> dict:
        proc = self.necropool(host, "auto-recover", POOL, "--json")
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            data = {"errors": [proc.stderr.strip()[-300:]]}
        return {"exit": proc.returncode, **data}

    def chaos(self, procs: dict, start: float):
        """Kill 10 % of the allocators at random moments while auto-recover goes round the
        hosts; afterwards one more auto-recover on every host."""
        rng = random.Random(14)
        victims = rng.sample(sorted(procs), max(1, round(len(procs) / 10)))
        seconds = self.cfg["seconds"]
        kills = sorted((start + rng.uniform(0.15, 0.75) * seconds, h) for h in victims)
        runs: list[dict] = []
        done = threading.Event()

        def killer() -> None:
            for at, host in kills:
                time.sleep(max(0.0, at - time.time()))
                procs[host].kill()

        def recoverer() -> None:
            time.sleep(max(0.0, kills[0][0] - time.time()))
            for host in itertools.cycle(self.hosts):
                if done.is_set():
                    return
                runs.append(self.recover(host))

        threads = [threading.Thread(target=killer), threading.Thread(target=recoverer)]
        for thread in threads:
            thread.start()

        def after() -> dict:
            done.set()
            for thread in threads:
                thread.join()
            during = len(runs)
            with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
                runs.extend(pool.map(self.recover, self.hosts))
            counters = ("abandoned_released", "expired_released", "orphaned_locks_cleaned")
            return {"killed_hosts": sorted(victims), "recover_runs_during": during,
                    "recover_runs_after": len(runs) - during,
                    "recover": {c: sum(r.get(c, 0) for r in runs) for c in counters},
                    "recover_exit_codes": sorted({r["exit"] for r in runs}),
                    "recover_errors": [e for r in runs for e in r.get("errors", [])][:5]}

        return after

    def restart(self, procs: dict, start: float) -> dict:
        time.sleep(max(0.0, start + self.cfg["seconds"] / 2 - time.time()))
        port = self.cluster.port
        began = time.perf_counter()
        self.cluster.restart("fast")
        return {"restart_seconds": round(time.perf_counter() - began, 2),
                "same_port": self.cluster.port == port}

    def floor(self, rate: float | None) -> dict:
        """pgbench with as many clients running the claim SQL, then the release UPDATE: as
        fast as it can, or at ``rate`` transactions a second (a schedule: 500 clients that
        each hold their slot for seconds would otherwise start all at once)."""
        clients = self.cfg["hosts"] * self.cfg["threads"]
        logs = self.work / "pgbench"
        logs.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        proc = subprocess.run(
            [str(self.cluster.bindir / "pgbench"), "-n", "-c", str(clients), "-j", "2",
             "-T", str(int(self.cfg["seconds"])), "-f", str(HERE / "fleet_claim.sql"),
             "-D", f"hosts={self.cfg['hosts']}", *(["-R", str(rate)] if rate else []),
             "-r", "-l", f"--log-prefix={logs}/log", self.dsn],
            env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"pgbench exited {proc.returncode}: {proc.stderr[-1000:]}")
        tps = float(re.search(r"tps = ([\d.]+)", proc.stdout).group(1))
        latencies = [int(line.split()[2]) / 1000 for log in logs.iterdir()
                     for line in log.read_text().splitlines()]
        statements = [(float(ms), sql[:60]) for ms, sql in re.findall(
            r"^\s+([\d.]+)\s+(?:\d+\s+)?(\S.*)$", proc.stdout.split("statement latencies")[1],
            re.M)]
        release = "UPDATE slots SET state = 'available'"
        claim = sum(ms for ms, sql in statements if not sql.startswith(("\\", release)))
        return {"clients": clients, "rate": rate, "tps": round(tps, 1),
                "transactions": len(latencies),
                "claim_statements_avg_ms": round(claim, 2), "statements_avg_ms": statements,
                "cycle": percentiles(latencies), "audit": self.audit()}


def violations(report: dict) -> list[str]:
    found = []
    for name in ("steady", "chaos", "restart"):
        phase = report["phases"][name]
        audit = phase["audit"]
        if phase["double_holds"]:
            found.append(f"{name}: {phase['double_holds']} double holds")
        lost = (phase.get("leases_lost", 0) + audit["missing"] + audit["half_claimed"]
                + audit["allocated_to_dead"] + audit["journaled_leases_left"]
                + sum(n for s, n in audit["states"].items() if s != "available"))
        phase["lost"] = lost
        if lost:
            found.append(f"{name}: {lost} leases lost or slots not available: {audit}")
    return found


def table(report: dict) -> str:
    """Claim latency percentiles (ms) as the client sees them, end_lease and release
    transaction p95; pgbench: its claim statements' average, whole-cycle percentiles."""
    head = ("phase", "cycles", "cyc/s", "claim p50", "p95", "p99", "end p95", "rel p95",
            "double", "lost", "retries")
    widths = (10, 8, 8, 12, 9, 9, 9, 9, 7, 5, 8)
    rows = [head]
    for name in ("steady", "chaos", "restart"):
        p = report["phases"][name]
        retries = sum(p.get(k, 0) for k in ("claim_retries", "end_retries", "release_retries"))
        rows.append((name, p["cycles"], p["throughput"], p["p50_ms"], p["p95_ms"], p["p99_ms"],
                     p["end_lease"]["p95_ms"], p["release_transaction"]["p95_ms"],
                     p["double_holds"], p["lost"], retries))
    f = report["phases"]["floor"]
    rows.append(("pgbench", f["transactions"], f["tps"], f"{f['claim_statements_avg_ms']} avg",
                 f["cycle"]["p50_ms"], f["cycle"]["p95_ms"], "", "", "", "", ""))
    return "\n".join("".join(f"{v!s:>{w}}" if i else f"{v!s:<{w}}"
                             for i, (v, w) in enumerate(zip(row, widths, strict=True)))
                     for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 hosts x 4 slots, seconds")
    parser.add_argument("--json", help="write every figure there")
    parser.add_argument("--seconds", type=float, help="length of each load phase")
    parser.add_argument("--hold-ms", type=float, help="how long each cycle holds its slot")
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: getattr(args, k) for k in ("seconds", "hold_ms") if getattr(args, k)})
    clients = cfg["hosts"] * cfg["threads"]
    report: dict = {"config": {**cfg, "allocators": clients, "cpus": os.cpu_count()},
                    "phases": {}}
    with tempfile.TemporaryDirectory(prefix="necropool-fleet-") as tmp, \
            Cluster(max_connections=clients + 100, shared_buffers="128MB",
                    settings=DURABLE) as cluster:
        fleet = Fleet(Path(tmp), cluster, cfg)
        report["setup"] = fleet.setup()
        report["probe"] = fleet.probe(5 if args.quick else 10)
        report["phases"]["steady"] = fleet.load("steady")
        paced = cfg["hold_ms"] >= 100  # then pgbench runs at the allocators' rate
        report["phases"]["floor"] = fleet.floor(
            report["phases"]["steady"]["throughput"] if paced else None)
        report["phases"]["chaos"] = fleet.load("chaos", fleet.chaos)
        report["phases"]["restart"] = fleet.load("restart", fleet.restart)
    problems = violations(report)
    report["violations"] = problems
    print(table(report))
    print(f"claim p95 target <= 20 ms; pgbench: the same claim SQL and a release UPDATE, "
          f"{report['phases']['floor']['clients']} clients (its p50/p95: whole cycles)")
    print(f"one cycle, single client: lifecycle allocate+release(clean=False) "
          f"{report['probe']['lifecycle_ms']} ms, store level {report['probe']['store_ms']} ms")
    for problem in problems:
        print("VIOLATION:", problem)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
