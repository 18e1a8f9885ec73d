"""Results of the core API: plain dicts (the JSON contract) that also read as attributes,
so both ``slot["state"]`` and the health API's ``slot.state`` work."""

from typing import Any


class Record(dict[str, Any]):
    """A dict whose keys read as attributes too (``record.slot_id``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None
