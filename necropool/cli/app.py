"""The Typer application: global options and the registration of every command."""

from typing import Annotated

import typer

from necropool import __version__
from necropool.cli.context import G

app = typer.Typer(
    name="necropool",
    help="Pools of ready-made git working copies for parallel agents and CI jobs.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

COLORS = ("auto", "always", "never")


def _version(value: bool) -> None:
    if value:
        print(f"necropool {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    root: Annotated[str | None, typer.Option(
        "--root", metavar="DIR", help="Root directory [env: NECROPOOL_HOME]")] = None,
    config: Annotated[str | None, typer.Option(
        "--config", metavar="FILE", help="Config file [env: NECROPOOL_CONFIG]")] = None,
    color: Annotated[str, typer.Option(
        "--color", metavar="WHEN", help="Colour: auto, always or never")] = "auto",
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version")] = False,
) -> None:
    from necropool.errors import UsageError

    if color not in COLORS:
        raise UsageError(f"invalid --color {color!r}: use auto, always or never")
    G.root, G.config, G.color = root, config, color


from necropool.cli import cmd_pools, cmd_slots, cmd_health, cmd_misc  # noqa: E402,F401,I001
