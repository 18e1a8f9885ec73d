"""What a holder left in a slot, and saving it: ``git status`` of the slot, the holder's work
recorded as refs under ``refs/necropool/rescue/`` in the slot, then written to a bundle
beside the pool (``git fetch BUNDLE 'refs/necropool/rescue/*:refs/rescued/*'`` restores it).
"""

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from necropool.git import commands as git
from necropool.git.commands import GitError
from necropool.ground.layout import fsync_dir, fsync_file, sync_filesystem


@dataclass
class Status:
    head: str | None
    branch: str | None
    changed: int
    untracked: int  # not ignored ones: ``clean`` counts those as it removes them


def status(tree: Path, untracked: bool = True) -> Status:
    """What changed in a slot we hold. git may write back the index's refreshed file stats
    (an optional lock): without that, files a checkout wrote in the same instant as the
    index stay "racily clean" and every later status re-reads them (28 ms against 8 on a
    2,000-file slot, each release)."""
    args = ["status", "--porcelain=v2", "--branch", "-z",
            f"--untracked-files={'normal' if untracked else 'no'}", "--ignored=no"]
    return parse_status(git.run(args, tree).stdout)


def parse_status(out: bytes) -> Status:
    """``git status --porcelain=v2 --branch -z`` as HEAD, branch and counts."""
    head = branch = None
    changed = untracked = 0
    records = out.split(b"\0")
    i = 0
    while i < len(records):
        rec = records[i]
        if rec.startswith(b"# branch.oid "):
            value = rec[13:].decode()
            head = None if value == "(initial)" else value
        elif rec.startswith(b"# branch.head "):
            value = os.fsdecode(rec[14:])  # branch names need not be UTF-8
            branch = None if value == "(detached)" else value
        elif rec.startswith(b"2 "):
            changed += 1
            i += 1  # a rename record carries its original path in the next field
        elif rec[:2] in (b"1 ", b"u "):
            changed += 1
        elif rec.startswith(b"? "):
            untracked += 1
        i += 1
    return Status(head, branch, changed, untracked)


def stash_entries(tree: Path) -> list[str]:
    """The holder's stash entries, newest first (no process when there is no stash)."""
    top = git.read_ref(tree / ".git", "refs/stash")
    if not top:
        return []
    out = git.run(["rev-list", "--walk-reflogs", "refs/stash"], tree, check=False).stdout
    return out.decode().split() or [top]


RESCUE_REFS = "refs/necropool/rescue/"  # the bundle's ref names; restore with
# ``git fetch BUNDLE 'refs/necropool/rescue/*:refs/rescued/*'``


def set_aside_earlier_save(gitdir: Path) -> dict[str, str]:
    """Refs a save that never finished left in the slot (its worker died, or its bundle could
    not be written), renamed under ``earlier-<ns>/`` so this save's names are free; they go
    into this cleanup's bundle."""
    found = {name: sha for name, sha in git.refs_under(gitdir, RESCUE_REFS).items() if sha}
    if not found:
        return {}
    prefix = f"{RESCUE_REFS}earlier-{time.time_ns()}/"
    moved = {prefix + name[len(RESCUE_REFS):]: sha for name, sha in found.items()}
    git.write_refs(gitdir, moved)
    git.delete_refs(gitdir, list(found))
    return moved


class Snapshot:
    """The working tree added to a temporary copy of the index (``git add -A``), begun in the
    background: a cleanup that expects changes starts it beside ``git status`` (-20 ms)."""

    ARGS = ["add", "-A", "."]

    def __init__(self, tree: Path):
        self.tree, self.index = tree, tree / ".git" / "necropool-rescue.index"
        self.index.unlink(missing_ok=True)  # a planted symlink is removed, never written through
        if (tree / ".git" / "index").exists():
            shutil.copyfile(tree / ".git" / "index", self.index)
        self.env = {"GIT_INDEX_FILE": str(self.index)}
        self.proc = git.start(self.ARGS, tree, env=self.env)

    def tree_id(self) -> str:
        """Wait for the add and write its tree."""
        try:
            git.wait(self.proc, self.ARGS)
            return git.run(["write-tree"], self.tree, env=self.env).stdout.decode().strip()
        finally:
            self.discard()

    def discard(self) -> None:
        if self.proc.returncode is None:  # let it finish: a killed git leaves its lock file
            git.wait(self.proc, self.ARGS, check=False)
        self.index.unlink(missing_ok=True)


def save_refs(tree: Path, st: Status, extras: dict[str, str], with_head: bool,
              stashes: list[str], snapshot: Snapshot | None) -> dict[str, str]:
    """Record the holder's work as refs under ``RESCUE_REFS`` in the slot: uncommitted
    changes (as a commit over HEAD, from ``snapshot`` when one was started), HEAD, and every
    ref a fresh slot does not have (``heads/NAME``, ``tags/NAME``, ``stash``, ``stash-1``,
    ..., else the ref's full name). Objects and refs stay in the slot until the bundle is
    written; the bundle leaves out what is upstream already."""
    refs: dict[str, str] = {}
    if st.changed or st.untracked:
        wtree = (snapshot or Snapshot(tree)).tree_id()
        parents = ["-p", st.head] if st.head else []
        msg = "necropool: uncommitted changes saved before cleanup"
        refs[RESCUE_REFS + "uncommitted"] = git.run(
            ["commit-tree", wtree, *parents, "-m", msg], tree).stdout.decode().strip()
    if with_head and st.head:
        refs[RESCUE_REFS + "HEAD"] = st.head
    for name, sha in extras.items():
        if name != "refs/stash" and sha:
            short = name[5:] if name.startswith(("refs/heads/", "refs/tags/")) else name
            refs[RESCUE_REFS + short] = sha
    for i, sha in enumerate(stashes):
        refs[RESCUE_REFS + "stash" + (f"-{i}" if i else "")] = sha
    git.write_refs(tree / ".git", refs)
    return refs


def start_bundle(tree: Path, dest: Path, refs: list[str]):
    """Start writing the saved refs to a bundle at ``dest`` (in the background: nothing a
    cleanup does afterwards touches the saved objects or refs)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    args = ["bundle", "create", "-q", str(dest), *refs, "--not", "--remotes"]
    return git.start(args, tree), args


def finish_bundle(bundle, refs: list[str], dest: Path, tree: Path) -> bool:
    """Wait for the bundle and flush it and its entry in ``rescued/`` to the disk (the slot
    is reset meanwhile and given back next: unflushed, a power loss leaves the bundle empty
    and the work lost); False when git wrote none because every saved commit is already
    upstream (a leftover ref whose work was pushed since, say). When it cannot be written,
    the slot's rescue refs and their objects are flushed instead: the work stays there."""
    try:
        git.wait(*bundle)
    except GitError as exc:
        if "empty bundle" in exc.stderr:
            return False
        with contextlib.suppress(OSError):  # the error to report is git's
            sync_filesystem(tree)
        raise GitError(f"could not save the holder's work ({exc.message}); it is kept in the "
                       f"slot as {', '.join(refs)}", exc.stderr) from None
    fsync_file(dest)
    fsync_dir(dest.parent)
    return True
