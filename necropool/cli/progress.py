"""A progress bar on stderr for long commands, shown only on a terminal."""

import sys
from contextlib import contextmanager


@contextmanager
def progress_bar(out, label: str):
    """Yield ``tick(done, total)``; a no-op unless stderr is a terminal and not --json."""
    if out.json or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(console=out.console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield tick
