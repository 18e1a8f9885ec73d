"""A slot as a user names it, parsed once: ``web-3`` (a slot of this host), ``web-3@HOST``
(a slot of another host of a shared ledger; ``@`` and this host's own name is this host),
or a path inside a slot's directory (the pool and number are read from the path against
the root, by ``pool.resolve_slot``)."""

from dataclasses import dataclass

from necropool.ground.errors import UsageError
from necropool.ground.proc import hostname
from necropool.ground.validate import parse_slot_id

HOST_SEP = "@"


@dataclass(frozen=True)
class SlotRef:
    """``path`` set: a path in a slot (``pool`` and ``number`` unknown until resolved);
    else ``pool`` and ``number``, and ``host`` when the slot is another host's."""

    pool: str = ""
    number: int = 0
    host: str | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> "SlotRef":
        if not isinstance(text, str) or "\0" in text:
            raise UsageError(f"invalid slot {text!r}: expected a slot id or a path in a slot")
        if "/" in text or text in (".", ".."):
            return cls(path=text)
        local, host = text, None
        if HOST_SEP in text:
            local, host = text.rsplit(HOST_SEP, 1)
            if not host or any(c.isspace() or c in "/\0" for c in host):
                raise UsageError(f"invalid slot {text!r}: expected <pool>-<number>[@<host>]")
        pool, number = parse_slot_id(local)
        return cls(pool, number, None if host == hostname() else host)

    @classmethod
    def of(cls, pool: str, number: int, host: str) -> "SlotRef":
        """Slot ``number`` of ``pool`` on ``host`` (this host's own name: a local slot)."""
        return cls(pool, number, None if host == hostname() else host)

    @property
    def remote(self) -> bool:
        """Another host's slot: only the ledger reaches it (its directory is over there)."""
        return self.host is not None

    def __str__(self) -> str:
        """The id as the fleet shows it: with its host when that is not this one."""
        if self.path is not None:
            return self.path
        local = f"{self.pool}-{self.number}"
        return local if self.host is None else f"{local}{HOST_SEP}{self.host}"

    @staticmethod
    def looks_like(text: str) -> bool:
        """Whether ``text`` is meant as a slot id, valid or not (``<pool>-<digits>``, maybe
        ``@<host>``): what the commands taking a pool or a slot tell them apart by."""
        return text.split(HOST_SEP)[0].rsplit("-", 1)[-1].isdigit()
