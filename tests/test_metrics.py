"""``status --format prometheus`` for the node_exporter textfile collector."""

import json
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
