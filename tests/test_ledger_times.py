"""With a shared ledger, the times a host prints come from the server's clock (UTC, RFC 3339):
hosts whose clocks are off by an hour or a day print the same time for the same moment."""

from datetime import UTC, datetime

import psycopg
import pytest
from helpers import run_cli

from necropool.ground.clock import parse_rfc3339

pytestmark = pytest.mark.ledger_only

OFFSETS = ("3600", "-86400", "0")  # this host's clock ahead an hour, behind a day, right


def server_now(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT now()").fetchone()[0].astimezone(UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_json_times_are_the_servers_whatever_the_hosts_clock(ledger_dsn, upstream, root,
                                                             monkeypatch):
    monkeypatch.setenv("NECROPOOL_LEDGER", ledger_dsn)
    assert run_cli("create", "web", str(upstream), "--slots", "1").code == 0
    for offset in OFFSETS:
        env = {"NECROPOOL_CLOCK_OFFSET": offset}
        before = server_now(ledger_dsn)
        got = run_cli("allocate", "web", "--no-fetch", "--ttl", "1h", "--json", env=env)
        assert got.code == 0, got
        grant = got.json()
        assert grant["allocated_at"].endswith("Z")
        allocated = at(grant["allocated_at"])
        assert abs((allocated - before).total_seconds()) < 30, (offset, grant)
        assert abs((at(grant["expires_at"]) - allocated).total_seconds() - 3600) < 2, grant
        ran = run_cli("auto-recover", "web", "--json", env=env).json()
        assert abs((at(ran["at"]) - server_now(ledger_dsn)).total_seconds()) < 30, (offset, ran)
        release = run_cli("release", grant["slot_id"], "--lease-id", grant["lease_id"],
                          "--no-fetch", env=env)
        assert release.code == 0, release
    seen = {offset: [e["time"] for e in run_cli(
        "log", "web", "--json", env={"NECROPOOL_CLOCK_OFFSET": offset}).json()["events"]]
        for offset in OFFSETS}
    assert seen["3600"] == seen["-86400"] == seen["0"] and seen["0"], seen
    status = run_cli("status", "web", "--json", env={"NECROPOOL_CLOCK_OFFSET": "3600"})
    released = [at(s["last_released_at"]) for s in status.json()["slots"]
                if s.get("last_released_at")]
    assert released and all(abs((t - server_now(ledger_dsn)).total_seconds()) < 60
                            for t in released), status.json()


def test_read_back_in_this_hosts_clock():
    """``parse_rfc3339`` is ``rfc3339``'s inverse whatever the lag (ages stay true)."""
    from datetime import timedelta

    from necropool.ground import clock

    moment = datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    try:
        clock.follow_server(timedelta(hours=1))
        assert clock.rfc3339(moment) == "2026-01-02T02:04:05.123Z"
        assert parse_rfc3339(clock.rfc3339(moment) or "") == moment
    finally:
        clock.follow_server(timedelta(0))
