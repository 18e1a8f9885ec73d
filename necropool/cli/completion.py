"""Completion scripts, generated from the Typer app through click's shell completion."""


def script(shell: str) -> str:
    from typer.main import get_command

    from necropool.cli.app import app

    command = get_command(app)
    cls = _completion_class(shell)
    comp = cls(command, {}, "necropool", "_NECROPOOL_COMPLETE")
    return comp.source()


def _completion_class(shell: str):
    try:
        from typer._click.shell_completion import get_completion_class
    except ImportError:  # typer < 0.26 uses click itself
        from click.shell_completion import get_completion_class
    return get_completion_class(shell)
