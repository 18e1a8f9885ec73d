"""A progress line on stderr for long commands, shown only on a terminal: the phase, then
what the core reports: a remote mirror's objects received (count, percent, bytes), a local
upstream's object files taken, ``n/N slots`` as they are cloned."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from necropool.ground.progress import SLOTS, TAKING, Report
from necropool.ground.progress import Progress as Tick

if TYPE_CHECKING:
    from necropool.cli.output import Output


def size_text(size: int) -> str:
    """Bytes as git shows them (``1.20 MiB``)."""
    value, unit = float(size), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{size} bytes" if unit == "bytes" else f"{value:.2f} {unit}"


def describe(label: str, report: Report) -> str:
    """The line's text for one report."""
    if report.phase == SLOTS:
        return f"{label}: {report.done}/{report.total} {'slot' if report.total == 1 else 'slots'}"
    count = f"{report.done:,}" if report.total is None else f"{report.done:,}/{report.total:,}"
    unit = " files" if report.phase == TAKING else ""
    parts = [f"{label}: mirror: {report.phase} {count}{unit}"]
    if report.percent is not None:
        parts.append(f" ({report.percent}%)")
    if report.size is not None:
        parts.append(f", {size_text(report.size)}")
    return "".join(parts)


@contextmanager
def progress_bar(out: "Output", label: str, phase: str = "starting") -> Iterator[Tick | None]:
    """Yield ``tick(report)``; a no-op unless stderr is a terminal and neither --json
    nor --quiet was given.
    Until the first report the line reads ``LABEL: PHASE``; each phase's first and last
    report is drawn at once, so none goes unseen however quick."""
    if out.json or out.quiet or not sys.stderr.isatty():
        yield None
        return
    # lazy: rich.progress costs ~30 ms; only a long job on a terminal shows a bar
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=out.console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"{label}: {phase}", total=None)
        last = Report("", 0, None)

        def tick(report: Report) -> None:
            nonlocal last
            first_or_last = report.phase != last.phase or report.done == report.total
            progress.update(task, completed=report.done, total=report.total,
                            description=describe(label, report),
                            refresh=first_or_last and report != last)
            last = report

        yield tick
