"""A ledger that goes back in time: restored from a dump taken earlier (what an asynchronous
failover does) while holders work in their slots. The host is the truth for its own slots:
nothing in use is handed out, ``detect`` reports the divergence, ``auto-recover`` writes the
host's leases back (or frees what nothing is in), and no holder's work is lost."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_cli
from test_ledger import on

from necropool.ground.config import PoolSpec, load_settings
from necropool.manager.facade import PoolManager
from necropool.store.pg.connect import disconnect

pytestmark = [pytest.mark.slow, pytest.mark.ledger_only]


class Holder:
    """A process working in a slot it was allocated (its cwd there, a file of work)."""

    def __init__(self, manager: PoolManager | None, work: str,
                 allocate: Callable[[int], dict] | None = None):
        """Allocated through ``manager``, or by ``allocate`` (given the holder's pid)."""
        self.proc = subprocess.Popen(["sh", "-c", 'read d; cd "$d" && echo in && exec sleep 300'],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.grant = allocate(self.proc.pid) if allocate else manager.allocate_slot(
            "web", pid=self.proc.pid, fetch=False)
        self.path = Path(self.grant["path"])
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{self.path}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "in"
        (self.path / "work.txt").write_text(work)
        self.slot, self.lease = self.grant["slot_id"], self.grant["lease_id"]

    def done(self, manager: PoolManager) -> dict:
        """The holder stops and releases its slot: its work saved under its lease."""
        self.proc.kill()
        self.proc.wait()
        return manager.release_slot(self.slot, self.lease, fetch=False)


def restore(cluster, dsn: str, dump: Path) -> None:
    """The ledger dropped and restored from ``dump`` (the server's clock moves on)."""
    name = dsn.rsplit("/", 1)[1]
    disconnect()
    cluster.create_database(name)
    cluster._run("pg_restore", "--no-owner", "-d", dsn, str(dump), runas=False)


def test_a_ledger_restored_from_an_earlier_dump_hands_out_nothing_in_use(
        ledger_dsn, pg_cluster, upstream, root, tmp_path, monkeypatch):
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    manager = PoolManager(load_settings())
    manager.create_pool(PoolSpec(name="web", url=str(upstream), num_slots=5))
    keeps = Holder(manager, "a\n")  # holds its slot throughout: the ledger agrees
    leaves = Holder(manager, "b\n")  # releases after the dump: its slot goes to `later`
    gone = Holder(manager, "e\n")  # releases after the dump: nothing comes after it
    dump = tmp_path / "ledger.dump"
    pg_cluster._run("pg_dump", "-Fc", "-f", str(dump), "-d", ledger_dsn, runas=False)

    saved = [leaves.done(manager)["rescued"]]
    later = Holder(manager, "c\n")  # on a slot the ledger had as leased to `leaves`
    fresh = Holder(manager, "d\n")  # on a slot the ledger had as free
    saved.append(gone.done(manager)["rescued"])
    passing = Holder(manager, "x\n")  # granted and ended after the dump, on `gone`'s slot
    saved.append(passing.done(manager)["rescued"])
    assert later.slot == leaves.slot and passing.slot == gone.slot
    assert fresh.slot not in (keeps.slot, gone.slot)
    [untouched] = {f"web-{n}" for n in range(1, 6)} - {keeps.slot, later.slot, fresh.slot,
                                                        gone.slot}
    restore(pg_cluster, ledger_dsn, dump)

    in_use = {keeps.slot, later.slot, fresh.slot}
    handed = []
    while (got := run_cli("allocate", "web", "--no-fetch", "--json")).code == 0:
        handed.append(got.json()["slot_id"])
    assert got.code == 75, got
    assert handed == [untouched], (handed, in_use)  # `gone`'s slot: the ledger has it leased
    for holder in (keeps, later, fresh):
        assert (holder.path / "work.txt").exists() and holder.proc.poll() is None

    found = run_cli("detect", "web", "--json")
    assert found.code == 1, found
    diverged = {a["slot_id"]: a for a in found.json()["ledger_divergences"]}
    assert set(diverged) == {later.slot, fresh.slot, gone.slot}, diverged
    assert diverged[later.slot]["lease_id"] == leaves.lease  # the ledger's, ended here
    assert not found.json()["abandoned_slots"]  # `leaves`' dead pid is not its holder's

    healed = run_cli("auto-recover", "web", "--json")
    assert healed.code == 0, healed
    assert healed.json()["ledger_reconciled"] == 3, healed.json()
    assert run_cli("detect", "web").code == 0
    status = {s["slot_id"]: s for s in run_cli("status", "web", "--json").json()["slots"]}
    for holder in (keeps, later, fresh):
        assert status[holder.slot]["lease_id"] == holder.lease
    assert status[gone.slot]["state"] == "available"

    for holder in (keeps, later, fresh):  # no work lost, each saved under its own lease
        rescued = holder.done(manager)["rescued"]
        assert rescued and holder.lease in Path(rescued).name, rescued
    assert all(Path(p).exists() for p in saved)
    assert run_cli("detect", "web").code == 0


def test_any_host_takes_a_hosts_slots_only_once_it_has_checked_them(
        ledger_dsn, pg_cluster, upstream, tmp_path, monkeypatch):
    """After the restore, alpha's slots (one free in the restored ledger yet in use) go to
    no other host until alpha, which alone can see them, has checked them (its
    auto-recover vouches for them in the new incarnation)."""
    monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
    roots = {h: tmp_path / h for h in ("alpha", "beta")}
    for host, slots in (("alpha", "2"), ("beta", "1")):
        made = on(host, roots[host], ledger_dsn, "create", "web", upstream, "--slots", slots)
        assert made.code == 0, made
    assert on("beta", roots["beta"], ledger_dsn, "allocate", "web", "--no-fetch").code == 0
    dump = tmp_path / "ledger.dump"
    pg_cluster._run("pg_dump", "-Fc", "-f", str(dump), "-d", ledger_dsn, runas=False)
    worker = Holder(None, "w\n", lambda pid: on(
        "alpha", roots["alpha"], ledger_dsn, "allocate", "web", "--no-fetch", "--pid",
        str(pid), "--json").json())
    try:
        assert worker.slot == "web-1"
        restore(pg_cluster, ledger_dsn, dump)

        refused = on("beta", roots["beta"], ledger_dsn, "allocate", "web", "--no-fetch",
                     "--any-host")
        assert refused.code == 75, refused
        assert on("alpha", roots["alpha"], ledger_dsn, "auto-recover").code == 0
        got = on("beta", roots["beta"], ledger_dsn, "allocate", "web", "--no-fetch",
                 "--any-host", "--json")
        assert got.code == 0 and got.json()["slot_id"] == "web-2@alpha", got
        status = on("alpha", roots["alpha"], ledger_dsn, "status", "web-1", "--json").json()
        assert status["lease_id"] == worker.lease
    finally:
        worker.proc.kill()
        worker.proc.wait()


def test_a_free_slot_with_a_process_at_work_is_cleaned_before_it_is_handed_out(
        ledger_dsn, upstream, root, monkeypatch):
    """Both the ledger and the host call the slot free, yet a process works in it (a late
    holder, or a lease both forgot), its tree unchanged so far: it is not handed out as it
    is, but the process is ended first, as a released holder's leftovers."""
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    assert run_cli("create", "web", str(upstream), "--slots", "1").code == 0
    late = subprocess.Popen(["sleep", "300"], cwd=root / "pools/web/slots/1")
    try:
        got = run_cli("allocate", "web", "--no-fetch", "--json")
        assert got.code == 0, got
        assert late.poll() is not None, "handed out with a process at work in it"
        events = run_cli("log", "web", "--event", "tampered_free_slot", "--json").json()
        [found] = events["events"]
        assert "processes in it" in found["evidence"], found
    finally:
        late.kill()
        late.wait()
