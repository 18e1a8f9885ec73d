"""Repository integrity ("fsck") that costs well under a second per slot.

Measured (ARCHITECTURE.md, facts the design rests on): checking each pack's trailing
SHA-1, hashing loose objects and reading HEAD's trees with libgit2's strict hash checks
catches what ``git fsck --full`` does on the objects a checkout depends on, at ~1/100 of
its cost. Hard-linked packs are checked once
per inode, and a tree already proven complete over the same packs is not walked again.
"""

import contextlib
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, cast

from necropool.git import commands as git
from necropool.ground.clock import now
from necropool.ground.layout import write_atomic
from necropool.slot.gitdir import checksum_ok

if TYPE_CHECKING:  # pygit2 costs ~40 ms to import: only the tree walk loads it
    import pygit2

# A pack file as (st_dev, st_ino, st_size, st_mtime_ns): it never changes in place.
PackKey = tuple[int, int, int, int]


def index_problem(gitdir: Path) -> str | None:
    """What is wrong with a working copy's index: missing (git would show every file of
    HEAD as deleted and added again), or failing its signature or trailing SHA-1 (git
    itself never checks it outside fsck)."""
    try:
        data = (gitdir / "index").read_bytes()
    except FileNotFoundError:
        return "index is missing"
    except OSError as exc:
        return f"index is unreadable: {exc.strerror}"
    return None if checksum_ok(data) else "index is unreadable or fails its checksum"


class Verifier:
    """Verifies repositories, remembering what it has proven across slots of one run and,
    with ``cache``, across runs.

    What is remembered across runs is only completeness: "commit C's whole tree is present
    in these pack files" (identified by inode, size and mtime). Packs never change in place,
    so that stays true as long as the same files are there, and their checksums are
    verified again on every run; so a steady-state ``detect`` walks no tree and does not
    even import pygit2 (100+ ms).
    """

    def __init__(self, cache: Path | None = None):
        self._packs: dict[PackKey, str | None] = {}
        self._complete: dict[str, list[frozenset[PackKey]]] = {}  # commit -> pack sets proven
        self._cache = cache
        self._used: dict[str, list[frozenset[PackKey]]] = {}
        self._loaded: dict[str, list[frozenset[PackKey]]] = {}
        if cache is not None:
            self._loaded = _load_cache(cache)
            self._complete = {k: list(v) for k, v in self._loaded.items()}

    def save(self) -> None:
        """Keep what this run proved or relied on (nothing else) for the next run."""
        if self._cache is None or _same(self._used, self._loaded):
            return

        data = {commit: [sorted(list(k) for k in packs) for packs in sets]
                for commit, sets in self._used.items()}
        with contextlib.suppress(OSError):  # a cache: losing it costs time, not correctness
            write_atomic(self._cache, json.dumps({"complete": data}).encode())

    def _file_checksum(self, path: Path) -> str | None:
        """Problem with a pack or index file's trailing SHA-1, or None; cached per inode."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None  # removed since listed (a holder's gc): not damage
        except OSError as exc:
            return f"{path.name}: {exc.strerror}"
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._packs:
            self._packs[key] = _trailer_problem(path)
        return self._packs[key]

    def pack_keys(self, objects: Path) -> frozenset[PackKey]:
        keys: set[PackKey] = set()
        for pack in (objects / "pack").glob("*.pack"):
            st = pack.stat()
            keys.add((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return frozenset(keys)

    def check_objects(self, objects: Path) -> list[str]:
        problems = []
        pack_dir = objects / "pack"
        packs = sorted(pack_dir.glob("*.pack"))
        for path in packs + sorted(pack_dir.glob("*.idx")):
            problem = self._file_checksum(path)
            if problem:
                problems.append(problem)
        for pack in packs:  # without its index git cannot find an object of the pack
            if not os.path.lexists(pack.with_suffix(".idx")) and _settled(pack):
                problems.append(f"{pack.with_suffix('.idx').name} is missing")
        for sub in objects.iterdir() if objects.is_dir() else ():
            if len(sub.name) == 2 and sub.is_dir():
                for obj in sub.iterdir():
                    problem = _loose_problem(obj, sub.name + obj.name)
                    if problem:
                        problems.append(problem)
        return problems

    def verify(self, path: Path, bare: bool = False, branch: str | None = None) -> list[str]:
        """Problems found in a repository (empty when it verifies)."""
        if path.is_symlink():
            return [f"{path} is a symlink"]
        if not path.is_dir():
            return [f"directory {path} is missing"]
        gitdir = path if bare else path / ".git"
        if gitdir.is_symlink() or not gitdir.is_dir():
            return [".git is missing or not a directory"]
        if bare:
            commit = git.read_ref(gitdir, f"refs/heads/{branch}") if branch else None
            if not commit:
                return [f"branch {branch} is missing from the mirror"]
        else:
            _, commit = git.read_head(gitdir)
            if not commit:
                return ["HEAD is missing or does not resolve"]
            if problem := index_problem(gitdir):
                return [problem]
        problems = self.check_objects(gitdir / "objects")
        if problems:
            return problems
        return self._check_tree(gitdir, commit)

    def _check_tree(self, gitdir: Path, commit: str) -> list[str]:
        packs = self.pack_keys(gitdir / "objects")
        for done in self._complete.get(commit, []):
            if done <= packs:
                if done not in self._used.setdefault(commit, []):
                    self._used[commit].append(done)
                return []
        import pygit2  # lazy: ~40 ms on top of start-up; only a tree walk

        try:
            repo = pygit2.Repository(str(gitdir))
            obj = repo[commit]
            tree = obj.peel(pygit2.Tree)
        except (pygit2.GitError, KeyError, ValueError) as exc:
            return [f"HEAD commit {commit[:12]} is unreadable: {exc}"]
        try:
            missing = _missing_objects(repo, tree)
        except (pygit2.GitError, KeyError, ValueError) as exc:
            return [f"tree of HEAD is unreadable: {exc}"]
        if missing:
            return [f"{len(missing)} objects of HEAD are missing, e.g. {missing[0]}"]
        if not _has_loose(gitdir / "objects"):  # then the packs alone hold the whole tree
            for table in (self._complete, self._used):
                table.setdefault(commit, []).append(packs)
        return []


def _settled(pack: Path) -> bool:
    """A pack renamed into place over 10 s ago (git renames a new pack's index in right
    after the pack itself: a fetch in progress is not damage)."""
    try:
        return now().timestamp() - pack.stat().st_ctime > 10
    except OSError:
        return False  # removed since listed (a gc)


def _same(a: dict[str, list[frozenset[PackKey]]],
          b: dict[str, list[frozenset[PackKey]]]) -> bool:
    return a.keys() == b.keys() and all(set(a[k]) == set(b[k]) for k in a)


def _load_cache(path: Path) -> dict[str, list[frozenset[PackKey]]]:
    try:
        data = json.loads(path.read_bytes())["complete"]
        return {str(commit): [frozenset(tuple(k) for k in packs) for packs in sets]
                for commit, sets in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _has_loose(objects: Path) -> bool:
    return any(len(e.name) == 2 and any(os.scandir(e.path))
               for e in os.scandir(objects) if e.is_dir())


def _missing_objects(repo: "pygit2.Repository", tree: "pygit2.Tree") -> list[str]:
    """Read every tree (hash-checked by libgit2) and check that every blob exists."""
    import pygit2  # lazy: as in _check_tree

    missing = []
    odb = repo.odb
    stack = [tree]
    while stack:
        current = stack.pop()
        for entry in current:
            if entry.filemode == pygit2.enums.FileMode.COMMIT:
                continue  # a submodule's commit lives in another repository
            if entry.type_str == "tree":
                stack.append(cast("pygit2.Tree", repo[entry.id]))  # its type_str says so
            elif not odb.exists(entry.id):
                missing.append(str(entry.id))
    return missing


def _trailer_problem(path: Path) -> str | None:
    h = hashlib.sha1()
    try:
        size = path.stat().st_size
        if size < 40:
            return f"{path.name} is truncated"
        with open(path, "rb") as fh:
            remaining = size - 20
            while remaining:
                chunk = fh.read(min(remaining, 1 << 20))
                if not chunk:
                    return f"{path.name} is truncated"
                h.update(chunk)
                remaining -= len(chunk)
            trailer = fh.read(20)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path.name}: {exc.strerror}"
    if h.digest() != trailer:
        return f"{path.name} fails its SHA-1 checksum"
    return None


def _loose_problem(path: Path, oid: str) -> str | None:
    if path.name.startswith("tmp_") or len(oid) != 40:
        return None
    try:
        data = zlib.decompress(path.read_bytes())
    except FileNotFoundError:
        return None  # packed or pruned since listed
    except (OSError, zlib.error) as exc:
        return f"loose object {oid} is unreadable: {exc}"
    if hashlib.sha1(data).hexdigest() != oid:
        return f"loose object {oid} fails its hash"
    return None
