"""The TOML store's files (schema 2): one small file per slot, so that a lease transaction
reads and writes only the slot it changes, whatever the size of the pool.

::

    state.toml         which schema the state is in, read first by every version: schema 1
                       holds every slot; schema 2 is a stub (no slot) saying the slots are
                       in state/, so that an older necropool refuses the pool rather than
                       rebuilding it, and a newer schema is refused here
    state/<n>.toml     slot <n>'s entry (schema_version, [slot])
    state/free         which slots are free, in allocation order (``freelist``)

Why one file per slot rather than a journal: a journal makes writes cheap, but every
process (each CLI call is one) would still replay it to read one slot; a slot file is read
alone (~0.1 ms) and written alone, with the rule the single file had. Every file is written
atomically to ``<name>.bak`` and then ``<name>``, the main copy fsynced before its rename,
so a damaged file falls back to an identical copy; a slot whose two copies are both
unreadable is rebuilt alone (``rebuild.rebuilt_slot``), and a pool whose ``state/`` is lost
is rebuilt whole. A slot exists while either of its copies does.

A schema 1 ``state.toml`` is read as it is, and converted by the first write: every slot
file written, then the stub in its place (``convert``), the switch being that one rename.

What is given up: a write that changes several slots (an ``add``, a ``repair`` of many) is
no longer atomic as a whole, each slot's part is; a crash in its middle leaves some slots
changed, each one whole, as if the operation had been done slot by slot.
"""

import contextlib
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from necropool.ground.errors import OperationFailed, UsageError
from necropool.ground.layout import PoolPaths, fsync_dir, remove_tree, write_atomic
from necropool.store.model import ERROR, SCHEMA_VERSION, PoolState, Slot
from necropool.store.rebuild import rebuild, rebuilt_slot

LEGACY_SCHEMA = 1  # state.toml with every slot in it
STUB = (b"# necropool keeps this pool's state in state/ (one file per slot): this file only\n"
        b"# tells an older necropool that it cannot read it\n"
        + f"schema_version = {SCHEMA_VERSION}\n".encode())
SOURCES = ("state.toml", "state.toml.bak", "rebuilt")  # intact, a copy used, rebuilt


class StateError(OperationFailed):
    """A state file this version must not touch (for example from a newer necropool)."""


# Each slot's entry as read from its main file (None: to be rewritten), for ``save``.
Entries = dict[int, dict[str, Any] | None]


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _backup(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def _document(raw: bytes) -> tuple[int, dict[str, Any]]:
    """The schema version and the table of one file; a newer schema refused."""
    data = tomllib.loads(raw.decode())
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ValueError("schema_version missing")
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state was written by a newer necropool (schema_version {version}); "
            f"this version understands {SCHEMA_VERSION}: upgrade necropool"
        )
    return version, data


def _read_copies(path: Path) -> tuple[tuple[int, dict[str, Any]] | None, bool, list[str]]:
    """The first readable copy of ``path`` (main, then ``.bak``), whether it was the main
    one, and why the others were not; (None, False, reasons) when no copy can be read."""
    reasons = []
    for candidate, main in ((path, True), (_backup(path), False)):
        try:
            raw = _read(candidate)
            if raw is None:
                reasons.append(f"{candidate.name}: missing")
                continue
            return _document(raw), main, reasons
        except StateError:
            raise
        except OSError as exc:
            reasons.append(f"{candidate.name}: {exc.strerror}")
        except (ValueError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            reasons.append(f"{candidate.name}: {exc}")
    return None, False, reasons


def write_copies(path: Path, data: bytes) -> None:
    """Both copies atomically, the backup first; the main file durably (its fsync before
    the rename: whatever happens, it is a whole valid file, old or new). The backup is for
    a main file damaged later, not by a crash, so it is not fsynced itself (one fsync less
    under the pool lock; ext4 with its defaults commits it with the main file): a power loss
    may leave it empty, and the next write replaces it. The directory fsync that makes both
    renames durable is the caller's (one for a whole transaction)."""
    write_atomic(_backup(path), data, sync_dir=False, sync=False)
    write_atomic(path, data, sync_dir=False)


def remove_copies(path: Path) -> None:
    """The backup first: a crash in between leaves the main copy, the slot as it was."""
    for candidate in (_backup(path), path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(candidate)


def slot_file(paths: PoolPaths, number: int) -> Path:
    return paths.state_dir / f"{number}.toml"


def version(paths: PoolPaths) -> str | None:
    """Whether the state is in ``state/``: ``"ok"``; ``"damaged"`` when it is but the stub
    in ``state.toml`` cannot be read, only its copy or neither (a whole write, as
    ``auto-recover`` makes, rewrites it); None
    when it is not there yet (a schema 1 ``state.toml``, a new pool) or lost. A newer
    schema in ``state.toml`` is refused (``StateError``)."""
    found, main, _ = _read_copies(paths.state)
    if found is not None and found[0] == LEGACY_SCHEMA:
        return None
    if not _is_dir(paths.state_dir):
        return None
    return "ok" if found is not None and main else "damaged"


def _is_dir(path: Path) -> bool:
    """A directory, not a symlink to one (nothing is read through a link out of the root:
    a ``state/`` replaced by one counts as lost, and detect reports the link)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def slot_numbers(paths: PoolPaths) -> list[int]:
    """Every slot with a file in ``state/`` (either copy)."""
    try:
        names = os.listdir(paths.state_dir)
    except FileNotFoundError:
        return []
    numbers = set()
    for name in names:
        stem = name.removesuffix(".bak").removesuffix(".toml")
        if stem.isdigit() and int(stem) >= 1 and name in (f"{stem}.toml", f"{stem}.toml.bak"):
            numbers.add(int(stem))
    return sorted(numbers)


@dataclass
class SlotRead:
    """One slot as read: its entry as in its main copy (None when it must be rewritten:
    read from the backup, unreadable or rebuilt), where it came from (one of ``SOURCES``)
    and, when its entry could not be used, why."""

    slot: Slot
    entry: dict[str, Any] | None
    source: str
    problem: str | None = None


def read_slot(paths: PoolPaths, number: int) -> SlotRead | None:
    """Slot ``number`` from its file; None when it has none (there is no such slot)."""
    path = slot_file(paths, number)
    found, main, reasons = _read_copies(path)
    if found is None:
        if not any(os.path.lexists(p) for p in (path, _backup(path))):
            return None
        slot = rebuilt_slot(paths, number, "; ".join(reasons))
        return SlotRead(slot, None, "rebuilt", None if slot.isolated_at else slot.error)
    entry = found[1].get("slot")
    try:
        slot = Slot.from_dict(number, entry)  # its type is checked there
    except (ValueError, KeyError, TypeError) as exc:
        problem = f"state entry unreadable: {exc}"
        return SlotRead(Slot(number=number, state=ERROR, error=problem), None, "state.toml",
                        problem)
    if main:
        return SlotRead(slot, entry, "state.toml")
    return SlotRead(slot, None, "state.toml.bak")


def load(paths: PoolPaths) -> tuple[PoolState, Entries]:
    """Every slot, and the entries as read (what the store's ``save`` compares with): from
    ``state/``, else a schema 1 ``state.toml`` (or its copy), else rebuilt from the slot
    directories (no entry: the first write writes every slot)."""
    found, main, reasons = _read_copies(paths.state)
    if found is not None and found[0] == LEGACY_SCHEMA:
        state = _parse_legacy(found[1])
        state.source = paths.state.name if main else paths.state_backup.name
        return state, {}
    if _is_dir(paths.state_dir):
        return _load_slots(paths, "state.toml" if found is not None and main
                           else "state.toml.bak")
    if found is not None:  # the stub: state/ was lost
        reasons = [f"{paths.state_dir.name}/: missing or not a directory"]
    if os.path.lexists(paths.in_ledger):
        raise UsageError(f"pool {paths.name!r} keeps its state in a shared ledger "
                         f"({_ledger_of(paths)}): pass --ledger or set NECROPOOL_LEDGER "
                         f"('necropool ledger export {paths.name}' brings it back here)")
    return rebuild(paths, "; ".join(reasons)), {}


def _load_slots(paths: PoolPaths, source: str) -> tuple[PoolState, Entries]:
    state, entries = PoolState(source=source), {}
    for number in slot_numbers(paths):
        read = read_slot(paths, number)
        if read is None:  # removed since the directory was listed
            continue
        state.slots[number], entries[number] = read.slot, read.entry
        if read.problem:
            state.problems[number] = read.problem
        if SOURCES.index(read.source) > SOURCES.index(state.source):
            state.source = read.source
    return state, entries


def _parse_legacy(data: dict[str, Any]) -> PoolState:
    slots_table = data.get("slots", {})
    if not isinstance(slots_table, dict):
        slots_table = {}
    state = PoolState()
    for key, entry in slots_table.items():
        if not key.isdigit() or int(key) < 1:
            continue
        number = int(key)
        try:
            state.slots[number] = Slot.from_dict(number, entry)
        except (ValueError, KeyError, TypeError) as exc:
            state.problems[number] = f"state entry unreadable: {exc}"
            state.slots[number] = Slot(number=number, state=ERROR,
                                       error=state.problems[number])
    return state


def _ledger_of(paths: PoolPaths) -> str:
    try:
        return paths.in_ledger.read_text(errors="replace").strip()[:200]
    except OSError:
        return "unreadable"


def write_slot(paths: PoolPaths, slot: Slot) -> None:
    write_copies(slot_file(paths, slot.number),
                 tomli_w.dumps({"schema_version": SCHEMA_VERSION,
                                "slot": slot.to_dict()}).encode())


def convert(paths: PoolPaths) -> None:
    """Make ``state/`` the state, once its slot files are written and durable: the stub
    in place of ``state.toml`` (both copies: a schema 1 backup would be read as the
    state), which is the point from which ``state/`` is read."""
    fsync_dir(paths.state_dir)
    write_copies(paths.state, STUB)
    fsync_dir(paths.dir)


def set_aside(paths: PoolPaths) -> None:
    """Keep the state files as ``*.imported`` once a ledger holds the state: ``state/``
    first, so that no moment shows it without the stub that says how to read it (and a
    pool marked as in a ledger with no state here refuses to be read without it)."""
    aside = paths.dir / f"{paths.state_dir.name}.imported"
    discard_aside(paths)
    if _is_dir(paths.state_dir):
        os.replace(paths.state_dir, aside)
    if os.path.lexists(paths.state):
        os.replace(paths.state, paths.dir / f"{paths.state.name}.imported")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.state_backup)
    fsync_dir(paths.dir)


def discard_aside(paths: PoolPaths) -> None:
    """Delete what ``set_aside`` kept (the state is back here, or moved again)."""
    remove_tree(paths.dir / f"{paths.state_dir.name}.imported", paths.root)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.dir / f"{paths.state.name}.imported")
