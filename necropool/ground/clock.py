"""Time helpers: UTC now, RFC 3339 rendering, duration parsing.

With a shared ledger, times are rendered in its server's clock (``follow_server``): the
hosts of a fleet, whatever their clocks, then print the same time for the same moment.

Test hook: ``NECROPOOL_CLOCK_OFFSET`` (seconds, may be negative) moves ``now()`` -- and so
lease expiry, ages and the times recorded -- that far ahead, so that tests need not sleep
for time to pass. Only ``now()`` honours it (not the monotonic timers, not fetch stamps),
and only while ``NECROPOOL_TEST_HOOKS=1`` is set too: an offset leaked into a production
environment (cron's, say) would otherwise expire live leases and end their holders.
"""

import os
import re
from datetime import UTC, datetime, timedelta

from necropool.ground.errors import UsageError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 36500 * 86400  # a century: dates stay representable either side of now


def now() -> datetime:
    """The current UTC time (moved by the test hook above, only where tests enable it)."""
    offset = os.environ.get("NECROPOOL_CLOCK_OFFSET")
    if offset and os.environ.get("NECROPOOL_TEST_HOOKS") == "1":
        try:
            return datetime.now(UTC) + timedelta(seconds=float(offset))
        except (ValueError, OverflowError):
            raise UsageError(f"invalid NECROPOOL_CLOCK_OFFSET {offset[:40]!r}: seconds, "
                             "such as 3600 or -60 (a test hook; unset it)") from None
    return datetime.now(UTC)


_lag = timedelta(0)  # this host's clock minus its ledger server's, once measured


def follow_server(lag: timedelta) -> None:
    """Render times from now on in the clock of a ledger server that this host's clock
    (``now()``) is ``lag`` ahead of; they are read back (``parse_rfc3339``) the same way."""
    global _lag
    _lag = lag


def rfc3339(value: datetime | None) -> str | None:
    """Render an aware datetime as ``2026-01-02T03:04:05.123Z`` (None stays None), in the
    ledger server's clock once ``follow_server`` measured it."""
    if value is None:
        return None
    moment = (value - _lag).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: object) -> str:
    """``json.dumps``'s ``default``: a datetime in RFC 3339 (as every time necropool prints),
    anything else as its string."""
    return rfc3339(value) or "" if isinstance(value, datetime) else str(value)


def parse_rfc3339(text: str) -> datetime:
    """The inverse of ``rfc3339`` (back in this host's clock)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")) + _lag


def parse_duration(text: str, what: str = "duration") -> float:
    """Parse ``90s``, ``5m``, ``2h``, ``1d`` or plain seconds into positive seconds."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise UsageError(f"invalid {what} {text!r}: use e.g. 90s, 5m, 2h, 1d or plain seconds")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    if seconds > MAX_DURATION:
        raise UsageError(f"invalid {what} {text!r}: too long (at most 36500d)")
    return seconds
