"""Bringing a slot back to a fresh state at the pool's tip, saving the holder's work first.

The slot, ``.git`` included, is untrusted input: its git directory is audited before git is
run there (a tampered one is moved aside whole and the slot re-cloned), its metadata is put
back as a fresh slot has it before the work is judged, and everything a fresh slot does not
have (refs of every kind, nested repositories, submodules, worktrees) is saved before it is
discarded. The git CLI does the work (measured 2-10x faster than libgit2 for
status/checkout/clean); each step runs only when the slot needs it, so an untouched slot
costs a ``git status`` of its tracked files.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from necropool.git import commands as git
from necropool.git.commands import GitError
from necropool.ground import confine
from necropool.ground.layout import make_private, rename_into_place, sync_filesystem, temp_name
from necropool.slot import confined, include, nested
from necropool.slot import gitdir as slotgit
from necropool.slot.lastclean import LastClean, index_identity
from necropool.slot.saving import (
    RESCUE_REFS,
    Snapshot,
    Status,
    finish_bundle,
    save_refs,
    set_aside_earlier_save,
    start_bundle,
    stash_entries,
    status,
)


@dataclass
class Report:
    """What a cleanup found and did."""

    changed: int = 0
    untracked: int = 0
    ignored: int = 0
    moved_from: str | None = None
    branches_deleted: list[str] = field(default_factory=list)
    stashes_deleted: int = 0
    refs_deleted: list[str] = field(default_factory=list)
    git_locks_removed: list[str] = field(default_factory=list)
    config_restored: bool = False
    restored: list[str] = field(default_factory=list)
    index_rebuilt: bool = False
    nested_saved: list[str] = field(default_factory=list)
    moved_aside: list[str] = field(default_factory=list)
    special_files_removed: int = 0
    leftovers_removed: list[str] = field(default_factory=list)
    tampered: list[str] = field(default_factory=list)
    recloned: bool = False
    rescued: str | None = None
    included: list[str] = field(default_factory=list)
    include_warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if v not in (None, [], False, 0)}


def printable(name: str) -> str:
    """A name read from the slot (bytes that need not be UTF-8) fit for output."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# --- refs -------------------------------------------------------------------------------------

def fresh_refs(mirror: Path) -> dict[str, str]:
    """The refs a fresh slot has: the mirror's branches as ``refs/remotes/origin/*``, and
    its tags."""
    expected = {f"refs/remotes/origin/{n[11:]}": sha
                for n, sha in git.refs_under(mirror, "refs/heads/").items()}
    expected.update(git.refs_under(mirror, "refs/tags/"))
    return expected


def classify_refs(gitdir: Path, mirror: Path,
                  expected: dict[str, str] | None = None) -> tuple[dict[str, str], bool]:
    """(every ref a fresh slot would not have as it is, whether the slot's copies of the
    mirror's branches and tags need a fetch). A fresh slot has ``fresh_refs`` (given as
    ``expected`` where the mirror cannot be read); anything else, or any of those moved,
    may hold the holder's work."""
    expected = fresh_refs(mirror) if expected is None else expected
    slot = git.refs_under(gitdir, "refs/")
    if _origin_head(gitdir) is not None:
        slot.pop(ORIGIN_HEAD)  # a symbolic ref, as in a fresh slot (its target is checked)
    extras = {name: sha for name, sha in slot.items()
              if expected.get(name) != sha and not name.startswith(RESCUE_REFS)}
    stale = any(slot.get(name) != sha for name, sha in expected.items())
    return extras, stale or any(name in expected for name in extras)


ORIGIN_HEAD = "refs/remotes/origin/HEAD"


def _origin_head(gitdir: Path) -> str | None:
    """The branch ``origin/HEAD`` names, when it is the symbolic ref a fresh slot has (as
    an object id it would hide a holder's commit from the bundle's ``--not --remotes``)."""
    try:
        text = (gitdir / ORIGIN_HEAD).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    prefix = "ref: refs/remotes/origin/"
    return text[len(prefix):].strip() if text.startswith(prefix) else None


def restore_origin_head(gitdir: Path, mirror: Path) -> None:
    """Point ``origin/HEAD`` at the upstream's default branch, as in a fresh slot."""
    branch = git.mirror_branch(mirror)
    if _origin_head(gitdir) != branch:
        slotgit.write_record(gitdir / ORIGIN_HEAD, f"ref: refs/remotes/origin/{branch}\n")


def fetch_mirror_refs(tree: Path, mirror: Path) -> None:
    """Make the slot's ``refs/remotes/origin/*`` and tags those of the mirror."""
    git.run(["fetch", "--no-tags", "--prune", "--quiet", str(mirror),
             "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"], tree)


# --- the index ------------------------------------------------------------------------------

def check_index(tree: Path, hash_size: int) -> bool:
    """Rebuild the index from HEAD when it is missing, damaged, or has entries whose changes
    git would not look at (assume-unchanged, skip-worktree, intent-to-add): the holder's
    work must be judged against HEAD, or a damaged index "saves" false deletions and flags
    hide real edits. Returns True when it was rebuilt."""
    gitdir = tree / ".git"
    try:
        data = (gitdir / "index").read_bytes()
        hidden, skipped = slotgit.flagged_entries(data, hash_size)
        if slotgit.checksum_ok(data, hash_size) and not hidden and not skipped:
            return False
    except FileNotFoundError:
        skipped = []
    except (OSError, ValueError, IndexError):
        skipped = []
    (gitdir / "index").unlink(missing_ok=True)
    git.run(["read-tree", "HEAD"], tree)
    absent = [p for p in skipped if not os.path.lexists(os.path.join(os.fsencode(tree), p))]
    if absent:  # left out by a sparse checkout, not deleted by the holder
        git.run(["checkout-index", "-f", "-z", "--stdin"], tree, input=b"\0".join(absent))
    return True


# --- the whole cleanup ----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What a cleanup brings a slot to, and where it keeps what it finds: the mirror and
    ``tip`` (of ``branch``) the slot is reset to, with origin at ``url``; ``rescue_to``, the
    bundle for the holder's work (nested repositories and a tampered slot go beside it);
    ``record``, outside the slot, what this cleanup left for the next one. Ignored files
    go, but those ``keep`` matches (all, with ``keep_ignored``). ``known_commit``: the
    commit the slot was last cleaned to. ``include``: files copied in from ``include_from``
    after the reset (``slot.include``). ``fetch_tip``: ``tip`` is a commit a lease asked
    for, perhaps in none of the mirror's branches and tags: fetched by id when the slot
    lacks it. Plain data: it may cross to a confined child."""

    mirror: Path
    url: str
    branch: str
    tip: str
    rescue_to: Path
    record: Path
    keep_ignored: bool = False
    keep: tuple[str, ...] = ()
    known_commit: str | None = None
    include: tuple[str, ...] = ()
    include_from: str | None = None
    fetch_tip: bool = False


def clean(tree: Path, target: Target) -> Report:
    """Make ``tree`` equal a fresh slot at ``target.tip``, saving the holder's work first
    (``Target``). Raises GitError when the slot cannot be cleaned; saved work not yet in a
    bundle then stays in the slot's refs, and the next cleanup bundles it.

    The audit and the whole cleanup run where the kernel lets them write only beneath the
    slot, the bundle's directory and the record's (``confined.run``): a holder renaming
    things meanwhile cannot steer a write, a delete or a program run outside them. Moving a
    tampered slot aside (a rename in the pool's directories) is done here, its re-clone
    confined too."""
    if tree.is_symlink():
        raise GitError(f"{tree} is a symlink: refusing to clean what it points at")
    for directory in (target.rescue_to.parent, target.record.parent):  # a rule needs them
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    report = confined.run(_clean_confined, tree, target,
                          write=(tree, target.rescue_to.parent, target.record.parent))
    if report.tampered:
        return replace_tampered(tree, mirror=target.mirror, url=target.url,
                                branch=target.branch, tip=target.tip,
                                aside=_beside(target.rescue_to, ".tampered"),
                                problems=report.tampered, record=target.record)
    return report


def _clean_confined(tree: Path, target: Target) -> Report:
    """``clean``'s work inside the confinement; a slot whose ``.git`` fails the audit is
    left as it is and reported ``tampered``."""
    mirror, url, tip, keep_ignored = target.mirror, target.url, target.tip, target.keep_ignored
    rescue_to, record, keep = target.rescue_to, target.record, list(target.keep)
    known_commit = target.known_commit
    gitdir = tree / ".git"
    problems = (slotgit.audit(gitdir) if gitdir.is_dir() and not gitdir.is_symlink()
                else [".git is not a directory"])
    if problems:
        return Report(tampered=problems)
    report = Report()
    object_format = git.object_format(mirror)
    report.restored = slotgit.restore(gitdir, git.slot_config(url, object_format))
    report.config_restored = "config" in report.restored
    for lock in slotgit.stale_git_locks(tree):
        lock.unlink(missing_ok=True)
        report.git_locks_removed.append(str(lock.relative_to(tree)))
    earlier = {name: sha for name, sha in git.refs_under(gitdir, RESCUE_REFS).items() if sha}
    last = LastClean.load(record)
    if not last.index_unchanged(gitdir):
        report.index_rebuilt = check_index(tree, 32 if object_format == "sha256" else 20)

    # Ignored files are counted from what ``git clean`` removes: asking status for them too
    # costs a slower walk of the tree (measured 16 ms against 10 on 2,000 files). When no
    # directory changed since the last cleanup there is nothing untracked to find at all:
    # status checks tracked files only (8 ms) and ``git clean`` is skipped (11 ms). When
    # one did, the holder most likely left files: adding them begins beside the status.
    changed = last.changed_dirs(tree)
    source, wanted = target.include_from, target.include
    skip = include.tracked(tree, wanted) if source and wanted else set()
    # (before the work is judged: an included file left as it was is not the holder's)
    edited = include.take_back(tree, last.included, wanted, skip) if source and wanted else []
    touched = changed != [] or bool(edited)
    untouched = not (keep_ignored or keep) and not touched
    snapshot = Snapshot(tree) if touched else None
    try:
        st = status(tree, untracked=not untouched)  # (no head: an unborn branch, whose
        # files are saved as a commit of their own)
        found = nested.walk(tree, changed, frozenset(last.dirs)) if touched else nested.Found(
            [], [])
        extras, stale = classify_refs(gitdir, mirror)
        stashes = stash_entries(tree) if "refs/stash" in extras else []
        with_head = st.head not in (tip, known_commit)
        if earlier and (st.changed or st.untracked or extras or (with_head and st.head)):
            earlier = set_aside_earlier_save(gitdir)  # (else they go in under their names:
        saved = list(earlier) + list(save_refs(   # the holder's pass, or a bundle that failed)
            tree, st, extras, with_head=with_head, stashes=stashes, snapshot=snapshot))
    finally:
        if snapshot:
            snapshot.discard()
    if (found.repos or found.deep or (gitdir / "modules").exists()
            or (gitdir / "worktrees").exists()):
        kept = nested.save(tree, found.repos, _beside(rescue_to, ".nested"), found.deep)
        saved += kept.refs
        report.nested_saved = [printable(p) for p in kept.paths]
        report.moved_aside = kept.moved
        if kept.moved:  # trees renamed aside: their files and new names flushed
            sync_filesystem(rescue_to.parent)
    _drop_refs(gitdir, st, extras, stashes, report)
    if stale:
        fetch_mirror_refs(tree, mirror)
    if target.fetch_tip:
        git.ensure_commit(tree, mirror, tip)
    restore_origin_head(gitdir, mirror)
    bundle = start_bundle(tree, rescue_to, saved) if saved else None
    try:  # the bundle is written while the slot is reset and cleaned (-30 ms)
        checkout = _reset(tree, tip, st, untouched, keep_ignored, found, report, keep)
        if keep_ignored and touched:  # (a new link changed its directory)
            _drop_ignored_links_out(tree)
    except BaseException:  # this error (or Ctrl-C) is the one to report; the saved refs
        if bundle:         # stay in the slot for the next cleanup
            git.wait(*bundle, check=False)
        raise
    if bundle and finish_bundle(bundle, saved, rescue_to, tree):
        make_private(rescue_to)
        report.rescued = str(rescue_to)
    if saved:
        git.delete_refs(gitdir, saved)
        slotgit.remove(gitdir / RESCUE_REFS)  # (the empty directories: a fresh slot has none)
    if source and wanted:
        last.included, report.include_warnings = include.copy_in(tree, source, wanted, skip)
        report.included = list(last.included)
    if checkout or not untouched or (source and wanted):
        last.retake_tree(tree)
    last.index = index_identity(gitdir)
    last.save(record)  # last of all: its ctime seals the slot (``lastclean.touched``)
    return report


def holder_pass(tree: Path, target: Target, user: "confine.Identity") -> Report:
    """Save and clean a slot handed to another user as that user, confined to the slot
    (root, before the slot is taken back: the files are that user's): the work saved into
    the slot's ``RESCUE_REFS``, the tree reset to the commit it was handed out at, its
    untracked files removed. The mirror, ``rescued/`` and ``records/`` are out of that
    user's reach: the owner's cleanup, once the slot is the owner's again, bundles those
    refs, moves the slot to the tip and checks it like any other."""
    gitdir = tree / ".git"
    if tree.is_symlink() or not gitdir.is_dir() or gitdir.is_symlink():
        return Report()
    facts = fresh_refs(target.mirror), git.object_format(target.mirror)
    return confined.run(_holder_pass, tree, target, *facts, write=(tree,), user=user)


def _holder_pass(tree: Path, target: Target, expected: dict[str, str],
                 object_format: str | None) -> Report:
    """``holder_pass`` in the child; what it cannot judge alone (a tampered ``.git``,
    nested repositories, special files, an earlier save) it leaves to the owner's cleanup."""
    gitdir = tree / ".git"
    report = Report()
    if slotgit.audit(gitdir) or git.refs_under(gitdir, RESCUE_REFS):
        return report
    report.restored = slotgit.restore(gitdir, git.slot_config(target.url, object_format))
    for lock in slotgit.stale_git_locks(tree):
        lock.unlink(missing_ok=True)
    report.index_rebuilt = check_index(tree, 32 if object_format == "sha256" else 20)
    found = nested.walk(tree)
    if (found.repos or found.deep or found.special or (gitdir / "modules").exists()
            or (gitdir / "worktrees").exists()):
        return report
    st = status(tree)
    extras, _ = classify_refs(gitdir, target.mirror, expected)
    stashes = stash_entries(tree) if "refs/stash" in extras else []
    save_refs(tree, st, extras, with_head=st.head not in (target.tip, target.known_commit),
              stashes=stashes, snapshot=None)
    _drop_refs(gitdir, st, extras, stashes, report)
    back_to = target.known_commit or st.head
    if back_to:
        git.run(["checkout", "-f", "-q", "--detach", back_to], tree)
    keeps = target.keep_ignored or target.keep
    git.run(["clean", "-ffd" if keeps else "-ffdx"], tree)
    report.changed, report.untracked = st.changed, st.untracked
    return report


def _beside(rescue_to: Path, suffix: str) -> Path:
    return rescue_to.with_name(rescue_to.name.removesuffix(".bundle") + suffix)


def _drop_refs(gitdir: Path, st: Status, extras: dict[str, str], stashes: list[str],
               report: Report) -> None:
    """Delete the refs a fresh slot does not have as they are (saved by now; moved copies
    of the mirror's refs come back with the fetch), HEAD detached first so that it never
    names a deleted branch."""
    if st.branch and st.head:  # (an unborn branch has no ref to delete)
        slotgit.write_record(gitdir / "HEAD", f"{st.head}\n")
    git.delete_refs(gitdir, list(extras))
    report.branches_deleted = [printable(n[11:]) for n in extras if n.startswith("refs/heads/")]
    report.stashes_deleted = len(stashes)
    report.refs_deleted = [printable(n) for n in extras
                           if not n.startswith(("refs/heads/", "refs/remotes/origin/"))
                           and n != "refs/stash"]


def _reset(tree: Path, tip: str, st: Status, untouched: bool, keep_ignored: bool,
           found: nested.Found, report: Report, keep: list[str]) -> bool:
    """Check out ``tip`` detached, empty the saved nested repositories, remove what git does
    not track and what a fresh slot's .git does not have. Returns whether it checked out."""
    checkout = bool(st.head != tip or st.branch or st.changed or report.index_rebuilt)
    if checkout:
        git.run(["checkout", "-f", "-q", "--detach", tip], tree)
        if st.head != tip:
            report.moved_from = st.head
    for path in found.repos:
        if path.is_dir() and not path.is_symlink():
            nested.empty(path)
    for path in found.special:
        path.unlink(missing_ok=True)
    report.special_files_removed = len(found.special)
    removed = 0
    if not untouched and keep and not keep_ignored:
        removed = _clean_keeping(tree, keep)
    elif not untouched:  # status never reports the empty directories a holder made
        removed = git.run(["clean", "-ffdx" if not keep_ignored else "-ffd"],
                          tree).stdout.count(b"Removing ")
    report.leftovers_removed = slotgit.drop_leftovers(tree / ".git")
    report.changed, report.untracked = st.changed, st.untracked
    report.ignored = max(0, removed - st.untracked)
    return checkout


def _drop_ignored_links_out(tree: Path) -> None:
    """Remove the ignored symlinks a ``keep_ignored`` slot would hand on that lead out of
    it: the next holder would write through them."""
    out = git.run(["ls-files", "-z", "--others", "--ignored", "--exclude-standard"],
                  tree).stdout
    for rel in filter(None, out.split(b"\0")):
        _drop_links_out(tree, os.path.join(os.fsencode(tree), rel))


def _clean_keeping(tree: Path, keep: list[str]) -> int:
    """Remove what git does not track, ignored files too except those the ``keep`` patterns
    match (build caches), and, in what is kept, every symlink that leads out of the slot.
    Returns how many entries went. The patterns are un-ignored for the second pass, with
    all below a kept directory (an ignored ``*.o`` inside ``target/`` stays too)."""
    removed = git.run(["clean", "-ffd"], tree).stdout.count(b"Removing ")
    spared: list[str] = []
    for pattern in keep:
        spared += ["-e", f"!{pattern}"]
        if pattern.endswith("/"):
            inside = pattern if "/" in pattern.rstrip("/") else f"**/{pattern}"
            spared += ["-e", f"!{inside}**"]
    removed += git.run(["clean", "-ffdX", *spared], tree).stdout.count(b"Removing ")
    kept = git.run(["ls-files", "-z", "--others", "--ignored", "--exclude-standard",
                    "--directory"], tree).stdout.split(b"\0")
    for rel in filter(None, kept):
        removed += _drop_links_out(tree, os.path.join(os.fsencode(tree), rel.rstrip(b"/")))
    return removed


def _drop_links_out(tree: Path, top: bytes) -> int:
    """Remove the symlinks at or below ``top`` (never followed) that resolve outside
    ``tree``: a kept cache must not lead the next holder's writes elsewhere."""
    inside = os.path.realpath(os.fsencode(tree)) + b"/"
    links = [top] if os.path.islink(top) else [
        os.path.join(here, name) for here, dirs, files in os.walk(top)
        for name in dirs + files if os.path.islink(os.path.join(here, name))]
    out = [link for link in links if not os.path.realpath(link).startswith(inside)]
    for link in out:
        os.unlink(link)
    return len(out)


def replace_tampered(tree: Path, *, mirror: Path, url: str, branch: str, tip: str, aside: Path,
                     problems: list[str], record: Path) -> Report:
    """Move a slot whose .git was tampered with aside whole (everything in it is kept, and
    git is never run on it; only its owner may enter it) and put a fresh clone of the
    mirror in its place."""
    tmp, _ = fresh_clone(mirror, tree.parent, url, branch, tip)
    aside.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    rename_into_place(tree, aside)  # the holder's files flushed first: they are its work
    make_private(aside)
    rename_into_place(tmp, tree, flush=False)  # flushed with them
    last = LastClean()
    last.retake_tree(tree)
    last.index = index_identity(tree / ".git")
    last.save(record)
    return Report(tampered=[printable(p) for p in problems], recloned=True, rescued=str(aside))


def fresh_clone(mirror: Path, where: Path, url: str, branch: str,
                tip: str | None = None) -> tuple[Path, str]:
    """A new slot in a temp directory made in ``where``, cloned from the mirror (at ``tip``,
    else the branch's tip) by a child confined to it and to the mirror's objects, which the
    clone hard-links; returns it and its commit. On failure nothing is left."""
    tmp = where / temp_name("reclone")
    tmp.mkdir(mode=0o700)  # (a holder handed another slot must not read this one)
    try:
        commit = confined.run(_clone, mirror, tmp, url, branch, tip,
                              write=(tmp, mirror / "objects"))
    except BaseException:
        slotgit.remove(tmp)
        raise
    return tmp, commit


def _clone(mirror: Path, dest: Path, url: str, branch: str, tip: str | None) -> str:
    commit = git.clone_slot(mirror, dest, url, branch)
    if tip is not None and commit != tip:
        git.ensure_commit(dest, mirror, tip)
        git.run(["checkout", "-f", "-q", "--detach", tip], dest)
        return tip
    return commit

