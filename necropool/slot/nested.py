"""Repositories inside a slot: nested clones, submodules and worktrees.

Their work is saved into the slot's own repository as refs under
``refs/necropool/rescue/nested/<path>/`` (so the one bundle of a cleanup holds everything):
their refs and HEAD are fetched in, and their files are added as a commit by the slot's own
git (``--work-tree``), so no configuration of theirs is ever obeyed. A nested repository
git must not be run on (symlinks, links out of the slot) is moved aside whole.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from necropool.git import commands as git
from necropool.git.commands import GitError
from necropool.slot import gitdir as slotgit
from necropool.slot.saving import RESCUE_REFS

PREFIX = RESCUE_REFS + "nested/"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


# A directory whose path is longer is moved aside whole: git cannot open what lies below
# it (PATH_MAX, 4096 bytes, bounds every path a system call takes), and saves or removes
# none of it; it itself is short enough to be renamed (its parent is within this, its name
# at most 255 bytes).
DEEP = 3584


@dataclass
class Found:
    """What a walk of a working tree found besides git's own business."""

    repos: list[Path]  # directories holding a ``.git`` entry, deepest first
    special: list[Path]  # FIFOs, sockets, devices: git neither tracks nor removes them
    deep: list[Path] = field(default_factory=list)  # directories past ``DEEP``, not read


def walk(tree: Path, tops: list[str] | None = None, known: frozenset[str] = frozenset()) -> Found:
    """Every nested repository and special file below ``tree`` (its own .git excluded),
    from directory entry types alone: no stat, no symlink followed. With ``tops`` (the
    directories that changed since the last cleanup, which found none), only those are
    read, and the directories below them that are not in ``known`` (new ones)."""
    repos, special, deep = [], [], []
    stack = [tree / rel if rel else tree for rel in (tops if tops is not None else [""])]
    base = len(str(tree)) + 1
    while stack:
        top = stack.pop()
        if len(os.fsencode(top)) > DEEP:
            deep.append(top)
            continue
        with os.scandir(top) as entries:
            for entry in entries:
                if entry.name == ".git":
                    if top != tree:
                        repos.append(top)
                elif entry.is_dir(follow_symlinks=False):
                    if entry.path[base:] not in known:
                        stack.append(Path(entry.path))
                elif not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    special.append(Path(entry.path))
    repos.sort(key=lambda p: len(p.parts), reverse=True)
    return Found(repos, special, deep)


def ref_part(text: str) -> str:
    """A path as a valid piece of a ref name (``git check-ref-format``): every byte other
    than a letter, digit or ``_-+,=/`` as ``%XX``, and a dot too unless it stands between
    two letters or digits (and does not start ``.lock``)."""
    raw = text.encode("utf-8", "surrogateescape")
    out = []
    for i, byte in enumerate(raw):
        char = chr(byte)
        plain = char.isascii() and (char.isalnum() or char in "_-+,=/")
        dot_ok = (char == "." and raw[i - 1:i].isalnum() and raw[i + 1:i + 2].isalnum()
                  and raw[i:i + 5] != b".lock")
        out.append(char if plain or dot_ok else f"%{byte:02X}")
    return "".join(out)


@dataclass
class Saved:
    refs: list[str]
    paths: list[str]  # nested repositories saved into refs (relative paths)
    moved: list[str]  # nested repositories moved aside whole


def save(tree: Path, found: list[Path], aside: Path, deep: list[Path]) -> Saved:
    """Save the work of every nested repository, submodule and worktree of the slot at
    ``tree``: refs in the slot, or the directory moved under ``aside`` when git must not
    be run on it. Module and worktree git directories with no working tree are saved too,
    and ``deep`` directories (past ``DEEP``) are moved aside whole."""
    gitdir = tree / ".git"
    out = Saved([], [], [])
    for i, path in enumerate(deep):
        out.moved.append(_move_aside(path, aside, f"deep-{i}"))
    covered: set[Path] = set()
    for path in found:
        rel = path.relative_to(tree).as_posix()
        prefix = f"{PREFIX}{ref_part(rel)}/"
        gd, problems = _gitdir_of(path, gitdir)
        if gd is not None:
            covered.add(gd)
        try:
            if problems:
                raise GitError("; ".join(problems[:3]))
            out.refs += _save_files(tree, path, prefix)
            out.refs += _save_history(tree, gd, prefix)
            out.paths.append(rel)
        except (GitError, OSError):
            git.delete_refs(gitdir, [r for r in out.refs if r.startswith(prefix)])
            out.refs = [r for r in out.refs if not r.startswith(prefix)]
            out.moved.append(_move_aside(path, aside, rel))
    for gd in _registered(gitdir):
        if gd not in covered:
            rel = gd.relative_to(gitdir).as_posix()
            try:
                out.refs += _save_history(tree, gd, f"{PREFIX}{ref_part(rel)}/")
                out.paths.append(f".git/{rel}")
            except GitError:
                out.moved.append(_move_aside(gd, aside, rel))
    return out


def _gitdir_of(path: Path, gitdir: Path) -> tuple[Path | None, list[str]]:
    """The git directory of the repository at ``path`` and what makes it unsafe."""
    dotgit = path / ".git"
    if dotgit.is_symlink():
        return None, [".git is a symlink"]
    if dotgit.is_dir():
        return dotgit, slotgit.audit(dotgit)
    linked = slotgit.linked_gitdir(dotgit, gitdir)
    if linked is None:
        return None, [".git links outside the slot's repository"]
    # (the slot's audit walked its whole .git already: only a commondir is left to check)
    worktree = linked.parent.name == "worktrees" and linked.parent.parent == gitdir.resolve()
    return linked, slotgit.commondir_problems(linked, gitdir if worktree else None)


def _registered(gitdir: Path) -> list[Path]:
    """Submodules' and worktrees' git directories inside the slot's .git."""
    found = []
    wt = gitdir / "worktrees"
    if wt.is_dir():
        found += [p for p in sorted(wt.iterdir()) if p.is_dir() and not p.is_symlink()]
    stack = [gitdir / "modules"]
    while stack:
        top = stack.pop()
        if not top.is_dir() or top.is_symlink():
            continue
        if (top / "HEAD").is_file():
            found.append(top)
            stack.append(top / "modules")
        else:
            stack += sorted(top.iterdir())
    return found


def _save_files(tree: Path, path: Path, prefix: str) -> list[str]:
    """Commit the nested working tree's files with the slot's own repository and config."""
    index = tree / ".git" / "necropool-nested.index"
    index.unlink(missing_ok=True)
    env = {"GIT_INDEX_FILE": str(index)}
    base = ["--git-dir", str(tree / ".git"), "--work-tree", str(path)]
    try:
        git.run([*base, "add", "-A", "."], path, env=env)
        wtree = git.run([*base, "write-tree"], path, env=env).stdout.decode().strip()
    finally:
        index.unlink(missing_ok=True)
    if wtree == EMPTY_TREE:
        return []
    msg = f"necropool: files of {path.relative_to(tree).as_posix()} saved before cleanup"
    sha = git.run(["commit-tree", wtree, "-m", msg], tree).stdout.decode().strip()
    git.write_refs(tree / ".git", {prefix + "files": sha})
    return [prefix + "files"]


def _save_history(tree: Path, gd: Path | None, prefix: str) -> list[str]:
    """Fetch a nested repository's refs and HEAD into the slot (a worktree shares the
    slot's objects: its HEAD is recorded as it is)."""
    if gd is None:
        return []
    _, head = git.read_head(gd)
    if (gd / "commondir").exists():  # a worktree of the slot itself
        if not head:
            return []
        git.write_refs(tree / ".git", {prefix + "HEAD": head})
        return [prefix + "HEAD"]
    refs = git.refs_under(gd, "refs/")
    if not refs and not head:
        return []
    specs = [f"+refs/*:{prefix}refs/*"] + ([f"+HEAD:{prefix}HEAD"] if head else [])
    git.run(["-c", f"safe.directory={gd}", "fetch", "--no-tags", "--no-write-fetch-head",
             "--quiet", str(gd), *specs], tree)
    return sorted(git.refs_under(tree / ".git", prefix))


def _move_aside(path: Path, aside: Path, rel: str) -> str:
    """Move a nested repository (or git directory) out of the slot, whole."""
    dest = aside / ref_part(rel).replace("/", "__")
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.rename(path, dest)
    return str(dest)


def empty(path: Path) -> None:
    """Remove everything inside a saved nested repository (a submodule's directory stays,
    as a fresh checkout has it; an untracked one is then removed by ``git clean``)."""
    for name in os.listdir(path):
        slotgit.remove(path / name)
