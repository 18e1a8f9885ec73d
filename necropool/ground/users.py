"""A holder that is another local user (``allocate --user``, ``run --user``): who it is,
as recorded with its lease."""

import os
import pwd
from dataclasses import dataclass
from typing import Any

from necropool.ground.errors import UsageError


@dataclass(frozen=True)
class HolderUser:
    """The user a slot is handed to for a lease: its name, uid and primary gid."""

    name: str
    uid: int
    gid: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HolderUser":
        return cls(name=str(data["name"]), uid=int(data["uid"]), gid=int(data["gid"]))

    def groups(self) -> list[int]:
        """Its primary and supplementary groups, as a login gives them."""
        return os.getgrouplist(self.name, self.gid)

    def home(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_dir or "/"
        except KeyError:
            return "/"


def lookup(name: str) -> HolderUser:
    """The local user ``name`` (UsageError when there is none, or it is root: handing a
    slot to root separates nothing)."""
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise UsageError(f"--user {name!r}: no such local user") from None
    if entry.pw_uid == 0:
        raise UsageError(f"--user {name!r} is root: a slot handed to root separates nothing")
    return HolderUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
