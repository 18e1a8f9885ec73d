"""The hand-written text of the man pages (``manpage`` renders it): the sections a parser
cannot know. Inline markup: ``*word*`` is bold, ``<word>`` italic. Each command's own
additions are declared with the command (``registry``: ``notes``, ``exit_status``,
``examples``)."""

from necropool import __version__
from necropool.health.autorecover import COUNTERS

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
    ("2", "Usage or configuration error: a bad name, a bad flag, an invalid config file; a "
          "ledger that refuses the role, password, database or URL."),
    ("3", "The operation failed, wholly or partly: a repair failed, a git error, "
          "*auto-recover* had errors, *detect* could not check a pool; git cannot be run at "
          "all (refused before anything changed)."),
    ("4", "The pool or slot does not exist, or the ref *allocate --ref* names is neither "
          "in the mirror nor served by the upstream; *list*, *status*, *detect* and "
          "*auto-recover* "
          "over every pool: the root does not exist or holds no pool."),
    ("5", "Conflict: the slot is in the wrong state for the operation, the lease id is stale, "
          "the pool exists already."),
    ("70", "Internal error (a bug); a one-line message is printed, never a traceback."),
    ("75", "Try again later: no free slot, a lock timed out, or a ledger that cannot be "
           "reached (connection refused, a timeout, the server shutting down)."),
    ("130", "Interrupted."),
]
EXIT_RUN = ("*run* exits with the status of its command (127 when the command is not found, "
            "126 when it cannot be executed); its own failures use the codes above.")

ENVIRONMENT = [
    ("NECROPOOL_HOME", "The root directory (overridden by --root; overrides the config "
                       "file's root)."),
    ("NECROPOOL_CONFIG", "The config file (overridden by --config)."),
    ("NECROPOOL_LEDGER", "Where pool state is kept: local (the files under the pool) or a "
                         "PostgreSQL connection string, a ledger the hosts of a fleet share "
                         "(overridden by --ledger; overrides the config file's ledger)."),
    ("NECROPOOL_HOST", "This host's name in a shared ledger (default: the node name): letters, "
                       "digits, '.', '_' and '-'."),
    ("NECROPOOL_LEDGER_TIMEOUT", "Seconds any command waits on the ledger at most (overrides "
                                 "the config file's ledger_timeout)."),
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
# are checked against necropool.ground.layout.PoolPaths.KNOWN by the tests.
FILES = [
    ("$XDG_CONFIG_HOME/necropool/config.toml",
     "The config file: settings and the pools that *sync* creates (see CONFIGURATION)."),
    ("<root>/pools/<pool>/", "One pool."),
    ("<root>/pools/<pool>/pool.toml", "The pool definition: url (without credentials), "
     "branch, options, and managed_by = \"sync\" for a pool sync made."),
    ("<root>/pools/<pool>/state/<n>.toml",
     "Slot n's state, lease and statistics, and its identical copy <n>.toml.bak (every "
     "write is atomic and durable; a damaged file falls back to its copy; a slot whose "
     "copies are both lost is rebuilt from its directory)."),
    ("<root>/pools/<pool>/state/free",
     "Which slots are free, in allocation order (a hint: rebuilt from the slot files after "
     "a reboot)."),
    ("<root>/pools/<pool>/state.toml",
     "The state's schema version (with a copy, state.toml.bak); a schema 1 file (every "
     "slot in one file, as earlier versions wrote it) is read as it is and converted by "
     "the first write."),
    ("<root>/pools/<pool>/state.toml.bak",
     "The copy of state.toml; with state/ lost too, the state is rebuilt from what is on "
     "disk."),
    ("<root>/pools/<pool>/ledger",
     "Present when the pool's state is in a shared ledger (its address, password masked): "
     "then there are no state files, and none is rebuilt from disk."),
    ("<root>/pools/<pool>/state.imported/",
     "The state as it was when *ledger import* moved it into a shared ledger (with "
     "state.toml.imported)."),
    ("<root>/pools/<pool>/state.toml.imported",
     "The schema file as it was when *ledger import* moved the state into a ledger."),
    ("<root>/pools/<pool>/pool.lock",
     "Held only while a state write reads and writes the slots it changes (milliseconds)."),
    ("<root>/pools/<pool>/wait.lock",
     "The queue of allocations waiting for a free slot (allocate --wait)."),
    ("<root>/pools/<pool>/wake.fifo",
     "A state write that frees a slot wakes the waiter at the head of that queue through "
     "it (no polling)."),
    ("<root>/pools/<pool>/credentials",
     "The user and token of the upstream URL (mode 0600), read by the mirror's fetches "
     "alone through a git credential helper; the URL is stored and shown without them."),
    ("<root>/pools/<pool>/readers.lock",
     "Held shared by every detect that reads the slots' pack files: a process known to be "
     "necropool's own by its lock (in /proc/locks), not by its name."),
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
    ("<root>/pools/<pool>/records/<n>.prepared.json",
     "What the pool's prepare command last did in slot <n>: the commit, when, how long, "
     "whether it succeeded (owner-only)."),
    ("<root>/pools/<pool>/records/<n>.prepare.log",
     "Its output, stdout and stderr, at most 256 KiB (owner-only)."),
    ("<root>/pools/<pool>/cache/",
     "HOME, XDG_CACHE_HOME and TMPDIR of the prepare command, shared by the pool's slots "
     "(package caches); the only place outside a slot it may write."),
    ("<root>/pools/<pool>/records/<n>.lease.json",
     "In a shared ledger: slot <n>'s lease as this host last wrote it, and the leases it saw "
     "end; what a ledger restored from an earlier dump forgot is judged against it."),
    ("<root>/pools/<pool>/events.jsonl",
     "Append-only history: allocations, releases, cleanups, recoveries (see *log*)."),
    ("<root>/pools/<pool>/events.jsonl.1",
     "The previous generation of the history: auto-recover rotates it past 8 MiB."),
    ("<root>/pools/<pool>/rescued/",
     "Work saved from slots before they were reset (git bundles); broken working copies, "
     "stray paths, nested repositories git must not run in (*.nested/) and slots whose .git "
     "was tampered with (*.tampered/), moved aside whole (see *necropool-rescued*(1))."),
]

# config file key -> description; checked against necropool.ground.config by the tests
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
    ("ledger", "Where pool state is kept: local (default) or a PostgreSQL connection string "
               "(postgresql://host/db) of a ledger the hosts of a fleet share (see "
               "*necropool-ledger*(1))."),
    ("ledger_timeout", "Seconds any command waits on the ledger at most, then exit 75 "
                       "(default 10; connecting may take as long again)."),
    ("silent_host_hours", "A host of a shared ledger with no auto-recover or state change for "
                          "this long is reported (default 1)."),
    ("rescued_retention_days", "auto-recover deletes rescued work older than this many days "
                               "(default: unset, kept until rescued prune)."),
    ("event_retention_days", "auto-recover prunes a shared ledger's events older than this "
                             "many days, but for the history of work still rescued, of leases "
                             "still held, and each host's last auto-recover (default: unset, "
                             "kept)."),
]
CONFIG_POOL = [
    ("url", "Upstream repository URL or path (required)."),
    ("num_slots", "Number of slots (default 3)."),
    ("branch", "Branch (default: the upstream HEAD)."),
    ("keep_ignored", "Keep ignored files (build caches) when cleaning (default false)."),
    ("keep", "Ignored paths kept when cleaning, as gitignore-style patterns such as "
             "[\"node_modules/\", \".venv/\"]; other ignored files go, and a symlink in "
             "them that leads out of the slot goes too (default none)."),
    ("fetch_on_allocate", "Fetch upstream on every allocate (default true)."),
    ("fetch_backend", "git (default) or libgit2."),
    ("ports_per_slot", "Give each slot a block of this many ports of its own, which run "
                       "exports as NECROPOOL_PORT and NECROPOOL_PORTS (default none)."),
    ("port_base", "The first port of slot 1's block: slot k gets port_base+(k-1)*N up to "
                  "port_base+k*N-1 (default 20000); no slot's port may pass 65535."),
    ("ledger", "This pool's ledger, over the top-level one."),
    ("prepare", "Shell command run (/bin/sh -c) in a slot after each cleanup at a new tip, "
                "such as \"npm ci\": confined like the cleanup, as the pool's owner; a slot is "
                "handed out only once it succeeded for its commit, and one where it fails is "
                "isolated (default none)."),
    ("prepare_timeout", "Seconds the prepare command may run (default 1800)."),
    ("include", "Files copied into each slot at cleanup from include_from, such as "
                "[\".env\"]: relative paths without '..', written owner-only (default none)."),
    ("include_from", "The absolute directory the include files are copied from."),
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
    corrupted_slots, orphaned_locks, stray_paths, isolated_slots, stale_mirrors and
    busy_free_slots, each a list
    of objects with kind, pool, evidence and, where they apply, slot_id, path and lease_id;
    plus healthy (true when nothing was found) and count.""",
    f"""*auto-recover* reports the counters {", ".join(COUNTERS[:-1])} and {COUNTERS[-1]},
    errors (a list of messages; not empty means exit status 3), dry_run, and pools: per pool
    the same counters, the actions taken (target, action, status, and error or rescued) and
    what was detected.""",
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
