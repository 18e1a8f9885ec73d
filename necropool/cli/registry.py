"""Command registration that defers building: modules declare commands here, and
``app.build`` turns only the ones a call needs into Typer commands. A command's man-page
additions are declared with it (``notes``: paragraphs after its help; ``exit_status``), and
so are its ``examples``: shell text, one command per line, a ``#`` comment saying what a line
does where that is not obvious; the Examples of ``--help`` and the EXAMPLES of the man pages.
Keys are command paths without ``necropool`` (``""`` is ``necropool`` itself)."""

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer

from necropool.cli.helpfmt import EXAMPLES, Command

F = TypeVar("F", bound=Callable[..., Any])

# a command's function, or a group's Typer app, with its settings
REGISTERED: list[tuple[str, Callable[..., Any] | typer.Typer, dict[str, Any]]] = []
NOTES: dict[str, list[str]] = {}
EXIT_STATUS: dict[str, str] = {}


def document(name: str, *, notes: Sequence[str] = (), exit_status: str | None = None,
             examples: str | None = None) -> None:
    """Record the man-page notes, exit status and examples of the command path ``name``."""
    if notes:
        NOTES[name] = list(notes)
    if exit_status:
        EXIT_STATUS[name] = exit_status
    if examples:
        EXAMPLES[name] = examples


def command(name: str, *, notes: Sequence[str] = (), exit_status: str | None = None,
            examples: str | None = None, **settings: Any) -> Callable[[F], F]:
    """Declare a CLI command (the decorated function is returned unchanged)."""
    document(name, notes=notes, exit_status=exit_status, examples=examples)

    def declare(func: F) -> F:
        REGISTERED.append((name, func, settings))
        return func

    return declare


def group_app() -> typer.Typer:
    """The Typer app of a command with subcommands (``-h`` as ``--help``; no arguments: help)."""
    return typer.Typer(no_args_is_help=True, add_completion=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


def group(name: str, app: typer.Typer, *, notes: Sequence[str] = (), exit_status: str | None = None,
          examples: str | None = None, **settings: Any) -> None:
    """Declare a command with subcommands (a Typer app)."""
    document(name, notes=notes, exit_status=exit_status, examples=examples)
    REGISTERED.append((name, app, settings))


def subcommand(app: typer.Typer, name: str, *, examples: str | None = None,
               **settings: Any) -> Callable[[F], F]:
    """Declare a subcommand of the group whose Typer app is ``app`` (a decorator)."""
    parent = next(group_name for group_name, item, _ in REGISTERED if item is app)
    document(f"{parent} {name}", examples=examples)
    return app.command(name, cls=Command, **settings)
