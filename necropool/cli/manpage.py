"""Man pages generated from the Typer app: ``necropool.1`` and one ``necropool-COMMAND.1`` each.

Synopses, arguments and options come from the click parameters of the commands, so they
follow the code; the sections a parser cannot know (exit status, environment, files, JSON
output, examples) are in ``man_text``, each command's notes with its declaration. The output
is deterministic: the date in ``.TH`` is ``man_text.DATE``, not the day of the run.

Regenerate the committed pages: ``python -m necropool.cli.manpage man``

Inline markup in the hand-written text: ``*word*`` is bold, ``<word>`` italic; everything
else is taken literally (hyphens become ``-``). Nothing here is imported on the normal
command path.
"""

import os
import re
import sys
import textwrap

from necropool.cli.examples import EXAMPLES as COMMAND_EXAMPLES
from necropool.cli.man_text import (
    COMPLETION_EXAMPLE,
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
from necropool.cli.registry import EXIT_STATUS as EXIT_STATUS_NOTES
from necropool.cli.registry import NOTES

# Per-command additions: extra description paragraphs, exit status notes, examples.
# ---- roff helpers -------------------------------------------------------------------------

def _escape(text: str) -> str:
    """Literal text to roff: backslashes and hyphens escaped."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def _inline(text: str) -> str:
    """Hand-written text to roff: escaped, ``*bold*`` and ``<italic>`` applied."""
    text = _escape(text)
    text = re.sub(r"\*([^*\s][^*]*?)\*", r"\\fB\1\\fR", text)
    return re.sub(r"<([A-Za-z][\w.|=\\-]*)>", r"\\fI\1\\fR", text)


def _lines(text: str) -> list[str]:
    """Filled text: each sentence on a new line, lines of at most 78 bytes, none starting
    with a control character."""
    flat = re.sub(r"\s+", " ", text).strip()
    out = []
    for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z*(\"<\\])", flat):
        out += textwrap.wrap(sentence, 78, break_long_words=False, break_on_hyphens=False)
    return [_guard(line) for line in out]


def _guard(line: str) -> str:
    return "\\&" + line if line[:1] in (".", "'") else line


def _para(text: str) -> list[str]:
    return [".PP", *_lines(_inline(text))]


def _verbatim(text: str) -> list[str]:
    return [".PP", ".RS 4", ".nf", *(_guard(_escape(line)) for line in text.split("\n")),
            ".fi", ".RE"]


def _metavar(text: str) -> str:
    """A metavar to roff: upper-case words italic, ``--`` bold, the rest literal."""
    out = []
    word = r"[A-Z][A-Z0-9_]*(?:-[A-Z0-9_]+)*"
    for token in re.findall(rf"--|{word}|[^A-Z-]+|-", text):
        if token == "--":
            out.append("\\fB\\-\\-\\fR")
        elif re.fullmatch(word, token):
            out.append(f"\\fI{_escape(token)}\\fR")
        else:
            out.append(_escape(token))
    return "".join(out)


def _header(title: str) -> list[str]:
    # no hyphenation, ragged right: option names and paths stay whole
    return [f'.TH {_escape(title.upper())} 1 "{DATE}" "{_escape(SOURCE)}" "{MANUAL}"',
            ".nh", ".ad l"]


def _see_also(refs: list[str]) -> list[str]:
    """``.BR`` lines for references written ``name(section)``."""
    lines = [".SH SEE ALSO"]
    for i, ref in enumerate(refs):
        name, section = ref.rstrip(")").split("(")
        lines.append(f".BR {_escape(name)} ({section})" + ("," if i < len(refs) - 1 else ""))
    return lines


# ---- reading the click commands ------------------------------------------------------------

def _root_command():
    from typer.main import get_command

    from necropool.cli.app import build

    return get_command(build())


def _context(command, name: str, parent=None):
    import typer._click as click

    settings = dict(command.context_settings or {})
    return click.Context(command, info_name=name, parent=parent, **settings)


def _option_metavar(param, ctx) -> str | None:
    if param.is_flag or param.count:
        return None
    if param.metavar:
        return param.metavar
    longest = max(param.opts, key=len)
    return longest.lstrip("-").upper()


def _option_term(param, ctx) -> str:
    names = sorted(param.opts, key=lambda o: (o.startswith("--"), o)) + param.secondary_opts
    term = ", ".join(f"\\fB{_escape(n)}\\fR" for n in names)
    metavar = _option_metavar(param, ctx)
    return f"{term} {_metavar(metavar)}" if metavar else term


def _option_help(param, ctx) -> str:
    record = param.get_help_record(ctx)
    text = record[1] if record else (param.help or "")
    if getattr(param, "multiple", False) and "repeat" not in text.lower():
        text += " (repeatable)"
    return text


def _params(command, ctx):
    arguments = [p for p in command.get_params(ctx) if p.param_type_name == "argument"]
    options = [p for p in command.get_params(ctx)
               if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    return arguments, options


def _argument_metavar(param, ctx) -> str:
    metavar = param.metavar or param.name.upper()
    if param.nargs == -1 and not metavar.endswith("..."):
        metavar += "..."
    return metavar


def _options_section(title: str, options, ctx) -> list[str]:
    lines = [f".SH {title}"]
    for param in options:
        lines += [".TP", _option_term(param, ctx), *_lines(_escape(_option_help(param, ctx)))]
    return lines


def _synopsis_option(param, ctx) -> str:
    name = sorted(param.opts, key=lambda o: (not o.startswith("--"), o))[0]
    metavar = _option_metavar(param, ctx)
    text = f"\\fB{_escape(name)}\\fR" + (f" {_metavar(metavar)}" if metavar else "")
    return f"[{text}]"


# ---- pages ---------------------------------------------------------------------------------

def command_names() -> list[str]:
    """The visible commands, in the order help lists them."""
    root = _root_command()
    ctx = _context(root, "necropool")
    return [n for n in root.list_commands(ctx) if not root.get_command(ctx, n).hidden]


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
             ".SH DESCRIPTION"]
    for text in DESCRIPTION:
        lines += _para(text)
    lines += _options_section("GLOBAL OPTIONS", options, ctx)
    lines += [".PP", "Global options go before the command name",
              "(given after it, before any \\fB\\-\\-\\fR, they are moved there).",
              "Every command also takes \\fB\\-\\-json\\fR (see JSON OUTPUT)",
              "and \\fB\\-h\\fR, \\fB\\-\\-help\\fR."]
    lines += [".SH COMMANDS"]
    for name in names:
        sub = root.get_command(ctx, name)
        sub_ctx = _context(sub, name, ctx)
        arguments, _ = _params(sub, sub_ctx)
        usage = " ".join(_metavar(_argument_metavar(a, sub_ctx)) for a in arguments)
        lines += [".TP", f"\\fB{_escape(name)}\\fR {usage}".rstrip(),
                  *_lines(_escape(_summary(sub.help)) + "."),
                  f"See \\fBnecropool\\-{_escape(name)}\\fR(1)."]
    lines += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        lines += [".TP", f".B {code}", *_lines(_inline(text))]
    lines += _para(EXIT_RUN)
    lines += [".SH ENVIRONMENT"]
    for var, text in ENVIRONMENT:
        lines += [".TP", f".B {_escape(var)}", *_lines(_inline(text))]
    lines += _para(PRECEDENCE)
    lines += [".SH FILES"]
    for path, text in FILES:
        lines += [".TP", _inline(path), *_lines(_inline(text))]
    lines += [".SH CONFIGURATION",
              *_para("The config file is TOML. Top-level keys:")]
    for key, text in CONFIG_TOP:
        lines += [".TP", f".B {_escape(key)}", *_lines(_inline(text))]
    lines += _para("A [pools.<name>] table declares a pool for *sync*:")
    for key, text in CONFIG_POOL:
        lines += [".TP", f".B {_escape(key)}", *_lines(_inline(text))]
    lines += _verbatim('root = "/srv/necropool"\nmax_allocation_hours = 12\n\n'
                       '[pools.web]\nurl = "https://example.com/org/web.git"\nnum_slots = 8\n'
                       'keep_ignored = true')
    lines += [".SH JSON OUTPUT"]
    for text in JSON_TEXT:
        lines += _para(text)
    lines += _verbatim(JSON_ERROR)
    lines += _para(JSON_CODES)
    for text in JSON_DETECT:
        lines += _para(text)
    lines += [".SH SHELL COMPLETION"]
    for text in NOTES["completion"]:
        lines += _para(text)
    lines += _verbatim(COMPLETION_EXAMPLE)
    lines += [".SH EXAMPLES", *_para("A first session:"), *_verbatim(COMMAND_EXAMPLES[""])]
    for text, example in EXAMPLES:
        lines += _para(text) + _verbatim(example)
    lines += _see_also([f"necropool-{n}(1)" for n in names] + ["git(1)", "jq(1)", "crontab(5)"])
    return _join(lines)


def _subcommands(command, ctx) -> list[tuple[str, object, object]]:
    """(name, command, context) of a group's subcommands, in the order help lists them."""
    if not hasattr(command, "list_commands"):
        return []
    out = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        out.append((name, sub, _context(sub, name, ctx)))
    return out


def _group_sections(name: str, subs) -> tuple[list[str], list[str]]:
    """SYNOPSIS lines and a COMMANDS section for a command with subcommands."""
    synopsis = []
    for sub_name, sub, sub_ctx in subs:
        arguments, options = _params(sub, sub_ctx)
        synopsis += [f".B necropool {_escape(name)} {_escape(sub_name)}",
                     *[_synopsis_option(p, sub_ctx) for p in options if "--help" not in p.opts],
                     *[_metavar(_argument_metavar(a, sub_ctx)) for a in arguments], ".br"]
    body = [".SH COMMANDS"]
    for sub_name, sub, sub_ctx in subs:
        arguments, options = _params(sub, sub_ctx)
        usage = " ".join(_metavar(_argument_metavar(a, sub_ctx)) for a in arguments)
        body += [".SS", f"\\fB{_escape(name)} {_escape(sub_name)}\\fR {usage}".rstrip(),
                 *_lines(_escape(sub.help or "")), ".PP", "Arguments and options:"]
        for param in arguments:
            body += [".TP", _metavar(_argument_metavar(param, sub_ctx)),
                     *_lines(_escape(param.help or ""))]
        for param in options:
            if "--help" not in param.opts:
                body += [".TP", _option_term(param, sub_ctx),
                         *_lines(_escape(_option_help(param, sub_ctx)))]
    return synopsis[:-1], body


def _examples(name: str, subs) -> str:
    """The examples of a command and of its subcommands (examples.py)."""
    keys = [name] + [f"{name} {sub_name}" for sub_name, _, _ in subs]
    return "\n".join(COMMAND_EXAMPLES[k] for k in dict.fromkeys(keys) if k in COMMAND_EXAMPLES)


def command_page(name: str) -> str:
    root = _root_command()
    ctx = _context(root, "necropool")
    sub = root.get_command(ctx, name)
    sub_ctx = _context(sub, name, ctx)
    subs = _subcommands(sub, sub_ctx)
    if subs:
        return _group_page(name, sub, subs)
    arguments, options = _params(sub, sub_ctx)
    synopsis = [_synopsis_option(p, sub_ctx) for p in options if "--help" not in p.opts]
    synopsis += [_metavar(_argument_metavar(a, sub_ctx)) for a in arguments]
    lines = [*_header(f"necropool-{name}"),
             ".SH NAME",
             *_name_line(f"necropool-{name}", sub.help),
             ".SH SYNOPSIS",
             f".B necropool {_escape(name)}",
             *synopsis,
             ".SH DESCRIPTION",
             *_lines(_escape(sub.help or ""))]
    for text in NOTES.get(name, []):
        lines += _para(text)
    if name == "status":
        from necropool.cli.metrics import METRICS

        for metric, kind, text in METRICS:
            lines += [".TP", f".B {_escape(metric)}", *_lines(_escape(f"{text} ({kind})"))]
    if arguments:
        lines += [".SH ARGUMENTS"]
        for param in arguments:
            help_text = param.help or ""
            if not param.required and "default" not in help_text:
                help_text += " (optional)"
            lines += [".TP", _metavar(_argument_metavar(param, sub_ctx)),
                      *_lines(_escape(help_text))]
    lines += _options_section("OPTIONS", options, sub_ctx)
    lines += [".PP",
              "The global options of \\fBnecropool\\fR(1)",
              "(\\fB\\-\\-root\\fR, \\fB\\-\\-config\\fR, \\fB\\-\\-color\\fR)",
              "go before the command name (after it they work too, before any \\fB\\-\\-\\fR)."]
    lines += [".SH EXIT STATUS"]
    if name in EXIT_STATUS_NOTES:
        lines += _lines(_inline(EXIT_STATUS_NOTES[name]))
        lines += ["See EXIT STATUS in \\fBnecropool\\fR(1) for the other codes."]
    else:
        lines += ["See EXIT STATUS in \\fBnecropool\\fR(1)."]
    if name in COMMAND_EXAMPLES:
        lines += [".SH EXAMPLES", *_verbatim(COMMAND_EXAMPLES[name])]
    lines += _see_also(["necropool(1)"])
    return _join(lines)


def _group_page(name: str, group, subs) -> str:
    synopsis, body = _group_sections(name, subs)
    lines = [*_header(f"necropool-{name}"),
             ".SH NAME",
             *_name_line(f"necropool-{name}", group.help),
             ".SH SYNOPSIS", *synopsis,
             ".SH DESCRIPTION",
             *_lines(_escape(group.help or ""))]
    for text in NOTES.get(name, []):
        lines += _para(text)
    lines += body
    lines += [".PP", "Each takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR.",
              "The global options of \\fBnecropool\\fR(1)",
              "(\\fB\\-\\-root\\fR, \\fB\\-\\-config\\fR, \\fB\\-\\-color\\fR)",
              "go before the command name (after it they work too).", ".SH EXIT STATUS"]
    lines += _lines(_inline(EXIT_STATUS_NOTES[name])) if name in EXIT_STATUS_NOTES else []
    lines += ["See EXIT STATUS in \\fBnecropool\\fR(1)."]
    lines += [".SH EXAMPLES", *_verbatim(_examples(name, subs))]
    lines += _see_also(["necropool(1)", "git-bundle(1)"])
    return _join(lines)


def _name_line(page: str, help_text: str | None) -> list[str]:
    text = f"{_escape(page)} \\- {_escape(_summary(help_text))}"
    return [_guard(line) for line in textwrap.wrap(text, 78, break_long_words=False,
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
