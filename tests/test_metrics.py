"""``status --format prometheus`` for the node_exporter textfile collector."""

import json
import os
import re

SAMPLE = re.compile(r'([a-z_]+)\{([a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*)\} (-?[0-9.e+]+)')


def parse(text: str) -> tuple[dict, dict]:
    """(types by metric, samples as {(name, labels): value}); fails on any malformed line."""
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        match = SAMPLE.fullmatch(line)
        assert match, f"not exposition format: {line!r}"
        name, labels, value = match.groups()
        assert name in types, f"{name} sampled before its TYPE line"
        samples[(name, labels)] = float(value)
    return types, samples


def test_prometheus_reports_states_usage_and_the_last_recovery(cli, pool):
    slot = cli("allocate", "web", "--no-fetch").stdout.strip()
    assert cli("allocate", "web", "--no-fetch").code == 0
    assert cli("release", slot, "--no-fetch").code == 0
    before = cli("status", "--format", "prometheus")
    assert before.code == 0, before
    types, samples = parse(before.stdout)
    assert types["necropool_slots"] == "gauge"
    assert samples[("necropool_slots", 'pool="web",state="available"')] == 2
    assert samples[("necropool_slots", 'pool="web",state="allocated"')] == 1
    assert samples[("necropool_slots", 'pool="web",state="error"')] == 0
    assert samples[("necropool_slot_allocations_total", 'pool="web",slot="web-1"')] == 1
    assert not any(name.startswith("necropool_last_auto_recover") for name, _ in samples)

    assert cli("isolate", "web-3").code == 0
    assert cli("auto-recover").code == 0
    _, samples = parse(cli("status", "web", "--format", "prometheus").stdout)
    assert samples[("necropool_slots", 'pool="web",state="error"')] == 1
    assert samples[("necropool_last_auto_recover_errors", 'pool="web"')] == 0
    assert samples[("necropool_last_auto_recover_timestamp_seconds", 'pool="web"')] > 1.7e9


def test_prometheus_and_json_are_refused_together(cli, pool):
    """--json promises nothing but one JSON object on stdout: text metrics would break it."""
    result = cli("status", "--format", "prometheus", "--json")
    assert result.code == 2 and result.stdout == ""
    error = json.loads(result.stderr)
    assert error["type"] == "error" and "--format prometheus" in error["message"]


def test_prometheus_reports_leases_mirror_rescued_work_and_anomalies(cli, pool, manager, root):
    held = manager.allocate_slot("web", owner="alice", ttl=3600, fetch=False)
    (root / "pools/web/slots" / held["slot_id"].split("-")[1] / "notes.txt").write_text("x\n")
    manager.allocate_slot("web", fetch=False)
    released = manager.release_slot(held["slot_id"], fetch=False)
    assert released["rescued"]
    again = manager.allocate_slot("web", owner="bob", ttl=600, fetch=False)
    assert cli("isolate", "web-3").code == 0
    result = cli("status", "--format", "prometheus")
    assert result.code == 0, result
    types, samples = parse(result.stdout)
    assert samples[("necropool_pool_info", f'pool="web",url="{manager.pool_status("web")["url"]}"'
                    ',branch="main"')] == 1
    slot = f'pool="web",slot="{again["slot_id"]}"'
    assert 0 <= samples[("necropool_lease_age_seconds", slot)] < 60
    assert 500 < samples[("necropool_lease_expires_in_seconds", slot)] <= 600
    assert 0 <= samples[("necropool_mirror_last_fetch_age_seconds", 'pool="web"')] < 600
    size = os.path.getsize(released["rescued"])
    assert samples[("necropool_rescued_bytes", 'pool="web"')] == size
    assert samples[("necropool_rescued_items", 'pool="web"')] == 1
    anomalies = {labels: v for (name, labels), v in samples.items()
                 if name == "necropool_anomalies"}
    assert anomalies['pool="web",kind="isolated_slots"'] == 1
    assert anomalies['pool="web",kind="corrupted_slots"'] == 0
    assert types["necropool_anomalies"] == "gauge"


def test_a_pool_that_cannot_be_checked_is_a_failed_check_not_zero_anomalies(
        cli, pool, manager, upstream, tmp_path):
    """An alert on anomalies must not go quiet because detect could not look: the pool is
    flagged, its anomaly samples are left out, the others are reported, and the file is
    still written (exit 3 names the pool)."""
    import shutil

    from necropool.ground.config import PoolSpec

    manager.create_pool(PoolSpec(name="api", url=str(upstream), num_slots=1))
    locks = manager.get_pool("api").paths.locks
    shutil.rmtree(locks)
    locks.write_text("not a directory\n")
    assert cli("isolate", "web-2").code == 0
    target = tmp_path / "necropool.prom"

    result = cli("status", "--format", "prometheus", "--output", target)
    assert result.code == 3 and "api" in result.stderr, result
    types, samples = parse(target.read_text())
    assert types["necropool_pool_check_failed"] == "gauge"
    assert samples[("necropool_pool_check_failed", 'pool="api"')] == 1
    assert samples[("necropool_pool_check_failed", 'pool="web"')] == 0
    assert samples[("necropool_anomalies", 'pool="web",kind="isolated_slots"')] == 1
    assert not any(name == "necropool_anomalies" and 'pool="api"' in labels
                   for name, labels in samples)
    assert samples[("necropool_slots", 'pool="api",state="available"')] == 1


def test_output_file_is_replaced_atomically(cli, pool, tmp_path):
    target = tmp_path / "textfile" / "necropool.prom"
    target.parent.mkdir()
    first = cli("status", "--format", "prometheus", "--output", target)
    assert first.code == 0 and first.stdout == "", first
    parse(target.read_text())
    inode = target.stat().st_ino
    assert cli("status", "--format", "prometheus", "-o", target).code == 0
    assert target.stat().st_ino != inode  # a new file renamed over the old, never rewritten
    assert os.listdir(target.parent) == ["necropool.prom"]  # no temp file left
    refused = cli("status", "--output", target)
    assert refused.code == 2 and "--format prometheus" in refused.stderr


def test_every_metric_is_documented():
    from pathlib import Path

    from necropool.cli.metrics import METRICS

    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    page = (repo / "man/necropool-status.1").read_text()
    for name, _, _ in METRICS:
        assert f"`{name}`" in readme, name
        assert f".B {name}" in page, name
