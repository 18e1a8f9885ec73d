"""Rendering: JSON on request, Rich on a terminal, plain tab-separated lines otherwise."""

import json
import os
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported only for a table or colour (~16-30 ms)
    from rich.console import Console
    from rich.text import Text

from necropool.ground.clock import jsonable
from necropool.ground.redact import redact
from necropool.ground.validate import is_control, utf8_safe

SCHEMA_VERSION = 1


FORMATS = ("table", "tsv", "json")


class Output:
    """Where and how a command's result is shown. The shape (``fmt``: a Rich table, tab
    separated lines or JSON) and the colour are chosen apart: ``NO_COLOR`` and
    ``--color never`` drop colour and nothing else. Without ``--format``, a terminal gets a
    table and anything else tab-separated lines without the header line."""

    def __init__(self, json_mode: bool = False, color: str = "auto", fmt: str | None = None,
                 headers: bool = True, quiet: bool = False):
        self.json = json_mode or fmt == "json"
        self.color = color
        self.fmt = fmt
        self.headers = headers
        self.quiet = quiet  # --quiet: no notes, hints or progress on stderr, only errors

    @property
    def rich(self) -> bool:
        """A table for a person (the shape, not the colour)."""
        if self.json:
            return False
        return self.fmt == "table" if self.fmt else sys.stdout.isatty()

    def colour(self, stream: IO[str] | None = None) -> bool:
        """Colour on ``stream`` (stdout by default): never under --json or --color never."""
        if self.json or self.color == "never":
            return False
        stream = stream or sys.stdout
        return self.color == "always" or (stream.isatty() and not os.environ.get("NO_COLOR"))

    def console(self, stderr: bool = False) -> "Console":
        from rich.console import Console  # lazy: ~16 ms; only coloured or table output

        colour = self.colour(sys.stderr if stderr else sys.stdout)
        return Console(stderr=stderr, color_system="auto" if colour else None,
                       force_terminal=True if colour else None, highlight=False,
                       soft_wrap=True)

    def hint(self, text: str) -> None:
        """What to do next, when a table for a person came out empty (on stderr)."""
        if self.rich and not self.quiet:
            sys.stderr.write(text + "\n")

    def emit(self, data: dict[str, Any]) -> None:
        """The one JSON object of a command, on stdout (its text with secrets masked)."""
        sys.stdout.write(json.dumps(_redacted({"schema_version": SCHEMA_VERSION, **data}),
                                    default=jsonable) + "\n")

    def outcome(self, data: dict[str, Any], done: str,
                saved: str = "saved the holder's work to") -> None:
        """A command's result: the JSON object, or where saved work went (``data["rescued"]``)
        and what was done, as notes."""
        if self.json:
            self.emit(data)
            return
        if data.get("rescued"):
            self.note(f"{saved} {data['rescued']}")
        self.note(done)

    def line(self, text: str) -> None:
        """One line on stdout (every table, tsv, log and metrics line comes this way); any
        URL's password or token in it masked, also from history written before it was."""
        sys.stdout.write(redact(text) + "\n")

    def note(self, text: str) -> None:
        """Human commentary: stderr, never mixed into data on stdout."""
        if not self.json and not self.quiet:
            sys.stderr.write(escape(redact(text), keep="\n") + "\n")

    def table(self, columns: list[str], rows: Sequence[Sequence[object]], title: str | None = None,
              left_cut_last: bool = False) -> None:
        """A Rich table for a person; otherwise one tab-separated line per row (the header
        line only with an explicit ``--format tsv`` and no ``--no-headers``), so ``cut -f``
        and ``while read`` work."""
        cells = [["" if v is None else escape(str(v).replace("\t", " ").replace("\n", " "))
                  for v in row] for row in rows]
        if not self.rich:
            if self.fmt == "tsv" and self.headers:
                cells.insert(0, [c.lower() for c in columns])
            for row in cells:
                self.line("\t".join(row))
            return
        self.grid(columns, cells, title=title, left_cut_last=left_cut_last)

    def grid(self, columns: list[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
             left_cut_last: bool = False) -> None:
        """Print a Rich table in the house style: a header rule, no borders, one line per
        row. Every column but the last is as wide as its widest cell; the last gets the rest
        of the line, cut with an ellipsis (on the left with ``left_cut_last``: paths)."""
        # lazy: rich.table and its console cost ~30 ms; allocate and release print none
        from rich import box
        from rich.table import Table  # lazy: as above

        from necropool.cli.human import left_cut, right_cut  # lazy: as in table

        console = self.console()
        rows = [[redact(str(cell)) for cell in row] for row in rows]
        widths = [max([len(c)] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]
        room = max(10, console.width - sum(widths[:-1]) - len(columns))
        table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                      padding=(0, 0), header_style="bold", show_header=self.headers)
        for column, width in zip(columns, widths, strict=True):
            table.add_column(column, no_wrap=True, overflow="ellipsis",
                             width=min(width, room) if column == columns[-1] else width)
        for row in rows:
            last = (left_cut if left_cut_last else right_cut)(str(row[-1]), room)
            table.add_row(*(_styled(c) for c in row[:-1]), _styled(last))
        console.print(table)

    def fields(self, data: dict[str, Any]) -> None:
        """Key/value pairs, one per line (``key<TAB>value`` when plain)."""
        rows = [[k, json.dumps(v) if isinstance(v, dict | list | bool) else v]
                for k, v in data.items() if v is not None and v != {} and v != []]
        if not self.rich:
            self.table(["field", "value"], rows)
            return
        from rich.table import Table  # lazy: as in table

        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in rows:
            table.add_row(escape(key), _styled(escape(redact(str(value)))))
        self.console().print(table)

    def error(self, code: str, message: str, exit_code: int) -> None:
        message = redact(message)  # the last guard: a message may quote any URL or DSN
        if self.json:
            sys.stderr.write(json.dumps({"schema_version": SCHEMA_VERSION, "type": "error",
                                         "code": code, "message": message,
                                         "exit_code": exit_code}) + "\n")
        else:
            sys.stderr.write(f"necropool: error: {escape(message)}\n")


def _redacted(value: Any) -> Any:
    """A JSON value with every string's secrets masked (never the JSON text: masking must not
    eat a quote)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


_STYLES = {"available": "green", "allocated": "yellow", "cleaning": "cyan", "error": "red bold"}


def escape(text: str, keep: str = "") -> str:
    """``text`` with control characters (but those in ``keep``) shown as escapes, so that a
    value from the state (lease metadata, say) cannot drive the terminal; bytes that were
    not UTF-8 are escaped too."""
    text = utf8_safe(text)
    if not any(is_control(c) and c not in keep for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode() if is_control(c) and c not in keep
                   else c for c in text)


def _styled(text: str) -> "Text":
    """A cell as Rich text (never parsed as Rich markup), coloured when it is a state."""
    from rich.text import Text  # lazy: part of rich, as in table

    return Text(text, style=_STYLES.get(text, ""))
