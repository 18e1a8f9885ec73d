"""``status --format prometheus``: node_exporter textfile-collector format.

Every metric name, its type and meaning are listed here (README.md and necropool-status(1)
repeat the list; the tests check they agree)."""

import os
from datetime import datetime
from typing import Any

from necropool.ground.clock import now, parse_rfc3339
from necropool.ground.layout import storing

# name, type, help
POOL_METRICS = [
    ("necropool_pool_info", "gauge", "Pool settings as labels (url, branch); always 1."),
    ("necropool_slots", "gauge", "Slots per pool and state."),
    ("necropool_mirror_last_fetch_age_seconds", "gauge",
     "Seconds since the pool's mirror last fetched from upstream."),
    ("necropool_mirror_stale", "gauge",
     "1 when the mirror is stale (its last fetch failed, or too old): see detect."),
    ("necropool_rescued_items", "gauge", "Bundles and moved-aside trees under rescued/."),
    ("necropool_rescued_bytes", "gauge", "Bytes under rescued/."),
    ("necropool_anomalies", "gauge",
     "Anomalies found by detect, per kind (absent for a pool it could not check)."),
    ("necropool_pool_check_failed", "gauge",
     "1 when the pool could not be read or checked (its other metrics are then missing or "
     "stale: see the command's error), else 0."),
    ("necropool_host_slots", "gauge", "Slots per host of the pool (one host unless in a ledger)."),
    ("necropool_host_last_seen_age_seconds", "gauge",
     "Seconds since a host of a shared ledger last gave a sign of life (auto-recover, a "
     "state change)."),
]
SLOT_METRICS = [
    ("necropool_slot_allocations_total", "counter", "Allocations per slot since creation."),
    ("necropool_slot_usage_seconds_total", "counter", "Seconds each slot has been held."),
    ("necropool_lease_age_seconds", "gauge", "Seconds since the current lease began."),
    ("necropool_lease_expires_in_seconds", "gauge",
     "Seconds until the current lease expires (negative: expired); leases with a TTL only."),
    ("necropool_slot_prepared", "gauge",
     "1 when the slot is prepared (the pool's prepare command succeeded) for its commit, "
     "else 0; pools with a prepare command only."),
    ("necropool_slot_prepare_duration_seconds", "gauge",
     "How long the slot's last prepare took (pools with a prepare command only)."),
    ("necropool_slot_prepare_timestamp_seconds", "gauge",
     "When the slot's last prepare ended (Unix time)."),
]
RECOVERY_METRICS = [
    ("necropool_last_auto_recover_timestamp_seconds", "gauge",
     "When auto-recover last ran on the pool (Unix time)."),
    ("necropool_last_auto_recover_actions", "gauge",
     "Actions taken by the last auto-recover."),
    ("necropool_last_auto_recover_errors", "gauge",
     "Actions that failed in the last auto-recover."),
]
METRICS = POOL_METRICS + SLOT_METRICS + RECOVERY_METRICS


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items()) + "}"


def _seconds(when: str, at: datetime) -> float:
    return round((at - parse_rfc3339(when)).total_seconds(), 3)


def _samples(pools: list[dict[str, Any]], recoveries: dict[str, dict[str, Any] | None],
             anomalies: dict[str, list[Any]] | None,
             failed: frozenset[str]) -> dict[str, list[str]]:
    at = now()
    out: dict[str, list[str]] = {name: [] for name, _, _ in METRICS}
    for pool in sorted({p["pool"] for p in pools} | failed):
        out["necropool_pool_check_failed"].append(f"{_labels(pool=pool)} {int(pool in failed)}")
    for p in pools:
        pool = p["pool"]
        info = _labels(pool=pool, url=p["url"], branch=p["branch"])
        out["necropool_pool_info"].append(f"{info} 1")
        for state, count in p["counts"].items():
            out["necropool_slots"].append(f"{_labels(pool=pool, state=state)} {count}")
        out["necropool_mirror_stale"].append(
            f"{_labels(pool=pool)} {int(p.get('mirror_stale') is not None)}")
        if p.get("mirror_fetched_at"):
            out["necropool_mirror_last_fetch_age_seconds"].append(
                f"{_labels(pool=pool)} {_seconds(p['mirror_fetched_at'], at)}")
        for h in p.get("hosts") or []:
            host = _labels(pool=pool, host=h["host"])
            out["necropool_host_slots"].append(f"{host} {h['slots']}")
            if h["last_seen"]:
                out["necropool_host_last_seen_age_seconds"].append(
                    f"{host} {_seconds(h['last_seen'], at)}")
        if "rescued_bytes" in p:
            out["necropool_rescued_items"].append(f"{_labels(pool=pool)} {p['rescued_count']}")
            out["necropool_rescued_bytes"].append(f"{_labels(pool=pool)} {p['rescued_bytes']}")
        for s in p["slots"]:
            slot = _labels(pool=pool, slot=s["slot_id"])
            out["necropool_slot_allocations_total"].append(f"{slot} {s['allocation_count']}")
            out["necropool_slot_usage_seconds_total"].append(f"{slot} {s['total_usage_seconds']}")
            if s.get("allocated_at"):
                out["necropool_lease_age_seconds"].append(
                    f"{slot} {_seconds(s['allocated_at'], at)}")
            if s.get("expires_at"):
                out["necropool_lease_expires_in_seconds"].append(
                    f"{slot} {-_seconds(s['expires_at'], at)}")
            if p.get("prepare"):
                _prepared(out, slot, s.get("prepared"))
    if anomalies is not None:
        counts = {(p["pool"], kind): 0 for p in pools for kind in anomalies
                  if p["pool"] not in failed}  # not checked: unknown, not zero
        for kind, items in anomalies.items():
            for item in items:
                counts[(item["pool"], kind)] = counts.get((item["pool"], kind), 0) + 1
        out["necropool_anomalies"] = [f"{_labels(pool=pool, kind=kind)} {n}"
                                      for (pool, kind), n in sorted(counts.items())]
    for pool, event in recoveries.items():
        if event is not None:
            label = _labels(pool=pool)
            out["necropool_last_auto_recover_timestamp_seconds"].append(
                f"{label} {parse_rfc3339(event['time']).timestamp()}")
            out["necropool_last_auto_recover_actions"].append(f"{label} {event['actions']}")
            out["necropool_last_auto_recover_errors"].append(f"{label} {event['errors']}")
    return out


def _prepared(out: dict[str, list[str]], slot: str, prepared: dict[str, Any] | None) -> None:
    out["necropool_slot_prepared"].append(f"{slot} {int(bool(prepared and prepared['current']))}")
    if prepared:
        out["necropool_slot_prepare_duration_seconds"].append(
            f"{slot} {prepared['duration_seconds']}")
        out["necropool_slot_prepare_timestamp_seconds"].append(
            f"{slot} {parse_rfc3339(prepared['at']).timestamp()}")


def prometheus(pools: list[dict[str, Any]], recoveries: dict[str, dict[str, Any] | None],
               anomalies: dict[str, list[Any]] | None = None,
               failed: frozenset[str] = frozenset()) -> str:
    """The metrics of ``pools`` (``recoveries``: pool -> its last ``auto_recover`` event or
    None; ``anomalies``: what detect found, by kind; ``failed``: the pools that could not be
    read or checked). A metric without samples is left out."""
    lines: list[str] = []
    samples = _samples(pools, recoveries, anomalies, failed)
    for name, kind, text in METRICS:
        if samples[name]:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [name + sample for sample in samples[name]]
    return "\n".join(lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Write ``path`` as the textfile collector requires: a temp file in the same directory,
    then a rename, so the collector never reads half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with storing("writing", path):
            with open(tmp, "x", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
