"""Command registration that defers building: modules declare commands here, and
``app.build`` turns only the ones a call needs into Typer commands."""

from collections.abc import Callable
from typing import Any

REGISTERED: list[tuple[str, Any, dict]] = []  # a command's function, or a group's Typer app


def command(name: str, **settings: Any) -> Callable[[Callable], Callable]:
    """Declare a CLI command (the decorated function is returned unchanged)."""

    def declare(func: Callable) -> Callable:
        REGISTERED.append((name, func, settings))
        return func

    return declare


def group(name: str, app, **settings) -> None:
    """Declare a command with subcommands (a Typer app)."""
    REGISTERED.append((name, app, {"group": True, **settings}))
