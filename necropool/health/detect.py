"""Detection: every anomaly of a pool, judged under the pool lock, changing nothing (the
checker; ``repair`` and ``autorecover`` act on what it finds).

Every judgement that a holder or worker is gone is made under the pool lock from a
non-blocking slot-lock probe or a pid + start-time check.
"""

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from necropool.git import commands as git
from necropool.ground import proc
from necropool.ground.clock import now, rfc3339
from necropool.ground.layout import PoolPaths, is_temp
from necropool.ground.locks import lock_free
from necropool.ground.proc import hostname
from necropool.ground.results import Record
from necropool.pool import divergence
from necropool.pool.divergence import Divergence
from necropool.pool.mirror import mirror_freshness
from necropool.pool.pool import Pool
from necropool.pool.prepared import PREPARE_FAILED
from necropool.slot import gitdir as slotgit
from necropool.slot import lastclean
from necropool.slot.integrity import Verifier
from necropool.store.model import ALLOCATED, AVAILABLE, CLEANING, ERROR, PoolState, Slot

KINDS = ("long_allocated_slots", "expired_leases", "abandoned_slots", "corrupted_slots",
         "orphaned_locks", "stray_paths", "isolated_slots", "stale_mirrors", "silent_hosts",
         "busy_free_slots", "tampered_free_slots", "failed_prepares",
         "ledger_divergences")


@dataclass
class Anomaly:
    kind: str
    pool: str
    evidence: str
    slot_id: str | None = None
    path: str | None = None
    number: int | None = None
    lease_id: str | None = None
    host: str | None = None  # where it is: another host of a shared ledger, else this one

    def to_dict(self) -> Record:

        data = {"kind": self.kind, "pool": self.pool, "slot_id": self.slot_id,
                "path": self.path, "evidence": self.evidence, "lease_id": self.lease_id,
                "host": self.host or hostname()}
        return Record(data)


@dataclass
class Findings:
    pool: str
    items: dict[str, list[Anomaly]] = field(default_factory=lambda: {k: [] for k in KINDS})
    judged: PoolState | None = None  # the state the slots were judged in (under the lock)
    # Found in the ledger about other hosts' slots and hosts: reported, left to those hosts.
    elsewhere: dict[str, list[Anomaly]] = field(default_factory=lambda: {k: [] for k in KINDS})
    # This host's slots the ledger disagrees about, by number: what auto-recover reconciles.
    divergences: dict[int, Divergence] = field(default_factory=dict)

    def add(self, kind: str, *, evidence: str, remote: bool = False, slot_id: str | None = None,
            path: str | None = None, number: int | None = None, lease_id: str | None = None,
            host: str | None = None) -> None:
        to = self.elsewhere if remote else self.items
        to[kind].append(Anomaly(kind=kind.removesuffix("s"), pool=self.pool, evidence=evidence,
                                slot_id=slot_id, path=path, number=number, lease_id=lease_id,
                                host=host))

    @property
    def count(self) -> int:
        return sum(len(v) for v in (*self.items.values(), *self.elsewhere.values()))

    def to_dict(self) -> dict[str, list[Record]]:
        return {k: [a.to_dict() for a in v + self.elsewhere[k]] for k, v in self.items.items()}


def live_allocation(slot: Slot, abandoned: set[int]) -> bool:
    """Allocated, and its holder not proven gone."""
    return slot.state == ALLOCATED and slot.number not in abandoned


def holder_dead(pool: Pool, slot: Slot) -> str | None:
    """Why the slot's holder is provably gone, or None. A pool whose state only this host's
    files hold has its holders here, whatever host they recorded (``NECROPOOL_HOST``
    spoofed, or renamed since)."""
    holder = slot.lease.holder if slot.lease else None
    if holder and holder.is_dead(here=not pool.ledger):
        return f"holder pid {holder.pid} on {holder.host} is no longer running"
    return None


def detect(pool: Pool, *, max_allocation_hours: float | None = None, deep: bool = False,
           remember: bool = True) -> Findings:
    """Every anomaly of one pool; a healthy pool yields none. With ``remember``, what the
    integrity checks proved is kept in ``verified.json`` to spare the next run the work."""
    hours = max_allocation_hours or pool.settings.max_allocation_hours
    verifier = Verifier(cache=pool.paths.verified if remember else None)
    found = Findings(pool.name)
    paths = pool.paths
    with pool.locked() as current:
        judged = _judge_slots(pool, current, hours, found)
        _check_lock_files(pool, current, found)
    found.judged = current
    if current.source not in ("state.toml", "ledger"):  # the ledger has no file to lose
        found.add("corrupted_slots", path=str(paths.state),
                  evidence=f"state files unreadable; using {current.source}")
    mirror_problems = _verify_mirror(pool, verifier, deep)
    if mirror_problems:
        found.add("corrupted_slots", path=str(paths.mirror),
                  evidence="mirror: " + "; ".join(mirror_problems[:3]))
    elif stale := mirror_freshness(pool)[1]:
        found.add("stale_mirrors", path=str(paths.mirror), evidence=stale)
    abandoned = {a.number for a in found.items["abandoned_slots"] if a.number is not None}
    with proc.reading(paths.readers):  # (a release meanwhile neither waits for nor ends us)
        _verify_slots(pool, current, judged, abandoned, verifier, deep, found)
    _find_strays(pool, current, found)
    verifier.save()
    if pool.ledger:
        _judge_fleet(pool, hours, found)
    return found


def _verify_slots(pool: Pool, current: PoolState, judged: list[int], abandoned: set[int],
                  verifier: Verifier, deep: bool, found: Findings) -> None:
    for number in judged:
        slot = current.slots[number]
        if slot.lease and slot.lease.user and live_allocation(slot, abandoned):
            continue  # handed to a user (--user): its tree is theirs, and none of ours to read
        problems = [current.problems[number]] if number in current.problems else []
        problems = problems or _verify_slot(pool, number, verifier, deep)
        if not problems and slot.state == ERROR:  # not isolated, yet never allocated: heal it
            problems = [f"in error: {slot.error or 'no reason recorded'}"]
        if problems:
            found.add("corrupted_slots", slot_id=pool.slot_id(number), number=number,
                      path=str(pool.slot_dir(number)), evidence="; ".join(problems[:3]),
                      lease_id=slot.lease.lease_id if slot.lease else None)
        elif slot.state == AVAILABLE and not slot.needs_cleanup and (why := lastclean.touched(
                pool.slot_dir(number), pool.paths.slot_record(number))):
            found.add("tampered_free_slots", slot_id=pool.slot_id(number), number=number,
                      path=str(pool.slot_dir(number)),
                      evidence=f"free, yet {why} changed since its cleanup")  # git
            # lock files in it included: its cleanup removes them
        elif slot.state != CLEANING and not live_allocation(slot, abandoned):
            # a live holder's git lock files are its own business (libgit2 writers, say)
            for lock in slotgit.stale_git_locks(pool.slot_dir(number)):
                found.add("orphaned_locks", slot_id=pool.slot_id(number), number=number,
                          path=str(lock), evidence="git lock file with no git process behind it")


def _judge_fleet(pool: Pool, hours: float, found: Findings) -> None:
    """Other hosts' slots as far as the ledger tells (their directories are not here), and
    hosts silent past ``silent_host_hours``: reported, for those hosts to act on; but a
    lease there whose holder lived on this host and died is this host's to end."""
    from necropool.fleet import remote as fleet  # lazy: a pool in a ledger only
    from necropool.lease.renew import expired  # lazy: as fleet
    from necropool.store.pg.hosts import silent_hosts  # lazy: a PostgreSQL ledger only

    slots, seen = fleet.slots(pool)
    limit = now() - timedelta(hours=hours)
    for f in slots:
        slot, lease = f.slot, f.slot.lease
        if f.host == hostname():
            continue
        sid, there = fleet.slot_id(pool, slot.number, f.host), f"on host {f.host}"
        if lease and lease.holder and lease.holder.is_local() and lease.holder.is_dead():
            # its holder lived here: this host alone judges it (auto-recover ends the lease)
            found.add("abandoned_slots", remote=True, slot_id=sid, path=f.path, host=f.host,
                      number=slot.number, lease_id=lease.lease_id,
                      evidence=f"{there}: holder pid {lease.holder.pid} on this host is no "
                               "longer running")
        elif lease and expired(lease):
            found.add("expired_leases", remote=True, slot_id=sid, path=f.path, host=f.host,
                      lease_id=lease.lease_id, evidence=f"{there}: lease expired at "
                      f"{rfc3339(lease.expires_at)}")
        elif lease and lease.allocated_at < limit:
            found.add("long_allocated_slots", remote=True, slot_id=sid, path=f.path,
                      host=f.host,
                      lease_id=lease.lease_id, evidence=f"{there}: allocated since "
                      f"{rfc3339(lease.allocated_at)}")
        elif slot.state == ERROR:
            kind = "isolated_slots" if slot.isolated_at else "corrupted_slots"
            found.add(kind, remote=True, slot_id=sid, path=f.path, host=f.host,
                      evidence=f"{there}: {slot.isolation_reason or slot.error or 'in error'}")
    for host, at in silent_hosts(seen, pool.settings.silent_host_hours).items():
        found.add("silent_hosts", remote=True, host=host, evidence=f"host {host}: no "
                  f"auto-recover or state change since {rfc3339(at)}")


def _judge_slots(pool: Pool, current: PoolState, hours: float, found: Findings) -> list[int]:
    """Classify allocations (under the pool lock); return the slots safe to verify."""
    limit = now() - timedelta(hours=hours)
    to_verify = []
    for number, slot in sorted(current.slots.items()):
        sid, where = pool.slot_id(number), str(pool.slot_dir(number))
        free = lock_free(pool.paths.slot_lock(number))
        if slot.state == CLEANING:
            if free:
                who = f"pid {slot.worker.pid}" if slot.worker else "its worker"
                found.add("abandoned_slots", slot_id=sid, number=number, path=where,
                          evidence=f"stuck in cleaning: {who} is gone (slot lock free)")
                to_verify.append(number)
            continue
        if pool.ledger and (diverged := divergence.judge(pool, slot)):
            # judged by nothing else: the ledger's lease may not be the slot's
            found.divergences[number] = diverged
            found.add("ledger_divergences", slot_id=sid, number=number, path=where,
                      lease_id=diverged.ledger_lease, evidence=diverged.evidence)
            continue
        if slot.state == ERROR and slot.isolated_at and number not in current.problems:
            failed = PREPARE_FAILED in (slot.isolation_reason or "")
            found.add("failed_prepares" if failed else "isolated_slots", slot_id=sid,
                      number=number, path=where,
                      evidence=slot.isolation_reason or slot.error or "isolated")
            continue
        to_verify.append(number)
        if slot.state == AVAILABLE and slot.worker and not slot.worker.is_local():
            _judge_handed_back(pool, number, found)
        if slot.state != ALLOCATED:
            continue
        lease = slot.lease
        assert lease is not None  # an allocated entry without one is read as in error
        dead = holder_dead(pool, slot) if free else None
        if dead:
            found.add("abandoned_slots", slot_id=sid, number=number, path=where,
                      evidence=dead, lease_id=lease.lease_id)
        elif lease.expires_at and lease.expires_at < now():
            found.add("expired_leases", slot_id=sid, number=number, path=where,
                      lease_id=lease.lease_id,
                      evidence=f"lease expired at {rfc3339(lease.expires_at)}")
        elif lease.allocated_at < limit:
            found.add("long_allocated_slots", slot_id=sid, number=number, path=where,
                      lease_id=lease.lease_id,
                      evidence=f"allocated since {rfc3339(lease.allocated_at)} "
                               f"(over {hours:g} h)")
    return to_verify


def _judge_handed_back(pool: Pool, number: int, found: "Findings") -> None:
    """A slot released from another host, not yet cleaned, in which processes still run:
    its holder may be at work. Allocation leaves it alone (never ends them); reported so
    that someone looks."""
    busy = proc.processes_in(pool.slot_dir(number), pool.paths.readers)
    if busy:
        found.add("busy_free_slots", slot_id=pool.slot_id(number), number=number,
                  path=str(pool.slot_dir(number)),
                  evidence=f"free, yet processes still run in it ({proc.describe(busy)}): "
                           "not handed out until they end")


def _check_lock_files(pool: Pool, current: PoolState, found: Findings) -> None:
    if pool.paths.locks.is_symlink():
        return  # never look through it; _find_strays reports the link itself
    try:
        names = sorted(os.listdir(pool.paths.locks))
    except OSError:
        return
    ids = {pool.slot_id(n): n for n in current.slots}
    for name in names:
        path = pool.paths.locks / name
        if is_temp(name):
            continue
        if not name.endswith(".lock") or path.is_symlink() or not path.is_file():
            found.add("stray_paths", path=str(path), evidence="not a lock file")
            continue
        number = ids.get(name[:-5])
        if number is None:
            if lock_free(path):
                found.add("orphaned_locks", path=str(path),
                          evidence="lock of a slot that does not exist")
        elif current.slots[number].state != CLEANING and lock_free(path):
            found.add("orphaned_locks", slot_id=name[:-5], number=number, path=str(path),
                      evidence="slot lock that no live process holds")


def _verify_mirror(pool: Pool, verifier: Verifier, deep: bool) -> list[str]:
    problems = verifier.verify(pool.paths.mirror, bare=True, branch=pool.definition.branch)
    if not problems and deep:
        problems = _fsck(pool.paths.mirror)
    return problems


def _verify_slot(pool: Pool, number: int, verifier: Verifier, deep: bool) -> list[str]:
    path = pool.slot_dir(number)
    problems = verifier.verify(path)
    if not problems and deep:
        problems = _fsck(path)
    return problems


def _fsck(path: Path) -> list[str]:
    proc = git.run(["fsck", "--full", "--no-dangling", "--no-progress"], path, check=False)
    if proc.returncode == 0:
        return []
    lines = proc.stderr.decode(errors="replace").splitlines() or ["git fsck failed"]
    return [f"git fsck: {lines[0]}"]


def _find_strays(pool: Pool, current: PoolState, found: Findings) -> None:
    paths = pool.paths
    for name in sorted(os.listdir(paths.dir)):
        path = paths.dir / name
        if is_temp(name):
            continue
        if name not in PoolPaths.KNOWN:
            found.add("stray_paths", path=str(path), evidence="not part of the pool layout")
        elif path.is_symlink():
            found.add("stray_paths", path=str(path),
                      evidence=f"symlink to {os.readlink(path)} replaces {name}")
    for directory in (paths.locks, paths.slots):  # without them nothing can be allocated
        if not os.path.lexists(directory):
            found.add("stray_paths", path=str(directory),
                      evidence=f"{directory.name}/ is missing (auto-recover recreates it)")
    try:
        entries = sorted(os.listdir(paths.slots))
    except OSError:
        return
    for name in entries:
        path = paths.slots / name
        if is_temp(name):
            continue
        if path.is_symlink():
            found.add("stray_paths", path=str(path),
                      evidence=f"symlink to {os.readlink(path)} in place of a slot")
        elif not (name.isdigit() and int(name) in current.slots):
            found.add("stray_paths", path=str(path), evidence="directory that no slot owns")
