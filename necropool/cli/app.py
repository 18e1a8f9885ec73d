"""The Typer application: global options, and building only the commands a call needs.

Building a Typer command inspects its signature; doing that for every command on every
call costs ~8 ms of start-up, so ``build`` registers just the command named on the command
line (all of them for help, completion and unknown names).
"""

import importlib
import os
from typing import Annotated

import typer

from necropool import __version__
from necropool.cli import complete_values
from necropool.cli.context import G
from necropool.cli.registry import document

COLORS = ("auto", "always", "never")
# command -> the module that declares it, in the order help lists them
COMMANDS = {
    "create": "commands.pools", "delete": "commands.pools", "add": "commands.pools",
    "remove": "commands.pools", "list": "commands.pools", "status": "commands.pools",
    "sync": "commands.pools",
    "allocate": "commands.slots", "release": "commands.slots", "renew": "commands.slots",
    "run": "commands.slots", "log": "commands.slots",
    "detect": "commands.health", "recover": "commands.health", "isolate": "commands.health",
    "auto-recover": "commands.health", "rescued": "commands.rescued", "ledger": "commands.ledger",
    "completion": "commands.misc",
}
_VALUE_OPTIONS = ("--root", "--config", "--ledger", "--color")
_FLAG_OPTIONS = ("--quiet", "-q")  # global flags, also taken after the command name


def _version(value: bool) -> None:
    if value:
        print(f"necropool {__version__}")
        raise typer.Exit()


document("", examples=(  # necropool itself: the first session
    'necropool create web https://example.com/org/web.git --slots 4\n'
    'cd "$(necropool allocate web --owner alice --ttl 2h)"\n'
    'necropool release "$PWD"\n'
    'necropool run web -- make test\n'
    'necropool status'
))


def main_options(
    root: Annotated[str | None, typer.Option(
        "--root", metavar="DIR", help="Root directory [env: NECROPOOL_HOME]")] = None,
    config: Annotated[str | None, typer.Option(
        "--config", metavar="FILE", help="Config file [env: NECROPOOL_CONFIG]")] = None,
    ledger: Annotated[str | None, typer.Option(
        "--ledger", metavar="DSN",
        help="Where pool state is kept: 'local' or postgresql://... [env: NECROPOOL_LEDGER]")
    ] = None,
    color: Annotated[str, typer.Option(
        "--color", metavar="WHEN", autocompletion=complete_values.colors,
        help="Colour: auto, always or never (the shape of output is --format's)")] = "auto",
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print no notes, hints or progress on stderr: only the result "
                              "and errors")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version")] = False,
) -> None:
    """Pools of ready-made git working copies for parallel agents and CI jobs."""
    # lazy: necropool.cli loads nothing until a command runs
    from necropool.ground.errors import UsageError

    if color not in COLORS:
        raise UsageError(f"invalid --color {color!r}: use auto, always or never")
    G.begin(root, config, ledger, color, quiet)


def command_named(args: list[str]) -> str | None:
    """The subcommand a command line invokes, if it names a known one."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_OPTIONS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg if arg in COMMANDS else None
    return None


def hoist_globals(args: list[str]) -> list[str]:
    """The command line with global options given after the command name moved before it
    (``necropool status --color never`` works as ``necropool --color never status``). Only up
    to a ``--``, and for ``run`` not at all without one: what follows its POOL may be the
    command's own options."""
    name = command_named(args)
    if name is None:
        return args
    start = args.index(name) + 1
    end = args.index("--", start) if "--" in args[start:] else len(args)
    if name == "run" and end == len(args):
        return args
    moved: list[str] = []
    kept: list[str] = []
    i = start
    while i < end:
        arg = args[i]
        if arg in _VALUE_OPTIONS and i + 1 < end:
            moved += args[i:i + 2]
            i += 2
            continue
        (moved if arg.startswith(tuple(o + "=" for o in _VALUE_OPTIONS)) or arg in _FLAG_OPTIONS
         else kept).append(arg)
        i += 1
    return [*moved, *args[:start], *kept, *args[end:]]


def help_alias(args: list[str]) -> list[str]:
    """``necropool help [COMMAND...]`` as ``necropool [COMMAND...] --help`` (as git has it)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in _VALUE_OPTIONS else 1
    if i < len(args) and args[i] == "help":
        return [*args[:i], *args[i + 1:], "--help"]
    return args


def build(args: list[str] | None = None) -> typer.Typer:
    """The Typer app with every command, or only the one ``args`` invokes."""
    # lazy: necropool.cli loads nothing until a command runs
    from necropool.cli.helpfmt import Command, Group
    from necropool.cli.registry import REGISTERED

    wanted = None
    if args is not None and not any(k.endswith("_COMPLETE") for k in os.environ):
        wanted = command_named(args)
    for module in dict.fromkeys([COMMANDS[wanted]] if wanted else COMMANDS.values()):
        importlib.import_module(f"necropool.cli.{module}")
    app = typer.Typer(
        name="necropool",
        cls=Group,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(main_options)
    declared = {name: (func, settings) for name, func, settings in REGISTERED}
    for name in COMMANDS:
        if name in declared and wanted in (None, name):
            func, settings = declared[name]
            if isinstance(func, typer.Typer):  # a group
                app.add_typer(func, name=name, cls=Group, **settings)
            else:
                app.command(name, **{"cls": Command, **settings})(func)
    return app


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the full application, for completion and man page generation
        return build()
    raise AttributeError(name)
