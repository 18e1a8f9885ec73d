"""Allocation commands: allocate, release, run, log."""

import json
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from necropool.cli import complete_values
from necropool.cli.context import G
from necropool.cli.helpfmt import Command
from necropool.cli.output import Output
from necropool.cli.params import (
    AllocatedSlotArg,
    Format,
    Host,
    Json,
    NoHeaders,
    OptionalPoolArg,
    PoolArg,
)
from necropool.cli.registry import command
from necropool.ground.clock import jsonable, now, parse_duration
from necropool.ground.errors import PoolOutcome, UsageError, fail_for
from necropool.ground.proc import hostname
from necropool.ground.suggest import did_you_mean
from necropool.ground.validate import parse_metadata
from necropool.store import events

if TYPE_CHECKING:
    from necropool.lease.allocate import AllocateRequest
    from necropool.store import events

Owner = Annotated[str | None, typer.Option("--owner", metavar="NAME",
                                           help="Who holds the slot (default: $USER)")]
Pid = Annotated[int | None, typer.Option(
    "--pid", metavar="PID", help="Holder process: the slot counts as abandoned as soon as it dies")]
Ttl = Annotated[str | None, typer.Option("--ttl", metavar="DURATION",
                                         help="Lease length (90s, 5m, 2h, 1d)")]
Meta = Annotated[list[str] | None, typer.Option("--meta", metavar="KEY=VALUE",
                                                help="Metadata for the lease (repeatable)")]
Wait = Annotated[str | None, typer.Option("--wait", metavar="DURATION",
                                          help="Wait up to this long for a free slot")]
NoFetch = Annotated[bool, typer.Option("--no-fetch", help="Do not fetch upstream first")]
User = Annotated[str | None, typer.Option(
    "--user", metavar="NAME", help="As root: hand the slot to this local user for the lease "
                                   "(its working copy theirs, the rest of the pool not)")]
Ref = Annotated[str | None, typer.Option(
    "--ref", metavar="REF", help="Detach the slot at this branch, tag, ref (refs/pull/123/head) "
                                 "or commit id, fetched when the mirror lacks it")]


def _request(owner: str | None, ttl: str | None, meta: list[str] | None, wait: str | None,
             no_fetch: bool, any_host: bool = False, user: str | None = None,
             ref: str | None = None) -> "AllocateRequest":
    from necropool.lease.allocate import AllocateRequest  # lazy: the core loads per command

    return AllocateRequest(
        owner=owner,
        ttl=parse_duration(ttl, "--ttl") if ttl is not None else None,
        metadata=parse_metadata(meta or []),
        wait=parse_duration(wait, "--wait") if wait is not None else 0,
        fetch=False if no_fetch else None,
        any_host=any_host,
        user=user,
        ref=ref,
    )


@command("allocate",
    notes=[
        'Plain output is the slot path alone on stdout, so *cd "$(necropool allocate web)"* '
        "works.",
        "Unless --no-fetch is given (or the pool was created with --no-fetch-on-allocate) the "
        "mirror is fetched first and the slot is at the current upstream tip.",
        "--wait blocks, without polling the pool, until a slot frees up.",
        "--ref REF hands the slot out detached at REF: a branch, a tag, a full ref name the "
        "upstream serves (refs/pull/123/head) or a commit id, full or abbreviated. A ref "
        "the mirror lacks is fetched into it by its exact name first; a free slot already "
        "at that commit is preferred. --json and status show it as ref and ref_commit; "
        "release brings the slot back to the pool's branch as always.",
        "--json also gives the slot's stable index (slot_index, its number) and, for a "
        "pool with ports_per_slot, its block of ports (port, ports).",
        "With a shared ledger, --any-host takes a clean free slot of another host when this "
        "one has none, and says where: its id is POOL-N@HOST, --json adds slot_host. Its "
        "directory is on that host; release and renew take the id as it is.",
        "Run as root, --user NAME hands the slot to that local user for the lease: its "
        "working copy (.git included) becomes theirs, the directories on the way to it "
        "traverse-only (0711), the rest of the pool stays the owner's alone. Releasing "
        "takes it back (the user's processes in it ended) before it is saved and cleaned.",
    ],
    exit_status=(
        "4 when --ref names nothing the mirror or the upstream has, 3 when its commit cannot "
        "be checked out (the slot tried is cleaned back to the pool's branch): either way no "
        "slot is taken; 75 when no slot is free (after --wait, if given); 2 when --user is "
        "given without root, names no local user, root or the pool's owner."
    ),
    examples=(
        'cd "$(necropool allocate web --owner ci --ttl 1h --meta job=42)"\n'
        "necropool allocate web --ref refs/pull/123/head --json | jq -r '.path, .ref_commit'\n"
        "necropool allocate web --wait 5m --pid $$ --json\n"
        "necropool allocate web --any-host --json | jq -r '.slot_host, .path'\n"
        "sudo necropool allocate web --user ci-runner --ttl 1h   # the slot is ci-runner's"
    ),
)
def allocate(pool: PoolArg, owner: Owner = None, pid: Pid = None, ttl: Ttl = None,
             meta: Meta = None, wait: Wait = None, no_fetch: NoFetch = False,
             any_host: Annotated[bool, typer.Option(
                 "--any-host", help="With a shared ledger: a slot of any host when this one "
                                    "has none free")] = False,
             user: User = None, ref: Ref = None, json_out: Json = False) -> None:
    """Allocate a free slot and print its path (exit 75 when none is free)."""

    out = G.out(json_out)
    request = _request(owner, ttl, meta, wait, no_fetch, any_host, user, ref)
    data = G.manager().allocate_slot(pool, request, pid=pid)
    if data.get("fetch_error"):
        out.note(f"warning: upstream fetch failed, slot is at the mirror's tip: "
                 f"{data['fetch_error']}")
    if data["slot_host"] != hostname():
        out.note(f"slot {data['slot_id']} is on host {data['slot_host']}: {data['path']}")
    out.emit(data) if out.json else out.line(data["path"])


@command("release",
    notes=[
        "Release resets the slot to the tip of the pool branch (detached), removes untracked "
        "and ignored files (unless the pool keeps ignored files) and stale git lock files.",
        "Uncommitted changes and unpushed commits are saved first; the result says where "
        "(rescued).",
        "Releasing another host's slot of a shared ledger (POOL-N@HOST) needs --lease-id; "
        "that host cleans it before handing it out again, but a slot handed to a local user "
        "there (--user) is released only on that host. The same release repeated (say, "
        "after its answer was lost) succeeds.",
    ],
    exit_status=(
        "2 when another host's slot is named without --lease-id, or was handed to a local "
        "user of its host; 5 when the slot is not "
        "allocated or --lease-id names a stale lease."
    ),
    examples=(
        'necropool release web-3\n'
        'necropool release "$PWD" --lease-id "$lease"\n'
        'necropool release web-3 --force   # ends what the holder left running in it'
    ),
)
def release(
    slot: AllocatedSlotArg,
    lease_id: Annotated[str | None, typer.Option(
        "--lease-id", metavar="LEASE-ID", help="Refuse unless this is the current lease")] = None,
    no_cleanup: Annotated[bool, typer.Option(
        "--no-cleanup", help="Do not clean now (the next allocate cleans)")] = False,
    no_fetch: NoFetch = False,
    force: Annotated[bool, typer.Option(
        "--force", help="End processes still running in the slot (SIGTERM, then SIGKILL) "
                        "instead of refusing")] = False,
    json_out: Json = False,
) -> None:
    """Release a slot and clean it (saving any uncommitted or unpushed work first).
    Refuses (exit 5, naming them) while other processes still work in the slot."""
    out = G.out(json_out)
    data = G.manager().release_slot(slot, lease_id, cleanup=not no_cleanup,
                                    fetch=False if no_fetch else None, stop=force)
    if data.get("fetch_error"):
        out.note(f"warning: upstream fetch failed, cleaned to the mirror's tip: "
                 f"{data['fetch_error']}")
    if data.get("ended") and not out.json:
        out.note(f"ended {', '.join(data['ended'])}")
    out.outcome(data, f"released {data['slot_id']}")


@command("renew",
    notes=[
        "Without --ttl the lease is extended by its own TTL, from now; a lease without a TTL "
        "needs --ttl. A lease that has expired but was not reclaimed yet may be renewed.",
    ],
    exit_status=(
        "5 when --lease-id is not the slot's current lease (the message says what became of "
        "it)."
    ),
    examples=(
        'necropool renew "$PWD" --lease-id "$NECROPOOL_LEASE_ID"    # by its own TTL\n'
        'necropool renew web-3 --lease-id "$lease" --ttl 2h'
    ),
)
def renew(
    slot: AllocatedSlotArg,
    lease_id: Annotated[str, typer.Option("--lease-id", metavar="ID",
                                          help="The lease to extend")],
    ttl: Annotated[str | None, typer.Option(
        "--ttl", metavar="DURATION",
        help="Extend to this long from now (default: the lease's own TTL)")] = None,
    json_out: Json = False,
) -> None:
    """Extend a lease (even an expired one nobody has reclaimed yet); exit 5 when the lease
    is not the slot's current one, saying what became of it."""
    out = G.out(json_out)
    data = G.manager().renew_slot(slot, lease_id,
                                  parse_duration(ttl, "--ttl") if ttl is not None else None)
    if out.json:
        out.emit(data)
    else:
        out.note(f"renewed {data['slot_id']}: lease expires at {data['expires_at']}")


class _RunCommand(Command):
    """``run POOL [OPTIONS] -- CMD...``: options may follow POOL up to ``--``; without a
    ``--``, everything after POOL is the command (so ``run web make -j4`` works too)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's click Context
        ctx.allow_interspersed_args = "--" in args
        return super().parse_args(ctx, args)


@command("run", cls=_RunCommand, context_settings={"allow_interspersed_args": False},
    notes=[
        "The command runs in the slot, with NECROPOOL_SLOT_ID, NECROPOOL_SLOT_PATH, "
        "NECROPOOL_LEASE_ID and NECROPOOL_SLOT_INDEX (the slot's number, stable across "
        "holders) set; for a pool with ports_per_slot N also NECROPOOL_PORT (the first of "
        "the slot's N ports) and NECROPOOL_PORTS (all of them, space-separated), a block no "
        "other slot of the pool gets (and NECROPOOL_LEDGER, if set, with its password "
        "masked: no secret of necropool's reaches the command). --ref REF runs it in a slot "
        "detached at REF, as for *allocate*. The slot is released afterwards, also "
        "when the command fails or is interrupted. With --ttl, run renews the lease while the "
        "command runs, so it is never reclaimed as expired.",
        "When standard input is a terminal and run is in its foreground, the command gets "
        "the terminal (its process group in the foreground: /dev/tty, password prompts, ssh, "
        "sudo and bash -i work); otherwise it runs in a session of its own. Either way, what "
        "it left running is ended before the slot is released, double-forked or not (run is "
        "its subreaper).",
        "Run as root, --user NAME hands the slot to that local user and runs the command as "
        "that user (its groups, gid and uid; HOME, USER and LOGNAME set for it), still under "
        "run's subreaper; the slot is taken back from the user before it is released.",
        "Put -- before the command so that its options are not taken for necropool's.",
    ],
    exit_status=(
        "The status of the command (127 when it is not found, 126 when it cannot be executed); "
        "necropool's own failures use the codes of *necropool*(1)."
    ),
    examples=(
        "necropool run web -- make test\n"
        "necropool run web --wait 10m -- sh -c 'echo \"$NECROPOOL_SLOT_ID\"; make'\n"
        "sudo necropool run web --user ci-runner -- make test\n"
        "necropool run web --ref refs/pull/123/head -- sh -c 'make serve PORT=$NECROPOOL_PORT'"
    ),
)
def run(
    pool: PoolArg,
    command: Annotated[list[str], typer.Argument(metavar="-- COMMAND [ARG]...",
                                                 help="The command to run in the slot",
                                                 autocompletion=complete_values.commands)],
    owner: Owner = None, ttl: Ttl = None, meta: Meta = None, wait: Wait = None,
    no_fetch: NoFetch = False, user: User = None, ref: Ref = None, json_out: Json = False,
) -> None:
    """Run a command in a freshly allocated slot, release it afterwards, exit with its status
    (3 if it succeeded but the slot could not be cleaned)."""
    out = G.out(json_out)
    request = _request(owner, ttl, meta, wait, no_fetch, user=user, ref=ref)
    # under --json, stdout carries our one object: the command's output goes to stderr
    result = G.manager().run(pool, list(command), sys.stderr if out.json else None, request)
    # A command that succeeded in a slot that could not be released is a partial failure
    # (3); a command that failed keeps its own status, the more useful signal to a CI step.
    code = 3 if result.release_error and result.code == 0 else result.code
    if result.spawn_error:
        out.error("spawn", result.spawn_error, code)
    if result.release_error:
        out.error("failed", result.release_error, code)
    if out.json:
        out.emit({"slot_id": result.slot_id, "pool": pool, "exit_code": result.code,
                  "release": result.release.to_dict() if result.release else None,
                  "release_error": result.release_error})
    raise typer.Exit(code)


@command("log",
    notes=[
        "Without a POOL, the events of every pool, merged by time. Plain output is one line "
        "per event: time, event, slot, details as key=value (JSON for lists and objects), "
        "pool, tab-separated when stdout is not a terminal.",
    ],
    examples=(
        "necropool log --tail 20          # the last events of every pool\n"
        "necropool log web --since 2h --event release\n"
        "necropool log --follow\n"
        "necropool log web --json | jq -c '.events[]'\n"
        "necropool log --follow --json | jq -c 'select(.event==\"release\")'"
    ),
)
def log(
    pool: OptionalPoolArg = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="DURATION", help="Only events newer than this (e.g. 2h)")] = None,
    tail: Annotated[int | None, typer.Option(
        "--tail", "-n", metavar="N", min=1, help="Only the last N events")] = None,
    event: Annotated[list[str] | None, typer.Option(
        "--event", "-e", metavar="KIND", autocompletion=complete_values.event_kinds,
        help="Only events of this kind (repeatable): allocate, renew, release, expire, "
             "cleanup, ...")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing events as they happen (Ctrl-C stops); with "
                               "--json, one JSON object per line")] = False,
    host: Host = None,
    fmt: Format = None, no_headers: NoHeaders = False,
    json_out: Json = False,
) -> None:
    """Show the event history (allocations, releases, cleanups, recoveries) of one pool or
    of every pool."""
    out = G.out(json_out, fmt, no_headers)
    for kind in event or []:
        if kind not in events.KINDS:
            raise UsageError(f"unknown event kind {kind!r}"
                             + (did_you_mean(kind, events.KINDS)
                                or f" (kinds: {', '.join(events.KINDS)})"))
    cutoff = None
    if since is not None:
        cutoff = now() - timedelta(seconds=parse_duration(since, "--since"))
    broken: list[PoolOutcome[object]] = []
    records = G.manager().watch_log(pool, G.host(host, pool), broken, since=cutoff,
                                    kinds=set(event) if event else None, last=tail,
                                    follow=follow)
    if out.json and follow:
        _json_lines(records)
        fail_for(broken)
        return
    if out.json:
        out.emit({"pool": pool, "events": list(records)})
        fail_for(broken)
        return
    if out.fmt == "tsv" and out.headers:
        out.line("\t".join(c.lower() for c in LOG_COLUMNS))
    shown = 0
    try:
        for record in records:
            shown += 1
            out.line(_log_line(record, out))
            if follow:
                sys.stdout.flush()
    except KeyboardInterrupt:  # how --follow is meant to end
        if not follow:
            raise
    if not shown and not follow and not broken:
        out.hint("no events" + (" match" if since or event else " yet"))
    fail_for(broken)  # shown every other pool's events; now say which could not be read


def _json_lines(records: Iterable[dict[str, Any]]) -> None:
    """``log --follow --json``: each event as one JSON object on a line of its own, written
    as it happens (JSON lines, for programs that watch the pools)."""
    try:
        for record in records:
            sys.stdout.write(json.dumps(record, default=jsonable, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:  # how --follow is meant to end
        pass


# the tab-separated columns of 'log', in order
LOG_COLUMNS = ["TIME", "EVENT", "SLOT", "DETAIL", "POOL"]
_EVENT_STYLES = {"failure": "red", "isolate": "red", "fetch_failed": "red", "recover": "cyan",
                 "allocate": "yellow", "release": "green", "reclaim": "magenta",
                 "force_release": "magenta"}


def details(record: "events.Event") -> str:
    """An event's other fields as ``key=value`` (JSON for lists, objects and strings with
    spaces)."""
    parts = []
    for key, value in record.items():
        if key in ("time", "event", "pool", "slot_id"):
            continue
        if isinstance(value, str) and value and not any(c.isspace() for c in value):
            text = value
        else:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _log_line(record: "events.Event", out: Output) -> str:
    cells = [str(record.get("time", "")), str(record.get("event", "")),
             str(record.get("slot_id", "")), details(record), str(record.get("pool", ""))]
    if not out.rich:
        return "\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells)
    when, kind, slot, detail, pool = cells
    kind = f"{kind:<13}"
    if out.colour():
        style = {"red": 31, "green": 32, "yellow": 33, "magenta": 35, "cyan": 36}.get(
            _EVENT_STYLES.get(kind.strip(), ""))
        kind = f"\x1b[{style}m{kind}\x1b[0m" if style else kind
    return f"{when[:19].replace('T', ' ')} {kind} {slot or pool:<10} {detail}".rstrip()
