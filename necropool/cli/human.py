"""Values as a person reads them: relative times, sizes, counted nouns, shortened paths."""

from datetime import datetime

from necropool.ground.clock import now, parse_rfc3339


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 slot``, ``2 slots`` (``many``: the plural when it is not ``noun + "s"``)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def span(seconds: float) -> str:
    """A duration in its largest unit, rounded: ``45s``, ``5m``, ``2h``, ``3d``."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{round(seconds / size)}{unit}"
    return f"{round(seconds)}s"


def relative(when: str | datetime | None, at: datetime | None = None) -> str:
    """``5m ago`` for a past time, ``in 2h`` for a future one, ``""`` for none."""
    if not when:
        return ""
    moment = parse_rfc3339(when) if isinstance(when, str) else when
    delta = (moment - (at or now())).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def size(count: int | None) -> str:
    """Bytes with a binary unit: ``512 B``, ``1.5 KiB``, ``20 MiB``."""
    if count is None:
        return ""
    units, value, step = ("B", "KiB", "MiB", "GiB", "TiB"), float(count), 0
    while value >= 1024 and step < len(units) - 1:
        value, step = value / 1024, step + 1
    return f"{count} B" if step == 0 else f"{value:.1f} {units[step]}"


def left_cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut from the left (the end of a path is the
    part that tells slots apart), at a ``/`` where there is one: ``…/web/slots/3``; where
    that no longer holds the last three parts whole, those alone (``web/slots/3``)."""
    if len(text) <= width:
        return text
    if width < 2:
        return text[len(text) - width:]
    kept = text[len(text) - width + 1:]
    cut = "…" + (kept[kept.index("/"):] if "/" in kept[:-1] else kept)
    tail = "/".join(text.split("/")[-3:])  # ``web/slots/3``: which pool, not only which slot
    return tail if len(cut) < len(tail) + 2 and len(tail) <= width else cut


def right_cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut at the end."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"
