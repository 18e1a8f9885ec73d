"""Adversarial input: every case exits with the code of README.md's exit-code table, says
what is wrong in one line on stderr (never a traceback), and leaves the root byte-for-byte
as it was (every path, its content and mode; nothing excluded, not even ``events.jsonl``: a refused
request logs nothing). The one exception: a ``detect`` that reports damage (exit 1, not a
refusal) may refresh its own verification cache, ``verified.json``, and leave the lock its
readers hold while they read the slots, ``readers.lock``.

Most cases run the real CLI against a copy of one template pool (``web``: 3 slots, ``web-1``
allocated); NUL bytes, which argv cannot carry, go through the core API.
"""

import ctypes
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from faults import set_state_fields
from helpers import changes, digest, saved_state, slot_files, state_files, template_pool

from necropool.ground.config import PoolSpec, load_settings
from necropool.ground.errors import NecropoolError, UsageError
from necropool.manager.facade import PoolManager
from necropool.store.pg.connect import disconnect

LONG = "a" * 64
LOOKALIKE = "w\u0435b"  # Cyrillic e
MARKERS = ("/tmp/pwned", "/tmp/necropool-pwned")


# --- the template pool and each test's copy -------------------------------------------------


@pytest.fixture(scope="module", params=["local", "ledger"])
def template(request, tmp_path_factory) -> tuple[Path, str | None]:
    """The template pool and, on the ledger backend, the database it is kept in (each test
    gets a copy of both)."""
    base = tmp_path_factory.mktemp("bad-input-template")
    if request.param == "local":
        template_pool(base)
        return base, None
    cluster = request.getfixturevalue("pg_cluster")
    name = "bad_input_template"
    dsn = cluster.create_database(name, template=request.getfixturevalue("ledger_template"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NECROPOOL_LEDGER", dsn)
        template_pool(base)
    disconnect()  # a template must have no session open
    return base, name


@dataclass
class Ctx:
    tmp: Path
    root: Path
    upstream: Path
    lease: str
    env: dict = field(default_factory=dict)

    @property
    def pool_dir(self) -> Path:
        return self.root / "pools" / "web"

    def digest(self) -> dict[str, tuple]:
        """Every path under the root, and what the ledger holds, if the pool is in one."""
        found = digest(self.root)
        if os.environ.get("NECROPOOL_LEDGER"):
            found["<ledger>"] = (saved_state(self.root),)
        return found

    def fmt(self, text: str) -> str:
        return text.format(root=self.root, up=self.upstream, tmp=self.tmp, lease=self.lease,
                           slot=self.pool_dir / "slots" / "1")


@pytest.fixture
def ctx(template, tmp_path, monkeypatch, request) -> Iterator[Ctx]:
    base, database = template
    root = tmp_path / "root"
    shutil.copytree(base / "root", root, symlinks=True)
    monkeypatch.setenv("NECROPOOL_HOME", str(root))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
    monkeypatch.delenv("NECROPOOL_LEDGER", raising=False)
    for marker in MARKERS:
        assert not os.path.lexists(marker), f"{marker} exists before the test"
    cluster = request.getfixturevalue("pg_cluster") if database else None
    if cluster and database:
        name = f"bad_input_{next(COPIES)}"
        monkeypatch.setenv("NECROPOOL_LEDGER", cluster.create_database(name, database))
    yield Ctx(tmp_path, root, base / "upstream", (base / "lease").read_text())
    if cluster:
        disconnect()
        cluster.drop_database(name)


COPIES = itertools.count(1)



def run(args: list[str], env: dict | None = None, preexec_fn=None):
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "necropool", *args], env=full, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
                          preexec_fn=preexec_fn)


def check_refusal(proc, code: int, words: tuple[str, ...]) -> str:
    """The exit code, and one line on stderr naming the problem; returns that line."""
    report = f"exit {proc.returncode}\nstdout={proc.stdout[-800:]!r}\nstderr={proc.stderr!r}"
    assert proc.returncode == code, report
    assert "Traceback" not in proc.stderr + proc.stdout, report
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr: {report}"
    assert lines[0].startswith("necropool: error: "), report
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not named: {report}"
    return lines[0]


def no_marker() -> None:
    for marker in MARKERS:
        assert not os.path.lexists(marker), f"{marker} was created: a URL ran a command"


# --- setups: damage made before the "before" digest -----------------------------------------


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


def config(text: str):
    def setup(c: Ctx) -> None:
        write(c.tmp / "bad.toml", c.fmt(text))
    return setup


def env_config(text: str):
    def setup(c: Ctx) -> None:
        write(c.tmp / "bad.toml", c.fmt(text))
        c.env["NECROPOOL_CONFIG"] = str(c.tmp / "bad.toml")
    return setup


def truncate_state(c: Ctx) -> None:
    path = slot_files(c.pool_dir, 1)[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage_state(c: Ctx) -> None:
    for path in state_files(c.pool_dir):
        path.write_bytes(b"\x00\xff\xfe garbage [[[ = \n" * 10)


def future_state(c: Ctx) -> None:
    for name in ("state.toml", "state.toml.bak"):
        path = c.pool_dir / name
        path.write_text(path.read_text().replace("schema_version = 2", "schema_version = 99"))


def bad_entry_state(c: Ctx) -> None:
    for path in slot_files(c.pool_dir, 2):
        text = path.read_text()
        assert '[slot]\nstate = "available"' in text
        path.write_text(text.replace('[slot]\nstate = "available"', "[slot]\nstate = 5"))


def future_ledger(c: Ctx) -> None:
    """The ledger's schema as a newer necropool would leave it."""
    import psycopg

    with psycopg.connect(os.environ["NECROPOOL_LEDGER"], autocommit=True) as conn:
        conn.execute("INSERT INTO necropool_schema (version) VALUES (99)")


def ledger_env(value: str):
    def setup(c: Ctx) -> None:
        c.env["NECROPOOL_LEDGER"] = value
    return setup


# A ledger nothing listens for, with a password that must never be shown.
ledger_down = ledger_env("postgresql://necropool:s3cret-pw@127.0.0.1:1/fleet")


def home_is_file(c: Ctx) -> None:
    write(c.tmp / "home-file", "not a directory\n")
    c.env["NECROPOOL_HOME"] = str(c.tmp / "home-file")


def home_under_file(c: Ctx) -> None:
    write(c.tmp / "home-file", "not a directory\n")
    c.env["NECROPOOL_HOME"] = str(c.tmp / "home-file" / "sub")


def bad_clock_offset(c: Ctx) -> None:
    c.env["NECROPOOL_CLOCK_OFFSET"] = "soon"


def no_git_on_path(c: Ctx) -> None:
    bin_dir = c.tmp / "bin-without-git"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")
    os.symlink(sys.executable, bin_dir / "python3")
    c.env["PATH"] = str(bin_dir)


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    words: tuple[str, ...] = ()
    setup: object = None
    out_words: tuple[str, ...] = ()  # for exit 1 (detect): what stdout must name
    only: str | None = None  # "local" or "ledger": a case about one backend's own storage

    def param(self):
        """The case as a test parameter, marked to run on its backend only."""
        marks = {"local": [pytest.mark.toml_only], "ledger": [pytest.mark.ledger_only]}
        return pytest.param(self, id=self.id, marks=marks.get(self.only or "", []))


CASES = [
    # pool names
    Case("pool-dotdot", ["create", "../evil", "{up}"], 2, ("invalid pool name", "../evil")),
    Case("pool-slash", ["create", "a/b", "{up}"], 2, ("invalid pool name",)),
    Case("pool-newline", ["create", "web2\n", "{up}"], 2, ("invalid pool name", "\\n")),
    Case("pool-lookalike", ["create", LOOKALIKE, "{up}"], 2, ("invalid pool name",)),
    Case("pool-64-chars", ["create", LONG, "{up}"], 2, ("invalid pool name", LONG)),
    Case("pool-empty", ["create", "", "{up}"], 2, ("invalid pool name",)),
    Case("pool-leading-dot", ["create", ".hidden", "{up}"], 2, ("invalid pool name",)),
    Case("pool-uppercase", ["create", "Web", "{up}"], 2, ("invalid pool name",)),
    Case("pool-dash", ["create", "-web", "{up}"], 2, ("option",)),
    Case("allocate-dotdot", ["allocate", "../web"], 2, ("invalid pool name",)),
    Case("allocate-lookalike", ["allocate", LOOKALIKE], 2, ("invalid pool name",)),
    Case("delete-dotdot", ["delete", "..", "--force"], 2, ("invalid pool name",)),
    Case("add-traversal", ["add", "web/../web"], 2, ("invalid pool name",)),
    Case("detect-newline", ["detect", "web\nx"], 2, ("invalid pool name",)),
    Case("auto-recover-64", ["auto-recover", LONG], 2, ("invalid pool name",)),
    Case("log-dotdot", ["log", ".."], 2, ("invalid pool name",)),
    Case("run-slash", ["run", "a/b", "--", "true"], 2, ("invalid pool name",)),
    Case("allocate-missing-pool", ["allocate", "nosuch"], 4, ("nosuch", "does not exist")),
    Case("delete-missing-pool", ["delete", "nosuch"], 4, ("nosuch", "does not exist")),
    Case("create-existing-pool", ["create", "web", "{up}"], 5, ("already exists",)),
    # slot ids and slot paths
    Case("slot-zero", ["release", "web-0"], 2, ("invalid slot id",)),
    Case("slot-no-number", ["recover", "web-"], 2, ("invalid slot id",)),
    Case("slot-newline", ["remove", "web-1\n"], 2, ("invalid slot id",)),
    Case("slot-fullwidth-digit", ["isolate", "web-\uff11"], 2, ("invalid slot id",)),
    Case("slot-lookalike", ["recover", f"{LOOKALIKE}-1"], 2, ("invalid slot id",)),
    Case("slot-7-digits", ["recover", "web-9999999"], 2, ("invalid slot id",)),
    Case("slot-64-char-pool", ["release", f"{LONG}-1"], 2, ("invalid slot id",)),
    Case("slot-status-dotdot", ["status", "../../etc"], 2, ("not inside a slot",)),
    Case("slot-path-tmp", ["release", "/tmp"], 2, ("not inside a slot", "/tmp")),
    Case("slot-path-fs-root", ["recover", "/", "--force"], 2, ("not inside a slot",)),
    Case("slot-path-pool-dir", ["remove", "{root}/pools/web", "--force"], 2,
         ("not inside a slot",)),
    Case("slot-path-escapes-via-dotdot", ["remove", "{slot}/../../mirror.git", "--force"], 2,
         ("not inside a slot",)),
    Case("slot-path-outside-missing", ["isolate", "/nonexistent/necropool/slot"], 2,
         ("not inside a slot",)),
    Case("slot-path-missing", ["isolate", "{slot}/no/such/file"], 4, ("no such path",)),
    Case("slot-missing", ["release", "web-9"], 4, ("web-9", "does not exist")),
    Case("slot-pool-missing", ["remove", "nosuch-1"], 4, ("nosuch", "does not exist")),
    Case("release-stale-lease", ["release", "web-1", "--lease-id", "0123456789abcdef"], 5,
         ("stale lease",)),
    Case("release-not-allocated", ["release", "web-2"], 5, ("not allocated",)),
    Case("remove-allocated", ["remove", "web-1"], 5, ("allocated", "--force")),
    # URLs
    Case("url-empty", ["create", "p", ""], 2, ("url", "empty")),
    Case("url-option", ["create", "p", "--", "--upload-pack=touch /tmp/pwned"], 2,
         ("must not start with '-'",)),
    Case("url-ext", ["create", "p", "ext::sh -c touch% /tmp/pwned"], 2,
         ("refusing url", "ext::")),
    Case("url-ext-plain", ["create", "p", "ext::sh -c 'touch /tmp/necropool-pwned'"], 2,
         ("refusing url",)),
    Case("url-fd", ["create", "p", "fd::17"], 2, ("refusing url", "fd::")),
    Case("url-newline", ["create", "p", "{up}\n--upload-pack=touch /tmp/pwned"], 2,
         ("control characters",)),
    Case("url-ssh-option-host", ["create", "p", "ssh://-oProxyCommand=touch% /tmp/pwned/x"], 3,
         ("strange hostname",)),
    Case("url-nowhere-path", ["create", "p", "{tmp}/no/such/repo"], 3, ("does not exist",)),
    Case("url-nowhere-file", ["create", "p", "file://{tmp}/no/such/repo"], 3,
         ("git clone failed",)),
    Case("branch-option", ["create", "p", "{up}", "--branch", "--upload-pack=x"], 2,
         ("invalid branch",)),
    Case("branch-dotdot", ["create", "p", "{up}", "--branch", "a..b"], 2, ("invalid branch",)),
    Case("branch-missing", ["create", "p", "{up}", "--branch", "nosuch"], 3,
         ("nosuch", "does not exist")),
    # durations and numbers
    Case("ttl-unit", ["allocate", "web", "--ttl", "5x"], 2, ("invalid --ttl", "5x")),
    Case("ttl-negative", ["allocate", "web", "--ttl", "-1h"], 2, ("invalid --ttl", "-1h")),
    Case("ttl-zero", ["allocate", "web", "--ttl", "0"], 2, ("--ttl", "greater than zero")),
    Case("ttl-empty", ["allocate", "web", "--ttl", ""], 2, ("invalid --ttl",)),
    Case("ttl-huge", ["allocate", "web", "--ttl", "99999999999999999999d"], 2,
         ("--ttl", "too long")),
    Case("wait-unit", ["allocate", "web", "--wait", "5x"], 2, ("invalid --wait",)),
    Case("since-garbage", ["log", "web", "--since", "yesterday"], 2, ("invalid --since",)),
    Case("since-empty", ["log", "web", "--since", ""], 2, ("invalid --since",)),
    Case("hours-negative", ["detect", "--max-allocation-hours", "-1"], 2,
         ("max_allocation_hours",)),
    Case("hours-zero", ["auto-recover", "--max-allocation-hours", "0"], 2,
         ("max_allocation_hours",)),
    Case("hours-inf", ["detect", "--max-allocation-hours", "inf"], 2,
         ("max_allocation_hours",)),
    Case("hours-nan", ["auto-recover", "--max-allocation-hours", "nan"], 2,
         ("max_allocation_hours",)),
    Case("slots-zero", ["create", "p", "{up}", "--slots", "0"], 2, ("--slots",)),
    Case("count-negative", ["add", "web", "--count", "-3"], 2, ("--count",)),
    Case("pid-missing", ["allocate", "web", "--pid", "999999999"], 2, ("no process",)),
    Case("pid-negative", ["allocate", "web", "--pid", "-1"], 2, ("no process",)),
    # metadata
    Case("owner-newline", ["allocate", "web", "--owner", "ci\nforged line"], 2,
         ("invalid owner",)),
    Case("owner-too-long", ["allocate", "web", "--owner", "o" * 300], 2, ("invalid owner",)),
    Case("meta-no-equals", ["allocate", "web", "--meta", "novalue"], 2, ("key=value",)),
    Case("meta-empty-key", ["allocate", "web", "--meta", "=value"], 2, ("key=value",)),
    Case("meta-100k", ["allocate", "web", "--meta", "k=" + "x" * 100_000], 2, ("too long",)),
    Case("meta-control-key", ["allocate", "web", "--meta", "a\x1bb=1"], 2,
         ("control characters",)),
    Case("owner-escape", ["allocate", "web", "--owner", "ci\x1b[2J"], 2, ("invalid owner",)),
    Case("owner-c1-csi", ["allocate", "web", "--owner", "ci\x9b2J"], 2, ("invalid owner",)),
    Case("reason-escape", ["isolate", "web-2", "--reason", "disk\x1b]0;pwned\x07"], 2,
         ("invalid reason", "control characters")),
    Case("reason-newline", ["isolate", "web-2", "--reason", "ok\nforged: line"], 2,
         ("invalid reason",)),
    # other options
    Case("color-bogus", ["--color", "sometimes", "list"], 2, ("--color",)),
    Case("format-bogus", ["status", "--format", "xml"], 2, ("--format",)),
    Case("output-without-prometheus", ["status", "--output", "{tmp}/m.prom"], 2,
         ("--format prometheus",)),
    Case("prometheus-of-a-slot", ["status", "web-1", "--format", "prometheus"], 2,
         ("name a pool",)),
    Case("log-tail-zero", ["log", "--tail", "0"], 2, ("--tail",)),
    Case("rescued-missing", ["rescued", "show", "web-1-1999"], 4, ("no rescued work",)),
    Case("rescued-id-empty", ["rescued", "show", ""], 2, ("invalid rescued id",)),
    Case("prune-duration", ["rescued", "prune", "--older-than", "soon"], 2,
         ("--older-than",)),
    Case("prune-dry-and-yes", ["rescued", "prune", "--dry-run", "--yes"], 2, ("exclude",)),
    Case("rescued-missing-pool", ["rescued", "list", "nosuch"], 4, ("nosuch",)),
    Case("completion-shell", ["completion", "tcsh"], 2, ("tcsh",)),
    Case("fetch-backend", ["create", "p", "{up}", "--fetch-backend", "svn"], 2,
         ("fetch backend",)),
    Case("run-without-command", ["run", "web"], 2, ("missing argument",)),
    Case("unknown-command", ["frobnicate"], 2, ("no such command",)),
    # config files
    Case("config-invalid-toml", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("bad.toml", "not valid toml"), config("x = [\n")),
    Case("config-binary", ["--config", "{tmp}/bad.toml", "list"], 2, ("bad.toml",),
         config("\x00\x01\x02")),
    Case("config-wrong-type", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("lock_timeout", "expected a number"), config('lock_timeout = "fast"\n')),
    Case("config-unknown-key", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("colour", "unknown key"), config("colour = 1\n")),
    Case("config-unknown-pool-key", ["--config", "{tmp}/bad.toml", "sync"], 2,
         ("pools.web.slots", "unknown key"),
         config('[pools.web]\nurl = "{up}"\nslots = 3\n')),
    Case("config-negative-count", ["--config", "{tmp}/bad.toml", "sync"], 2,
         ("num_slots", "greater than zero"),
         config('[pools.web]\nurl = "{up}"\nnum_slots = -1\n')),
    Case("config-bool-count", ["--config", "{tmp}/bad.toml", "sync"], 2,
         ("num_slots", "boolean"), config('[pools.web]\nurl = "{up}"\nnum_slots = true\n')),
    Case("config-inf-hours", ["--config", "{tmp}/bad.toml", "detect"], 2,
         ("max_allocation_hours",), config("max_allocation_hours = inf\n")),
    Case("config-huge-timeout", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("git_timeout",), config("git_timeout = 1e30\n")),
    Case("config-negative-timeout", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("lock_timeout", "greater than zero"), config("lock_timeout = -5\n")),
    Case("config-pool-name", ["--config", "{tmp}/bad.toml", "sync"], 2,
         ("invalid pool name",), config('[pools."../x"]\nurl = "{up}"\n')),
    Case("config-ext-url", ["--config", "{tmp}/bad.toml", "sync"], 2, ("refusing url",),
         config('[pools.p]\nurl = "ext::sh -c touch% /tmp/pwned"\n')),
    Case("config-missing-url", ["--config", "{tmp}/bad.toml", "sync"], 2,
         ("url", "missing"), config("[pools.p]\nnum_slots = 2\n")),
    Case("config-root-not-string", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("root", "expected a string"), config("root = 5\n")),
    Case("config-pools-not-table", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("pools", "expected a table"), config("pools = 3\n")),
    Case("config-missing-file", ["--config", "{tmp}/nope.toml", "list"], 2,
         ("nope.toml", "does not exist")),
    Case("config-is-directory", ["--config", "{tmp}", "list"], 2, ("is a directory",)),
    Case("config-env-invalid", ["allocate", "web"], 2, ("bad.toml", "unknown key"),
         env_config("bogus = 1\n")),
    # state files
    Case("state-truncated", ["detect", "web"], 1, (), truncate_state,
         out_words=("state files unreadable", "state.toml.bak"), only="local"),
    Case("state-garbage", ["detect", "web"], 1, (), garbage_state,
         out_words=("state files unreadable", "rebuilt"), only="local"),
    Case("state-bad-entry", ["detect", "web"], 1, (), bad_entry_state,
         out_words=("web-2", "unknown state"), only="local"),
    Case("state-future-allocate", ["allocate", "web", "--no-fetch"], 3,
         ("newer necropool", "schema_version 99"), future_state, only="local"),
    Case("state-future-release", ["release", "web-1"], 3, ("newer necropool",), future_state,
         only="local"),
    Case("state-future-recover", ["recover", "web-2"], 3, ("newer necropool",), future_state,
         only="local"),
    Case("state-future-auto-recover", ["auto-recover", "web"], 3, ("newer necropool",),
         future_state, only="local"),
    Case("state-future-remove", ["remove", "web-2", "--force"], 3, ("newer necropool",),
         future_state, only="local"),
    # the ledger
    Case("ledger-future-allocate", ["allocate", "web", "--no-fetch"], 3,
         ("schema version 99", "upgrade necropool"), future_ledger, only="ledger"),
    Case("ledger-future-release", ["release", "web-1"], 3, ("upgrade necropool",),
         future_ledger, only="ledger"),
    Case("ledger-future-auto-recover", ["auto-recover", "web"], 3, ("upgrade necropool",),
         future_ledger, only="ledger"),
    Case("ledger-down-allocate", ["allocate", "web", "--no-fetch"], 75,
         ("ledger", "unavailable", "***"), ledger_down),
    Case("ledger-down-status", ["status", "web"], 75, ("unavailable",), ledger_down),
    Case("ledger-env-invalid", ["list"], 2, ("NECROPOOL_LEDGER",), ledger_env("mysql://db")),
    Case("ledger-flag-invalid", ["--ledger", "nonsense", "list"], 2, ("--ledger", "local")),
    Case("ledger-config-invalid", ["--config", "{tmp}/bad.toml", "list"], 2,
         ("ledger", "PostgreSQL"), config('ledger = "sqlite:///x"\n')),
    # the root and the environment
    Case("home-is-file", ["list"], 2, ("not a directory",), home_is_file),
    Case("home-is-file-allocate", ["allocate", "web"], 2, ("not a directory",), home_is_file),
    Case("home-under-file", ["create", "p", "{up}"], 2, ("not a directory",), home_under_file),
    Case("root-flag-is-file", ["--root", "{up}/README", "list"], 2, ("not a directory",)),
    Case("no-git-create", ["create", "p", "{up}"], 3, ("git", "not installed"), no_git_on_path),
    Case("clock-offset-allocate", ["allocate", "web", "--no-fetch"], 2,
         ("NECROPOOL_CLOCK_OFFSET",), bad_clock_offset),
    Case("clock-offset-release", ["release", "web-1"], 2, ("NECROPOOL_CLOCK_OFFSET",),
         bad_clock_offset),
    Case("no-git-deep-detect", ["detect", "--deep", "web"], 3, ("git",), no_git_on_path),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_refused_with_documented_code_and_root_untouched(case, ctx):
    if case.setup:
        case.setup(ctx)
    before = ctx.digest()
    proc = run([ctx.fmt(a) for a in case.args], ctx.env)
    if case.code == 1:  # detect found the damage: reported on stdout, exit 1
        assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        for word in case.out_words:
            assert word.lower() in proc.stdout.lower(), (word, proc.stdout)
    else:
        check_refusal(proc, case.code, case.words)
    assert "s3cret" not in proc.stdout + proc.stderr, "a ledger's password was shown"
    changed = changes(before, ctx.digest())
    if case.code == 1:  # detect ran (not a refusal): it may refresh its verification cache
        changed = [c for c in changed
                   if c not in ("pools/web/verified.json", "pools/web/readers.lock")]
    assert changed == []
    no_marker()


JSON_CASES = ["pool-dotdot", "slot-path-tmp", "url-ext", "ttl-unit", "config-wrong-type",
              "state-future-allocate", "release-stale-lease", "allocate-missing-pool",
              "no-git-create"]


@pytest.mark.parametrize("case", [c.param() for c in CASES if c.id in JSON_CASES])
def test_json_errors_are_one_object_on_stderr(case, ctx):
    if case.setup:
        case.setup(ctx)
    before = ctx.digest()
    args = [ctx.fmt(a) for a in case.args]
    split = args.index("--") if "--" in args else len(args)
    proc = run([*args[:split], "--json", *args[split:]], ctx.env)
    assert proc.returncode == case.code, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    error = json.loads(lines[0])
    assert error["schema_version"] == 1 and error["type"] == "error"
    assert error["exit_code"] == case.code and error["code"]
    for word in case.words:
        assert word.lower() in error["message"].lower()
    assert changes(before, ctx.digest()) == []


@pytest.mark.slow
def test_ext_and_fd_urls_never_run_anything_even_through_sync(ctx):
    """The marker a malicious URL would create never appears, whichever way it comes in."""
    marker = ctx.tmp / "pwned"
    urls = [f"ext::sh -c touch% {marker}", f"ext::touch {marker}", "fd::0", "fd::3,4",
            f"--upload-pack=touch {marker}", f"-u touch {marker}",
            f"ssh://-oProxyCommand=touch% {marker}/x",
            f"ssh://host/x -oProxyCommand=touch {marker}"]
    before = ctx.digest()
    for url in urls:
        proc = run(["create", "p", "--", url])
        assert proc.returncode in (2, 3), (url, proc)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        write(ctx.tmp / "sync.toml", f"[pools.p]\nurl = {json.dumps(url)}\n")
        proc = run(["--config", str(ctx.tmp / "sync.toml"), "sync"])
        assert proc.returncode in (2, 3), (url, proc)
        assert not marker.exists(), f"{url!r} ran a command"
    assert changes(before, ctx.digest()) == []
    no_marker()


# --- the core API: what argv cannot carry ---------------------------------------------------

API_CASES = {
    "pool-nul": lambda m, c: m.allocate_slot("web\x00", fetch=False),
    "pool-nul-create": lambda m, c: m.create_pool(PoolSpec(name="p\x00", url=str(c.upstream))),
    "slot-nul": lambda m, c: m.release_slot("web-1\x00"),
    "slot-path-nul": lambda m, c: m.recover_slot(f"{c.pool_dir}/slots/1\x00/x", force=True),
    "slot-path-nul-remove": lambda m, c: m.remove_slot("/tmp\x00", force=True),
    "url-nul": lambda m, c: m.create_pool(PoolSpec(name="p", url=f"{c.upstream}\x00")),
    "branch-nul": lambda m, c: m.create_pool(PoolSpec(name="p", url=str(c.upstream),
                                                      branch="ma\x00in")),
    "root-nul": lambda m, c: load_settings(root=f"{c.root}\x00x"),
    "config-nul": lambda m, c: load_settings(config=f"{c.tmp}/x\x00.toml"),
    "meta-1mb": lambda m, c: m.allocate_slot("web", metadata={"k": "x" * 2**20}, fetch=False),
    "meta-nul-key": lambda m, c: m.allocate_slot("web", metadata={"a\x00": "b"}, fetch=False),
    "meta-not-str": lambda m, c: m.allocate_slot("web", metadata={"a": 5}, fetch=False),
    "reason-control": lambda m, c: m.isolate_slot("web-2", reason="a\x1b[31mred"),
    "ttl-huge": lambda m, c: m.allocate_slot("web", ttl=1e30, fetch=False),
    "ttl-negative": lambda m, c: m.allocate_slot("web", ttl=-5, fetch=False),
    "ttl-zero": lambda m, c: m.allocate_slot("web", ttl=0, fetch=False),
    "ttl-text": lambda m, c: m.allocate_slot("web", ttl="5", fetch=False),
    "wait-negative": lambda m, c: m.allocate_slot("web", wait=-1, fetch=False),
    "wait-bool": lambda m, c: m.allocate_slot("web", wait=True, fetch=False),
    "renew-ttl-nan": lambda m, c: m.renew_slot("web-1", "0" * 16, ttl=float("nan")),
    "lock-age-negative": lambda m, c: m.lock_manager.detect_stale_locks(max_age_hours=-1),
    "lock-age-inf": lambda m, c: m.lock_manager.cleanup_stale_locks(max_age_hours=float("inf")),
    "hours-inf": lambda m, c: m.detect_anomalies("web", max_allocation_hours=float("inf")),
    "hours-negative": lambda m, c: m.auto_recover("web", max_allocation_hours=-1),
    "count-zero": lambda m, c: m.add_slots("web", 0),
    "slots-zero": lambda m, c: m.create_pool(PoolSpec(name="p", url=str(c.upstream),
                                                      num_slots=0)),
}


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_core_api_refuses_with_usage_error(name, ctx):
    before = ctx.digest()
    manager = PoolManager(load_settings())
    with pytest.raises(NecropoolError) as info:
        API_CASES[name](manager, ctx)
    assert isinstance(info.value, UsageError), repr(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in info.value.message and info.value.message
    assert changes(before, ctx.digest()) == []


# --- a read-only root -----------------------------------------------------------------------

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_dac_override() -> None:
    """In the child, before exec: root without CAP_DAC_OVERRIDE obeys permission bits."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _readonly_runner():
    """How to run a command that permission bits bind: as root, by dropping the capability
    that overrides them (root ignores chmod 0555 otherwise); skip if that is impossible."""
    if os.geteuid() != 0:
        return None
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_dac_override,
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: chmod cannot make "
                    "the root read-only for this process")
    return _drop_dac_override


def make_readonly(top: Path, readonly: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            write_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
            path.chmod(mode & ~write_bits if readonly else mode | stat.S_IWUSR)
    mode = top.stat().st_mode
    top.chmod(mode & ~0o222 if readonly else mode | stat.S_IWUSR)


READONLY_COMMANDS = [
    ["allocate", "web", "--no-fetch"],
    ["allocate", "web"],
    ["release", "web-1"],
    ["remove", "web-2"],
    ["recover", "web-2"],
    # Only state changes (a ledger takes them: nothing to refuse there).
    pytest.param(["isolate", "web-3"], marks=pytest.mark.toml_only),
    ["add", "web"],
    pytest.param(["auto-recover"], marks=pytest.mark.toml_only),
    ["create", "p", "{up}"],
    ["delete", "web", "--force"],
]


@pytest.mark.parametrize("args", READONLY_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_read_only_root_fails_cleanly(args, ctx):
    preexec = _readonly_runner()
    make_readonly(ctx.root, True)
    try:
        before = ctx.digest()
        proc = run([ctx.fmt(a) for a in args], preexec_fn=preexec)
        check_refusal(proc, 3, ())
        assert "denied" in proc.stderr.lower() or "read-only" in proc.stderr.lower(), proc
        assert changes(before, ctx.digest()) == []
    finally:
        make_readonly(ctx.root, False)


def test_read_only_root_still_answers_read_only_commands(ctx):
    preexec = _readonly_runner()
    make_readonly(ctx.root, True)
    try:
        before = ctx.digest()
        for args in (["status", "web"], ["list"], ["log", "web"]):
            proc = run(args, preexec_fn=preexec)
            assert proc.returncode == 0, (args, proc)
        assert changes(before, ctx.digest()) == []
    finally:
        make_readonly(ctx.root, False)


def test_control_characters_in_state_strings_are_escaped_on_human_output(ctx):
    """Strings from the state may carry control characters (metadata values are data; an
    older version or a hand edit may have written an error or reason with them): shown to a
    person they come out escaped, never as bytes a terminal acts on (title, clear screen)."""
    manager = PoolManager(load_settings())
    value = "x\x1b]0;owned\x07y\x9b2J"
    lease = manager.allocate_slot("web", metadata={"note": value}, fetch=False)
    set_state_fields(ctx.root / "pools/web", 3, state="error", error=value,
                     isolation_reason=value, isolated_at=datetime.now(UTC))
    for args in (["status", "web"], ["status", lease["slot_id"]], ["status", "web-3"],
                 ["log", "web"]):
        for color in ("never", "always"):
            proc = run(["--color", color, *args], ctx.env)
            assert proc.returncode == 0, proc.stderr
            shown = proc.stdout.replace("\x1b[", "")  # Rich's own colour codes under always
            assert "\x1b]" not in shown and "\x07" not in shown and "\x9b" not in shown, args
    shown = run(["--color", "never", "status", "web-3"], ctx.env).stdout
    assert "\\x1b]0;owned\\x07y\\x9b2J" in shown, shown
    data = json.loads(run(["status", lease["slot_id"], "--json"], ctx.env).stdout)
    assert data["metadata"]["note"] == value  # the data itself is kept as given
