"""The command-line layer: parses arguments, calls ``PoolManager``, renders results."""

import gc
import os
import signal
import sys
from types import FrameType
from typing import NoReturn


def _json_requested(args: list[str]) -> bool:
    head = args[: args.index("--")] if "--" in args else args
    return "--json" in head


def _hint(message: str) -> str:
    """A usage error, with a pointer where a global option came too late."""
    from necropool.cli.app import _VALUE_OPTIONS  # lazy: as in main

    option = message.removeprefix("No such option: ").split(" ")[0]
    if message.startswith("No such option: ") and option in (*_VALUE_OPTIONS, "--version"):
        return f"No such option: {option} (a global option: put it before the command name)"
    return message


def _watch_interrupts() -> list[int]:
    """Note SIGINTs that reach necropool itself (``run`` forwards its command's instead)."""
    seen: list[int] = []

    def on_interrupt(signum: int, _frame: FrameType | None) -> NoReturn:
        seen.append(signum)
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_interrupt)
    return seen


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes a one-line message and a documented exit code."""
    if argv is None:
        from necropool.ground import cmdline  # lazy: as every import below

        cmdline.scrub()  # first of all: a token in an argument is on show in ``ps``
    args = sys.argv[1:] if argv is None else argv
    args = args or ["--help"]  # bare ``necropool``: the full help on stdout, exit 0 (as git)
    if "_NECROPOOL_COMPLETE" in os.environ:  # a completion script asking (completion_scripts)
        from necropool.cli.completion_scripts import answer  # lazy: only a completion request

        sys.exit(answer())
    # lazy: every necropool.cli.* import runs this file first; typer and the app load
    # only when the CLI runs
    from necropool.cli.app import help_alias, hoist_globals
    from necropool.cli.output import Output
    from necropool.ground.errors import NecropoolError

    args = hoist_globals(help_alias(args))
    out = Output(_json_requested(args))
    interrupted = _watch_interrupts()
    try:
        # lazy: necropool.cli loads nothing until a command runs
        from necropool.cli.app import build

        code = build(args)(args=args, prog_name="necropool", standalone_mode=False)
        code = code if isinstance(code, int) else 0
        if code == 130 and interrupted:  # Typer turns Ctrl-C into a silent exit 130
            out.error("interrupted", "interrupted", 130)
    except NecropoolError as exc:
        out.error(exc.code, exc.message, exc.exit_code)
        code = exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted", "interrupted", 130)
        code = 130
    except BrokenPipeError:
        code = 141 - 128  # the reader went away (``| head``): nothing more to say
    except OSError as exc:  # the filesystem said no (read-only, full, permissions): not a bug
        where = f": {exc.filename}" if exc.filename else ""
        out.error("failed", f"{exc.strerror or exc}{where}", 3)
        code = 3
    except Exception as exc:  # click's usage errors, then genuine bugs
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            code = 2 if exc.exit_code in (1, 2) else exc.exit_code
            out.error("usage", _hint(exc.format_message().splitlines()[0]), code)
        else:
            out.error("internal", f"internal error: {type(exc).__name__}: {exc}", 70)
            code = 70
    if argv is None:  # the process ends here (not a caller's, which goes on collecting)
        # The interpreter's last collections need not look through everything the command
        # loaded (typer's, psycopg's objects): ~50 ms of every command's exit.
        gc.freeze()
    sys.exit(code)
