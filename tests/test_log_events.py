"""Events for programs: ``log --follow --json`` as JSON lines, RFC 3339 times in every
event, and event kinds checked (a typo is an error that names the kind meant) and
completed."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

from necropool.store.events import KINDS

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def test_follow_json_prints_one_object_per_event_as_it_happens(cli, pool, manager):
    proc = subprocess.Popen([sys.executable, "-m", "necropool", "log", "--follow", "--json",
                             "--event", "allocate", "--event", "release"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=dict(os.environ))
    try:
        def next_event(timeout=20) -> dict:
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            assert ready, "log --follow --json printed nothing"
            return json.loads(proc.stdout.readline())

        time.sleep(0.3)
        held = manager.allocate_slot("web", owner="carol", fetch=False)
        first = next_event()
        assert (first["event"], first["slot_id"], first["owner"]) == (
            "allocate", held["slot_id"], "carol")
        manager.release_slot(held["slot_id"], fetch=False)
        second = next_event()
        assert second["event"] == "release" and second["lease_id"] == held["lease_id"]
        assert RFC3339.fullmatch(first["time"]) and RFC3339.fullmatch(second["time"])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode == 0 and proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()


def test_every_time_in_the_events_is_rfc3339(cli, pool):
    held = cli("allocate", "web", "--ttl", "1h", "--json").json()
    assert cli("renew", held["slot_id"], "--lease-id", held["lease_id"], "--ttl", "2h").code == 0
    events = cli("log", "web", "--json").json()["events"]
    [renewed] = [e for e in events if e["event"] == "renew"]
    assert RFC3339.fullmatch(renewed["expires_at"]), renewed
    for event in events:
        for key, value in event.items():
            if key in ("time", "expires_at") or key.endswith("_at"):
                assert RFC3339.fullmatch(value), (key, value)


def test_an_unknown_event_kind_is_a_one_line_error_naming_the_kind_meant(cli, pool):
    typo = cli("log", "--event", "relase")
    assert typo.code == 2 and typo.stdout == "", typo
    assert len(typo.stderr.splitlines()) == 1 and "did you mean 'release'?" in typo.stderr
    unknown = cli("log", "--event", "zzz")
    assert unknown.code == 2 and "renew" in unknown.stderr and "expire" in unknown.stderr


def test_completion_offers_every_kind(root):
    env = dict(os.environ, _NECROPOOL_COMPLETE="bash_complete",
               COMP_WORDS="necropool log --event ", COMP_CWORD="3")
    done = subprocess.run([sys.executable, "-m", "necropool"], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    offered = {line.split("\t")[0] for line in done.stdout.splitlines() if line}
    assert {"renew", "expire", "release", "allocate"} <= offered
    assert offered == set(KINDS)
