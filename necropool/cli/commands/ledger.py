"""``ledger``: the shared PostgreSQL ledger (init, migrate, status, import, export)."""


from typing import Annotated, Any

import typer

from necropool.cli.context import G
from necropool.cli.human import plural
from necropool.cli.params import Json, PoolArg
from necropool.cli.registry import group, group_app, subcommand

app = group_app()
group("ledger", app, help="Manage the shared PostgreSQL ledger that lets the hosts of a fleet "
                          "share pools: its schema, moving a pool's state in and out, and taking "
                          "over a silent host.",
    notes=[
        "By default a pool's state is kept in files under its directory. With a ledger "
        "(--ledger, NECROPOOL_LEDGER, or ledger = \"postgresql://...\" in the config file, at "
        "the top or in a pool's table) it is kept in PostgreSQL: every host's slots of a pool "
        "in one place, so that *status*, *list*, *detect* and *log* show the whole fleet and "
        "*allocate --any-host* takes a free slot on any host. Slots still belong to the host "
        "whose disk holds them: recovery runs there.",
        "*ledger init* (or *migrate*) creates or updates the schema; both are safe to run "
        "twice and from two hosts at once. *ledger import POOL* moves a local pool's state, "
        "leases included, into the ledger; *ledger export POOL* moves this host's part back.",
        "A ledger that cannot be reached fails the command with exit status 75 (try again), "
        "having written nothing: when the link breaks after a request was sent, the command "
        "asks the ledger what became of it before answering. One that refuses the "
        "configuration (a role or password it does not accept, a database it does not have, "
        "a URL that does not parse) fails it with exit status 2: trying again cannot help. "
        "No command waits on the ledger "
        "longer than ledger_timeout (config; NECROPOOL_LEDGER_TIMEOUT; default 10 seconds). "
        "A password in the connection string is never printed. PgBouncer in transaction "
        "mode may stand in front of the server (no session state, no prepared statements).",
        "*ledger takeover HOST* is for a host that went silent (no auto-recover or state "
        "change for silent_host_hours): an explicit, audited act, never done by itself. "
        "The leases its processes held on other hosts' slots end (each slot's own host "
        "cleans it, the holder's work saved, before handing it out again), and no other "
        "host's *allocate --any-host* takes the silent host's own slots: their trees are on "
        "its disk, where nobody else can see what is in them. Their leases are left as they "
        "are: back, the host reclaims them itself (work saved under each lease), and its "
        "*auto-recover* vouches for its slots again once it has checked them. Each ended "
        "lease, and the takeover itself, is recorded as a takeover event naming who took "
        "over (user@host). Refused (exit status 5) while the host gave a sign of life within "
        "silent_host_hours, unless --force.",
    ],
    examples=(
        "export NECROPOOL_LEDGER=postgresql://necropool@db.example.com/necropool\n"
        "necropool ledger init            # once, from any host\n"
        "necropool ledger import web      # on each host that has pool web\n"
        "necropool ledger status"
    ),
)


def _show(data: dict[str, Any], done: str, json_out: bool) -> None:
    G.out(json_out).outcome(data, done)


@subcommand(app, "init",
    examples="necropool --ledger postgresql://necropool@db.example.com/necropool ledger init",
)
def init(json_out: Json = False) -> None:
    """Create the ledger's schema (or bring it up to date)."""
    data = G.manager().ledger("init")
    _show(data, f"ledger {data['ledger']}: schema version {data['version']}"
          + ("" if data["migrated"] else " (already there)"), json_out)


@subcommand(app, "migrate", examples="necropool ledger migrate   # after upgrading necropool")
def migrate(json_out: Json = False) -> None:
    """Bring the ledger's schema up to this necropool's version."""
    data = G.manager().ledger("migrate")
    _show(data, f"ledger {data['ledger']}: schema version {data['was']} -> "
          f"{data['version']}" if data["migrated"] else
          f"ledger {data['ledger']}: schema version {data['version']}, up to date",
          json_out)


@subcommand(app, "status",
    examples=(
        "necropool ledger status\n"
        "necropool ledger status --json | jq '.pools[] | {pool, hosts}'"
    ),
)
def status(json_out: Json = False) -> None:
    """Show the ledger's schema version and the pools it holds."""
    out = G.out(json_out)
    data = G.manager().ledger("status")
    if out.json:
        out.emit(data)
        return
    version = data["version"]
    out.line(f"ledger {data['ledger']}: " + (
        "no necropool schema ('necropool ledger init' creates it)" if version is None else
        f"schema version {version}" + ("" if data["up_to_date"] else
                                       f" (this necropool has {data['current']})")))
    if data["pools"]:
        out.table(["POOL", "HOSTS", "SLOTS", "ALLOCATED", "URL"],
                  [[p["pool"], p["hosts"], p["slots"], p["allocated"], p["url"]]
                   for p in data["pools"]])


@subcommand(app, "import", examples="necropool ledger import web")
def import_(pool: PoolArg, json_out: Json = False) -> None:
    """Move a local pool's state (leases included) into the ledger."""
    data = G.manager().ledger("import", pool)
    _show(data, f"pool {pool}: {data['slots']} slots of host {data['host']} moved into "
          f"{data['ledger']} ({plural(data['leases'], 'lease')} kept)", json_out)


@subcommand(app, "export", examples="necropool ledger export web   # back to the pool's files")
def export(pool: PoolArg, json_out: Json = False) -> None:
    """Move this host's part of a pool from the ledger back to its state files."""
    data = G.manager().ledger("export", pool)
    _show(data, f"pool {pool}: {data['slots']} slots of host {data['host']} moved out of "
          f"{data['ledger']} ({plural(data['leases'], 'lease')} kept)", json_out)


@subcommand(app, "takeover",
    examples=(
        "necropool detect --json | jq '.silent_hosts[].host'\n"
        "necropool ledger takeover runner-7\n"
        "necropool ledger takeover runner-7 --pool web --json"
    ),
)
def takeover(
    host: Annotated[str, typer.Argument(metavar="HOST", help="The silent host")],
    pool: Annotated[str | None, typer.Option(
        "--pool", metavar="POOL", help="Only this pool's part (default: every pool)")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Even while the host gives signs of life")] = False,
    json_out: Json = False,
) -> None:
    """Take over a silent host's leases and withhold its slots from other hosts."""
    data = G.manager().ledger_takeover(host, pool, force)
    ended = sum(len(p["leases_ended"]) for p in data["pools"])
    _show(data, f"host {host} taken over by {data['by']}: "
          f"{plural(ended, 'lease')} of its holders ended, its slots withheld in "
          f"{plural(len(data['pools']), 'pool')}", json_out)
