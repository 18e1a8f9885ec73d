"""Secrets kept out of output: connection strings, and messages about them, shown with
any password masked."""

import re
from urllib.parse import unquote, urlsplit, urlunsplit


def password_of(dsn: str) -> str | None:
    if "://" in dsn:
        try:
            secret = urlsplit(dsn).password
        except ValueError:
            return None
        return unquote(secret) if secret else None
    found = re.search(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    return found.group(1).strip("'") if found else None


def redact(text: str, dsn: str | None = None) -> str:
    """``text`` (a DSN, or a message about ``dsn``) with any password masked."""
    secret = password_of(dsn if dsn is not None else text)
    if dsn is None and "://" in text:
        try:
            parts = urlsplit(text)
            if parts.password is not None:
                netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
                netloc += f":{parts.port}" if parts.port else ""
                text = urlunsplit(parts._replace(netloc=netloc))
        except ValueError:
            pass
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)
    if secret:
        text = text.replace(secret, "***")
    return text
