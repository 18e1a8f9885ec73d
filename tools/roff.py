"""roff for the man pages: literal text escaped, hand-written text marked up (``*bold*``,
``<italic>``), filled paragraphs, verbatim blocks and metavars."""

import re
import textwrap


def escape(text: str) -> str:
    """Literal text to roff: backslashes and hyphens escaped."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def inline(text: str) -> str:
    """Hand-written text to roff: escaped, ``*bold*`` and ``<italic>`` applied."""
    text = escape(text)
    text = re.sub(r"\*([^*\s][^*]*?)\*", r"\\fB\1\\fR", text)
    return re.sub(r"<([A-Za-z][\w.|=\\-]*)>", r"\\fI\1\\fR", text)


def text_lines(text: str) -> list[str]:
    """Filled text: each sentence on a new line, lines of at most 78 bytes, none starting
    with a control character."""
    flat = re.sub(r"\s+", " ", text).strip()
    out = []
    for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z*(\"<\\])", flat):
        out += textwrap.wrap(sentence, 78, break_long_words=False, break_on_hyphens=False)
    return [guard(line) for line in out]


def guard(line: str) -> str:
    return "\\&" + line if line[:1] in (".", "'") else line


def para(text: str) -> list[str]:
    return [".PP", *text_lines(inline(text))]


def verbatim(text: str) -> list[str]:
    return [".PP", ".RS 4", ".nf", *(guard(escape(line)) for line in text.split("\n")),
            ".fi", ".RE"]


def metavar(text: str) -> str:
    """A metavar to roff: upper-case words italic, ``--`` bold, the rest literal."""
    out = []
    word = r"[A-Z][A-Z0-9_]*(?:-[A-Z0-9_]+)*"
    for token in re.findall(rf"--|{word}|[^A-Z-]+|-", text):
        if token == "--":
            out.append("\\fB\\-\\-\\fR")
        elif re.fullmatch(word, token):
            out.append(f"\\fI{escape(token)}\\fR")
        else:
            out.append(escape(token))
    return "".join(out)
