"""``rescued``: the work saved from slots before they were reset (list, show, restore, prune)."""

import re
from typing import Annotated, Any

import typer

from necropool.cli import complete_values
from necropool.cli.context import G
from necropool.cli.human import plural, relative, right_cut, size
from necropool.cli.output import Output
from necropool.cli.params import Format, Json, NoHeaders, OptionalPoolArg
from necropool.cli.registry import group, group_app, subcommand
from necropool.ground.clock import parse_duration
from necropool.ground.errors import PoolOutcome, UsageError, fail_for
from necropool.ground.results import Record

app = group_app()
group("rescued", app, help="Manage the work saved from slots before they were reset: list, "
                           "show, restore and prune the bundles and trees under rescued/.",
    notes=[
        "Cleanup saves a holder's uncommitted changes, local branches, unpushed commits and "
        "stashes in a git bundle <slot>-<stamp>-<lease>.bundle under the pool's rescued/ (refs "
        "under refs/necropool/rescue/), and recovery moves broken working copies aside there "
        "(<slot>-<stamp>.broken), as auto-recover does with stray paths. *rescued list* shows "
        "each with its owner and lease (from the pool's history), age, size and contents; an "
        "ID is the name under rescued/, or any unambiguous start of it, such as the short id "
        "the table shows.",
        "*rescued restore* fetches a bundle's refs as refs/rescued/<ID>/... into a clone: an "
        "existing one (--into DIR), else a new clone of the pool's mirror with origin set to "
        "the upstream; with --checkout it also puts the holder's state back: the branch (or "
        "detached HEAD), staged, unstaged and untracked changes as they were. The work of "
        "deleted pools, kept under ROOT/rescued/, is listed, shown and restored too. "
        "*rescued prune* is a dry run unless --yes is given; it never deletes "
        "outside rescued/ and removes a symlink, never what it points at.",
    ],
    examples=(
        "necropool rescued list\n"
        "necropool rescued show web-1-20261201T101500\n"
        "necropool rescued restore web-1-20261201T101500 --into ~/src/web\n"
        "necropool rescued prune --older-than 30d --yes"
    ),
)

IdArg = Annotated[str, typer.Argument(
    metavar="ID", help="An id as 'rescued list' prints it (or its start), POOL/ID, or a path",
    autocompletion=complete_values.rescued_ids)]
# the tab-separated columns of 'rescued list', in order
TSV_COLUMNS = ["ID", "POOL", "KIND", "SLOT", "OWNER", "LEASE", "CREATED", "BYTES", "BRANCHES",
               "COMMITS", "UNCOMMITTED", "PATH"]
WIDE = 150


def holds(item: dict[str, Any]) -> str:
    """What an item holds, in words."""
    if item["kind"] != "bundle":
        return {"tree": "moved-aside tree", "link": "symlink"}.get(item["kind"], "file")
    if item["refs"] is None:
        return "unreadable bundle"
    parts = [plural(len(item["branches"] or []), "branch", "branches")]
    if item["commits"] is not None:
        parts.append(plural(item["commits"], "commit"))
    if item["uncommitted_files"]:
        parts.append(plural(len(item["uncommitted_files"]), "changed file"))
    return ", ".join(parts)


def short_id(item: dict[str, Any], among: list[Record] | None = None) -> str:
    """The id without its lease label and suffix, and without the stamp's microseconds when
    that stays unique ``among`` the items listed: a start of the id, accepted as an ID."""
    name: str = item["id"]
    for suffix in (".bundle", ".broken"):
        name = name.removesuffix(suffix)
    label = item.get("label")
    name = name.removesuffix(f"-{label}") if label else name
    shorter = re.sub(r"(T\d{6})\d{6}Z$", r"\1", name)
    if among is not None and sum(i["id"].startswith(shorter) for i in among) == 1:
        return shorter
    return name


@subcommand(app, "list",
    examples=(
        "necropool rescued list\n"
        "necropool rescued list web --json | jq '.total_bytes'"
    ),
)
def list_(pool: OptionalPoolArg = None, fmt: Format = None, no_headers: NoHeaders = False,
          json_out: Json = False) -> None:
    """List saved work: bundles of holders' work and moved-aside trees, oldest first."""
    out = G.out(json_out, fmt, no_headers)
    broken: list[PoolOutcome[object]] = []
    items = G.manager().rescued_list(pool, broken=broken)
    if out.json:
        out.emit({"items": items, "total_bytes": sum(i["size_bytes"] for i in items)})
    elif not items:
        if not broken:
            out.hint("nothing rescued: no slot held work when it was cleaned")
    elif not out.rich:
        out.table(TSV_COLUMNS, [_tsv_row(i) for i in items])
    else:
        _grid(out, items)
    fail_for(broken)  # listed what could be read; now say what could not (exit 3)


def _grid(out: Output, items: list[Record]) -> None:
    """The items on a terminal: every column when it is wide enough."""
    if out.console().width >= WIDE:
        out.grid(["ID", "POOL", "OWNER", "LEASE", "SAVED", "SIZE", "HOLDS"],
                 [[i["id"], i["pool"], i["owner"] or "", i["lease_id"] or "",
                   relative(i["created_at"]), size(i["size_bytes"]), holds(i)] for i in items])
    else:
        out.grid(["ID", "OWNER", "SAVED", "SIZE", "HOLDS"],
                 [[short_id(i, items), right_cut(i["owner"] or "", 12), relative(i["created_at"]),
                   size(i["size_bytes"]), holds(i)] for i in items])
    out.note(f"{plural(len(items), 'item')}, {size(sum(i['size_bytes'] for i in items))}; "
             "details: necropool rescued show ID")


def _tsv_row(item: dict[str, Any]) -> list[object]:
    return [item["id"], item["pool"], item["kind"], item["slot_id"], item["owner"],
            item["lease_id"], item["created_at"], item["size_bytes"],
            ",".join(item["branches"] or []), item["commits"],
            len(item["uncommitted_files"]) if item["uncommitted_files"] is not None else None,
            item["path"]]


@subcommand(app, "show", examples="necropool rescued show web-1-20261201T101500")
def show(ident: IdArg, json_out: Json = False) -> None:
    """Show one saved item: where it came from and what it holds."""
    out = G.out(json_out)
    item = G.manager().rescued_show(ident)
    if out.json:
        out.emit(item)
        return
    out.fields({**item, "holds": holds(item), "uncommitted_files": None, "refs": None,
                "branches": None, "size": size(item["size_bytes"])})
    if item["refs"]:
        out.line("refs:\n" + "\n".join(f"  {r}" for r in item["refs"]))
    if item["uncommitted_files"]:
        out.line("uncommitted files:\n" + "\n".join(f"  {f}" for f in item["uncommitted_files"]))
    if item["kind"] == "bundle":
        out.note(f"restore: necropool rescued restore {short_id(item)} --into DIR")


@subcommand(app, "restore",
    examples=(
        "necropool rescued restore web-1-20261201T101500   # a new clone, ./web-1-...\n"
        "necropool rescued restore web-1-20261201T101500 --into ~/src/web\n"
        "necropool rescued restore web-1-20261201T101500 --checkout   # back to work"
    ),
)
def restore(
    ident: IdArg,
    into: Annotated[str | None, typer.Option(
        "--into", metavar="DIR",
        help="A clone of the upstream to fetch into, or a new directory to clone "
             "(default: ./ID)")] = None,
    checkout: Annotated[bool, typer.Option(
        "--checkout", help="Also put the holder's state back: its branch (or detached HEAD) "
                           "checked out, staged, unstaged and untracked changes as they "
                           "were (DIR must be clean)")] = False,
    json_out: Json = False,
) -> None:
    """Fetch a bundle's saved refs into a clone of the upstream (made when DIR does not
    exist), as refs/rescued/ID/...; with --checkout, also check out the holder's state."""
    out = G.out(json_out)
    data = G.manager().rescued_restore(ident, into, checkout)
    if out.json:
        out.emit(data)
        return
    out.line(data["path"])
    made = "cloned from the pool's mirror, " if data["cloned"] else ""
    out.note(f"{made}fetched {plural(len(data['refs']), 'ref')}:")
    for ref in data["refs"]:
        out.note(f"  {ref}")
    done = data["checkout"]
    if done and done["commit"]:
        at = f"branch {done['branch']}" if done["branch"] else "detached HEAD"
        work = ", uncommitted work as it was" if done["uncommitted"] else ""
        out.note(f"checked out {at} at {done['commit'][:12]}{work}")
    elif done:
        out.note("nothing to check out: the holder was clean at the pool's tip")
    else:
        out.note(f"back to work: necropool rescued restore {data['id']} --checkout "
                 f"--into NEW_DIR, or: git -C {data['path']} log --oneline {data['refs'][0]}")


@subcommand(app, "prune",
    examples=(
        "necropool rescued prune --older-than 30d          # only says what would go\n"
        "necropool rescued prune web --older-than 7d --yes"
    ),
)
def prune(
    pool: OptionalPoolArg = None,
    older_than: Annotated[str, typer.Option(
        "--older-than", metavar="DURATION",
        help="Items saved longer ago than this (30d, 12h, ...)")] = "30d",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only say what would be deleted (the default)")] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", "--apply", help="Delete them (symlinks are removed, never followed)")] = False,
    json_out: Json = False,
) -> None:
    """Delete saved work older than --older-than; without --yes, only say what would go."""
    if dry_run and yes:
        raise UsageError("--dry-run and --yes exclude each other: pick one")
    out = G.out(json_out)
    seconds = parse_duration(older_than, "--older-than")
    broken: list[PoolOutcome[object]] = []
    items = G.manager().rescued_prune(pool, seconds, apply=yes, broken=broken)
    total = sum(i["size_bytes"] for i in items)
    if out.json:
        out.emit({"dry_run": not yes, "older_than_seconds": seconds, "items": items,
                  "freed_bytes": total if yes else 0})
    else:
        for item in items:
            out.line(item["path"])
        if yes:
            out.note(f"deleted {plural(len(items), 'item')}, {size(total)}")
        else:
            out.note(f"would delete {plural(len(items), 'item')}, {size(total)} "
                     f"(a dry run: pass --yes to delete)")
    fail_for(broken)
