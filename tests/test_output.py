"""The output contract: --json objects, plain lines for scripts, Rich only on a terminal, and
errors (JSON or one line) with the documented exit codes."""

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import git

UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
LOOKS_LIKE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
SNAKE = re.compile(r"[a-z][a-z0-9_]*")
ANSI = "\x1b"


def walk(value, key=None, parent=None):
    """Yield (key, value, parent key) for every scalar in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, k, key)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, key, parent)
    else:
        yield key, value, parent


def keys(value, parent=None):
    """Every key of every object, except the user's own metadata keys."""
    if isinstance(value, dict):
        for k, v in value.items():
            if parent != "metadata":
                yield k
            yield from keys(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from keys(item, parent)


def check_json_contract(result) -> dict:
    """Exactly one JSON object on stdout, schema 1, absolute paths, RFC 3339 UTC times."""
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    assert data["schema_version"] == 1
    for key in keys(data):
        assert SNAKE.fullmatch(key), f"key {key!r} is not snake_case"
    for key, value, _ in walk(data):
        if not isinstance(value, str):
            continue
        if key == "path" or (key and key.endswith("_path")):
            assert os.path.isabs(value), f"{key}={value!r} is not absolute"
        if (key and key.endswith("_at")) or LOOKS_LIKE_TIME.match(value):
            assert UTC_TIME.fullmatch(value), f"{key}={value!r} is not RFC 3339 UTC with Z"
    assert ANSI not in result.stdout
    return data


# --- --json ---------------------------------------------------------------------------------


def test_every_pool_command_prints_one_json_object(cli, pool, manager, upstream, root):
    manager.allocate_slot("web", ttl=3600, fetch=False)
    second = manager.allocate_slot("web", fetch=False)
    manager.release_slot(second["slot_id"], fetch=False)

    created = check_json_contract(cli("create", "api", upstream, "--slots", "1", "--json"))
    assert created["path"] == str(root / "pools/api")
    assert created["slots"][0]["path"] == str(root / "pools/api/slots/1")

    added = check_json_contract(cli("add", "api", "--json"))
    assert added == {"schema_version": 1, "pool": "api", "added": ["api-2"]}

    listed = check_json_contract(cli("list", "--json"))
    assert [p["pool"] for p in listed["pools"]] == ["api", "web"]

    everything = check_json_contract(cli("status", "--json"))
    assert sum(len(p["slots"]) for p in everything["pools"]) == 5

    web = check_json_contract(cli("status", "web", "--json"))
    held = web["slots"][0]
    assert held["state"] == "allocated"
    # The times a user reads: when it was taken, when the lease ends, when it was last used.
    assert UTC_TIME.fullmatch(held["allocated_at"])
    assert UTC_TIME.fullmatch(held["expires_at"])
    assert UTC_TIME.fullmatch(held["last_allocated_at"])
    assert UTC_TIME.fullmatch(web["slots"][1]["last_released_at"])
    for field in ("slot_id", "pool", "path", "state", "lease_id", "current_branch",
                  "current_commit", "allocation_count"):
        assert field in held

    slot = check_json_contract(cli("status", "web-2", "--json"))
    assert slot["slot_id"] == "web-2" and slot["allocation_count"] == 1
    assert slot["current_commit"] == git(upstream, "rev-parse", "HEAD")

    removed = check_json_contract(cli("remove", "api-2", "--json"))
    assert removed["slot_id"] == "api-2" and removed["removed"] is True

    deleted = check_json_contract(cli("delete", "api", "--json"))
    assert deleted["pool"] == "api" and deleted["deleted"] is True


def test_json_paths_are_absolute_with_a_relative_root(cli, upstream, tmp_path):
    created = cli("--root", "rel-root", "create", "web", upstream, "--slots", "1", "--json",
                  cwd=tmp_path)
    data = check_json_contract(created)
    assert data["path"] == str(tmp_path / "rel-root/pools/web")
    status = check_json_contract(cli("--root", "rel-root", "status", "--json", cwd=tmp_path))
    assert status["pools"][0]["slots"][0]["path"] == str(tmp_path / "rel-root/pools/web/slots/1")


def test_json_no_pools_is_one_error_object(cli, root):
    """A root without pools (a typo, cron without NECROPOOL_HOME) is an error, not []."""
    for args in (["list", "--json"], ["status", "--json"]):
        result = cli(*args)
        assert result.code == 4 and result.stdout == "", result
        error = json.loads(result.stderr)
        assert error["code"] == "not_found" and str(root) in error["message"]


# --- plain output for scripts (stdout is not a terminal) --------------------------------------


def test_plain_list_and_status_are_tab_separated_lines(cli, pool, manager, upstream, root):
    held = manager.allocate_slot("web", owner="ci-job-7", fetch=False)
    tip = git(upstream, "rev-parse", "HEAD")

    listed = cli("list")
    assert listed.code == 0, listed
    assert listed.stdout.splitlines() == [
        f"web\t3\t2\t1\t0\t0\tmain\t{upstream}"]

    status = cli("status", "web")
    assert status.code == 0, status
    rows = [line.split("\t") for line in status.stdout.splitlines()]
    assert [r[0] for r in rows] == ["web-1", "web-2", "web-3"]
    # the documented columns: slot, state, owner, lease, allocated, commit, uses, path,
    # expires, pid, ref (the last three added after the first eight, which scripts cut)
    assert all(len(r) == 11 for r in rows)
    assert rows[0][1:4] == ["allocated", "ci-job-7", held["lease_id"]]
    assert rows[0][4] == held["allocated_at"] and rows[0][8:] == ["", "", ""]
    assert rows[1][1:4] == ["available", "", ""]
    assert all(tip.startswith(r[5]) and r[5] for r in rows)
    # Paths are never truncated, however long.
    assert [r[7] for r in rows] == [str(root / f"pools/web/slots/{n}") for n in (1, 2, 3)]
    assert cli("status").stdout == status.stdout

    # an explicit --format tsv adds the header line, --no-headers drops it again
    tsv = cli("status", "web", "--format", "tsv").stdout.splitlines()
    assert tsv[0].split("\t") == ["slot", "state", "owner", "lease", "allocated", "commit",
                                  "uses", "path", "expires", "pid", "ref"]
    assert tsv[1:] == status.stdout.splitlines()
    assert cli("status", "web", "--format", "tsv", "--no-headers").stdout == status.stdout
    assert cli("list", "--format", "tsv").stdout.splitlines()[0].split("\t")[:2] == [
        "pool", "slots"]

    slot = cli("status", "web-1")
    fields = dict(line.split("\t", 1) for line in slot.stdout.splitlines())
    assert fields["slot_id"] == "web-1"
    assert fields["state"] == "allocated"
    assert fields["path"] == str(root / "pools/web/slots/1")
    assert fields["owner"] == "ci-job-7"

    for result in (listed, status, slot):
        assert ANSI not in result.stdout and ANSI not in result.stderr
        assert result.stderr == ""


def test_plain_admin_commands_print_data_on_stdout_and_talk_on_stderr(cli, upstream, root):
    created = cli("create", "web", upstream, "--slots", "2")
    assert created.code == 0, created
    assert created.stdout == f"{root / 'pools/web'}\n"
    # No progress bar when stderr is not a terminal: just one line of commentary.
    assert created.stderr.splitlines() == ["created pool web: 2 slots on main"]
    assert "\r" not in created.stderr and ANSI not in created.stderr

    added = cli("add", "web", "--count", "2")
    assert added.stdout == "web-3\nweb-4\n"
    assert "\r" not in added.stderr and ANSI not in added.stderr

    removed = cli("remove", "web-4")
    assert removed.code == 0 and removed.stdout == ""
    assert "web-4" in removed.stderr

    deleted = cli("delete", "web")
    assert deleted.code == 0 and deleted.stdout == ""
    for result in (created, added, removed, deleted):
        assert ANSI not in result.stdout + result.stderr


def run_on_terminal(args, env=None, timeout=60):
    """Run the CLI with stdout on a pseudo-terminal; return (exit code, bytes written)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "necropool", *map(str, args)],
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, COLUMNS="300", LINES="50", **(env or {})))
    os.close(slave)
    data = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("the CLI hung writing to a terminal")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    proc.wait(timeout)
    return proc.returncode, data.decode(errors="replace")


def test_a_terminal_gets_a_table_and_no_color_is_honoured(cli, pool, root):
    code, text = run_on_terminal(["status", "web"], {"NO_COLOR": "", "TERM": "xterm-256color"})
    assert code == 0
    assert "SLOT" in text and "STATE" in text  # a table with a header, for a human
    assert "\t" not in text
    assert ANSI in text  # colour on a terminal
    assert str(root / "pools/web/slots/3") in text

    code, text = run_on_terminal(["status", "web"], {"NO_COLOR": "1", "TERM": "xterm-256color"})
    assert code == 0
    assert ANSI not in text
    assert "web-1" in text and "web-3" in text


# --- errors -----------------------------------------------------------------------------------

ERRORS = [
    # (arguments, exit code, error code) -- "{up}" is the upstream, "{nowhere}" a missing path
    (["create", "../x", "{up}"], 2, "usage"),
    (["create", "Web", "{up}"], 2, "usage"),
    (["create", "new", "--", "-uhoh"], 2, "usage"),
    (["create", "new", "ext::sh -c id"], 2, "usage"),
    (["create", "new", "{up}", "--slots", "0"], 2, "usage"),
    (["create", "new"], 2, "usage"),
    (["frobnicate"], 2, "usage"),
    (["add", "web", "--count", "zero"], 2, "usage"),
    (["remove", "web"], 2, "usage"),
    (["create", "new", "{nowhere}"], 3, "failed"),
    (["status", "nosuch"], 4, "not_found"),
    (["status", "web-7"], 4, "not_found"),
    (["add", "nosuch"], 4, "not_found"),
    (["delete", "nosuch"], 4, "not_found"),
    (["remove", "web-7"], 4, "not_found"),
    (["create", "web", "{up}"], 5, "conflict"),
]


def _args(template, upstream, tmp_path):
    return [a.format(up=upstream, nowhere=tmp_path / "nowhere") for a in template]


@pytest.mark.parametrize(("template", "exit_code", "code"), ERRORS,
                         ids=[" ".join(t[0])[:40] for t in ERRORS])
def test_errors_as_json_on_stderr(cli, pool, upstream, tmp_path, template, exit_code, code):
    args = _args(template, upstream, tmp_path)
    result = cli(args[0], "--json", *args[1:])  # before any ``--``
    assert result.code == exit_code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    error = json.loads(lines[0])
    assert set(error) == {"schema_version", "type", "code", "message", "exit_code"}
    assert error["schema_version"] == 1 and error["type"] == "error"
    assert error["code"] == code and error["exit_code"] == exit_code
    assert error["message"] and "\n" not in error["message"]


@pytest.mark.parametrize(("template", "exit_code", "code"), ERRORS,
                         ids=[" ".join(t[0])[:40] for t in ERRORS])
def test_errors_as_one_plain_line(cli, pool, upstream, tmp_path, root, template, exit_code,
                                  code):
    result = cli(*_args(template, upstream, tmp_path))
    assert result.code == exit_code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("necropool: error: ")
    assert "Traceback" not in result.stderr and ANSI not in result.stderr
    # A failed command changed nothing: the pool is as it was, nothing else was created.
    assert sorted(os.listdir(root / "pools")) == ["web"]
    assert sorted(os.listdir(root / "pools/web/slots")) == ["1", "2", "3"]


def test_a_path_argument_outside_any_slot_is_refused(cli, pool, tmp_path):
    result = cli("remove", str(Path(tmp_path)), "--json")
    assert result.code == 2, result
    assert json.loads(result.stderr)["code"] == "usage"
