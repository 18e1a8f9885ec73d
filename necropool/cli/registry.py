"""Command registration that defers building: modules declare commands here, and
``app.build`` turns only the ones a call needs into Typer commands."""

REGISTERED: list[tuple[str, object, dict]] = []


def command(name: str, **settings):
    """Declare a CLI command (the decorated function is returned unchanged)."""

    def declare(func):
        REGISTERED.append((name, func, settings))
        return func

    return declare


def group(name: str, app, **settings) -> None:
    """Declare a command with subcommands (a Typer app)."""
    REGISTERED.append((name, app, {"group": True, **settings}))
