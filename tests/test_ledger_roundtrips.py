"""Round trips to the ledger, counted by tests/netproxy.py: a link's latency multiplies them.
Each decision on an open connection costs two (its row asked for in the ``BEGIN``'s round
trip, the change and its event written in the ``COMMIT``'s): a claim, a renewal, the end of a
lease, a slot given back (a release is the last two). A CLI command costs what opening the
connection costs plus those: no session setting, no schema check, no state read of its own."""

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import run_cli
from netproxy import Proxy

from necropool.ground.config import PoolSpec, load_settings
from necropool.manager.facade import PoolManager
from necropool.store.pg.connect import connect, disconnect

pytestmark = [pytest.mark.ledger_only]


@pytest.fixture
def proxy(ledger_dsn, pg_cluster, upstream, root, monkeypatch) -> Iterator[Proxy]:
    """A pool ``web`` in a ledger that ``NECROPOOL_LEDGER`` reaches through ``proxy``."""
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    PoolManager(load_settings()).create_pool(PoolSpec(name="web", url=str(upstream),
                                                      num_slots=3))
    disconnect()
    with Proxy(pg_cluster.port) as proxy:
        monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn.replace(
            f":{pg_cluster.port}/", f":{proxy.port}/"))
        yield proxy
    disconnect()


def counted(proxy: Proxy, action: Callable[[], Any]) -> int:
    """Round trips answered while ``action`` ran (the client waits for each answer; the
    goodbye of a connection closing has none)."""
    before = proxy.replies
    action()
    return proxy.replies - before


def test_a_claim_costs_two_round_trips_on_an_open_connection(proxy):
    manager = PoolManager(load_settings())
    first = manager.allocate_slot("web", fetch=False)  # opens the connection
    manager.release_slot(first["slot_id"], first["lease_id"], fetch=False)
    assert counted(proxy, lambda: manager.allocate_slot("web", fetch=False)) == 2


def test_the_cli_costs_the_connection_and_two_round_trips_a_decision(proxy):
    """allocate, renew and release as processes: each opens its connection, then two round
    trips a decision (release: the lease's end, then the slot given back cleaned)."""
    opening = counted(proxy, lambda: (connect(os.environ["NECROPOOL_LEDGER"]), disconnect()))
    # libpq's sslmode=prefer asks for TLS (refused here), then the startup (trust: no
    # password exchange): nothing else.
    assert opening == 2
    results: list[Any] = []

    def cli(*args: str) -> None:
        results.append(run_cli(*args, in_process=False))
        assert results[-1].code == 0, results[-1]

    assert counted(proxy, lambda: cli("allocate", "web", "--no-fetch", "--json", "--ttl",
                                      "600")) == opening + 2
    grant = results[-1].json()
    lease = ("--lease-id", grant["lease_id"])
    assert counted(proxy, lambda: cli("renew", grant["slot_id"], *lease)) == opening + 2
    assert counted(proxy, lambda: cli("release", grant["slot_id"], *lease,
                                      "--no-fetch")) == opening + 4



def test_a_renewal_costs_two_round_trips_on_an_open_connection(proxy):
    """The lease read and locked with the ``BEGIN``, renewed with its event in the
    ``COMMIT``'s: no state read before it."""
    manager = PoolManager(load_settings())
    grant = manager.allocate_slot("web", fetch=False, ttl=600)
    assert counted(proxy, lambda: manager.renew_slot(grant["slot_id"], grant["lease_id"])) == 2
    assert counted(proxy, lambda: manager.renew_slot(grant["slot_id"], grant["lease_id"],
                                                     ttl=900)) == 2
    assert manager.slot_status(grant["slot_id"])["ttl_seconds"] == 900


def test_a_release_costs_two_round_trips_per_decision(proxy):
    """The lease ended with its event (two round trips), then, once the slot is cleaned
    outside any transaction, the slot given back with the cleanup's event (two more)."""
    manager = PoolManager(load_settings())
    grant = manager.allocate_slot("web", fetch=False)
    assert counted(proxy, lambda: manager.release_slot(grant["slot_id"], grant["lease_id"],
                                                       fetch=False)) == 4
    assert manager.slot_status(grant["slot_id"])["state"] == "available"


def test_a_read_or_a_sign_of_life_costs_one_round_trip(proxy):
    """A transaction that needs no answer before its end goes whole in one message: the
    pool's state (``status``), the marker ``allocate --wait`` asks after each wake-up, the
    host's heartbeat (``auto-recover``), an event, a lease's history (what a release whose
    answer was lost asks when it is retried)."""
    store = PoolManager(load_settings()).get_pool("web").store
    store.snapshot()  # opens the connection
    assert counted(proxy, store.snapshot) == 1
    assert counted(proxy, store.marker) == 1
    assert counted(proxy, store.heartbeat) == 1
    assert counted(proxy, lambda: store.append_event("note", detail="x")) == 1
    assert store.read_events()[-1]["detail"] == "x"
    grant = PoolManager(load_settings()).allocate_slot("web", fetch=False)
    history: list[Any] = []
    assert counted(proxy, lambda: history.extend(store.lease_events(grant["lease_id"]))) == 1
    assert [e["event"] for e in history] == ["allocate"]
