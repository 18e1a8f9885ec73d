"""A ledger that refuses the configuration (a role it does not know, a database that does
not exist, a URL that does not parse) fails every command with the configuration exit code
(2): retrying cannot help, so a retry loop must stop. Only a ledger that cannot be reached
(or is going away) is exit 75, try again, for every command alike."""

import json
from pathlib import Path

import pytest
from helpers import run_cli

pytestmark = pytest.mark.ledger_only

COMMANDS = (["allocate", "web", "--no-fetch"], ["release", "web-1", "--lease-id", "L"],
            ["renew", "web-1", "--lease-id", "L"], ["status"], ["status", "web"], ["list"],
            ["detect"], ["auto-recover"], ["log"], ["recover", "web-1"])


@pytest.fixture
def made(ledger_dsn: str, upstream: Path, root: Path) -> str:
    """Pool ``web`` of 2 slots in a ledger of its own; returns the ledger's DSN."""
    made = run_cli("create", "web", upstream, "--slots", "2", env={"NECROPOOL_LEDGER": ledger_dsn})
    assert made.code == 0, made
    return ledger_dsn


def _wrong(dsn: str, what: str) -> str:
    base, _, database = dsn.rpartition("/")
    if what == "unknown role":
        return base.replace("://postgres@", "://nobody-here:hunter2-secret@") + "/" + database
    if what == "unknown database":
        return base.replace("://postgres@", "://postgres:hunter2-secret@") + "/no_such_ledger"
    if what == "malformed url":
        return "postgresql://postgres:hunter2-secret@[::1/" + database
    assert what == "unreachable"
    return "postgresql://postgres:hunter2-secret@127.0.0.1:1/" + database


@pytest.mark.parametrize("what", ["unknown role", "unknown database", "malformed url"])
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_configuration_the_ledger_refuses_is_exit_2(made: str, what: str, args: list[str]):
    got = run_cli(*args, env={"NECROPOOL_LEDGER": _wrong(made, what)})
    assert got.code == 2, got
    assert "hunter2" not in got.stdout + got.stderr
    assert got.stderr.strip().count("\n") == 0 and "ledger" in got.stderr, got
    as_json = run_cli(*args, "--json", env={"NECROPOOL_LEDGER": _wrong(made, what)})
    assert as_json.code == 2 and json.loads(as_json.stderr)["code"] == "usage", as_json


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_an_unreachable_ledger_is_exit_75_for_every_command(made: str, args: list[str]):
    got = run_cli(*args, env={"NECROPOOL_LEDGER": _wrong(made, "unreachable")})
    assert got.code == 75 and "unavailable" in got.stderr, got
    assert "hunter2" not in got.stdout + got.stderr
    assert run_cli("status", "web", "--json", env={"NECROPOOL_LEDGER": made}).json()[
        "counts"]["available"] == 2  # nothing changed meanwhile
