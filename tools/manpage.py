"""Man pages generated from the Typer app: ``necropool.1`` and one ``necropool-COMMAND.1`` each.

Synopses, arguments and options come from the click parameters of the commands, so they
follow the code; the sections a parser cannot know (exit status, environment, files, JSON
output, the main page's examples) are in ``man_text``, each command's notes and examples
with its declaration. The output is deterministic: the date in ``.TH`` is ``man_text.DATE``,
not the day of the run.

Regenerate the committed pages, from the repository root: ``python -m tools.manpage man``

Inline markup in the hand-written text: ``*word*`` is bold, ``<word>`` italic; everything
else is taken literally (hyphens become ``-``). A build-time tool: not part of the installed
package.
"""

import os
import re
import sys
import textwrap
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.main import get_command

from necropool.cli.helpfmt import EXAMPLES as COMMAND_EXAMPLES
from necropool.cli.registry import EXIT_STATUS as EXIT_STATUS_NOTES
from necropool.cli.registry import NOTES
from tools.man_text import (
    CONFIG_POOL,
    CONFIG_TOP,
    DATE,
    DESCRIPTION,
    ENVIRONMENT,
    EXAMPLES,
    EXIT_RUN,
    EXIT_STATUS,
    FILES,
    JSON_CODES,
    JSON_DETECT,
    JSON_ERROR,
    JSON_TEXT,
    MANUAL,
    PRECEDENCE,
    SOURCE,
)
from tools.roff import escape, guard, inline, para, text_lines, verbatim
from tools.roff import metavar as roff_metavar

# typer's click classes are private; only their public methods are used here
Command = Any

# ---- page parts ----------------------------------------------------------------------------

def _header(title: str) -> list[str]:
    # no hyphenation, ragged right: option names and paths stay whole
    return [f'.TH {escape(title.upper())} 1 "{DATE}" "{escape(SOURCE)}" "{MANUAL}"',
            ".nh", ".ad l"]


def _see_also(refs: list[str]) -> list[str]:
    """``.BR`` lines for references written ``name(section)``."""
    lines = [".SH SEE ALSO"]
    for i, ref in enumerate(refs):
        name, section = ref.rstrip(")").split("(")
        lines.append(f".BR {escape(name)} ({section})" + ("," if i < len(refs) - 1 else ""))
    return lines


# ---- reading the click commands ------------------------------------------------------------

def _root_command() -> TyperGroup:
    from necropool.cli.app import build

    root = get_command(build())
    assert isinstance(root, TyperGroup)  # necropool has commands
    return root


def _sub(group: TyperGroup, ctx: typer.Context, name: str) -> Command:
    """The command ``name`` of ``group`` (one ``list_commands`` named)."""
    command = group.get_command(ctx, name)
    assert command is not None, name
    return command


def _context(command: Command, name: str,
             parent: typer.Context | None = None) -> typer.Context:
    settings = dict(command.context_settings or {})
    return typer.Context(command, info_name=name, parent=parent, **settings)


def _option_metavar(param: TyperOption, ctx: typer.Context) -> str | None:
    if param.is_flag or param.count:
        return None
    if param.metavar:
        return param.metavar
    longest: str = max(param.opts, key=len)
    return longest.lstrip("-").upper()


def _option_term(param: TyperOption, ctx: typer.Context) -> str:
    names = sorted(param.opts, key=lambda o: (o.startswith("--"), o)) + param.secondary_opts
    term = ", ".join(f"\\fB{escape(n)}\\fR" for n in names)
    metavar = _option_metavar(param, ctx)
    return f"{term} {roff_metavar(metavar)}" if metavar else term


def _option_help(param: TyperOption, ctx: typer.Context) -> str:
    record = param.get_help_record(ctx)
    text = record[1] if record else (param.help or "")
    if getattr(param, "multiple", False) and "repeat" not in text.lower():
        text += " (repeatable)"
    return text


def _params(command: Command,
            ctx: typer.Context) -> tuple[list[TyperArgument], list[TyperOption]]:
    arguments = [p for p in command.get_params(ctx) if isinstance(p, TyperArgument)]
    options = [p for p in command.get_params(ctx)
               if isinstance(p, TyperOption) and not getattr(p, "hidden", False)]
    return arguments, options


def _argument_metavar(param: TyperArgument, ctx: typer.Context) -> str:
    metavar: str = param.metavar or (param.name or "").upper()
    if param.nargs == -1 and not metavar.endswith("..."):
        metavar += "..."
    return metavar


def _options_section(title: str, options: list[TyperOption],
                     ctx: typer.Context) -> list[str]:
    lines = [f".SH {title}"]
    for param in options:
        lines += [".TP", _option_term(param, ctx), *text_lines(escape(_option_help(param, ctx)))]
    return lines


def _synopsis_option(param: TyperOption, ctx: typer.Context) -> str:
    name = sorted(param.opts, key=lambda o: (not o.startswith("--"), o))[0]
    metavar = _option_metavar(param, ctx)
    text = f"\\fB{escape(name)}\\fR" + (f" {roff_metavar(metavar)}" if metavar else "")
    return f"[{text}]"


# ---- pages ---------------------------------------------------------------------------------

def command_names() -> list[str]:
    """The visible commands, in the order help lists them."""
    root = _root_command()
    ctx = _context(root, "necropool")
    return [n for n in root.list_commands(ctx) if not _sub(root, ctx, n).hidden]


def main_page() -> str:
    root = _root_command()
    ctx = _context(root, "necropool")
    _, options = _params(root, ctx)
    names = command_names()
    lines = [*_header("necropool"),
             ".SH NAME",
             *_name_line("necropool", root.help),
             ".SH SYNOPSIS",
             ".B necropool",
             "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".br",
             ".B necropool",
             "\\fICOMMAND\\fR \\fB\\-\\-help\\fR",
             ".br",
             ".B necropool help",
             "[\\fICOMMAND\\fR]...",
             ".SH DESCRIPTION"]
    for text in DESCRIPTION:
        lines += para(text)
    lines += _options_section("GLOBAL OPTIONS", options, ctx)
    lines += [".PP", "Global options go before the command name",
              "(given after it, before any \\fB\\-\\-\\fR, they are moved there).",
              "Every command also takes \\fB\\-\\-json\\fR (see JSON OUTPUT)",
              "and \\fB\\-h\\fR, \\fB\\-\\-help\\fR."]
    lines += [".SH COMMANDS"]
    for name in names:
        sub = _sub(root, ctx, name)
        sub_ctx = _context(sub, name, ctx)
        arguments, _ = _params(sub, sub_ctx)
        usage = " ".join(roff_metavar(_argument_metavar(a, sub_ctx)) for a in arguments)
        lines += [".TP", f"\\fB{escape(name)}\\fR {usage}".rstrip(),
                  *text_lines(escape(_summary(sub.help)) + "."),
                  f"See \\fBnecropool\\-{escape(name)}\\fR(1)."]
    lines += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        lines += [".TP", f".B {code}", *text_lines(inline(text))]
    lines += para(EXIT_RUN)
    lines += [".SH ENVIRONMENT"]
    for var, text in ENVIRONMENT:
        lines += [".TP", f".B {escape(var)}", *text_lines(inline(text))]
    lines += para(PRECEDENCE)
    lines += [".SH FILES"]
    for path, text in FILES:
        lines += [".TP", inline(path), *text_lines(inline(text))]
    lines += [".SH CONFIGURATION",
              *para("The config file is TOML. Top-level keys:")]
    for key, text in CONFIG_TOP:
        lines += [".TP", f".B {escape(key)}", *text_lines(inline(text))]
    lines += para("A [pools.<name>] table declares a pool for *sync*:")
    for key, text in CONFIG_POOL:
        lines += [".TP", f".B {escape(key)}", *text_lines(inline(text))]
    lines += verbatim('root = "/srv/necropool"\nmax_allocation_hours = 12\n\n'
                       '[pools.web]\nurl = "https://example.com/org/web.git"\nnum_slots = 8\n'
                       'keep_ignored = true')
    lines += [".SH JSON OUTPUT"]
    for text in JSON_TEXT:
        lines += para(text)
    lines += verbatim(JSON_ERROR)
    lines += para(JSON_CODES)
    for text in JSON_DETECT:
        lines += para(text)
    lines += [".SH SHELL COMPLETION"]
    for text in NOTES["completion"]:
        lines += para(text)
    lines += verbatim(COMMAND_EXAMPLES["completion"])
    lines += [".SH EXAMPLES", *para("A first session:"), *verbatim(COMMAND_EXAMPLES[""])]
    for text, example in EXAMPLES:
        lines += para(text) + verbatim(example)
    lines += _see_also([f"necropool-{n}(1)" for n in names] + ["git(1)", "jq(1)", "crontab(5)"])
    return _join(lines)


Subcommands = list[tuple[str, Command, typer.Context]]


def _subcommands(command: Command, ctx: typer.Context) -> Subcommands:
    """(name, command, context) of a group's subcommands, in the order help lists them."""
    if not isinstance(command, TyperGroup):
        return []
    out = []
    for name in command.list_commands(ctx):
        sub = _sub(command, ctx, name)
        out.append((name, sub, _context(sub, name, ctx)))
    return out


def _group_sections(name: str, subs: Subcommands) -> tuple[list[str], list[str]]:
    """SYNOPSIS lines and a COMMANDS section for a command with subcommands."""
    synopsis = []
    for sub_name, sub, sub_ctx in subs:
        arguments, options = _params(sub, sub_ctx)
        synopsis += [f".B necropool {escape(name)} {escape(sub_name)}",
                     *[_synopsis_option(p, sub_ctx) for p in options if "--help" not in p.opts],
                     *[roff_metavar(_argument_metavar(a, sub_ctx)) for a in arguments], ".br"]
    body = [".SH COMMANDS"]
    for sub_name, sub, sub_ctx in subs:
        arguments, options = _params(sub, sub_ctx)
        usage = " ".join(roff_metavar(_argument_metavar(a, sub_ctx)) for a in arguments)
        body += [".SS", f"\\fB{escape(name)} {escape(sub_name)}\\fR {usage}".rstrip(),
                 *text_lines(escape(sub.help or "")), ".PP", "Arguments and options:"]
        for argument in arguments:
            body += [".TP", roff_metavar(_argument_metavar(argument, sub_ctx)),
                     *text_lines(escape(argument.help or ""))]
        for option in options:
            if "--help" not in option.opts:
                body += [".TP", _option_term(option, sub_ctx),
                         *text_lines(escape(_option_help(option, sub_ctx)))]
    return synopsis[:-1], body


def _examples(name: str, subs: Subcommands) -> str:
    """The examples of a command and of its subcommands."""
    keys = [name] + [f"{name} {sub_name}" for sub_name, _, _ in subs]
    return "\n".join(COMMAND_EXAMPLES[k] for k in dict.fromkeys(keys) if k in COMMAND_EXAMPLES)


def command_page(name: str) -> str:
    root = _root_command()
    ctx = _context(root, "necropool")
    sub = _sub(root, ctx, name)
    sub_ctx = _context(sub, name, ctx)
    subs = _subcommands(sub, sub_ctx)
    if subs:
        return _group_page(name, sub, subs)
    arguments, options = _params(sub, sub_ctx)
    synopsis = [_synopsis_option(p, sub_ctx) for p in options if "--help" not in p.opts]
    synopsis += [roff_metavar(_argument_metavar(a, sub_ctx)) for a in arguments]
    lines = [*_header(f"necropool-{name}"),
             ".SH NAME",
             *_name_line(f"necropool-{name}", sub.help),
             ".SH SYNOPSIS",
             f".B necropool {escape(name)}",
             *synopsis,
             ".SH DESCRIPTION",
             *text_lines(escape(sub.help or ""))]
    for text in NOTES.get(name, []):
        lines += para(text)
    if name == "status":
        from necropool.cli.metrics import METRICS

        for metric, kind, text in METRICS:
            lines += [".TP", f".B {escape(metric)}", *text_lines(escape(f"{text} ({kind})"))]
    if arguments:
        lines += [".SH ARGUMENTS"]
        for param in arguments:
            help_text = param.help or ""
            if not param.required and "default" not in help_text:
                help_text += " (optional)"
            lines += [".TP", roff_metavar(_argument_metavar(param, sub_ctx)),
                      *text_lines(escape(help_text))]
    lines += _options_section("OPTIONS", options, sub_ctx)
    lines += [".PP",
              "The global options of \\fBnecropool\\fR(1)",
              "(\\fB\\-\\-root\\fR, \\fB\\-\\-config\\fR, \\fB\\-\\-color\\fR)",
              "go before the command name (after it they work too, before any \\fB\\-\\-\\fR)."]
    lines += [".SH EXIT STATUS"]
    if name in EXIT_STATUS_NOTES:
        lines += text_lines(inline(EXIT_STATUS_NOTES[name]))
        lines += ["See EXIT STATUS in \\fBnecropool\\fR(1) for the other codes."]
    else:
        lines += ["See EXIT STATUS in \\fBnecropool\\fR(1)."]
    if name in COMMAND_EXAMPLES:
        lines += [".SH EXAMPLES", *verbatim(COMMAND_EXAMPLES[name])]
    lines += _see_also(["necropool(1)"])
    return _join(lines)


def _group_page(name: str, group: Command, subs: Subcommands) -> str:
    synopsis, body = _group_sections(name, subs)
    lines = [*_header(f"necropool-{name}"),
             ".SH NAME",
             *_name_line(f"necropool-{name}", group.help),
             ".SH SYNOPSIS", *synopsis,
             ".SH DESCRIPTION",
             *text_lines(escape(group.help or ""))]
    for text in NOTES.get(name, []):
        lines += para(text)
    lines += body
    lines += [".PP", "Each takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR.",
              "The global options of \\fBnecropool\\fR(1)",
              "(\\fB\\-\\-root\\fR, \\fB\\-\\-config\\fR, \\fB\\-\\-color\\fR)",
              "go before the command name (after it they work too).", ".SH EXIT STATUS"]
    lines += text_lines(inline(EXIT_STATUS_NOTES[name])) if name in EXIT_STATUS_NOTES else []
    lines += ["See EXIT STATUS in \\fBnecropool\\fR(1)."]
    lines += [".SH EXAMPLES", *verbatim(_examples(name, subs))]
    lines += _see_also(["necropool(1)", "git-bundle(1)"])
    return _join(lines)


def _name_line(page: str, help_text: str | None) -> list[str]:
    text = f"{escape(page)} \\- {escape(_summary(help_text))}"
    return [guard(line) for line in textwrap.wrap(text, 78, break_long_words=False,
                                                    break_on_hyphens=False)]


def _join(lines: list[str]) -> str:
    """The page text; a paragraph macro right after a section heading is dropped."""
    kept = [line for i, line in enumerate(lines)
            if not (line == ".PP" and i and lines[i - 1].startswith(".SH"))]
    return "\n".join(kept) + "\n"


def _summary(help_text: str | None) -> str:
    first = (help_text or "").strip().split("\n\n")[0]
    return re.sub(r"\s+", " ", first).rstrip(".")


def pages() -> dict[str, str]:
    """File name -> content of every page."""
    out = {"necropool.1": main_page()}
    for name in command_names():
        out[f"necropool-{name}.1"] = command_page(name)
    return out


def write_all(outdir: str) -> list[str]:
    """Write every page under ``outdir`` and delete pages of commands that no longer exist."""
    os.makedirs(outdir, exist_ok=True)
    generated = pages()
    for stale in sorted(os.listdir(outdir)):
        if stale.startswith("necropool") and stale.endswith(".1") and stale not in generated:
            os.unlink(os.path.join(outdir, stale))
    written = []
    for name, text in generated.items():
        path = os.path.join(outdir, name)
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(written_path)
