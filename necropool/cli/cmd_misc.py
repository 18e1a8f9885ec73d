"""Shell completion scripts."""

from typing import Annotated

import typer

from necropool.cli.registry import command

SHELLS = ("bash", "zsh", "fish")


@command("completion")
def completion(
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish")],
) -> None:
    """Print the completion script for SHELL (see completions/ and the README)."""
    from necropool.cli.completion import script
    from necropool.errors import UsageError

    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r}: use bash, zsh or fish")
    typer.echo(script(shell), nl=False)
