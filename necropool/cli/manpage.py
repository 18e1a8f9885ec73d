"""Man pages generated from the Typer app: ``necropool.1`` and one ``necropool-COMMAND.1`` each.

Synopses, arguments and options come from the click parameters of the commands, so they
follow the code; the sections a parser cannot know (exit status, environment, files, JSON
output, examples) are written here. The output is deterministic: the date in ``.TH`` is
``DATE`` below, not the day of the run.

Regenerate the committed pages: ``python -m necropool.cli.manpage man``

Inline markup in the hand-written text: ``*word*`` is bold, ``<word>`` italic; everything
else is taken literally (hyphens become ``-``). Nothing here is imported on the normal
command path.
"""

import os
import re
import sys
import textwrap

from necropool import __version__
from necropool.cli.examples import EXAMPLES as COMMAND_EXAMPLES

# Fixed, so that regenerating gives the same bytes; move it forward with the version.
DATE = "2026-12-02"
SOURCE = f"necropool {__version__}"
MANUAL = "User Commands"

DESCRIPTION = [
    """necropool keeps pools of ready-made git working copies ("slots") of a repository
    and hands them out to parallel coding agents and CI jobs:
    a free slot in milliseconds instead of a fresh clone, cleaned between uses,
    with crashed holders and corrupted slots found and healed.""",
    """A pool has a bare local mirror of the upstream repository and N slots cloned from it.
    Each slot is an independent repository (its own HEAD, index and refs) whose objects are
    shared with the mirror, so one slot's corruption cannot spread to another.
    A slot id is <pool>-<n> (web-3); wherever a SLOT is expected, a path inside the slot
    works as well.""",
    """A slot is *available*, *allocated* (held under a lease), *cleaning* (being reset
    by a worker) or *error* (isolated: only *recover* or *remove* takes it out of that
    state).
    Allocation is a lease with a lease id (a fencing token), an owner, optionally the
    holder's pid (the slot counts as abandoned as soon as that process dies) and an expiry
    (--ttl): the holder's promise to come back by then, or *renew* the lease; an expired
    lease is reclaimed by *auto-recover* like an abandoned one (its work saved first).
    Releasing cleans the slot: reset to the tip of the pool branch, untracked and ignored files
    removed, stale git lock files removed.
    Work that would be lost (uncommitted changes, unpushed commits) is saved first, and
    the result says where.""",
    """Durations (--ttl, --wait, --since) are written 90s, 5m, 2h, 1d or as plain
    seconds.
    Pool names match ^[a-z0-9][a-z0-9._-]{0,62}$.""",
]
# Note: DESCRIPTION and the other texts are passed through _text(), which escapes hyphens;
# the few "-" above stand for literal hyphens inside already-escaped fragments and are
# normalised by _text() as well.

EXIT_STATUS = [
    ("0", "Success; for *detect*: no anomaly found. *necropool* without a command prints "
          "its help on stdout and exits 0."),
    ("1", "*detect* found anomalies."),
    ("2", "Usage or configuration error: a bad name, a bad flag, an invalid config file."),
    ("3", "The operation failed, wholly or partly: a repair failed, a git error, "
          "*auto-recover* had errors."),
    ("4", "The pool or slot does not exist."),
    ("5", "Conflict: the slot is in the wrong state for the operation, the lease id is stale, "
          "the pool exists already."),
    ("70", "Internal error (a bug); a one-line message is printed, never a traceback."),
    ("75", "Try again later: no free slot, or a lock timed out."),
    ("130", "Interrupted."),
]
EXIT_RUN = ("*run* exits with the status of its command (127 when the command is not found, "
            "126 when it cannot be executed); its own failures use the codes above.")

ENVIRONMENT = [
    ("NECROPOOL_HOME", "The root directory (overridden by --root; overrides the config "
                       "file's root)."),
    ("NECROPOOL_CONFIG", "The config file (overridden by --config)."),
    ("XDG_DATA_HOME", "The default root is $XDG_DATA_HOME/necropool "
                      "(~/.local/share/necropool when unset)."),
    ("XDG_CONFIG_HOME", "The default config file is $XDG_CONFIG_HOME/necropool/config.toml "
                        "(~/.config/necropool/config.toml when unset)."),
    ("NO_COLOR", "When set and not empty, no colour (see --color)."),
    ("USER", "The default owner of a lease (--owner)."),
    ("NECROPOOL_SLOT_ID", "Set by *run* for its command: the id of the slot it runs in."),
    ("NECROPOOL_SLOT_PATH", "Set by *run* for its command: the absolute path of the slot "
                            "(also its working directory)."),
    ("NECROPOOL_LEASE_ID", "Set by *run* for its command: the lease id of the allocation."),
]
PRECEDENCE = ("Precedence for every setting: command-line flag, then environment, then config "
              "file, then default.")

# (path, description); <root> and <pool> are placeholders. The names under a pool directory
# are checked against necropool.layout.PoolPaths.KNOWN by the tests.
FILES = [
    ("$XDG_CONFIG_HOME/necropool/config.toml",
     "The config file: settings and the pools that *sync* creates (see CONFIGURATION)."),
    ("<root>/pools/<pool>/", "One pool."),
    ("<root>/pools/<pool>/pool.toml", "The pool definition: url, branch, options."),
    ("<root>/pools/<pool>/state.toml",
     "Slots, leases and statistics (schema-versioned; every write is atomic and durable)."),
    ("<root>/pools/<pool>/state.toml.bak",
     "The last good state; state can also be rebuilt from what is on disk."),
    ("<root>/pools/<pool>/pool.lock",
     "Held only for the read-modify-write of state.toml (milliseconds)."),
    ("<root>/pools/<pool>/wait.lock",
     "The queue of allocations waiting for a free slot (allocate --wait)."),
    ("<root>/pools/<pool>/wake.fifo",
     "Every state write wakes the waiter at the head of that queue through it (no polling)."),
    ("<root>/pools/<pool>/mirror.lock",
     "Serialises upstream fetches and mirror rebuilds."),
    ("<root>/pools/<pool>/mirror.fetched",
     "When the mirror last fetched: concurrent allocations share one fetch."),
    ("<root>/pools/<pool>/mirror.failed",
     "The last fetch's time and error, until a fetch works: detect reports a stale mirror."),
    ("<root>/pools/<pool>/verified.json",
     "What detect proved about the pack files, so the next run need not walk trees again."),
    ("<root>/pools/<pool>/locks/<slot>.lock",
     "Held by the worker cleaning or repairing a slot, so a crashed worker is told apart "
     "from a live one at once."),
    ("<root>/pools/<pool>/mirror.git",
     "Bare local mirror of the upstream repository: the object source of the slots."),
    ("<root>/pools/<pool>/slots/<n>/", "The working copy of slot <pool>-<n>."),
    ("<root>/pools/<pool>/records/<n>.json",
     "What the last cleanup of slot <n> left (its directories and index), kept outside the "
     "slot: the next cleanup skips what the holder cannot have changed."),
    ("<root>/pools/<pool>/events.jsonl",
     "Append-only history: allocations, releases, cleanups, recoveries (see *log*)."),
    ("<root>/pools/<pool>/events.jsonl.1",
     "The previous generation of the history: auto-recover rotates it past 8 MiB."),
    ("<root>/pools/<pool>/rescued/",
     "Work saved from slots before they were reset (git bundles); broken working copies, "
     "stray paths, nested repositories git must not run in (*.nested/) and slots whose .git "
     "was tampered with (*.tampered/), moved aside whole (see *necropool-rescued*(1))."),
]

# config file key -> description; checked against necropool.config by the tests
CONFIG_TOP = [
    ("root", "The root directory; a relative path is taken from the config file's "
             "directory, not the caller's (so cron and a shell agree)."),
    ("max_allocation_hours", "An allocation older than this is long (default 24)."),
    ("stale_lock_hours", "A lock file older than this is stale (default 24)."),
    ("stale_mirror_hours", "A mirror of a pool that fetches on allocate and has not fetched "
                           "for this long is stale (default 24); so is one whose last fetch "
                           "failed."),
    ("lock_timeout", "Seconds to wait for a pool lock (default 30)."),
    ("git_timeout", "Seconds a git command may run (default 600)."),
]
CONFIG_POOL = [
    ("url", "Upstream repository URL or path (required)."),
    ("num_slots", "Number of slots (default 3)."),
    ("branch", "Branch (default: the upstream HEAD)."),
    ("keep_ignored", "Keep ignored files (build caches) when cleaning (default false)."),
    ("fetch_on_allocate", "Fetch upstream on every allocate (default true)."),
    ("fetch_backend", "git (default) or libgit2."),
]

JSON_TEXT = [
    """With --json every command prints one JSON object on stdout, with
    "schema_version": 1, RFC 3339 UTC times, absolute paths and snake_case keys
    (slot_id, pool, path, state, lease_id, owner, allocated_at, expires_at, current_branch,
    current_commit, allocation_count, ...).""",
    """Errors go to stderr; with --json as one object:""",
]
JSON_ERROR = ('{"schema_version": 1, "type": "error", "code": "not_found",\n'
              ' "message": "pool \'web\' does not exist", "exit_code": 4}')
JSON_CODES = ("code is one of usage (2), failed (3), not_found (4), conflict (5), "
              "unavailable (75), internal (70), interrupted (130).")
JSON_DETECT = [
    """*detect* lists anomalies by kind: long_allocated_slots, expired_leases, abandoned_slots,
    corrupted_slots, orphaned_locks, stray_paths, isolated_slots and stale_mirrors, each a list
    of objects with kind, pool, evidence and, where they apply, slot_id, path and lease_id;
    plus healthy (true when nothing was found) and count.""",
    """*auto-recover* reports the counters long_allocated_released, expired_released,
    abandoned_released,
    corrupted_recovered, corrupted_isolated, orphaned_locks_cleaned, stray_paths_moved and
    slots_adopted, errors (a list of messages; not empty means exit status 3), dry_run, and
    pools: per pool the same counters, the actions taken (target, action, status, and error or
    rescued) and what was detected.""",
]

EXAMPLES = [
    ("Create a pool of four slots and work in one of them:",
     'necropool create web https://example.com/org/web.git --slots 4\n'
     'cd "$(necropool allocate web --owner alice --ttl 2h)"\n'
     '# ... work ...\n'
     'necropool release "$PWD"'),
    ("A CI step: run the tests in a fresh slot, released afterwards whatever happens; "
     "the step fails with the tests' status:",
     "necropool run web -- make test"),
    ("Wait up to five minutes for a free slot, and release by lease id from a script:",
     'slot=$(necropool allocate web --wait 5m --json)\n'
     'path=$(echo "$slot" | jq -r .path)\n'
     'lease=$(echo "$slot" | jq -r .lease_id)\n'
     '# ...\n'
     'necropool release "$path" --lease-id "$lease"'),
    ("Heal every pool each minute from cron, keeping a JSON log:",
     "* * * * * necropool auto-recover --json >>/var/log/necropool.json"),
    ("Alert when anything is wrong (exit status 1):",
     "necropool detect --json || notify-team"),
    ("The ids of the allocated slots of a pool:",
     "necropool status web --json | jq -r '.slots[] | select(.state==\"allocated\") "
     "| .slot_id'"),
    ("Who holds what, and since when:",
     "necropool status web --json |\n"
     "  jq -r '.slots[] | select(.lease_id) | [.slot_id, .owner, .allocated_at] | @tsv'"),
    ("The anomalies found, one per line:",
     "necropool detect --json | jq -r 'to_entries[] | select(.value | type == \"array\")\n"
     "  | .value[] | \"\\(.kind)\\t\\(.slot_id // .path)\\t\\(.evidence)\"'"),
    ("The counters of the last auto-recover run:",
     "tail -n 1 /var/log/necropool.json | jq '{corrupted_recovered, corrupted_isolated,\n"
     "  orphaned_locks_cleaned, long_allocated_released, errors}'"),
]

COMPLETION_TEXT = [
    """Completion scripts for bash, zsh and fish are printed by *necropool completion SHELL*
    (committed as completions/necropool.bash, completions/_necropool and
    completions/necropool.fish).
    They complete command and option names, pool names, slot ids (with their state and
    owner as descriptions in zsh and fish; *release* offers only allocated slots), the
    values of --format, --color and --fetch-backend, log event kinds, rescued ids, shell
    names, and after *run POOL --* the commands on PATH.""",
]
COMPLETION_EXAMPLE = ('eval "$(necropool completion bash)"        # ~/.bashrc\n'
                      'necropool completion zsh > ~/.zfunc/_necropool  # a $fpath directory\n'
                      'necropool completion fish > ~/.config/fish/completions/necropool.fish')

# Per-command additions: extra description paragraphs, exit status notes, examples.
COMMAND_NOTES = {
    "create": ["The slots are cloned from the mirror with shared objects: each costs about "
               "one checkout."],
    "allocate": ["Plain output is the slot path alone on stdout, so "
                 '*cd "$(necropool allocate web)"* works.',
                 "Unless --no-fetch is given (or the pool was created with "
                 "--no-fetch-on-allocate) the mirror is fetched first and the slot is "
                 "at the current upstream tip.",
                 "--wait blocks, without polling the pool, until a slot frees up."],
    "release": ["Release resets the slot to the tip of the pool branch (detached), removes "
                "untracked and ignored files (unless the pool keeps ignored files) and stale "
                "git lock files.",
                "Uncommitted changes and unpushed commits are saved first; the result says "
                "where (rescued)."],
    "run": ["The command runs in the slot, with NECROPOOL_SLOT_ID, NECROPOOL_SLOT_PATH and "
            "NECROPOOL_LEASE_ID set; the slot is released afterwards, also when the command "
            "fails or is interrupted. With --ttl, run renews the lease while the command "
            "runs, so it is never reclaimed as expired.",
            "Put -- before the command so that its options are not taken for "
            "necropool's."],
    "list": ["A pool that cannot be read (a directory under pools/ without a readable "
             "pool.toml, say) is listed with its error, and the exit status is 3."],
    "status": ["On a terminal, a table with one line per slot: below 150 columns compact "
               "(times relative to now, such as 5m ago or in 2h; the first 8 characters of the "
               "lease id; the owner and the path shortened), from 150 columns every column in "
               "full, with the holder's host, the commit and the number of uses. "
               "The reasons of slots in error, and what rescued/ holds, follow the table.",
               "--format tsv (the default when stdout is not a terminal, then without the "
               "header line) prints one line per slot with the tab-separated columns "
               "slot, state, owner, lease, allocated, commit, uses, path, expires, pid "
               "(full lease ids, RFC 3339 times, whole paths); --no-headers drops the header "
               "line. --format json is --json. NO_COLOR and --color never drop colour only, "
               "never the table.",
               "A pool that cannot be read is shown with its error, and the exit status is "
               "3, as for *list*.",
               "--format prometheus prints the metrics in the Prometheus text format; with "
               "--output FILE it writes FILE through a temporary file and a rename, as the "
               "node_exporter textfile collector requires. The metrics:"],
    "log": ["Without a POOL, the events of every pool, merged by time. Plain output is one "
            "line per event: time, event, slot, details as key=value (JSON for lists and "
            "objects), pool, tab-separated when stdout is not a terminal."],
    "rescued": ["Cleanup saves a holder's uncommitted changes, local branches, unpushed "
                "commits and stashes in a git bundle "
                "<slot>-<stamp>-<lease>.bundle under the pool's rescued/ (refs under "
                "refs/necropool/rescue/), and recovery moves broken working copies aside "
                "there (<slot>-<stamp>.broken), as auto-recover does with stray paths. "
                "*rescued list* shows each with its owner and lease (from the pool's "
                "history), age, size and contents; an ID is the name under rescued/, or any "
                "unambiguous start of it, such as the short id the table shows.",
                "*rescued restore* fetches a bundle's refs as refs/rescued/<ID>/... into a "
                "clone: an existing one (--into DIR), else a new clone of the pool's mirror "
                "with origin set to the upstream. *rescued prune* is a dry run unless --yes "
                "is given; it never deletes outside rescued/ and removes a symlink, never "
                "what it points at."],
    "sync": ["The config file declares pools as [pools.NAME] tables (see CONFIGURATION in "
             "*necropool*(1))."],
    "renew": ["Without --ttl the lease is extended by its own TTL, from now; a lease "
              "without a TTL needs --ttl. A lease that has expired but was not reclaimed yet "
              "may be renewed."],
    "detect": ["Kinds: long allocated (no TTL, older than --max-allocation-hours), expired "
               "leases (past their --ttl), abandoned "
               "(holder or worker dead), corrupted, orphaned locks, stray paths, isolated "
               "slots, stale mirrors (last fetch failed, or none for stale_mirror_hours).",
               "The exit status is 1 as long as the upstream cannot be fetched."],
    "auto-recover": ["Abandoned slots and expired leases are released (their work saved), "
                     "corrupted ones "
                     "recovered or isolated, orphaned locks removed, stray paths moved aside; "
                     "long allocations without a TTL are only reported unless "
                     "--force-release-long-allocated is given.",
                     "Safe to run from cron; --dry-run only says what would be done."],
    "recover": ["Recovery never destroys work silently: changes are saved before a reset."],
    "completion": COMPLETION_TEXT,
}
COMMAND_EXIT = {
    "allocate": "75 when no slot is free (after --wait, if given).",
    "release": "5 when the slot is not allocated or --lease-id names a stale lease.",
    "renew": "5 when --lease-id is not the slot's current lease (the message says what became "
             "of it).",
    "run": "The status of the command (127 when it is not found, 126 when it cannot be "
           "executed); necropool's own failures use the codes of *necropool*(1).",
    "detect": "0 when healthy, 1 when anything is found.",
    "recover": "0 when the slot ends available, 3 when it could not be repaired (it is then "
               "isolated).",
    "auto-recover": "3 when any action failed (see errors in the JSON output).",
}
# ---- roff helpers -------------------------------------------------------------------------

def _escape(text: str) -> str:
    """Literal text to roff: backslashes and hyphens escaped."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def _inline(text: str) -> str:
    """Hand-written text to roff: escaped, ``*bold*`` and ``<italic>`` applied."""
    text = _escape(text)
    text = re.sub(r"\*([^*\s][^*]*?)\*", r"\\fB\1\\fR", text)
    return re.sub(r"<([A-Za-z][\w.|=\\-]*)>", r"\\fI\1\\fR", text)


def _lines(text: str) -> list[str]:
    """Filled text: each sentence on a new line, lines of at most 78 bytes, none starting
    with a control character."""
    flat = re.sub(r"\s+", " ", text).strip()
    out = []
    for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z*(\"<\\])", flat):
        out += textwrap.wrap(sentence, 78, break_long_words=False, break_on_hyphens=False)
    return [_guard(line) for line in out]


def _guard(line: str) -> str:
    return "\\&" + line if line[:1] in (".", "'") else line


def _para(text: str) -> list[str]:
    return [".PP", *_lines(_inline(text))]


def _verbatim(text: str) -> list[str]:
    return [".PP", ".RS 4", ".nf", *(_guard(_escape(line)) for line in text.split("\n")),
            ".fi", ".RE"]


def _metavar(text: str) -> str:
    """A metavar to roff: upper-case words italic, ``--`` bold, the rest literal."""
    out = []
    word = r"[A-Z][A-Z0-9_]*(?:-[A-Z0-9_]+)*"
    for token in re.findall(rf"--|{word}|[^A-Z-]+|-", text):
        if token == "--":
            out.append("\\fB\\-\\-\\fR")
        elif re.fullmatch(word, token):
            out.append(f"\\fI{_escape(token)}\\fR")
        else:
            out.append(_escape(token))
    return "".join(out)


def _header(title: str) -> list[str]:
    # no hyphenation, ragged right: option names and paths stay whole
    return [f'.TH {_escape(title.upper())} 1 "{DATE}" "{_escape(SOURCE)}" "{MANUAL}"',
            ".nh", ".ad l"]


def _see_also(refs: list[str]) -> list[str]:
    """``.BR`` lines for references written ``name(section)``."""
    lines = [".SH SEE ALSO"]
    for i, ref in enumerate(refs):
        name, section = ref.rstrip(")").split("(")
        lines.append(f".BR {_escape(name)} ({section})" + ("," if i < len(refs) - 1 else ""))
    return lines


# ---- reading the click commands ------------------------------------------------------------

def _root_command():
    from typer.main import get_command

    from necropool.cli.app import build

    return get_command(build())


def _context(command, name: str, parent=None):
    import typer._click as click

    settings = dict(command.context_settings or {})
    return click.Context(command, info_name=name, parent=parent, **settings)


def _option_metavar(param, ctx) -> str | None:
    if param.is_flag or param.count:
        return None
    if param.metavar:
        return param.metavar
    longest = max(param.opts, key=len)
    return longest.lstrip("-").upper()


def _option_term(param, ctx) -> str:
    names = sorted(param.opts, key=lambda o: (o.startswith("--"), o)) + param.secondary_opts
    term = ", ".join(f"\\fB{_escape(n)}\\fR" for n in names)
    metavar = _option_metavar(param, ctx)
    return f"{term} {_metavar(metavar)}" if metavar else term


def _option_help(param, ctx) -> str:
    record = param.get_help_record(ctx)
    text = record[1] if record else (param.help or "")
    if getattr(param, "multiple", False) and "repeat" not in text.lower():
        text += " (repeatable)"
    return text


def _params(command, ctx):
    arguments = [p for p in command.get_params(ctx) if p.param_type_name == "argument"]
    options = [p for p in command.get_params(ctx)
               if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    return arguments, options


def _argument_metavar(param, ctx) -> str:
    metavar = param.metavar or param.name.upper()
    if param.nargs == -1 and not metavar.endswith("..."):
        metavar += "..."
    return metavar


def _options_section(title: str, options, ctx) -> list[str]:
    lines = [f".SH {title}"]
    for param in options:
        lines += [".TP", _option_term(param, ctx), *_lines(_escape(_option_help(param, ctx)))]
    return lines


def _synopsis_option(param, ctx) -> str:
    name = sorted(param.opts, key=lambda o: (not o.startswith("--"), o))[0]
    metavar = _option_metavar(param, ctx)
    text = f"\\fB{_escape(name)}\\fR" + (f" {_metavar(metavar)}" if metavar else "")
    return f"[{text}]"


# ---- pages ---------------------------------------------------------------------------------

def command_names() -> list[str]:
    """The visible commands, in the order help lists them."""
    root = _root_command()
    ctx = _context(root, "necropool")
    return [n for n in root.list_commands(ctx) if not root.get_command(ctx, n).hidden]


def main_page() -> str:
    root = _root_command()
    ctx = _context(root, "necropool")
    _, options = _params(root, ctx)
    names = command_names()
    lines = [*_header("necropool"),
             ".SH NAME",
             *_name_line("necropool", root.help),
             ".SH SYNOPSIS",
             ".B necropool",
             "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".br",
             ".B necropool",
             "\\fICOMMAND\\fR \\fB\\-\\-help\\fR",
             ".SH DESCRIPTION"]
    for text in DESCRIPTION:
        lines += _para(text)
    lines += _options_section("GLOBAL OPTIONS", options, ctx)
    lines += [".PP", "Global options go before the command name",
              "(given after it, before any \\fB\\-\\-\\fR, they are moved there).",
              "Every command also takes \\fB\\-\\-json\\fR (see JSON OUTPUT)",
              "and \\fB\\-h\\fR, \\fB\\-\\-help\\fR."]
    lines += [".SH COMMANDS"]
    for name in names:
        sub = root.get_command(ctx, name)
        sub_ctx = _context(sub, name, ctx)
        arguments, _ = _params(sub, sub_ctx)
        usage = " ".join(_metavar(_argument_metavar(a, sub_ctx)) for a in arguments)
        lines += [".TP", f"\\fB{_escape(name)}\\fR {usage}".rstrip(),
                  *_lines(_escape(_summary(sub.help)) + "."),
                  f"See \\fBnecropool\\-{_escape(name)}\\fR(1)."]
    lines += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        lines += [".TP", f".B {code}", *_lines(_inline(text))]
    lines += _para(EXIT_RUN)
    lines += [".SH ENVIRONMENT"]
    for var, text in ENVIRONMENT:
        lines += [".TP", f".B {_escape(var)}", *_lines(_inline(text))]
    lines += _para(PRECEDENCE)
    lines += [".SH FILES"]
    for path, text in FILES:
        lines += [".TP", _inline(path), *_lines(_inline(text))]
    lines += [".SH CONFIGURATION",
              *_para("The config file is TOML. Top-level keys:")]
    for key, text in CONFIG_TOP:
        lines += [".TP", f".B {_escape(key)}", *_lines(_inline(text))]
    lines += _para("A [pools.<name>] table declares a pool for *sync*:")
    for key, text in CONFIG_POOL:
        lines += [".TP", f".B {_escape(key)}", *_lines(_inline(text))]
    lines += _verbatim('root = "/srv/necropool"\nmax_allocation_hours = 12\n\n'
                       '[pools.web]\nurl = "https://example.com/org/web.git"\nnum_slots = 8\n'
                       'keep_ignored = true')
    lines += [".SH JSON OUTPUT"]
    for text in JSON_TEXT:
        lines += _para(text)
    lines += _verbatim(JSON_ERROR)
    lines += _para(JSON_CODES)
    for text in JSON_DETECT:
        lines += _para(text)
    lines += [".SH SHELL COMPLETION"]
    for text in COMPLETION_TEXT:
        lines += _para(text)
    lines += _verbatim(COMPLETION_EXAMPLE)
    lines += [".SH EXAMPLES", *_para("A first session:"), *_verbatim(COMMAND_EXAMPLES[""])]
    for text, example in EXAMPLES:
        lines += _para(text) + _verbatim(example)
    lines += _see_also([f"necropool-{n}(1)" for n in names] + ["git(1)", "jq(1)", "crontab(5)"])
    return _join(lines)


def _subcommands(command, ctx) -> list[tuple[str, object, object]]:
    """(name, command, context) of a group's subcommands, in the order help lists them."""
    if not hasattr(command, "list_commands"):
        return []
    out = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        out.append((name, sub, _context(sub, name, ctx)))
    return out


def _group_sections(name: str, subs) -> tuple[list[str], list[str]]:
    """SYNOPSIS lines and a COMMANDS section for a command with subcommands."""
    synopsis = []
    for sub_name, sub, sub_ctx in subs:
        arguments, options = _params(sub, sub_ctx)
        synopsis += [f".B necropool {_escape(name)} {_escape(sub_name)}",
                     *[_synopsis_option(p, sub_ctx) for p in options if "--help" not in p.opts],
                     *[_metavar(_argument_metavar(a, sub_ctx)) for a in arguments], ".br"]
    body = [".SH COMMANDS"]
    for sub_name, sub, sub_ctx in subs:
        arguments, options = _params(sub, sub_ctx)
        usage = " ".join(_metavar(_argument_metavar(a, sub_ctx)) for a in arguments)
        body += [".SS", f"\\fB{_escape(name)} {_escape(sub_name)}\\fR {usage}".rstrip(),
                 *_lines(_escape(sub.help or "")), ".PP", "Arguments and options:"]
        for param in arguments:
            body += [".TP", _metavar(_argument_metavar(param, sub_ctx)),
                     *_lines(_escape(param.help or ""))]
        for param in options:
            if "--help" not in param.opts:
                body += [".TP", _option_term(param, sub_ctx),
                         *_lines(_escape(_option_help(param, sub_ctx)))]
    return synopsis[:-1], body


def _examples(name: str, subs) -> str:
    """The examples of a command and of its subcommands (examples.py)."""
    keys = [name] + [f"{name} {sub_name}" for sub_name, _, _ in subs]
    return "\n".join(COMMAND_EXAMPLES[k] for k in dict.fromkeys(keys) if k in COMMAND_EXAMPLES)


def command_page(name: str) -> str:
    root = _root_command()
    ctx = _context(root, "necropool")
    sub = root.get_command(ctx, name)
    sub_ctx = _context(sub, name, ctx)
    subs = _subcommands(sub, sub_ctx)
    if subs:
        return _group_page(name, sub, subs)
    arguments, options = _params(sub, sub_ctx)
    synopsis = [_synopsis_option(p, sub_ctx) for p in options if "--help" not in p.opts]
    synopsis += [_metavar(_argument_metavar(a, sub_ctx)) for a in arguments]
    lines = [*_header(f"necropool-{name}"),
             ".SH NAME",
             *_name_line(f"necropool-{name}", sub.help),
             ".SH SYNOPSIS",
             f".B necropool {_escape(name)}",
             *synopsis,
             ".SH DESCRIPTION",
             *_lines(_escape(sub.help or ""))]
    for text in COMMAND_NOTES.get(name, []):
        lines += _para(text)
    if name == "status":
        from necropool.cli.metrics import METRICS

        for metric, kind, text in METRICS:
            lines += [".TP", f".B {_escape(metric)}", *_lines(_escape(f"{text} ({kind})"))]
    if arguments:
        lines += [".SH ARGUMENTS"]
        for param in arguments:
            help_text = param.help or ""
            if not param.required and "default" not in help_text:
                help_text += " (optional)"
            lines += [".TP", _metavar(_argument_metavar(param, sub_ctx)),
                      *_lines(_escape(help_text))]
    lines += _options_section("OPTIONS", options, sub_ctx)
    lines += [".PP",
              "The global options of \\fBnecropool\\fR(1)",
              "(\\fB\\-\\-root\\fR, \\fB\\-\\-config\\fR, \\fB\\-\\-color\\fR)",
              "go before the command name (after it they work too, before any \\fB\\-\\-\\fR)."]
    lines += [".SH EXIT STATUS"]
    if name in COMMAND_EXIT:
        lines += _lines(_inline(COMMAND_EXIT[name]))
        lines += ["See EXIT STATUS in \\fBnecropool\\fR(1) for the other codes."]
    else:
        lines += ["See EXIT STATUS in \\fBnecropool\\fR(1)."]
    if name in COMMAND_EXAMPLES:
        lines += [".SH EXAMPLES", *_verbatim(COMMAND_EXAMPLES[name])]
    lines += _see_also(["necropool(1)"])
    return _join(lines)


def _group_page(name: str, group, subs) -> str:
    synopsis, body = _group_sections(name, subs)
    lines = [*_header(f"necropool-{name}"),
             ".SH NAME",
             *_name_line(f"necropool-{name}", group.help),
             ".SH SYNOPSIS", *synopsis,
             ".SH DESCRIPTION",
             *_lines(_escape(group.help or ""))]
    for text in COMMAND_NOTES.get(name, []):
        lines += _para(text)
    lines += body
    lines += [".PP", "Each takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR.",
              "The global options of \\fBnecropool\\fR(1)",
              "(\\fB\\-\\-root\\fR, \\fB\\-\\-config\\fR, \\fB\\-\\-color\\fR)",
              "go before the command name (after it they work too).", ".SH EXIT STATUS"]
    lines += _lines(_inline(COMMAND_EXIT[name])) if name in COMMAND_EXIT else []
    lines += ["See EXIT STATUS in \\fBnecropool\\fR(1)."]
    lines += [".SH EXAMPLES", *_verbatim(_examples(name, subs))]
    lines += _see_also(["necropool(1)", "git-bundle(1)"])
    return _join(lines)


def _name_line(page: str, help_text: str | None) -> list[str]:
    text = f"{_escape(page)} \\- {_escape(_summary(help_text))}"
    return [_guard(line) for line in textwrap.wrap(text, 78, break_long_words=False,
                                                    break_on_hyphens=False)]


def _join(lines: list[str]) -> str:
    """The page text; a paragraph macro right after a section heading is dropped."""
    kept = [line for i, line in enumerate(lines)
            if not (line == ".PP" and i and lines[i - 1].startswith(".SH"))]
    return "\n".join(kept) + "\n"


def _summary(help_text: str | None) -> str:
    first = (help_text or "").strip().split("\n\n")[0]
    return re.sub(r"\s+", " ", first).rstrip(".")


def pages() -> dict[str, str]:
    """File name -> content of every page."""
    out = {"necropool.1": main_page()}
    for name in command_names():
        out[f"necropool-{name}.1"] = command_page(name)
    return out


def write_all(outdir: str) -> list[str]:
    """Write every page under ``outdir`` and delete pages of commands that no longer exist."""
    os.makedirs(outdir, exist_ok=True)
    generated = pages()
    for stale in sorted(os.listdir(outdir)):
        if stale.startswith("necropool") and stale.endswith(".1") and stale not in generated:
            os.unlink(os.path.join(outdir, stale))
    written = []
    for name, text in generated.items():
        path = os.path.join(outdir, name)
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(written_path)
