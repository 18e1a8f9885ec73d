"""Shell completion scripts."""

from typing import Annotated

import typer

from necropool.cli import complete
from necropool.cli.context import G
from necropool.cli.params import Json
from necropool.cli.registry import command

SHELLS = ("bash", "zsh", "fish")


@command("completion")
def completion(
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish",
                                              autocompletion=complete.shells)],
    json_out: Json = False,
) -> None:
    """Print the completion script for SHELL (see completions/ and the README)."""
    from necropool.cli.completion import script
    from necropool.errors import UsageError

    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r}: use bash, zsh or fish")
    out = G.out(json_out)
    if out.json:
        out.emit({"shell": shell, "script": script(shell)})
    else:
        typer.echo(script(shell), nl=False)
