"""A pool made before its upstream's credential had a file of its own carries it in its URL:
in ``pool.toml``, the mirror's config and every slot's ``.git/config``. Its first use moves
the credential to the file and takes it out of the others; ``pool.toml`` goes last, so an
interrupted move is redone by the next use."""

import contextlib
from pathlib import Path

from necropool.git import commands as git
from necropool.git import credentials
from necropool.ground.errors import NecropoolError
from necropool.ground.layout import PoolPaths, ensure_inside
from necropool.ground.redact import split_upstream
from necropool.slot.gitdir import write_record


def migrate(paths: PoolPaths, url: str, root: Path) -> tuple[str, bool]:
    """The URL as stored from now on, and whether ``pool.toml`` may be rewritten with it:
    False when the credential could not be moved (another user's pool, say; it is then
    left where it was, and never shown)."""
    clean, credential = split_upstream(url)
    if clean == url:
        return url, False
    try:
        ensure_inside(paths.dir, root)
        if credential is not None:
            credentials.write(paths.credentials, *credential)
        ensure_inside(paths.mirror, root)
        git.run(["config", "remote.origin.url", clean], paths.mirror)
        _slot_configs(paths, url, clean, root)
    except (OSError, NecropoolError):
        return clean, False
    return clean, True


def _slot_configs(paths: PoolPaths, old: str, new: str, root: Path) -> None:
    """The old URL, wherever it is in a slot's config, becomes the new one (a slot in use
    too: the credential is not the holder's to keep)."""
    ensure_inside(paths.slots, root)
    for slot in sorted(paths.slots.iterdir()):
        config = slot / ".git" / "config"
        if slot.is_symlink() or config.parent.is_symlink() or config.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            text = config.read_text(errors="surrogateescape")
            if old in text:
                write_record(config, text.replace(old, new))
