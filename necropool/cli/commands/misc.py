"""Shell completion scripts."""

from typing import Annotated

import typer

from necropool.cli import complete_values
from necropool.cli.context import G
from necropool.cli.params import Json
from necropool.cli.registry import command
from necropool.ground.errors import UsageError

SHELLS = ("bash", "zsh", "fish")


COMPLETION_TEXT = [  # for the man pages: what the scripts complete, and where they are
    """Completion scripts for bash, zsh and fish are printed by *necropool completion SHELL*
    (committed as completions/necropool.bash, completions/_necropool and
    completions/necropool.fish).
    They complete command and option names, pool names, slot ids (with their state and
    owner as descriptions in zsh and fish; *release* offers only allocated slots), the
    values of --format, --color and --fetch-backend, log event kinds, rescued ids, shell
    names, and after *run POOL --* the commands on PATH.""",
]


@command("completion",
    notes=COMPLETION_TEXT,
    examples=(
        'eval "$(necropool completion bash)"        # ~/.bashrc\n'
        "necropool completion zsh > ~/.zfunc/_necropool  # a $fpath directory\n"
        "necropool completion fish > ~/.config/fish/completions/necropool.fish"
    ),
)
def completion(
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish",
                                              autocompletion=complete_values.shells)],
    json_out: Json = False,
) -> None:
    """Print the completion script for SHELL (see completions/ and the README)."""
    from necropool.cli.completion_scripts import script  # lazy: ~2 ms; --help loads this module

    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r}: use bash, zsh or fish")
    out = G.out(json_out)
    if out.json:
        out.emit({"shell": shell, "script": script(shell)})
    else:
        typer.echo(script(shell), nl=False)
