"""How ``--help`` reads: usage lines with man-page placeholders (``POOL``, ``[POOL]``,
``-- COMMAND [ARG]...``), command summaries never cut, and an Examples section (the
examples declared with the command, as the man pages)."""

from typing import Any

from typer.core import TyperCommand, TyperGroup

EXAMPLES: dict[str, str] = {}  # command path -> its examples (declared through the registry)


def summary(help_text: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((help_text or "").strip().split("\n\n")[0].split())


class _Help:

    # A mixin for Typer's command classes: ``help`` and the ``super()`` calls are theirs;
    # ``ctx`` and ``formatter`` are their (private) click classes, typed Any, not imported.
    def get_short_help_str(self, limit: int = 45) -> str:
        return summary(self.help)  # type: ignore[attr-defined]  # the mixin: Typer's

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]  # the mixin: Typer's
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        text = EXAMPLES.get(ctx.command_path.partition(" ")[2])
        if text:
            formatter.write_paragraph()
            formatter.write_text("Examples:")
            with formatter.indentation():
                for line in text.split("\n"):
                    formatter.write(f"{'':>{formatter.current_indent}}{line}\n")


class Command(_Help, TyperCommand):
    pass


class Group(_Help, TyperGroup):
    pass
