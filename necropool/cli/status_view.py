"""``status`` for a person: one line per slot whatever the terminal's width.

Below ``WIDE`` columns the table is compact (relative times, the lease id's first 8
characters, the path shortened from the left, the owner cut to fit); from ``WIDE`` on it
shows every column in full. Scripts get ``TSV_COLUMNS`` (full values, RFC 3339 times)."""

from typing import TYPE_CHECKING, Any

from necropool.cli.human import plural, relative, size

if TYPE_CHECKING:
    from rich.console import Console

    from necropool.cli.output import Output

WIDE = 150
# The tab-separated columns, in order (documented in README.md and necropool-status(1)).
TSV_COLUMNS = ["SLOT", "STATE", "OWNER", "LEASE", "ALLOCATED", "COMMIT", "USES", "PATH",
               "EXPIRES", "PID", "REF"]
_COMPACT = ["SLOT", "STATE", "OWNER", "LEASE", "ALLOCATED", "EXPIRES", "PID", "PATH"]
_FULL = ["SLOT", "STATE", "OWNER", "LEASE", "ALLOCATED", "EXPIRES", "PID", "HOST", "COMMIT",
         "USES", "PATH"]
_OWNER_MAX = 14


def tsv_row(slot: dict[str, Any]) -> list[object]:
    return [slot["slot_id"], slot["state"], slot.get("owner"), slot.get("lease_id"),
            slot.get("allocated_at"), (slot.get("current_commit") or "")[:12],
            slot.get("allocation_count"), slot["path"], slot.get("expires_at"), slot.get("pid"),
            slot.get("ref")]


def _cells(slot: dict[str, Any], full: bool) -> list[str]:
    lease = slot.get("lease_id") or ""
    owner = slot.get("owner") or ""
    if slot.get("user"):  # handed to a local user (allocate --user)
        owner = f"{owner} (as {slot['user']})"
    cells = [slot["slot_id"], slot["state"], owner,
             lease if full else lease[:8], relative(slot.get("allocated_at")),
             relative(slot.get("expires_at")), str(slot.get("pid") or "")]
    if full:
        cells += [slot.get("host") or "", (slot.get("current_commit") or "")[:12],
                  str(slot.get("allocation_count", "")), slot["path"]]
    else:
        cells.append(slot["path"])
    return cells


def _short_of(rows: list[list[str]], width: int, owner_max: int) -> int:
    """How many columns the compact table lacks to show every path's last three parts
    (``web/slots/1``: the pool as well as the slot), the owner cut to ``owner_max``: the
    owner gives them up first."""
    owner = _COMPACT.index("OWNER")
    widths = [max([len(c)] + [min(len(r[i]), owner_max) if i == owner else len(r[i])
                              for r in rows]) for i, c in enumerate(_COMPACT[:-1])]
    room = width - sum(widths) - len(_COMPACT)
    need = max([len("/".join(r[-1].split("/")[-3:])) for r in rows], default=0)
    return max(0, need - room)


def render(out: "Output", pools: list[dict[str, Any]]) -> None:
    """The slots of ``pools``: a table for a person, tab-separated lines otherwise."""
    slots = [s for p in pools for s in p["slots"]]
    if not out.rich:
        out.table(TSV_COLUMNS, [tsv_row(s) for s in slots])
        return
    console = out.console()
    full = console.width >= WIDE
    rows = [_cells(s, full) for s in slots]
    if not full:
        owner = _COMPACT.index("OWNER")
        fit = max(6, _OWNER_MAX - _short_of(rows, console.width, _OWNER_MAX))
        for row in rows:
            if len(row[owner]) > fit:
                row[owner] = row[owner][:fit - 1] + "…"
    out.grid(_FULL if full else _COMPACT, rows, left_cut_last=True)
    for s in slots:
        if s["state"] == "error":
            why = s.get("isolation_reason") or s.get("error") or "isolated"
            _line(console, f"{s['slot_id']}: {why}", "red")
    for s in slots:
        if s.get("ref"):
            _line(console, f"{s['slot_id']}: at ref {s['ref']} "
                           f"(commit {(s.get('ref_commit') or '')[:12]})")
    for p in pools:
        if p.get("prepare"):
            _line(console, f"{p['pool']}: prepare {p['prepare']!r}: {_prepared(p['slots'])}")
        if p.get("ports_per_slot"):
            per, base = p["ports_per_slot"], p["port_base"]
            _line(console, f"{p['pool']}: {plural(per, 'port')} per slot from {base} "
                           f"(slot k: {base}+(k-1)*{per} on)")
        if p.get("rescued_count"):
            _line(console, f"{p['pool']}: rescued/ holds {plural(p['rescued_count'], 'item')}"
                  f", {size(p['rescued_bytes'])} (necropool rescued list {p['pool']})")


def _prepared(slots: list[dict[str, Any]]) -> str:
    """How many slots are prepared for their commit, and the last preparation's time."""
    done = [s["prepared"] for s in slots if s.get("prepared")]
    current = sum(1 for d in done if d["current"])
    last = max(done, key=lambda d: d["at"], default=None)
    return (f"{current} of {plural(len(slots), 'slot')} prepared for their commit"
            + (f" (the last took {last['duration_seconds']:g}s)" if last else ""))


def _line(console: "Console", text: str, style: str = "") -> None:
    """One line, cut with an ellipsis at the terminal's edge."""
    console.print(text, style=style, no_wrap=True, overflow="ellipsis", soft_wrap=False,
                  markup=False)
