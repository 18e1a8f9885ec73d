"""``status --format prometheus``: node_exporter textfile-collector format."""


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(pools: list[dict]) -> str:
    lines = [
        "# HELP necropool_slots Slots per pool and state.",
        "# TYPE necropool_slots gauge",
    ]
    for p in pools:
        for state, count in p["counts"].items():
            lines.append(f'necropool_slots{{pool="{_label(p["pool"])}",state="{state}"}} {count}')
    lines += ["# HELP necropool_slot_allocations_total Allocations per slot since creation.",
              "# TYPE necropool_slot_allocations_total counter"]
    for p in pools:
        for s in p["slots"]:
            lines.append(f'necropool_slot_allocations_total{{pool="{_label(p["pool"])}",'
                         f'slot="{s["slot_id"]}"}} {s["allocation_count"]}')
    lines += ["# HELP necropool_slot_usage_seconds_total Seconds each slot has been held.",
              "# TYPE necropool_slot_usage_seconds_total counter"]
    for p in pools:
        for s in p["slots"]:
            lines.append(f'necropool_slot_usage_seconds_total{{pool="{_label(p["pool"])}",'
                         f'slot="{s["slot_id"]}"}} {s["total_usage_seconds"]}')
    return "\n".join(lines) + "\n"
