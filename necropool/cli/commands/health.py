"""Health commands: detect, recover, isolate, auto-recover."""

from typing import Annotated

import typer

from necropool.cli import outcomes
from necropool.cli.context import G
from necropool.cli.params import Host, Json, MaxHours, OptionalPoolArg, SlotArg
from necropool.cli.registry import command

KIND_TITLES = {
    "long_allocated_slots": "long allocated",
    "expired_leases": "expired lease",
    "abandoned_slots": "abandoned",
    "corrupted_slots": "corrupted",
    "orphaned_locks": "orphaned lock",
    "stray_paths": "stray path",
    "isolated_slots": "isolated",
    "stale_mirrors": "stale mirror",
    "silent_hosts": "silent host",
    "busy_free_slots": "busy free slot",
    "tampered_free_slots": "tampered free slot",
    "failed_prepares": "failed prepare",
    "ledger_divergences": "ledger divergence",
}


@command("detect",
    notes=[
        "Kinds: long allocated (no TTL, older than --max-allocation-hours), expired leases "
        "(past their --ttl), abandoned (holder or worker dead), corrupted, orphaned locks, "
        "stray paths, isolated slots, stale mirrors (last fetch failed, or none for "
        "stale_mirror_hours), busy free slots (released from another host, processes still "
        "in them: left alone), tampered free slots (changed since their cleanup), failed "
        "prepares (the pool's prepare command failed in the slot: isolated, the log named; "
        "auto-recover retries them like failures of the environment), ledger divergences (a "
        "shared ledger that disagrees with this host about its own slots: restored from an "
        "earlier dump, say; auto-recover writes the host's lease back).",
        "The exit status is 1 as long as the upstream cannot be fetched.",
        "A pool that cannot be checked (its locks/ replaced by a file, say) is named in "
        "errors; the other pools are checked all the same, and the exit status is 3.",
    ],
    exit_status=(
        "0 when healthy, 1 when anything is found, 3 when a pool could not be checked."
    ),
    examples=(
        "necropool detect\n"
        "necropool detect --json | jq .count"
    ),
)
def detect(
    pool: OptionalPoolArg = None,
    max_allocation_hours: MaxHours = None,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Also run 'git fsck --full' (slow on big repositories)")] = False,
    host: Host = None,
    json_out: Json = False,
) -> None:
    """Find anomalies; exit 0 when healthy, 1 when anything is found, 3 when a pool could
    not be checked."""
    out = G.out(json_out)
    manager = G.manager()
    found = manager.detect_anomalies(pool, max_allocation_hours, deep, G.host(host, pool))
    errors = outcomes.lines(found.pop("errors"))
    total = sum(len(v) for v in found.values())
    confinement = manager.confinement()
    if out.json:
        out.emit({**found, "healthy": total == 0 and not errors, "count": total,
                  "errors": errors, "confinement": confinement})
    else:
        if confinement.startswith("none"):
            out.note(f"warning: slot work is not confined by the kernel: {confinement}")
        if total:
            rows = [[KIND_TITLES[kind], a.get("slot_id") or "", a["pool"], a["evidence"],
                     a.get("path", "")] for kind, items in found.items() for a in items]
            out.table(["KIND", "SLOT", "POOL", "EVIDENCE", "PATH"], rows, left_cut_last=True)
        elif not errors:
            out.note("healthy: no anomalies")
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        out.error("failed", f"detect: {errors[0]}{more}", 3)
    raise typer.Exit(3 if errors else 1 if total else 0)


@command("recover",
    notes=[
        "Recovery never destroys work silently: changes are saved before a reset.",
    ],
    exit_status=(
        "0 when the slot ends available, 3 when it could not be repaired (it is then "
        "isolated)."
    ),
    examples=(
        "necropool recover web-3\n"
        "necropool recover web-3 --force   # even if its holder may be alive"
    ),
)
def recover(
    slot: SlotArg,
    force: Annotated[bool, typer.Option(
        "--force", help="Recover even an allocated slot whose holder may be alive")] = False,
    json_out: Json = False,
) -> None:
    """Repair a slot: clean, verify, re-clone if needed; ends available (0) or error (3)."""
    out = G.out(json_out)
    data = G.manager().recover_slot(slot, force)
    if out.json:
        out.emit(data)
    else:
        for action in data["actions"]:
            out.note(f"{data['slot_id']}: {action}")
        if data["recovered"]:
            out.note(f"{data['slot_id']}: recovered, available")
    if not data["recovered"]:
        out.error("failed", f"{data['slot_id']} could not be recovered and is isolated: "
                  f"{data.get('error')}", 3)
    raise typer.Exit(0 if data["recovered"] else 3)


@command("isolate", examples='necropool isolate web-3 --reason "disk errors"')
def isolate(
    slot: SlotArg,
    reason: Annotated[str | None, typer.Option(
        "--reason", metavar="TEXT", help="Why (shown by status)")] = None,
    json_out: Json = False,
) -> None:
    """Take a slot out of service (state error) until it is recovered."""
    out = G.out(json_out)
    data = G.manager().isolate_slot(slot, reason)
    if out.json:
        out.emit(data)
    else:
        out.note(f"isolated {data['slot_id']}: {data['isolation_reason']}")


@command("auto-recover",
    notes=[
        "Abandoned slots and expired leases are released (their work saved), corrupted ones "
        "recovered or isolated, orphaned locks removed, stray paths moved aside; long "
        "allocations without a TTL are only reported unless --force-release-long-allocated is "
        "given.",
        "In a shared ledger that disagrees with this host about its slots (a failover to an "
        "asynchronous replica), the host's leases are written back, a lease it ended is "
        "ended (the slot isolated if anything is in it), and the host then vouches for its "
        "slots, which allocate --any-host takes only from hosts that vouched.",
        "Safe to run from cron; --dry-run only says what would be done.",
    ],
    exit_status=(
        "3 when any action failed (see errors in the JSON output)."
    ),
    examples=(
        "necropool auto-recover --dry-run\n"
        "* * * * * necropool auto-recover --json >>/var/log/necropool.json"
    ),
)
def auto_recover(
    pool: OptionalPoolArg = None,
    max_allocation_hours: MaxHours = None,
    no_recover_corrupted: Annotated[bool, typer.Option(
        "--no-recover-corrupted", help="Leave corrupted slots alone")] = False,
    no_cleanup_orphaned_locks: Annotated[bool, typer.Option(
        "--no-cleanup-orphaned-locks", help="Leave orphaned locks alone")] = False,
    force_release_long_allocated: Annotated[bool, typer.Option(
        "--force-release-long-allocated",
        help="Also release long allocations whose holder may still be alive")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be done")] = False,
    json_out: Json = False,
) -> None:
    """Detect and heal: safe from cron; exit 3 when any action failed."""
    out = G.out(json_out)
    data = G.manager().auto_recover(
        pool, max_allocation_hours=max_allocation_hours,
        recover_corrupted=not no_recover_corrupted,
        cleanup_orphaned_locks=not no_cleanup_orphaned_locks,
        force_release_long_allocated=force_release_long_allocated, dry_run=dry_run)
    data = {**data, "errors": outcomes.lines(data["errors"])}
    if out.json:
        out.emit(data)
    else:
        rows = [[p["pool"], a["target"], a["action"], a.get("status"), a.get("error") or
                 a.get("rescued") or ""] for p in data["pools"] for a in p["actions"]]
        out.table(["POOL", "TARGET", "ACTION", "STATUS", "DETAIL"], rows)
        # lazy: allocate and release load no health module
        from necropool.health.autorecover import COUNTERS

        out.note(("planned: " if dry_run else "")
                 + ", ".join(f"{k}={data[k]}" for k in COUNTERS)
                 + f", errors={len(data['errors'])}")
    if data["errors"]:
        more = f" (and {len(data['errors']) - 1} more)" if len(data["errors"]) > 1 else ""
        out.error("failed", f"auto-recover: {data['errors'][0]}{more}", 3)
    raise typer.Exit(3 if data["errors"] else 0)
