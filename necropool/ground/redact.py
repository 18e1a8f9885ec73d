"""Secrets kept out of output: the userinfo of URLs (an upstream's token, a ledger's
password) and ``password=`` settings, masked in any text, malformed URLs included; and an
upstream URL split into what is shown and stored (no userinfo) and the credential."""

import re
from urllib.parse import unquote, urlsplit

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*")
_KEYWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
# where a user name alone may be the secret (forges take a token as the user name)
TOKEN_SCHEMES = ("http", "https", "ftp", "ftps")


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """(``scheme://``, raw userinfo, the rest after its ``@``) as git reads a URL: the
    authority ends at the first ``/``, ``?`` or ``#``, the userinfo at its last ``@``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0:
        return None
    return scheme + sep, rest[:at], rest[at + 1:]


def split_upstream(url: str) -> tuple[str, tuple[str, str] | None]:
    """An upstream URL as stored and shown, and the credential (user, password; decoded) to
    fetch with: an http(s) URL loses its whole userinfo, which becomes the credential; any
    other keeps its user name (``ssh://git@host``) and loses a password it cannot use."""
    parts = _userinfo(url)
    if parts is None:
        return url, None
    head, userinfo, rest = parts
    user, colon, password = userinfo.partition(":")
    if head[:-3].lower() in TOKEN_SCHEMES:
        return head + rest, (unquote(user), unquote(password))
    return (head + user + "@" + rest if user else head + rest), None


def _mask(url: str) -> str:
    """One URL with its password masked (``user:***@``), or its whole userinfo (``***@``)
    where the user name may be a token too; a URL Python cannot parse (an unclosed ``[``,
    a bad port) has all between ``://`` and the last ``@`` masked."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        scheme, _, rest = url.partition("://")
        at = rest.rfind("@")
        return url if at < 0 else f"{scheme}://***{rest[at:]}"
    found = _userinfo(url)
    if found is None:
        return url
    head, userinfo, rest = found
    if head[:-3].lower() in TOKEN_SCHEMES:
        return f"{head}***@{rest}"
    user, colon, _ = userinfo.partition(":")
    return f"{head}{user}:***@{rest}" if colon else url


def _secrets(dsn: str) -> list[str]:
    """The password of a DSN as written and decoded (to find it in messages about it)."""
    found = _userinfo(dsn)
    if found is not None:
        _, colon, raw = found[1].partition(":")
        return [s for s in {raw, unquote(raw)} if s] if colon else []
    match = _KEYWORD.search(dsn)
    return [match.group(2).strip("'")] if match and match.group(2).strip("'") else []


def redact(text: str, dsn: str | None = None) -> str:
    """``text`` (a URL, a DSN, or any message) with every URL's password or token and every
    ``password=`` value masked; also ``dsn``'s password wherever it appears."""
    secrets = _secrets(dsn) if dsn else []
    if not secrets and "://" not in text and "password" not in text.lower():
        return text  # the common case, without a regex (every line of output comes here)
    text = _URL.sub(lambda match: _mask(match.group()), text)
    text = _KEYWORD.sub(r"\1***", text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
