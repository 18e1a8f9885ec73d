"""Command registration that defers building: modules declare commands here, and
``app.build`` turns only the ones a call needs into Typer commands. A command's man-page
additions are declared with it (``notes``: paragraphs after its help; ``exit_status``)."""

from collections.abc import Callable, Sequence
from typing import Any

import typer

REGISTERED: list[tuple[str, Any, dict]] = []  # a command's function, or a group's Typer app
NOTES: dict[str, list[str]] = {}
EXIT_STATUS: dict[str, str] = {}


def _document(name: str, notes: Sequence[str], exit_status: str | None) -> None:
    if notes:
        NOTES[name] = list(notes)
    if exit_status:
        EXIT_STATUS[name] = exit_status


def command(name: str, *, notes: Sequence[str] = (), exit_status: str | None = None,
            **settings: Any) -> Callable[[Callable], Callable]:
    """Declare a CLI command (the decorated function is returned unchanged)."""
    _document(name, notes, exit_status)

    def declare(func: Callable) -> Callable:
        REGISTERED.append((name, func, settings))
        return func

    return declare


def group_app() -> Any:
    """The Typer app of a command with subcommands (``-h`` as ``--help``; no arguments: help)."""
    return typer.Typer(no_args_is_help=True, add_completion=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


def group(name: str, app: Any, *, notes: Sequence[str] = (), exit_status: str | None = None,
          **settings: Any) -> None:
    """Declare a command with subcommands (a Typer app)."""
    _document(name, notes, exit_status)
    REGISTERED.append((name, app, {"group": True, **settings}))
