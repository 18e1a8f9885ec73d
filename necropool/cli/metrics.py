"""``status --format prometheus``: node_exporter textfile-collector format."""

from necropool.clock import parse_rfc3339

# name, type, help, and where each sample comes from
SLOT_METRICS = [
    ("necropool_slot_allocations_total", "counter", "Allocations per slot since creation.",
     "allocation_count"),
    ("necropool_slot_usage_seconds_total", "counter", "Seconds each slot has been held.",
     "total_usage_seconds"),
]
RECOVERY_METRICS = [
    ("necropool_last_auto_recover_timestamp_seconds", "gauge",
     "When auto-recover last ran on the pool (Unix time).", "time"),
    ("necropool_last_auto_recover_actions", "gauge",
     "Actions taken by the last auto-recover.", "actions"),
    ("necropool_last_auto_recover_errors", "gauge",
     "Actions that failed in the last auto-recover.", "errors"),
]
MIRROR_METRICS = [
    ("necropool_mirror_stale", "gauge",
     "1 when the mirror is stale (its last fetch failed, or too old): see detect.",
     lambda p: int(p["mirror_stale"] is not None)),
    ("necropool_mirror_last_fetch_timestamp_seconds", "gauge",
     "When the mirror last fetched from upstream (Unix time).",
     lambda p: p["mirror_fetched_at"] and parse_rfc3339(p["mirror_fetched_at"]).timestamp()),
]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _header(lines: list[str], name: str, kind: str, text: str) -> None:
    lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def prometheus(pools: list[dict], recoveries: dict[str, dict | None]) -> str:
    """Gauges per pool and state, per-slot counters, and the last auto-recover's results
    (``recoveries``: pool -> its last ``auto_recover`` event, or None)."""
    lines: list[str] = []
    _header(lines, "necropool_slots", "gauge", "Slots per pool and state.")
    for p in pools:
        for state, count in p["counts"].items():
            lines.append(f'necropool_slots{{pool="{_label(p["pool"])}",state="{state}"}} {count}')
    for name, kind, text, key in SLOT_METRICS:
        _header(lines, name, kind, text)
        for p in pools:
            for s in p["slots"]:
                lines.append(f'{name}{{pool="{_label(p["pool"])}",slot="{s["slot_id"]}"}} '
                             f'{s[key]}')
    for name, kind, text, key in MIRROR_METRICS:
        _header(lines, name, kind, text)
        for p in pools:
            value = key(p)
            if value is not None:
                lines.append(f'{name}{{pool="{_label(p["pool"])}"}} {value}')
    for name, kind, text, key in RECOVERY_METRICS:
        _header(lines, name, kind, text)
        for pool, event in recoveries.items():
            if event is not None:
                value = parse_rfc3339(event["time"]).timestamp() if key == "time" else event[key]
                lines.append(f'{name}{{pool="{_label(pool)}"}} {value}')
    return "\n".join(lines) + "\n"
