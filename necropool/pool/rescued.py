"""Work saved from slots before they were reset, under a pool's ``rescued/``: git bundles
written by cleanup (``<slot_id>-<stamp>-<label>.bundle``, refs under
``refs/necropool/rescue/``), broken working copies moved aside by recovery
(``<slot_id>-<stamp>.broken``) and stray paths moved aside by auto-recover
(``stray-<name>-<stamp>``). Anything else found there is listed too, by what it is;
directories holding bundles are looked into. Nothing here follows a symlink: a link is
listed (and pruned) as itself."""

import contextlib
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from necropool.git import commands as git
from necropool.ground import proc
from necropool.ground.clock import now, rfc3339
from necropool.ground.config import Settings
from necropool.ground.errors import Conflict, NotFound, OperationFailed, UsageError
from necropool.ground.layout import (
    ensure_inside,
    is_temp,
    kept_dir,
    remove_tree,
    storing,
    sweep_temp,
    temp_name,
    temp_owner_dead,
    trash_name,
)
from necropool.ground.results import Record
from necropool.pool import put_back
from necropool.slot import confined
from necropool.slot.lastclean import NO_HOLDER

if TYPE_CHECKING:
    from necropool.pool.pool import Pool

RESCUE_REFS = "refs/necropool/rescue/"
_STAMP = r"(?P<stamp>\d{8}T\d{6}(?:\d{6})?Z)"
_SAVED = re.compile(rf"(?P<slot>.+?-\d+)-{_STAMP}(?:-(?P<label>.+?))?(?P<ext>\.bundle|\.broken)?")
_STRAY = re.compile(rf"stray-(?P<what>.+)-{_STAMP}")
_LEASE = re.compile(r"[0-9a-f]{16}")
_RELEASES = ("release", "reclaim", "force_release")
_NOT_COMMITS = ("uncommitted", "stash")


def _stamp_time(stamp: str) -> datetime:
    fmt = "%Y%m%dT%H%M%S%fZ" if len(stamp) > 16 else "%Y%m%dT%H%M%SZ"
    return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)


def _tree_size(path: str) -> int:
    """Bytes of the regular files under ``path`` (each inode once; links not followed)."""
    seen, total = set(), 0
    for top, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _holds_bundles(path: str) -> bool:
    return any(name.endswith(".bundle") for _top, _dirs, files in os.walk(path)
               for name in files)


def bundle_heads(path: Path) -> tuple[dict[str, str], list[str]]:
    """The refs (name -> sha) and prerequisite commits a bundle's header lists."""
    heads: dict[str, str] = {}
    prerequisites: list[str] = []
    with open(path, "rb") as fh:
        if not fh.readline().startswith(b"# v"):
            raise OperationFailed(f"{path} is not a git bundle")
        for raw in fh:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line or len(heads) + len(prerequisites) > 10000:
                break
            if line.startswith("-"):
                prerequisites.append(line[1:].split(" ", 1)[0])
            elif not line.startswith("@"):
                sha, _, name = line.partition(" ")
                heads[name] = sha
    return heads, prerequisites


class Holders:
    """Who held a slot, from the pool's history (its store's events, oldest first): lease id
    -> owner, and each slot's releases in order (the holder whose work an
    ``allocate``/``recover`` cleanup saved)."""

    def __init__(self, history: list[dict[str, Any]]):
        self.owners: dict[str, str] = {}
        self.releases: dict[str, list[tuple[str, str, str | None]]] = {}
        for record in history:
            lease = record.get("lease_id")
            if lease and record.get("owner"):
                self.owners[lease] = record["owner"]
            if record.get("event") in _RELEASES and lease:
                self.releases.setdefault(record.get("slot_id", ""), []).append(
                    (str(record.get("time")), lease, record.get("owner")))

    def of(self, slot_id: str | None, label: str | None,
           when: datetime) -> tuple[str | None, str | None]:
        """(lease_id, owner) for a saved item."""
        if label and _LEASE.fullmatch(label):
            return label, self.owners.get(label)
        if label == NO_HOLDER:  # found in a free slot: not the last holder's, nor the next's
            return None, None
        stamp = str(rfc3339(when))
        before = [r for r in self.releases.get(slot_id or "", []) if r[0] <= stamp]
        return (before[-1][1], before[-1][2]) if before else (None, None)


class _KeptPaths:
    """A deleted pool's stand-in for ``PoolPaths``: its items live (and are pruned) under
    ``<root>/rescued/``, where inspecting them happens too; its mirror is gone."""

    def __init__(self, root: Path):
        self.rescued = self.dir = kept_dir(root)
        self.mirror: Path | None = None


class Deleted:
    """The work of a deleted pool, kept under ``<root>/rescued/<pool>-<stamp>/`` (its whole
    remains with ``.remains``), read like a pool's ``rescued/``: the ids start with that
    directory's name; there is no mirror to restore from nor history to name holders."""

    definition = None

    def __init__(self, settings: Settings, top: Path):
        self.settings, self.top = settings, top
        found = _KEPT.fullmatch(top.name)
        self.name = found["pool"] if found else top.name
        self.paths = _KeptPaths(settings.root)


_KEPT = re.compile(r"(?P<pool>.+)-\d{8}T\d{12}Z(?:\.remains)?")


def deleted_pools(settings: Settings) -> list[Deleted]:
    """The deleted pools whose work ``<root>/rescued/`` keeps (never through a symlink)."""
    top = kept_dir(settings.root)
    if top.is_symlink() or not top.is_dir():
        return []
    return [Deleted(settings, Path(e.path)) for e in sorted(os.scandir(top), key=lambda e: e.name)
            if e.is_dir(follow_symlinks=False) and _KEPT.fullmatch(e.name)]


def entries(pool: "Pool | Deleted", detail: bool = True) -> list[Record]:
    """Everything under the pool's ``rescued/``, oldest first; without ``detail``, only
    what the names and sizes say (no history, no bundle read: what ``status`` needs)."""
    top = pool.paths.rescued
    ensure_inside(top.parent, pool.settings.root)
    if top.is_symlink() or not top.is_dir():
        return []
    holders = None
    if detail:
        holders = Holders([] if isinstance(pool, Deleted) else pool.store.read_events())
    found: list[Record] = []
    if isinstance(pool, Deleted):
        _walk(pool, pool.top, pool.top.name + "/", holders, found)
    else:
        _walk(pool, top, "", holders, found)
    return sorted(found, key=lambda e: (e["created_at"] or "", e["id"]))


def _walk(pool: "Pool | Deleted", directory: Path, prefix: str, holders: Holders | None,
          found: list[Record]) -> None:
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if is_temp(entry.name):
            continue
        rel = prefix + entry.name
        if entry.is_symlink():
            kind = "link"
        elif entry.is_file(follow_symlinks=False):
            kind = "bundle" if entry.name.endswith(".bundle") else "file"
        elif entry.is_dir(follow_symlinks=False):
            if not _SAVED.fullmatch(entry.name) and not _STRAY.fullmatch(entry.name) \
                    and _holds_bundles(entry.path):
                _walk(pool, Path(entry.path), rel + "/", holders, found)
                continue
            kind = "tree"
        else:
            kind = "file"
        found.append(_describe(pool, Path(entry.path), rel, kind, holders))


def _describe(pool: "Pool | Deleted", path: Path, rel: str, kind: str,
              holders: Holders | None) -> Record:
    st = path.lstat()
    name = path.name
    saved, stray = _SAVED.fullmatch(name), _STRAY.fullmatch(name)
    match = saved or stray
    when = _stamp_time(match["stamp"]) if match else datetime.fromtimestamp(st.st_mtime, UTC)
    slot_id = saved["slot"] if saved else None
    label = saved["label"] if saved else None
    lease_id, owner = holders.of(slot_id, label, when) if holders and slot_id else (None, None)
    item = Record({
        "id": rel, "pool": pool.name, "kind": kind, "path": str(path), "slot_id": slot_id,
        "created_at": rfc3339(when), "label": label, "lease_id": lease_id, "owner": owner,
        "size_bytes": _tree_size(str(path)) if kind == "tree" else st.st_size,
        "refs": None, "branches": None, "commits": None, "uncommitted_files": None,
        "deleted": isinstance(pool, Deleted),
    })
    if kind == "bundle" and holders:
        try:
            heads, _ = bundle_heads(path)
        except (OSError, OperationFailed):
            return item
        names = [n[len(RESCUE_REFS):] for n in heads if n.startswith(RESCUE_REFS)]
        item["refs"] = names
        item["branches"] = [n.split("heads/", 1)[1] for n in names if "heads/" in n]
    return item


def usage(pool: "Pool") -> tuple[int, int]:
    """(items, bytes) under the pool's ``rescued/``."""
    items = entries(pool, detail=False)
    return len(items), sum(e["size_bytes"] for e in items)


def inspect(pool: "Pool | Deleted", items: list[Record]) -> None:
    """Fill in ``commits`` (saved commits not upstream) and ``uncommitted_files`` of the
    bundles among ``items``: they are read into a scratch repository that borrows the
    mirror's objects (the bundles' prerequisites), created in the pool directory and
    removed after. A bundle that cannot be read keeps them null."""
    bundles = [e for e in items if e["kind"] == "bundle" and e["refs"] is not None]
    if not bundles:
        return
    scratch = pool.paths.dir / temp_name("inspect")
    ensure_inside(scratch.parent, pool.settings.root)
    try:
        git.run(["init", "-q", "--bare", str(scratch)])
        if pool.paths.mirror:  # (a deleted pool's bundles cannot be read without it)
            (scratch / "objects/info/alternates").write_text(f"{pool.paths.mirror}/objects\n")
        for i, item in enumerate(bundles):
            _inspect_one(scratch, f"refs/b/{i}/", item)
    except (OperationFailed, OSError):  # a read-only root, say: the counts stay unknown
        pass
    finally:
        remove_tree(scratch, pool.settings.root)


def _inspect_one(scratch: Path, space: str, item: Record) -> None:
    path = item["path"]
    _, prerequisites = bundle_heads(Path(path))
    fetched = git.run(["fetch", "-q", "--no-tags", "--no-write-fetch-head", path,
                       f"+{RESCUE_REFS}*:{space}*"], scratch, check=False)
    if fetched.returncode != 0:
        return
    tips = [space + n for n in item["refs"]  # (``on/BRANCH`` only says where HEAD was)
            if not n.rsplit("/", 1)[-1].startswith(_NOT_COMMITS) and not n.startswith("on/")
            and n != "index"]
    counted = git.run(["rev-list", "--count", *tips, "--not", *prerequisites, "--"], scratch,
                      check=False) if tips else None
    item["commits"] = int(counted.stdout) if counted and counted.returncode == 0 else 0
    item["uncommitted_files"] = []
    if "uncommitted" in item["refs"]:
        ref = space + "uncommitted"
        parent = git.run(["rev-parse", "-q", "--verify", ref + "^"], scratch, check=False)
        args = (["diff-tree", "-r", "--name-only", "--no-commit-id", ref + "^", ref]
                if parent.returncode == 0 else ["ls-tree", "-r", "--name-only", ref])
        listed = git.run(args, scratch, check=False)
        item["uncommitted_files"] = listed.stdout.decode(errors="replace").splitlines()


def find(pools: Sequence["Pool | Deleted"], ident: str) -> tuple["Pool | Deleted", Record]:
    """The item named ``ident``: its id as ``list`` prints it (or an unambiguous start of
    it), ``POOL/ID``, or its path."""
    if not ident or "\0" in ident:
        raise UsageError(f"invalid rescued id {ident!r}")
    candidates = []
    for pool in pools:
        for item in entries(pool):
            names = (item["id"], f"{pool.name}/{item['id']}", item["path"])
            if ident in names or os.path.abspath(ident) == item["path"]:
                return pool, item
            if any(n.startswith(ident) for n in names[:2]):
                candidates.append((pool, item))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        ids = ", ".join(f"{p.name}/{i['id']}" for p, i in candidates[:5])
        raise UsageError(f"rescued id {ident!r} is ambiguous: {ids}")
    raise NotFound(f"no rescued work {ident!r} (see necropool rescued list)")


def restore(pool: "Pool | Deleted", item: Record, into: Path | None,
            checkout: bool = False) -> dict[str, Any]:
    """Fetch a bundle's saved refs as ``refs/rescued/<slot>-<stamp>/...`` into the git
    repository ``into``; when ``into`` does not exist, clone it first (from the pool's
    mirror, ``origin`` set to the upstream URL). With ``checkout``, also put the holder's
    state back there (``put_back.checkout``). git runs confined to ``into``."""
    if item["kind"] != "bundle" or not item["refs"]:
        raise Conflict(f"{item['id']} is a {item['kind']}, not a bundle of saved refs: "
                       f"copy what you need from {item['path']}")
    name = Path(item["id"]).name.removesuffix(".bundle")
    stem = name.rsplit("-", 1)[0] if item["label"] else name
    target = Path(into or stem).absolute()
    cloned = not os.path.lexists(target)
    if cloned and pool.definition is None:
        raise UsageError(f"{item['id']} is from a deleted pool, whose mirror is gone: name a "
                         "clone of its upstream with --into")
    if not cloned and not (target / ".git").exists() and not (target / "HEAD").is_file():
        raise Conflict(f"{target} exists and is not a git repository: name a clone of the "
                       "upstream or a path that does not exist")
    if checkout and not cloned:
        put_back.check_clean(target)
        heads, _ = bundle_heads(Path(item["path"]))
        put_back.check_branch(target, item["path"],
                              {n[len(RESCUE_REFS):]: sha for n, sha in heads.items()})
    # A new clone is made beside ``target`` and renamed into place once whole, so that a
    # restore killed midway leaves nothing in the way of its rerun (which removes what a
    # dead run left there: a temp name names its process).
    work = _beside(target) if cloned else target
    space = f"refs/rescued/{stem}/"
    url = pool.definition.url if pool.definition is not None else ""
    done: dict[str, Any] = {"id": item["id"], "pool": pool.name, "path": str(target),
                            "cloned": cloned, "refs": [space + n for n in item["refs"]],
                            "checkout": None}
    try:
        confined.run(_fetch_saved, pool.paths.mirror, url, item["path"], work, space, cloned,
                     write=(work.resolve(),))
        if checkout:
            done["checkout"] = confined.run(put_back.checkout, work, space, item["refs"],
                                            write=(work.resolve(),))
        if cloned:
            os.rename(work, target)
    except BaseException:
        if cloned:
            remove_tree(work, work.parent)
        raise
    return done


def _beside(target: Path) -> Path:
    """A new directory beside ``target``, named for this process (the confinement's rule
    names it), after removing what dead runs for the same target left there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_name(target.name).rsplit(".", 3)[0] + "."
    for name in os.listdir(target.parent):
        if name.startswith(prefix) and temp_owner_dead(name):
            left = target.parent / name
            proc.end(proc.processes_in(left))  # its git, orphaned, may still be writing
            with contextlib.suppress(OSError):  # one that could not be ended: next time
                remove_tree(left, target.parent)
    work = target.parent / temp_name(target.name)
    work.mkdir()
    return work


def _fetch_saved(mirror: Path | None, url: str, bundle: str, target: Path, space: str,
                 clone: bool) -> None:
    if clone:
        git.run(["clone", "-q", "--no-hardlinks", str(mirror), str(target)])
        git.run(["remote", "set-url", "origin", url], target)
    git.run(["fetch", "-q", "--no-tags", "--no-write-fetch-head", bundle,
             f"+{RESCUE_REFS}*:{space}*"], target)


def prune(pool: "Pool | Deleted", older_than: float, apply: bool) -> list[Record]:
    """The items older than ``older_than`` seconds; deleted only when ``apply``. Each is
    removed without following a symlink (a link goes, its target stays)."""
    old = older(pool, older_than)
    if apply:
        discard(pool, old)
    return old


def older(pool: "Pool | Deleted", seconds: float, detail: bool = True) -> list[Record]:
    """The items saved more than ``seconds`` ago (``detail``: as for ``entries``)."""
    cutoff = rfc3339(datetime.fromtimestamp(now().timestamp() - seconds, UTC))
    return [e for e in entries(pool, detail) if e["created_at"] < cutoff]


def discard(pool: "Pool | Deleted", items: list[Record]) -> None:
    """Delete the items (``entries``'), and the directories that leaves empty. Each is
    renamed to a trash name first, in one step, and deleted from there: a deletion killed
    midway leaves an item whole or gone, never half of one listed as saved work (its trash
    is finished by the next one, ``_sweep``)."""
    root = pool.settings.root
    _sweep(pool)
    for item in items:
        path = Path(item["path"])
        ensure_inside(path.parent, root)
        trash = path.parent / trash_name(path.name[:80])  # (a user's long name fits)
        with storing("moving", f"{path} to {trash}"):
            os.rename(path, trash)
        remove_tree(trash, root)
    _drop_empty_dirs(pool, {Path(e["path"]).parent for e in items})


def _sweep(pool: "Pool | Deleted") -> None:
    """Finish the deletions that killed ones left in trash: in ``rescued/`` (a deleted
    pool's directory) and the directories of bundles in it."""
    top = pool.top if isinstance(pool, Deleted) else pool.paths.rescued
    ensure_inside(top.parent, pool.settings.root)
    if top.is_symlink() or not top.is_dir():
        return
    sweep_temp(top, pool.settings.root)
    for entry in os.scandir(top):
        if entry.is_dir(follow_symlinks=False) and not is_temp(entry.name) \
                and not _SAVED.fullmatch(entry.name) and not _STRAY.fullmatch(entry.name):
            sweep_temp(Path(entry.path), pool.settings.root)


def _drop_empty_dirs(pool: "Pool | Deleted", directories: set[Path]) -> None:
    """Remove directories (below ``rescued/``) that pruning left empty."""
    top = pool.paths.rescued
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        while directory != top and top in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                break
            directory = directory.parent

