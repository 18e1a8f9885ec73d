"""A progress line on stderr for long commands, shown only on a terminal: the phase, then
``n/N slots`` as they are cloned."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from necropool.cli.output import Output

# ``tick(done, total)``: slots made so far, of how many
Tick = Callable[[int, int], None]


@contextmanager
def progress_bar(out: "Output", label: str, phase: str = "starting") -> Iterator[Tick | None]:
    """Yield ``tick(done, total)``; a no-op unless stderr is a terminal and neither --json
    nor --quiet was given.
    Until the first tick the line reads ``LABEL: PHASE``."""
    if out.json or out.quiet or not sys.stderr.isatty():
        yield None
        return
    # lazy: rich.progress costs ~30 ms; only a long job on a terminal shows a bar
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=out.console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"{label}: {phase}", total=None)

        def tick(done: int, total: int) -> None:
            slots = "slot" if total == 1 else "slots"
            progress.update(task, completed=done, total=total,
                            description=f"{label}: {done}/{total} {slots}")

        yield tick
