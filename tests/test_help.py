"""``--help`` of every command: man-page placeholders in the usage line, an Examples section
(the one the man page shows), summaries never cut; global options after the command work."""

import json
import re

import pytest
from helpers import run_cli
from typer.main import get_command

from necropool.cli.app import build
from necropool.cli.registry import EXAMPLES


def every_command_path() -> list[str]:
    """Every command and subcommand, as typed after ``necropool``."""
    paths = []
    for name, command in get_command(build()).commands.items():
        paths += [name, *(f"{name} {sub}" for sub in getattr(command, "commands", {}))]
    return sorted(paths)


PATHS = every_command_path()


@pytest.mark.parametrize("path", PATHS)
def test_every_help_has_examples_and_plain_placeholders(path):
    result = run_cli(*path.split(), "--help", env={"COLUMNS": "80"})
    assert result.code == 0, result
    usage = result.stdout.splitlines()[0]
    assert usage.startswith(f"Usage: necropool {path} ")
    assert not re.search(r"[{}<>]", usage), usage
    assert not re.search(r"<(str|int|float|text|int range)>", result.stdout), result.stdout
    examples = result.stdout.split("\nExamples:\n", 1)[1].splitlines()
    assert examples == ["  " + line for line in EXAMPLES[path].split("\n")]


def test_summaries_are_whole_and_usage_is_man_like():
    top = run_cli("--help", env={"COLUMNS": "80"}).stdout
    commands = top.split("\nCommands:\n", 1)[1].split("\n\n")[0]
    assert "..." not in commands
    assert "[pools.NAME] tables and update their settings; exit 3 when any" in commands
    assert "\nExamples:\n  necropool create web" in top
    run = run_cli("run", "--help").stdout.splitlines()[0]
    assert run == "Usage: necropool run [OPTIONS] POOL -- COMMAND [ARG]..."
    create = run_cli("create", "--help").stdout
    assert "-n, --slots N" in create and "--fetch-backend BACKEND" in create


def test_global_options_after_the_command(cli, pool, root, tmp_path):
    moved = cli("status", "--root", root, "--color=never", "--json")
    assert moved.code == 0 and json.loads(moved.stdout)["pools"][0]["pool"] == "web"
    elsewhere = cli("list", f"--root={tmp_path / 'other'}", "--json")  # no pools there
    assert elsewhere.code == 4
    assert str(tmp_path / "other") in json.loads(elsewhere.stderr)["message"]
    # run without -- : what follows POOL is the command's, so the option is not taken
    hinted = cli("run", "--json", "web", "--root", root)
    assert hinted.code != 0
    late = cli("log", "web", "--version")
    assert late.code == 2 and "put it before the command name" in late.stderr
