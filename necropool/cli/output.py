"""Rendering: JSON on request, Rich on a terminal, plain tab-separated lines otherwise."""

import os
import sys

from necropool.names import is_control, utf8_safe

SCHEMA_VERSION = 1


class Output:
    """Where and how a command's result is shown."""

    def __init__(self, json_mode: bool = False, color: str = "auto"):
        self.json = json_mode
        self.color = color

    @property
    def rich(self) -> bool:
        """Rich tables and colour: only on a terminal (or --color always), never with NO_COLOR."""
        if self.json or self.color == "never":
            return False
        if self.color == "always":
            return True
        return sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def console(self, stderr: bool = False):
        from rich.console import Console

        no_color = self.color == "never" or bool(os.environ.get("NO_COLOR"))
        return Console(stderr=stderr, no_color=no_color,
                       force_terminal=True if self.color == "always" else None,
                       highlight=False, soft_wrap=True)

    def emit(self, data: dict) -> None:
        """The one JSON object of a command, on stdout."""
        import json

        sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, **data}, default=str)
                         + "\n")

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        """Human commentary: stderr, never mixed into data on stdout."""
        if not self.json:
            sys.stderr.write(escape(text, keep="\n") + "\n")

    def table(self, columns: list[str], rows: list[list], title: str | None = None) -> None:
        """A Rich table on a terminal; one tab-separated line per row otherwise (with no
        header), so ``cut -f`` and ``while read`` work."""
        cells = [["" if v is None else escape(str(v).replace("\t", " ").replace("\n", " "))
                  for v in row] for row in rows]
        if not self.rich:
            for row in cells:
                self.line("\t".join(row))
            return
        from rich.table import Table

        table = Table(title=title, header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*(_styled(c) for c in row))
        self.console().print(table)

    def fields(self, data: dict) -> None:
        """Key/value pairs, one per line (``key<TAB>value`` when plain)."""
        import json

        rows = [[k, json.dumps(v) if isinstance(v, dict | list) else v] for k, v in data.items()
                if v not in (None, {}, [])]
        if not self.rich:
            self.table(["field", "value"], rows)
            return
        from rich.table import Table

        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in rows:
            table.add_row(escape(key), _styled(escape(str(value))))
        self.console().print(table)

    def error(self, code: str, message: str, exit_code: int) -> None:
        if self.json:
            import json

            sys.stderr.write(json.dumps({"schema_version": SCHEMA_VERSION, "type": "error",
                                         "code": code, "message": message,
                                         "exit_code": exit_code}) + "\n")
        else:
            sys.stderr.write(f"necropool: error: {escape(message)}\n")


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


def _styled(text: str):
    """A cell as Rich text (never parsed as Rich markup), coloured when it is a state."""
    from rich.text import Text

    return Text(text, style=_STYLES.get(text, ""))
