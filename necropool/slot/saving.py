"""What a holder left in a slot, and saving it: ``git status`` of the slot, the holder's work
recorded as refs under ``refs/necropool/rescue/`` in the slot, then written to a bundle
beside the pool (``git fetch BUNDLE 'refs/necropool/rescue/*:refs/rescued/*'`` restores it).
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from necropool.git import commands as git
from necropool.git.commands import GitError
from necropool.ground.layout import fsync_dir, fsync_file, storing, sync_filesystem


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
            f"--untracked-files={'normal' if untracked else 'no'}", "--ignored=no",
            "--ignore-submodules=dirty"]  # (a submodule's own git, with its own config, is
    # never run: a moved gitlink still shows, its files are saved by ``nested``)
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


# A bundle being written: its git process and the arguments it was started with.
Bundle = tuple[subprocess.Popen[bytes], list[str]]

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

    def __init__(self, tree: Path):
        self.tree, self.index = tree, tree / ".git" / "necropool-rescue.index"
        self.index.unlink(missing_ok=True)  # a planted symlink is removed, never written through
        if (tree / ".git" / "index").exists():
            # with its times: git reads the content of an entry whose file is as new as the
            # index file ("racily clean"); a copy made now would pass as unchanged a
            # same-size edit made within the second of the file's checkout
            shutil.copy2(tree / ".git" / "index", self.index)
        self.env = {"GIT_INDEX_FILE": str(self.index)}
        self.args = ["add", "-A", "--", ".", *(f":(exclude,literal){os.fsdecode(path)}"
                                               for path in gitlinks(tree))]
        self.proc = git.start(self.args, tree, env=self.env)

    def tree_id(self) -> str:
        """Wait for the add and write its tree."""
        try:
            git.wait(self.proc, self.args)
            return git.run(["write-tree"], self.tree, env=self.env).stdout.decode().strip()
        finally:
            self.discard()

    def discard(self) -> None:
        if self.proc.returncode is None:  # let it finish: a killed git leaves its lock file
            git.wait(self.proc, self.args, check=False)
        self.index.unlink(missing_ok=True)


GITLINK_MODE = (0o160000).to_bytes(4, "big")  # as an index entry stores it


def gitlinks(tree: Path) -> list[bytes]:
    """The index's submodule entries (gitlinks). ``git add`` asks a submodule's own git
    whether its files changed, and that git obeys the submodule's config (filters): they
    are left out of the add (``nested`` saves their files with the slot's git). Only an
    index with the mode's bytes anywhere in it costs a ``git ls-files``."""
    try:
        if GITLINK_MODE not in (tree / ".git" / "index").read_bytes():
            return []
    except OSError:
        return []
    out = git.run(["ls-files", "--stage", "-z"], tree).stdout
    return [entry.split(b"\t", 1)[1] for entry in out.split(b"\0")
            if entry.startswith(b"160000 ")]


def save_refs(tree: Path, st: Status, extras: dict[str, str], with_head: bool,
              stashes: list[str], snapshot: Snapshot | None) -> dict[str, str]:
    """Record the holder's work as refs under ``RESCUE_REFS`` in the slot: uncommitted
    changes (as a commit over HEAD, from ``snapshot`` when one was started), what of them
    was staged (``index``, a commit over HEAD), HEAD, the
    branch HEAD was on when either is saved (``on/BRANCH``, a commit over HEAD: a bundle
    leaves out a ref to an upstream commit), and every ref a fresh slot does not have
    (``heads/NAME``, ``tags/NAME``, ``stash``, ``stash-1``, ..., else the ref's full name).
    Objects and refs stay in the slot until the bundle is written; the bundle leaves out
    what is upstream already."""
    refs: dict[str, str] = {}
    if st.changed or st.untracked:
        wtree = (snapshot or Snapshot(tree)).tree_id()
        parents = ["-p", st.head] if st.head else []
        msg = "necropool: uncommitted changes saved before cleanup"
        refs[RESCUE_REFS + "uncommitted"] = git.run(
            ["commit-tree", wtree, *parents, "-m", msg], tree).stdout.decode().strip()
        staged = _commit_index(tree, st.head) if st.changed and st.head else None
        if staged:
            refs[RESCUE_REFS + "index"] = staged
    if with_head and st.head:
        refs[RESCUE_REFS + "HEAD"] = st.head
    if st.branch and st.head and refs:
        refs[RESCUE_REFS + "on/" + st.branch] = git.run(
            ["commit-tree", f"{st.head}^{{tree}}", "-p", st.head,
             "-m", "necropool: HEAD was on this branch, at this commit's parent"],
            tree).stdout.decode().strip()
    for name, sha in extras.items():
        if name != "refs/stash" and sha:
            short = name[5:] if name.startswith(("refs/heads/", "refs/tags/")) else name
            refs[RESCUE_REFS + short] = sha
    for i, sha in enumerate(stashes):
        refs[RESCUE_REFS + "stash" + (f"-{i}" if i else "")] = sha
    git.write_refs(tree / ".git", refs)
    return refs


def _commit_index(tree: Path, head: str) -> str | None:
    """What the holder had staged, as a commit over HEAD (None when nothing was): with it,
    ``rescued restore --checkout`` puts staged changes back staged, and tells untracked
    files (in neither HEAD nor the index) from unstaged ones. An index git cannot write as
    a tree (a merge left in conflict) is not kept: its changes come back unstaged."""
    if git.run(["diff-index", "--cached", "--quiet", head, "--"], tree,
               check=False).returncode == 0:
        return None
    index = git.run(["write-tree"], tree, check=False)
    if index.returncode != 0:
        return None
    return git.run(["commit-tree", index.stdout.decode().strip(), "-p", head,
                    "-m", "necropool: the index saved before cleanup"],
                   tree).stdout.decode().strip()


def start_bundle(tree: Path, dest: Path, refs: list[str]) -> Bundle:
    """Start writing the saved refs to a bundle at ``dest`` (in the background: nothing a
    cleanup does afterwards touches the saved objects or refs)."""
    args = ["bundle", "create", "-q", str(dest), "--stdin", "--not", "--remotes"]
    # The refs go on stdin (100,000 refs exceed the kernel's limit on arguments), from a
    # file beside the bundle: the confined cleanup may write there, not in /tmp.
    with storing("writing", dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest.parent) as names:
            names.write("".join(f"{ref}\n" for ref in refs).encode(errors="surrogateescape"))
            names.seek(0)
            return git.start(args, tree, stdin=names), args


def finish_bundle(bundle: Bundle, refs: list[str], dest: Path, tree: Path) -> bool:
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
        raise GitError(f"could not save the holder's work to {dest} ({exc.message}); it is "
                       f"kept in the slot as {', '.join(refs)}", exc.stderr) from None
    fsync_file(dest)
    fsync_dir(dest.parent)
    return True
