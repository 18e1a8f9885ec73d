"""Fleet scale benchmark: how a claim grows with the ledger's size and the fleet's, the CLI
in the loop, on a throw-away PostgreSQL server with fsync on (durable commits, as in
production).

    python bench/fleet_scale.py [--hosts 1,10,50] [--rows 1000,10000,50000]
        [--cli-cycles 10] [--store-cycles 200] [--pgbench-seconds 3]
        [--delay-ms 50] [--link-cycles 5] [--json FILE] [--quick]

For each layout (HOSTS x ROWS) the ledger holds ROWS slot rows spread evenly over HOSTS
hosts. ``host-01`` is real: a pool ``web`` of 3 slots made by ``necropool create``; the
other rows are free slots that sort after the real ones (marked for a cleanup, released
long ago), so they sit in the claim's index, which every claim descends, but are never
handed out. Per layout:

- ``necropool allocate``, ``renew`` then ``release`` as real processes on host-01, one after
  the other (CLI wall times: start-up, connecting, the claim, the cleanup included);
- the claim through the store API in this process, on an open connection (what the ledger
  adds, sequential);
- pgbench running the same claim SQL (bench/fleet_claim.sql) with 1 client, then with one
  client per host at once;
- ``EXPLAIN (ANALYZE, BUFFERS)`` of the claim's query: the plan and the pages it reads.

Then, on the last layout: the same through a PgBouncer in transaction mode
(tests/pgbouncer.py), and the CLI over a link with ``--delay-ms`` added each way
(tests/netproxy.py ``delay``): connecting straight over the link, and through a PgBouncer
on the host whose server connections cross it (they stay open between commands).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from netproxy import Proxy  # noqa: E402
from pgbouncer import Bouncer, BouncerError  # noqa: E402
from pgcluster import Cluster  # noqa: E402
from repos import GIT_ENV, make_small_repo  # noqa: E402

from necropool.store.pg import schema as ledger  # noqa: E402

PYTHON = sys.executable
POOL, HOST, REAL = "web", "host-01", 3
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
FULL = {"hosts": [1, 10, 50], "rows": [1000, 10000, 50000], "cli_cycles": 10,
        "store_cycles": 200, "pgbench_seconds": 3.0, "delay_ms": 50.0, "link_cycles": 5}
QUICK = {"hosts": [1, 2], "rows": [20, 40], "cli_cycles": 2, "store_cycles": 5,
         "pgbench_seconds": 1.0, "delay_ms": 10.0, "link_cycles": 1}
CLAIM = ("SELECT now() AS server_now, s.* FROM hosts h JOIN slots s USING (pool, host) "
         "WHERE h.pool = 'web' AND h.host = 'host-01' AND s.state = 'available' "
         "AND s.number <> ALL('{}'::integer[]) "
         "ORDER BY needs_cleanup, last_released_at DESC NULLS LAST, number "
         "LIMIT 1 FOR SHARE OF h FOR UPDATE OF s SKIP LOCKED")


def host_name(i: int) -> str:
    return f"host-{i:02d}"


def stats(values: list[float]) -> dict[str, float | None]:
    """Milliseconds: p50 and p95 (None below 2 samples: no percentile of one)."""
    if len(values) < 2:
        one = round(values[0], 1) if values else None
        return {"n": len(values), "p50_ms": one, "p95_ms": one}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50_ms": round(cuts[49], 2), "p95_ms": round(cuts[94], 2)}


class Bench:
    def __init__(self, work: Path, cluster: Cluster, cfg: dict):
        self.work, self.cluster, self.cfg = work, cluster, cfg
        self.direct = cluster.create_database("ledger")
        ledger.migrate(self.direct)
        config = work / "config.toml"
        config.write_text("")
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("PG", "NECROPOOL_")) and k != "PYTHONDONTWRITEBYTECODE"}
        # As an installed necropool runs: its bytecode (and psycopg's) compiled once, not
        # at every start (~200 ms a process where PYTHONDONTWRITEBYTECODE is set), cached
        # in the bench's directory, not next to the sources.
        self.env = {**clean, **GIT_ENV, "NECROPOOL_HOME": str(work / HOST),
                    "NECROPOOL_HOST": HOST, "NECROPOOL_CONFIG": str(config),
                    "PYTHONPYCACHEPREFIX": str(work / "pycache")}
        os.environ.update(self.env)  # this process is host-01 too (the store's claims)

    def necropool(self, dsn: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.perf_counter()
        proc = subprocess.run([PYTHON, "-m", "necropool", *args],
                              env={**self.env, "NECROPOOL_LEDGER": dsn}, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        took = (time.perf_counter() - started) * 1000
        if proc.returncode:
            raise RuntimeError(f"necropool {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr[-1000:]}")
        return proc, took

    def setup(self) -> None:
        upstream = make_small_repo(self.work / "upstream")
        self.necropool(self.direct, "create", POOL, str(upstream), "--slots", str(REAL))

    def sql(self, *statements: str) -> list:
        """Each statement's rows (None for a command), autocommitted one by one."""
        import psycopg

        with psycopg.connect(self.direct, autocommit=True) as conn:
            return [cur.fetchall() if (cur := conn.execute(s)).description else None
                    for s in statements]

    def layout(self, hosts: int, rows: int) -> dict:
        """``rows`` slot rows over ``hosts`` hosts, host-01's real slots among them."""
        per_host = rows // hosts
        started = time.perf_counter()
        self.sql(
            f"DELETE FROM slots WHERE pool = 'web' AND NOT (host = '{HOST}' AND number <= "
            f"{REAL})",
            f"DELETE FROM hosts WHERE pool = 'web' AND host <> '{HOST}'",
            "INSERT INTO hosts (pool, host, root) SELECT 'web', 'host-' || lpad(i::text, 2, "
            f"'0'), '/nonexistent' FROM generate_series(2, {hosts}) i",
            "INSERT INTO slots (pool, host, number, path, state, needs_cleanup, "
            "last_released_at, created_at) SELECT 'web', 'host-' || lpad(h::text, 2, '0'), "
            "n, '/nonexistent/' || n, 'available', true, '2000-01-01', now() "
            f"FROM generate_series(1, {hosts}) h, generate_series(1, {per_host}) n "
            f"WHERE h > 1 OR n > {REAL}",
            "VACUUM ANALYZE slots", "VACUUM ANALYZE hosts")
        count = self.sql("SELECT count(*) FROM slots")[0][0][0]
        return {"hosts": hosts, "rows": count, "rows_per_host": per_host,
                "setup_s": round(time.perf_counter() - started, 1)}

    def cli(self, dsn: str, cycles: int) -> dict:
        """``allocate`` (with a TTL), ``renew`` (by that TTL) then ``release`` as
        processes, one warm-up cycle first."""
        allocate, renew, release = [], [], []
        for n in range(cycles + 1):
            proc, took = self.necropool(dsn, "allocate", POOL, "--no-fetch", "--json",
                                        "--ttl", "3600")
            grant = json.loads(proc.stdout)
            lease = ("--lease-id", grant["lease_id"])
            _, again = self.necropool(dsn, "renew", grant["slot_id"], *lease)
            _, back = self.necropool(dsn, "release", grant["slot_id"], *lease, "--no-fetch")
            if n:
                allocate.append(took)
                renew.append(again)
                release.append(back)
        return {"allocate": stats(allocate), "renew": stats(renew), "release": stats(release)}

    def floor(self, cycles: int) -> dict:
        """A process that imports what ``allocate`` imports (the CLI, its commands, psycopg)
        and does nothing: the start-up every such command pays (on this machine, under its
        load at the time), against which the CLI's times are read."""
        code = "import psycopg, necropool.cli.app, necropool.cli.commands.slots"
        times = []
        for n in range(cycles + 1):  # the first caches the bytecode
            started = time.perf_counter()
            subprocess.run([PYTHON, "-c", code], env=self.env, check=True)
            if n:
                times.append((time.perf_counter() - started) * 1000)
        return stats(times)

    def store(self, dsn: str, cycles: int, connecting: bool = False) -> dict:
        """The claim through the store API on an open connection (this process is host-01),
        or with ``connecting`` on a new one each time (what a command pays the ledger, its
        process start-up left out); the lease then ended and the slot made available, row by
        row, untimed."""
        from necropool.ground.clock import now
        from necropool.ground.config import load_settings
        from necropool.pool.pool import Pool
        from necropool.store.model import AVAILABLE, Lease
        from necropool.store.pg.connect import disconnect

        def available(slot) -> None:
            slot.state, slot.worker, slot.needs_cleanup = AVAILABLE, None, False

        os.environ["NECROPOOL_LEDGER"] = dsn
        try:
            store = Pool(load_settings(), POOL).store
            claims = []
            for n in range(cycles + 1):
                lease = Lease(lease_id=os.urandom(8).hex(), owner="bench", allocated_at=now())
                if connecting:
                    disconnect()
                started = time.perf_counter()
                slot = store.claim(lease, lambda s: True)
                took = (time.perf_counter() - started) * 1000
                assert slot is not None and slot.number <= REAL, slot
                store.end_lease(slot.number, lease.lease_id)
                store.update_slot(slot.number, available)
                if n:  # the first connects
                    claims.append(took)
            return stats(claims)
        finally:
            disconnect()
            del os.environ["NECROPOOL_LEDGER"]

    def pgbench(self, dsn: str, hosts: int, clients: int) -> dict:
        logs = Path(tempfile.mkdtemp(dir=self.work, prefix="pgbench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        proc = subprocess.run(
            [str(self.cluster.bindir / "pgbench"), "-n", "-c", str(clients), "-j", "1",
             "-T", str(max(1, round(self.cfg["pgbench_seconds"]))),
             "-f", str(HERE / "fleet_claim.sql"), "-D", f"hosts={hosts}",
             "-l", f"--log-prefix={logs}/log", dsn],
            env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"pgbench exited {proc.returncode}: {proc.stderr[-1000:]}")
        latencies = [int(line.split()[2]) / 1000 for log in logs.iterdir()
                     for line in log.read_text().splitlines()]
        tps = float(proc.stdout.split("tps = ")[1].split()[0])
        return {"clients": clients, "tps": round(tps, 1), **stats(latencies)}

    def explain(self) -> dict:
        import psycopg

        with psycopg.connect(self.direct) as conn:  # a transaction, rolled back
            plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {CLAIM}")
            top = plan.fetchone()[0][0]
            conn.rollback()

        def nodes(node: dict) -> Iterator[dict]:
            yield node
            for child in node.get("Plans", []):
                yield from nodes(child)

        scans = [f"{n['Node Type']} {n.get('Index Name', n.get('Relation Name', ''))}".strip()
                 for n in nodes(top["Plan"]) if "Scan" in n["Node Type"]]
        return {"scans": scans, "pages": top["Plan"].get("Shared Hit Blocks", 0)
                + top["Plan"].get("Shared Read Blocks", 0),
                "execution_ms": round(top["Execution Time"], 3)}

    def measure(self, dsn: str, hosts: int) -> dict:
        return {"cli": self.cli(dsn, self.cfg["cli_cycles"]),
                "store_claim": self.store(dsn, self.cfg["store_cycles"]),
                "pgbench_1": self.pgbench(dsn, hosts, 1),
                "pgbench_hosts": self.pgbench(dsn, hosts, hosts)}

    def link(self, bouncer_ok: bool) -> dict:
        """Allocate over a link with ``delay_ms`` each way: straight, and through a PgBouncer
        on the host (its server connections cross the link)."""
        delay = self.cfg["delay_ms"] / 1000
        cycles = self.cfg["link_cycles"]
        result: dict = {"delay_ms_each_way": self.cfg["delay_ms"],
                        "cli_start_up": self.floor(cycles)}
        with Proxy(self.cluster.port) as proxy:
            proxy.delay(delay)
            far = self.direct.replace(f":{self.cluster.port}/", f":{proxy.port}/")
            result["direct"] = self.cli(far, cycles)
            result["direct_sslmode_disable"] = self.cli(far + "?sslmode=disable", cycles)
            result["store_claim_open_connection"] = self.store(far, max(cycles, 5))
            result["store_claim_connecting"] = self.store(far, max(cycles, 5), connecting=True)
            if bouncer_ok:
                with Bouncer(self.cluster, pool_size=2, target_port=proxy.port) as bouncer:
                    near = bouncer.dsn("ledger") + "?sslmode=disable"
                    result["via_local_pgbouncer"] = self.cli(near, cycles)
                    result["store_claim_connecting_via_local_pgbouncer"] = self.store(
                        near, max(cycles, 5), connecting=True)
        return result


@contextmanager
def optional_bouncer(cluster: Cluster) -> Iterator[Bouncer | None]:
    try:
        bouncer = Bouncer(cluster, pool_size=4).start()
    except BouncerError as exc:
        print(f"no PgBouncer: {exc}", file=sys.stderr)
        yield None
        return
    with bouncer:
        yield bouncer


def table(report: dict) -> str:
    head = ("layout", "allocate p50/p95", "release p50/p95", "claim p50/p95",
            "pgbench 1c p50/p95", "pgbench Hc p50/p95", "plan pages")
    rows = [head]

    def pair(s: dict) -> str:
        return f"{s['p50_ms']}/{s['p95_ms']}"

    for name, r in report["layouts"].items():
        rows.append((name, pair(r["cli"]["allocate"]), pair(r["cli"]["release"]),
                     pair(r["store_claim"]), pair(r["pgbench_1"]),
                     f"{pair(r['pgbench_hosts'])} ({r['pgbench_hosts']['clients']}c)",
                     str(r["explain"]["pages"])))
    widths = [max(len(str(row[i])) for row in rows) + 2 for i in range(len(head))]
    return "\n".join("".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True))
                     for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--hosts", help="comma-separated host counts (1,10,50)")
    parser.add_argument("--rows", help="comma-separated slot row counts (1000,10000,50000)")
    for name in ("cli-cycles", "store-cycles", "link-cycles"):
        parser.add_argument(f"--{name}", type=int)
    for name in ("pgbench-seconds", "delay-ms"):
        parser.add_argument(f"--{name}", type=float)
    parser.add_argument("--json", help="write every figure there")
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("hosts", "rows"):
        if getattr(args, key):
            cfg[key] = [int(v) for v in getattr(args, key).split(",")]
    cfg.update({k: v for k, v in vars(args).items()
                if k in cfg and k not in ("hosts", "rows") and v is not None})
    report: dict = {"config": {**cfg, "cluster": DURABLE, "cpus": os.cpu_count()},
                    "layouts": {}}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="necropool-scale-") as tmp, \
            Cluster(settings=DURABLE, shared_buffers="128MB") as cluster:
        bench = Bench(Path(tmp), cluster, cfg)
        bench.setup()
        report["cli_start_up"] = bench.floor(cfg["cli_cycles"])
        for rows in cfg["rows"]:
            for hosts in cfg["hosts"]:
                layout = bench.layout(hosts, rows)
                print(f"{hosts} hosts x {rows} rows ...", file=sys.stderr, flush=True)
                report["layouts"][f"{hosts}h x {rows}"] = {
                    **layout, **bench.measure(bench.direct, hosts), "explain": bench.explain()}
        with optional_bouncer(cluster) as bouncer:
            if bouncer is not None:
                print("through PgBouncer ...", file=sys.stderr, flush=True)
                report["pgbouncer"] = {"layout": list(report["layouts"])[-1],
                                       **bench.measure(bouncer.dsn("ledger"), hosts)}
            print("over a distant link ...", file=sys.stderr, flush=True)
            report["link"] = bench.link(bouncer is not None)
    report["seconds"] = round(time.perf_counter() - began)
    print(table(report))
    print(f"CLI start-up (imports, no work): {report['cli_start_up']}")
    if "pgbouncer" in report:
        b = report["pgbouncer"]
        print(f"through PgBouncer (transaction mode, {b['layout']}): allocate "
              f"{b['cli']['allocate']}, claim {b['store_claim']}, pgbench {b['pgbench_hosts']}")
    link = report["link"]
    print(f"link: CLI start-up then {link['cli_start_up']}")
    for key in ("direct", "direct_sslmode_disable", "via_local_pgbouncer"):
        if key in link:
            print(f"link +{link['delay_ms_each_way']} ms each way, {key}: "
                  + ", ".join(f"{command} {link[key][command]}"
                              for command in ("allocate", "renew", "release")))
    print(f"link, claim on an open connection: {link['store_claim_open_connection']}, "
          f"connecting first: {link['store_claim_connecting']}, connecting to a local "
          f"PgBouncer first: {link.get('store_claim_connecting_via_local_pgbouncer')}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
