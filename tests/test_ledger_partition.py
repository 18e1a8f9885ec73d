"""Partitions between a host and its ledger: the CLI run as a real process through a TCP proxy
(tests/netproxy.py) that cuts the link before the K-th round trip reaches the server
(``cut_at``), cuts it after the server acted but before its answer arrives (``cut_after``,
the lost reply) or holds a round trip (``stall_at``), for every K of allocate, release,
renew and auto-recover (counted first through the proxy with no fault).

What must hold whatever K is: the command's answer is true. Exit 0 means done (the lease
exists for allocate; gone, and recorded as released, for release); 75 means nothing was
written (no lease after an allocate; the lease still current after a release or renew). A
release retried after a lost answer is done, never "stale" (5). And a stall never makes a
command wait on the ledger longer than ``ledger_timeout`` (plus process start-up)."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import CliResult
from netproxy import Proxy

from necropool.ground.config import PoolSpec, load_settings
from necropool.manager.facade import PoolManager

pytestmark = [pytest.mark.slow, pytest.mark.ledger_only]

BOUND = 2.0  # NECROPOOL_LEDGER_TIMEOUT of the faulted commands (seconds)
MARGIN = 2.0  # seconds: settling a lost answer, and a loaded machine's noise


@dataclass
class Link:
    """A pool ``web`` in the ledger ``direct``; ``via``: the same ledger through ``proxy``."""

    direct: str
    via: str
    proxy: Proxy
    manager: PoolManager

    def run(self, *args: str, bound: float = BOUND) -> tuple[CliResult, float]:
        """``necropool ARGS`` through the proxy; its result and how long it took."""
        env = dict(os.environ, NECROPOOL_LEDGER=self.via,
                   NECROPOOL_LEDGER_TIMEOUT=str(bound))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "necropool", *args], env=env,
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        return CliResult(proc), time.monotonic() - started

    def rows(self) -> dict[int, dict[str, Any]]:
        """The ledger's slot rows, read directly (not through the proxy)."""
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.direct, row_factory=dict_row) as conn:
            return {r["number"]: r for r in conn.execute(
                "SELECT number, state, lease_id, expires_at, generation FROM slots "
                "WHERE pool = 'web'")}

    def events(self, lease_id: str) -> list[str]:
        import psycopg

        with psycopg.connect(self.direct) as conn:
            return [n for (n,) in conn.execute(
                "SELECT name FROM events WHERE fields->>'lease_id' = %s ORDER BY id",
                (lease_id,))]

    def leases(self) -> set[str]:
        return {r["lease_id"] for r in self.rows().values() if r["lease_id"]}

    def free_all(self) -> None:
        """Every lease released (directly), so the next case starts from a free pool."""
        for row in self.rows().values():
            if row["lease_id"]:
                self.manager.release_slot(f"web-{row['number']}", row["lease_id"],
                                          fetch=False)
            elif row["state"] != "available":
                self.manager.recover_slot(f"web-{row['number']}")


@pytest.fixture
def link(ledger_dsn, upstream, root, monkeypatch, pg_cluster) -> Iterator[Link]:
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    manager = PoolManager(load_settings())
    manager.create_pool(PoolSpec(name="web", url=str(upstream), num_slots=2))
    port = f":{pg_cluster.port}/"
    with Proxy(pg_cluster.port) as proxy:
        yield Link(ledger_dsn, ledger_dsn.replace(port, f":{proxy.port}/"), proxy, manager)


def each_round_trip(link: Link, setup: Callable[[], Any], command: Callable[[Any], list[str]],
                    check: Callable[[Any, CliResult], None], fault: str) -> int:
    """Run ``command`` once without a fault to count its round trips, then once per round
    trip K with ``fault`` there, ``check``-ing each answer; returns the count."""
    state = setup()
    start = link.proxy.round_trips
    clean, _ = link.run(*command(state))
    assert clean.code == 0, clean
    count = link.proxy.round_trips - start
    assert count >= 4, count
    link.free_all()
    for k in range(1, count + 1):
        state = setup()
        link.proxy.reset()
        base = link.proxy.round_trips
        getattr(link.proxy, fault)(base + k)
        result, _ = link.run(*command(state))
        link.proxy.reset()
        assert result.code in (0, 75), (k, fault, result)
        check(state, result)
        link.free_all()
    return count


def nothing_held(link: Link) -> Callable[[], dict]:
    def setup() -> dict:
        return {"before": link.leases()}
    return setup


@pytest.mark.parametrize("fault", ["cut_at", "cut_after"])
def test_allocate_answers_true_at_every_round_trip(link, fault):
    def check(state: dict, result: CliResult) -> None:
        leases = link.leases() - state["before"]
        if result.code == 0:
            grant = result.json()
            assert leases == {grant["lease_id"]}, (result, leases)
            assert link.events(grant["lease_id"]) == ["allocate"]
        else:  # 75: nothing was written
            assert not leases, (result, leases)

    each_round_trip(link, nothing_held(link), lambda _: ["allocate", "web", "--no-fetch", "--json"],
                    check, fault)


def held(link: Link, ttl: float | None = None) -> Callable[[], dict]:
    def setup() -> dict:
        return link.manager.allocate_slot("web", ttl=ttl, fetch=False)
    return setup


@pytest.mark.parametrize("fault", ["cut_at", "cut_after"])
def test_release_answers_true_and_a_retry_is_done(link, fault):
    def check(grant: dict, result: CliResult) -> None:
        lease = grant["lease_id"]
        if result.code == 0:
            assert lease not in link.leases()
            assert link.events(lease)[:2] == ["allocate", "release"]
        else:  # 75: nothing was written
            assert lease in link.leases() and link.events(lease) == ["allocate"], result
        assert not any(r["state"] == "error" for r in link.rows().values()), result
        again = link.manager.release_slot(grant["slot_id"], lease, fetch=False)
        assert again["lease_id"] == lease and lease not in link.leases()

    each_round_trip(link, held(link),
                    lambda g: ["release", g["slot_id"], "--lease-id", g["lease_id"],
                               "--no-fetch"], check, fault)


@pytest.mark.parametrize("fault", ["cut_at", "cut_after"])
def test_renew_answers_true_at_every_round_trip(link, fault):
    def check(grant: dict, result: CliResult) -> None:
        row = next(r for r in link.rows().values() if r["lease_id"] == grant["lease_id"])
        left = row["expires_at"].timestamp() - time.time()
        if result.code == 0:
            assert left > 3 * 3600 - 120, (result, left)
        else:  # 75: the lease as it was
            assert left < 3600 + 60, (result, left)

    each_round_trip(link, held(link, ttl=3600),
                    lambda g: ["renew", g["slot_id"], "--lease-id", g["lease_id"],
                               "--ttl", "3h"], check, fault)


def dead_holder(link: Link) -> Callable[[], dict]:
    def setup() -> dict:
        child = subprocess.Popen(["sleep", "30"])
        grant = link.manager.allocate_slot("web", pid=child.pid, fetch=False)
        child.kill()
        child.wait()
        return grant
    return setup


@pytest.mark.parametrize("fault", ["cut_at", "cut_after"])
def test_auto_recover_reclaims_truly_at_every_round_trip(link, fault):
    """A dead holder's lease: gone exactly when a reclaim is recorded, never a slot put
    in error by the link."""
    def check(grant: dict, result: CliResult) -> None:
        lease = grant["lease_id"]
        reclaimed = "reclaim" in link.events(lease)
        assert reclaimed == (lease not in link.leases()), (result, link.events(lease))
        assert not any(r["state"] == "error" for r in link.rows().values()), result
        again = link.manager.auto_recover("web")
        assert lease not in link.leases(), again

    def command(_: dict) -> list[str]:
        return ["auto-recover", "web", "--json"]

    setup = dead_holder(link)
    grant = setup()
    start = link.proxy.round_trips
    clean, _ = link.run(*command(grant))
    assert clean.code == 0 and grant["lease_id"] not in link.leases(), clean
    count = link.proxy.round_trips - start
    for k in range(1, count + 1):
        grant = setup()
        base = link.proxy.round_trips
        getattr(link.proxy, fault)(base + k)
        result, _ = link.run(*command(grant))
        link.proxy.reset()
        assert result.code in (0, 3, 75), (k, result)
        check(grant, result)
        link.free_all()


def test_a_stalled_link_fails_within_the_bound(link):
    """A round trip held (the server never hears of it, or its answer never comes back):
    the command gives up after ``ledger_timeout`` with exit 75 (its run without the stall,
    plus the bound, plus a margin) and its answer is true; the ledger's row locks are let
    go (the next command succeeds at once)."""
    bound = 1.0
    commands = {"allocate": lambda g: ["allocate", "web", "--no-fetch", "--json"],
                "renew": lambda g: ["renew", g["slot_id"], "--lease-id", g["lease_id"],
                                    "--ttl", "3h"],
                "release": lambda g: ["release", g["slot_id"], "--lease-id", g["lease_id"],
                                      "--no-fetch"]}
    for name, argv in commands.items():
        grant = link.manager.allocate_slot("web", ttl=3600, fetch=False)
        start = link.proxy.round_trips
        clean, usual = link.run(*argv(grant), bound=bound)
        assert clean.code == 0, clean
        count = link.proxy.round_trips - start
        link.free_all()
        for k in (count // 2, count - 1):
            for reply in (False, True):
                grant = link.manager.allocate_slot("web", ttl=3600, fetch=False)
                link.proxy.stall_at(link.proxy.round_trips + k, reply=reply)
                result, took = link.run(*argv(grant), bound=bound)
                link.proxy.reset()
                assert took < usual + bound + MARGIN, (name, k, reply, took, usual, result)
                assert result.code in (0, 75), (name, k, reply, result)
                if name == "release":
                    assert (grant["lease_id"] in link.leases()) == (result.code == 75)
                if name == "allocate" and result.code == 75:
                    assert link.leases() == {grant["lease_id"]}
                link.free_all()
    assert link.run("allocate", "web", "--no-fetch")[0].code == 0  # nothing left locked
    assert json.loads(link.run("status", "web", "--json")[0].stdout)["counts"][
        "allocated"] == 1
