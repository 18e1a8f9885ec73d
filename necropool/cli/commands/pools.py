"""Pool administration commands: create, delete, add, remove, list, status, sync."""

import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from necropool.cli import complete_values, outcomes
from necropool.cli.context import G
from necropool.cli.human import plural
from necropool.cli.params import Format, Host, Json, NoHeaders, PoolArg, SlotArg
from necropool.cli.progress import progress_bar
from necropool.cli.registry import command
from necropool.ground.config import PREPARE_TIMEOUT, PoolSpec
from necropool.ground.errors import OperationFailed, PoolOutcome, UsageError, fail_for
from necropool.ground.slotref import SlotRef
from necropool.ground.validate import DEFAULT_PORT_BASE

if TYPE_CHECKING:
    from necropool.manager.facade import PoolManager

DiscardWork = Annotated[bool, typer.Option(
    "--discard-work", help="With --force: do not save the holders' work first")]


@command("create",
    notes=[
        "The slots are cloned from the mirror with shared objects: each costs about one "
        "checkout.",
        "--ports-per-slot N gives each slot a block of N ports of its own from --port-base "
        "(default 20000): slot k gets base+(k-1)*N up to base+k*N-1, which run passes to its "
        "command as NECROPOOL_PORT and NECROPOOL_PORTS. Every slot's ports must stay at or "
        "below 65535 (add refuses slots past that).",
        "From a local path (or file:// URL) the mirror takes the upstream's pack files by "
        "hard link (a copy on another filesystem), not a repack: none of its config or "
        "hooks, no alternates, and its gc or deletion leaves the pool whole.",
        "On a terminal, progress shows the mirror's clone (objects, percent, bytes) and the "
        "slots made; nothing with --quiet or --json.",
    ],
    examples=(
        "necropool create web https://example.com/org/web.git --slots 8 --branch main\n"
        "necropool create docs ~/src/docs -n 2 --keep-ignored\n"
        "necropool create app ~/src/app --keep node_modules/ --prepare 'npm ci' "
        "--include .env --include-from ~/secrets/app\n"
        "necropool create api ~/src/api -n 4 --ports-per-slot 10 --port-base 30000"
    ),
)
def create(
    pool: PoolArg,
    url: Annotated[str, typer.Argument(metavar="URL", help="Upstream repository URL or path")],
    slots: Annotated[int, typer.Option(
        "--slots", "-n", min=1, metavar="N", help="Number of slots")] = 3,
    branch: Annotated[str | None, typer.Option("--branch", "-b", metavar="BRANCH",
                                               help="Branch (default: upstream HEAD)")] = None,
    keep_ignored: Annotated[bool, typer.Option(
        "--keep-ignored", help="Keep ignored files (build caches) when cleaning")] = False,
    keep: Annotated[list[str] | None, typer.Option(
        "--keep", metavar="PATTERN",
        help="Keep the ignored paths this gitignore-style pattern matches when cleaning, "
             "such as node_modules/ (repeatable); other ignored files go")] = None,
    no_fetch_on_allocate: Annotated[bool, typer.Option(
        "--no-fetch-on-allocate", help="Do not fetch upstream on every allocate")] = False,
    fetch_backend: Annotated[str, typer.Option(
        "--fetch-backend", metavar="BACKEND", autocompletion=complete_values.backends,
        help="git (default) or libgit2")] = "git",
    prepare: Annotated[str | None, typer.Option(
        "--prepare", metavar="CMD",
        help="Shell command run in each slot after a cleanup at a new tip, such as "
             "'npm ci'; a slot is handed out only once it succeeded")] = None,
    prepare_timeout: Annotated[float, typer.Option(
        "--prepare-timeout", metavar="SECONDS",
        help="Seconds the prepare command may run (default 1800)")] = PREPARE_TIMEOUT,
    include: Annotated[list[str] | None, typer.Option(
        "--include", metavar="PATH",
        help="A file copied from --include-from into each slot at cleanup, such as .env "
             "(repeatable; owner-only)")] = None,
    include_from: Annotated[str | None, typer.Option(
        "--include-from", metavar="DIR", help="Where the --include files are copied from")] = None,
    ports_per_slot: Annotated[int | None, typer.Option(
        "--ports-per-slot", metavar="N",
        help="Give each slot a block of N ports of its own (NECROPOOL_PORT, NECROPOOL_PORTS)")
    ] = None,
    port_base: Annotated[int, typer.Option(
        "--port-base", metavar="PORT",
        help="The first port of slot 1's block")] = DEFAULT_PORT_BASE,
    json_out: Json = False,
) -> None:
    """Create a pool: a local mirror of URL and N slots cloned from it."""
    out = G.out(json_out)
    spec = PoolSpec(name=pool, url=url, num_slots=slots, branch=branch, keep_ignored=keep_ignored,
                    keep=list(keep or []), fetch_on_allocate=not no_fetch_on_allocate,
                    fetch_backend=fetch_backend, prepare=prepare,
                    prepare_timeout=prepare_timeout, include=list(include or []),
                    include_from=os.path.abspath(include_from) if include_from else None,
                    ports_per_slot=ports_per_slot, port_base=port_base)
    with progress_bar(out, f"creating {pool}", "cloning the mirror") as tick:
        data = G.manager().create_pool(spec, tick)
    if out.json:
        out.emit(data)
    else:
        out.line(data["path"])
        fleet = f" ({data['num_slots']} in the fleet)" if data["num_slots"] != slots else ""
        out.note(f"created pool {pool}: {plural(slots, 'slot')}{fleet} on {data['branch']}")


@command("delete",
    examples=(
        "necropool delete web\n"
        "necropool delete web --force   # even with slots allocated"
    ),
)
def delete(
    pool: PoolArg,
    force: Annotated[bool, typer.Option(
        "--force", help="Delete even with slots in use (their work saved first), or the "
                        "remains of a half-made pool")] = False,
    discard_work: DiscardWork = False,
    json_out: Json = False,
) -> None:
    """Delete a pool, its mirror and all its slots (saved work is kept under ROOT/rescued)."""
    out = G.out(json_out)
    data = G.manager().delete_pool(pool, force, discard_work)
    out.outcome(data, f"deleted pool {pool}", saved="kept saved work in")


@command("add", examples="necropool add web --count 4")
def add(
    pool: PoolArg,
    count: Annotated[int, typer.Option(
        "--count", "-n", min=1, metavar="N", help="Slots to add")] = 1,
    json_out: Json = False,
) -> None:
    """Add slots to a pool (cloned from its mirror)."""
    out = G.out(json_out)
    with progress_bar(out, f"adding to {pool}", "cloning") as tick:
        added = G.manager().add_slots(pool, count, tick)
    if out.json:
        out.emit({"pool": pool, "added": added})
    else:
        for slot_id in added:
            out.line(slot_id)


@command("remove",
    examples=(
        "necropool remove web-4\n"
        "necropool remove web-4 --force   # even if allocated"
    ),
)
def remove(
    slot: SlotArg,
    force: Annotated[bool, typer.Option(
        "--force", help="Remove even if allocated (its work saved first)")] = False,
    discard_work: DiscardWork = False,
    json_out: Json = False,
) -> None:
    """Remove a slot and its working copy (a holder's work is saved to rescued/ first)."""
    out = G.out(json_out)
    data = G.manager().remove_slot(slot, force, discard_work)
    out.outcome(data, f"removed slot {data['slot_id']}")


@command("list",
    notes=[
        "A pool that cannot be read (a directory under pools/ without a readable pool.toml, "
        "say) is listed with its error, and the exit status is 3.",
    ],
    examples=(
        "necropool list\n"
        "necropool list --host ci-07       # a shared ledger's pools, on one host\n"
        "necropool list --json | jq -r '.pools[] | \"\\(.pool) \\(.counts.available)\"'"
    ),
)
def list_(host: Host = None, fmt: Format = None, no_headers: NoHeaders = False,
          json_out: Json = False) -> None:
    """List pools with their slot counts by state (exit 3 when one cannot be read); a pool in
    a shared ledger counts the slots of every host."""
    out = G.out(json_out, fmt, no_headers)
    items = G.manager().list_pools(G.host(host))
    broken = outcomes.split(items)[1]
    if out.json:
        out.emit({"pools": [outcomes.entry(i) for i in items]})
        fail_for(broken)
        return
    rows: list[list[object]] = []
    for item in items:
        if item.result is None:
            rows.append([item.pool, "", "", "", "", "", "", item.error])
            continue
        p = item.result
        c = p["counts"]
        rows.append([p["pool"], p["num_slots"], c["available"], c["allocated"], c["cleaning"],
                     c["error"], p["branch"], p["url"]])
    out.table(["POOL", "SLOTS", "AVAILABLE", "ALLOCATED", "CLEANING", "ERROR", "BRANCH", "URL"],
              rows)
    fail_for(broken)


@command("status",
    notes=[
        "On a terminal, a table with one line per slot: below 150 columns compact (times "
        "relative to now, such as 5m ago or in 2h; the first 8 characters of the lease id; the "
        "owner and the path shortened), from 150 columns every column in full, with the "
        "holder's host, the commit and the number of uses. The reasons of slots in error, and "
        "what rescued/ holds, follow the table.",
        "--format tsv (the default when stdout is not a terminal, then without the header "
        "line) prints one line per slot with the tab-separated columns slot, state, owner, "
        "lease, allocated, commit, uses, path, expires, pid, ref (full lease ids, RFC 3339 times, "
        "whole paths); --no-headers drops the header line. --format json is --json. NO_COLOR "
        "and --color never drop colour only, never the table.",
        "A pool that cannot be read is shown with its error, and the exit status is 3, as for "
        "*list*.",
        "--format prometheus prints the metrics in the Prometheus text format; with --output "
        "FILE it writes FILE through a temporary file and a rename, as the node_exporter "
        "textfile collector requires. The metrics:",
    ],
    examples=(
        "necropool status                 # every pool\n"
        "necropool status web-3           # one slot in detail\n"
        "necropool status web --format tsv --no-headers | cut -f1,2\n"
        "necropool status --format prometheus \\\n"
        "    --output /var/lib/node_exporter/necropool.prom\n"
        "necropool status web --json | jq -r '.slots[] | select(.state==\"allocated\") "
        "| .slot_id'"
    ),
)
def status(
    target: Annotated[str | None, typer.Argument(
        metavar="[POOL|SLOT]", help="A pool name or slot id (default: every pool)",
        autocompletion=complete_values.targets)] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", metavar="FORMAT", autocompletion=complete_values.status_formats,
        help="table, tsv, json or prometheus (default: table on a terminal, else tsv "
             "without headers)")] = None,
    no_headers: NoHeaders = False,
    host: Host = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", metavar="FILE",
        help="With --format prometheus: write FILE atomically (for the node_exporter "
             "textfile collector)")] = None,
    json_out: Json = False,
) -> None:
    """Show slots and their leases: of every pool, one pool, or one slot."""
    out = G.out(json_out, fmt, no_headers, extra=("prometheus",))
    manager = G.manager()
    if output is not None and fmt != "prometheus":
        raise UsageError("--output needs --format prometheus")
    if target and ("/" in target or target in (".", "..") or _is_slot(manager, target)):
        if fmt == "prometheus":
            raise UsageError("--format prometheus reports pools: name a pool, not a slot")
        data = manager.slot_status(target)
        out.emit(data) if out.json else out.fields(data)
        return
    host = G.host(host, target)
    pools, broken = ([manager.pool_status(target, host)], []) if target else \
        outcomes.split(manager.pool_statuses(host))
    unchecked: list[PoolOutcome[object]] = []  # pools detect could not check (prometheus)
    if fmt == "prometheus":
        from necropool.cli.metrics import prometheus, write_textfile  # lazy: only --prometheus

        recoveries = {p["pool"]: manager.last_event(p["pool"], "auto_recover") for p in pools}
        found = manager.detect_anomalies(target)
        unchecked = found.pop("errors")
        failed = frozenset(o.pool for o in [*broken, *unchecked])
        text = prometheus(pools, recoveries, found, failed)
        write_textfile(output, text) if output else out.line(text.rstrip("\n"))
    elif out.json:
        out.emit({"pools": pools + [outcomes.entry(b) for b in broken]} if not target
                 else pools[0])
    else:
        from necropool.cli.status_view import render  # lazy: only status on a terminal

        render(out, pools)
        if pools and pools[0]["confinement"].startswith("none"):
            out.note(f"warning: slot work is not confined by the kernel: "
                     f"{pools[0]['confinement']}")
        for p in pools:
            if p["mirror_stale"]:
                out.note(f"warning: pool {p['pool']}: stale mirror: {p['mirror_stale']}")
            for h in p.get("hosts") or []:
                if h["silent"]:
                    out.note(f"warning: pool {p['pool']}: host {h['host']} silent since "
                             f"{h['last_seen']} (no auto-recover or state change)")
    fail_for(broken)  # shown what could be read; now say what could not (exit 3)
    if unchecked:
        raise OperationFailed(f"detect: {'; '.join(outcomes.lines(unchecked))}")


def _is_slot(manager: "PoolManager", target: str) -> bool:
    """A name that is not a pool but parses as ``<pool>-<n>[@<host>]`` is a slot id."""
    return target not in manager.pool_names() and SlotRef.looks_like(target)


@command("sync",
    notes=[
        "The config file declares pools as [pools.NAME] tables (see CONFIGURATION in "
        "*necropool*(1)).",
        "A pool sync creates has managed_by = \"sync\" in its pool.toml: --prune deletes "
        "only such pools when the config no longer declares them, never one made with "
        "*create*. --dry-run reports the same actions (in JSON with \"dry_run\": true) and "
        "changes nothing.",
    ],
    examples=(
        "necropool sync                      # create or grow the pools of the config file\n"
        "necropool sync --prune --dry-run    # what pruning would shrink and delete\n"
        "necropool sync --prune              # also shrink them, and delete pools it dropped"
    ),
)
def sync(
    prune: Annotated[bool, typer.Option(
        "--prune", help="Also shrink pools, and delete the pools sync made that the config "
                        "drops (never a pool made with create)")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Report what would be done, do nothing")] = False,
    json_out: Json = False,
) -> None:
    """Create or grow the pools declared in the config file's [pools.NAME] tables and update
    their settings; exit 3 when any pool failed."""
    out = G.out(json_out)
    with progress_bar(out, "syncing") as tick:
        actions = [_sync_entry(o) for o in G.manager().sync(prune, tick, dry_run)]
    if out.json:
        out.emit({"actions": actions, "dry_run": dry_run})
    elif not actions:
        out.hint("the config file declares no pools: add a [pools.NAME] table with a url "
                 "(see necropool(1), CONFIGURATION)")
    else:
        out.table(["POOL", "ACTION", "DETAIL"], [[a["pool"], a["action"], _sync_detail(a)]
                                                 for a in actions])
        if dry_run:
            out.note("dry run: nothing was changed")
    failed = [f"{a['pool']}: {a['error']}" for a in actions if a["action"] == "failed"]
    if failed:
        out.error("failed", f"sync: {'; '.join(failed)}", 3)
    raise typer.Exit(3 if failed else 0)


def _sync_entry(outcome: PoolOutcome[dict[str, Any]]) -> dict[str, Any]:
    """A pool's sync entry: what was done, and for a pool that failed ``"action": "failed"``
    with its error."""
    done = outcome.result or {"pool": outcome.pool}
    if outcome.error is None:
        return done
    return {**done, "action": "failed", "error": outcome.error}


def _sync_detail(action: dict[str, Any]) -> str:
    """A sync entry in words: its slots, the settings it changed, its error."""
    slots = action.get("added") or action.get("removed") or action.get("slots")
    changes = [f"{key} {_word(old)} -> {_word(new)}"
               for key, (old, new) in action.get("changed", {}).items()]
    return "; ".join(_word(part) for part in (slots, *changes, action.get("error")) if part)


def _word(value: object) -> str:
    """A value as the config file spells it (``true``, ``null``), a list as ``a, b``."""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)
