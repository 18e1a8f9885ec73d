"""Git operations through the git CLI (hardened) and, where it pays, pygit2 (imported lazily).

Every git call runs without hooks, fsmonitor, terminal prompts or inherited GIT_* redirection,
and only over the transports in ``ALLOWED_PROTOCOLS``.
"""

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from necropool.git.credentials import helper as credential_helper
from necropool.git.credentials import read as read_credentials
from necropool.ground.errors import OperationFailed, UsageError
from necropool.ground.layout import write_atomic
from necropool.ground.progress import RECEIVING, Progress, Report
from necropool.ground.validate import check_refname

ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
HARDENING = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "protocol.ext.allow=never",
    "-c", "core.sshCommand=ssh -o BatchMode=yes -o ConnectTimeout=30",
    "-c", "gc.autoDetach=false",
    "-c", "advice.detachedHead=false",
)
# compiled (and cached by ``re``) at the first failure: 0.6 ms of every start-up otherwise
_TRANSIENT = (
    r"could not resolve host|connection (timed out|reset|refused)|timed out|early eof|"
    r"remote end hung up|rpc failed|temporarily unavailable|tls|ssl|50[234]"
)
_INHERITED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
              "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_COMMON_DIR",
              "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_EXTERNAL_DIFF",
              "GIT_SSH", "GIT_SSH_COMMAND", "GIT_PROXY_COMMAND", "GIT_ASKPASS", "SSH_ASKPASS")
RETRY_DELAYS = (1.0, 3.0)  # three tries in all
_NO_USER_CONFIG = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _config_env(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``pairs`` as git's environment config (``GIT_CONFIG_COUNT``), in order: like ``-c``,
    they override every config file, the repository's included."""
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env.update({f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value})
    return env


SLOT_ISOLATION = {**_NO_USER_CONFIG, **_config_env([("core.excludesFile", os.devnull)])}
# The mirror sits in the pool, within a holder's reach: besides its config being put back
# before each fetch (``mirror_config``), the keys that name a program are overridden, in
# case one is written back meanwhile (the proxy by the variable, which git lets win; the
# upload-pack, where the first value wins, by ``UPLOAD_PACK`` on the command line).
_MIRROR_CONFIG = [("credential.helper", ""), ("core.askPass", "")]
MIRROR_ISOLATION = {**_NO_USER_CONFIG, "GIT_PROXY_COMMAND": "", **_config_env(_MIRROR_CONFIG)}
UPLOAD_PACK = "--upload-pack=git-upload-pack"


def mirror_env(credentials: Path | None = None) -> dict[str, str]:
    """``MIRROR_ISOLATION`` for a command that talks to the upstream, with the pool's
    credential file (``git.credentials``) as the one credential helper, if it has one."""
    helper = credential_helper(credentials)
    pairs = _MIRROR_CONFIG + ([("credential.helper", helper)] if helper else [])
    return {**MIRROR_ISOLATION, **_config_env(pairs)}


class GitMissing(OperationFailed):
    """git cannot be run at all (not installed, not on PATH): an environment fault, refused
    before anything changes, never blamed on a slot."""


def require() -> None:
    """Refuse a command that needs git where there is none, before it touches a lease or a
    slot: its first git call failing half-way would leave the slot in ``error``."""
    if shutil.which("git") is None:
        raise GitMissing("cannot run git: it is not installed or not on PATH "
                         f"(PATH={os.environ.get('PATH', '')}); nothing was changed")


class GitError(OperationFailed):
    """A git command failed; ``stderr`` holds its last words."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message, stderr=stderr)
        self.stderr = stderr

    @property
    def transient(self) -> bool:
        # Quoted text is a path or URL: a repository called 'openssl' is not a TLS error.
        text = re.sub(r"'[^'\n]*'", "''", self.stderr or self.message)
        return bool(re.search(_TRANSIENT, text, re.IGNORECASE))


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GCM_INTERACTIVE="never",
        GIT_ALLOW_PROTOCOL=ALLOWED_PROTOCOLS,
        LC_ALL="C",
        GIT_NO_REPLACE_OBJECTS="1",  # a holder's refs/replace/* never changes what we see
        # refs are read from their files (read_ref, refs_under): a repository git makes for
        # us must keep them there, whatever a user's init.defaultRefFormat says (reftable);
        # git ranks this variable above that setting
        GIT_DEFAULT_REF_FORMAT="files",
        GIT_AUTHOR_NAME="necropool", GIT_AUTHOR_EMAIL="necropool@localhost",
        GIT_COMMITTER_NAME="necropool", GIT_COMMITTER_EMAIL="necropool@localhost",
    )
    env.update(extra or {})
    return env


def start(args: list[str], cwd: Path | None = None, *, env: dict[str, str] | None = None,
          stdin: bool | IO[bytes] = False, stdout: int = subprocess.PIPE
          ) -> subprocess.Popen[bytes]:
    """Start ``git ARGS`` hardened, in the background; ``wait`` collects it. ``stdin``:
    True for a pipe ``wait`` writes to, or a file git reads."""
    cmd = ["git", *HARDENING, *args]
    if cwd is not None:  # ``cwd`` is the repository: a broken one must never make git
        # discover and act on a repository that contains the root (a dotfiles repo, say)
        env = {"GIT_CEILING_DIRECTORIES": str(Path(cwd).absolute().parent),
               **_repository_env(Path(cwd)), **(env or {})}
    source = subprocess.PIPE if stdin is True else stdin or subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, cwd=cwd, env=git_env(env), stdout=stdout,
                                stderr=subprocess.PIPE, stdin=source)
    except FileNotFoundError:
        raise GitError("git is not installed or not on PATH") from None


def _repository_env(cwd: Path) -> dict[str, str]:
    """Name the repository at ``cwd`` outright rather than have git discover it: a pool
    made by one user and healed by root's cron stays workable (git refuses to discover a
    repository another user owns), and its config cannot run code by then: cleanup puts
    a slot's config back before running git there. In a working copy no user or system
    config applies either: what counts as the holder's work never depends on whose global
    excludes file is read."""
    if os.path.isdir(cwd / ".git") and not os.path.islink(cwd / ".git"):
        return {"GIT_DIR": str(cwd / ".git"), "GIT_WORK_TREE": str(cwd), **SLOT_ISOLATION}
    if os.path.isdir(cwd / "objects") and os.path.isfile(cwd / "HEAD"):
        return {"GIT_DIR": str(cwd), **MIRROR_ISOLATION}  # a bare repository: the mirror
    return {}


def wait(proc: subprocess.Popen[bytes], args: list[str], *, timeout: float = 600,
         check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Wait for a git process ``start`` began; return the CompletedProcess, or raise
    GitError with git's message when it fails. A timeout or an interrupt stops it."""
    with proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise GitError(f"git {args[0]} timed out after {timeout:g}s", "timed out") from None
        except BaseException:
            _stop(proc)
            raise
    if check and proc.returncode != 0:
        message = stderr.decode(errors="replace").strip()
        into = f" (into {args[-1]})" if args[0] == "clone" else ""  # where a full disk is
        raise GitError(f"git {args[0]} failed{into}: {_summary(message, proc.returncode)}",
                       message)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a git process: SIGTERM first, so that git removes its lock files (after SIGKILL
    they stay, and the next git in that repository fails), then SIGKILL after 2 s."""
    proc.terminate()
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def run(args: list[str], cwd: Path | None = None, *, timeout: float = 600,
        env: dict[str, str] | None = None, check: bool = True,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``git ARGS`` hardened; return the CompletedProcess, or raise GitError with git's
    message when it fails."""
    proc = start(args, cwd, env=env, stdin=input is not None)
    return wait(proc, args, timeout=timeout, check=check, input=input)


# git's progress lines (``--progress``), ended by CR while they count, LF when done:
# ``Receiving objects:  45% (1890/4200), 1.20 MiB | 1.00 MiB/s``
_PROGRESS_LINE = re.compile(
    rb"(?:remote: )?([A-Za-z][A-Za-z ]*):\s+(?:(\d+)% \((\d+)/(\d+)\)|(\d+))"
    rb"(?:, ([\d.]+) (bytes|KiB|MiB|GiB))?")
_UNITS = {b"bytes": 1, b"KiB": 1 << 10, b"MiB": 1 << 20, b"GiB": 1 << 30}


def progress_report(line: bytes) -> Report | None:
    """The Report a line of git's progress output makes, or None for any other line."""
    match = _PROGRESS_LINE.match(line.strip())
    if match is None:
        return None
    phase, _, done, total, count, amount, unit = match.groups()
    size = int(float(amount) * _UNITS[unit]) if amount else None
    if count is not None:
        return Report(phase.decode().lower(), int(count), None, size)
    return Report(phase.decode().lower(), int(done), int(total), size)


def _run_reporting(args: list[str], *, timeout: float, env: dict[str, str] | None,
                   progress: Progress) -> None:
    """Run ``git ARGS --progress``-style: git's progress lines, read as they come, become
    Reports; the other lines are its message, as ``wait`` keeps it."""
    proc = start(args, env=env, stdout=subprocess.DEVNULL)
    kept = bytearray()

    def read() -> None:
        assert proc.stderr is not None
        pending, fd = b"", proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                report = progress_report(line)
                if report is None and not line.startswith(b"Cloning into"):
                    kept.extend(line + b"\n")
                elif report is not None:
                    progress(report)
        kept.extend(pending)

    reader = threading.Thread(target=read, name="necropool-git-progress", daemon=True)
    reader.start()
    with proc:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _end(proc, reader)
            raise GitError(f"git {args[0]} timed out after {timeout:g}s", "timed out") from None
        except BaseException:
            _end(proc, reader)
            raise
        reader.join()
    if proc.returncode != 0:
        message = kept.decode(errors="replace").strip()
        raise GitError(f"git {args[0]} failed: {_summary(message, proc.returncode)}", message)


def _end(proc: subprocess.Popen[bytes], reader: threading.Thread) -> None:
    """``_stop`` for a process whose output ``reader`` reads, given time to see its end
    before the pipe is closed."""
    proc.terminate()
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(2)


# git's stock advice after a failed fetch or push: true of every failure, it names no cause
_ADVICE = ("please make sure you have the correct access rights", "and the repository exists")
CAUSE_LINES = 4


def _summary(stderr: str, returncode: int) -> str:
    """What went wrong, in git's words: its first ``fatal:`` or ``error:`` line with the few
    lines before it that name the cause (``Permission denied (publickey)``, ``Connection
    timed out``), else its last few lines; hints and stock advice are dropped."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines()]
    meaningful = [line for line in lines if line and not line.startswith("hint:")
                  and not line.lower().rstrip(".").startswith(_ADVICE)]
    end = next((i + 1 for i, line in enumerate(meaningful)
                if line.startswith(("fatal:", "error:"))), len(meaningful))
    return "; ".join(meaningful[max(0, end - CAUSE_LINES):end]) or f"exit status {returncode}"


def run_network(args: list[str], cwd: Path | None = None, *, timeout: float,
                env: dict[str, str] | None = None, progress: Progress | None = None) -> None:
    """Run a git command that talks to the upstream: up to 3 tries for transient failures.
    With ``progress`` (for a command run outside any repository, whose ``--quiet`` becomes
    ``--progress``), git's progress is reported as it goes."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            if progress is None:
                run(args, cwd, timeout=timeout, env=env)
            else:
                _run_reporting(["--progress" if a == "--quiet" else a for a in args],
                               timeout=timeout, env=env, progress=progress)
            return
        except GitError as exc:
            if not exc.transient:
                raise
            if attempt == len(RETRY_DELAYS):
                raise GitError(f"{exc.message} (tried {attempt + 1} times)", exc.stderr) from None
            time.sleep(RETRY_DELAYS[attempt])


# --- refs, read straight from the files (no process) --------------------------------------

def valid_ref(name: str) -> bool:
    """Whether ``name`` (read from a file a holder may have written) is a well-formed ref
    name: only such a name may become a path under a git directory."""
    try:
        check_refname(name)
    except UsageError:
        return False
    return True


def ref_path(gitdir: Path | str, name: str) -> str:
    """The loose file of the ref ``name``; a malformed name (``refs/heads/../../x``) is
    refused, so no path outside ``refs/`` is ever built from one."""
    if not valid_ref(name):
        raise GitError(f"refusing malformed ref name {name[:120]!r}")
    return os.path.join(gitdir, name)  # (a string: 100,000 refs cost no pathlib objects)


def read_ref(gitdir: Path, name: str, _depth: int = 0) -> str | None:
    """The object id a ref names (loose file first, then packed-refs), or None (also for a
    malformed name, or a symbolic ref whose target is one)."""
    if not valid_ref(name):
        return None
    try:
        value = (gitdir / name).read_text().strip()
        if value.startswith("ref: "):  # symbolic: follow, as git does, at most 5 levels
            return read_ref(gitdir, value[5:], _depth + 1) if _depth < 5 else None
        return value or None
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        pass
    except UnicodeDecodeError:
        return None  # garbage in a loose ref: it resolves to nothing, as for git
    return next((oid for ref, oid, _ in parse_packed_refs(_packed(gitdir)) if ref == name), None)


def parse_packed_refs(data: bytes) -> Iterator[tuple[str | None, str, bytes]]:
    """The records of a ``packed-refs`` file, as (ref name, object id, raw bytes); joined,
    the raw bytes give back ``data``. A ref's record is its ``<oid> <name>`` line and the
    peeled ``^<oid>`` line after it, if any; the header and any other line (blank, garbage,
    an orphan ``^``) is a record with no name. Lines end in LF, CRLF or CR (as text mode reads
    them); names that are not UTF-8 decode as ``os.fsdecode`` does."""
    name: str | None = None
    oid, raw = "", b""
    for line in data.splitlines(keepends=True):
        if line.startswith(b"^") and name is not None:
            raw += line  # the peeled value belongs to the ref before it
            continue
        if raw:
            yield name, oid, raw
        fields = line.split()
        name, oid, raw = None, "", line
        if len(fields) == 2 and not line.startswith((b"#", b"^")):
            oid, name = os.fsdecode(fields[0]), os.fsdecode(fields[1])
    if raw:
        yield name, oid, raw


# What any malformed name in packed-refs shows (a superset: a match only costs checking each
# name): git's forbidden characters (a peeled line's ``^`` starts its line), ``..``, ``@{``,
# ``//``, a part starting with a dot or ending in ``.lock``, a name starting with ``/`` or
# ending in ``/`` or ``.``, ``@`` alone. Checking 5,000 names one by one costs ~100 ms.
_FORBIDDEN = bytes([*range(0x09), 0x0b, 0x0c, *range(0x0e, 0x20), 0x7f]) + b"~:?*[\\^"
_ALLOWED = bytes(b for b in range(256) if b not in _FORBIDDEN)
_SUSPECT = (b"..", b"@{", b"//", b"/.", b" .", b" /", b".lock", b"/\n", b".\n", b" @\n", b"/\r",
            b".\r", b" @\r", b" \n", b"\t\n", b" \r", b"\t\r")


def _suspect(data: bytes) -> bool:
    """Whether a ``packed-refs`` file (its header aside) may hold a malformed name: a
    superset (a match only costs checking each name, ~100 ms for 5,000), found by scans
    at C speed: git's forbidden characters (a peeled line's ``^`` starts its line), ``..``,
    ``@{``, ``//``, a part starting with a dot or ending in ``.lock``, a name starting with
    ``/`` or ending in ``/`` or ``.``, ``@`` alone, trailing blanks."""
    body = data[data.find(b"\n") + 1:] if data.startswith(b"#") else data
    odd = body.translate(None, _ALLOWED)
    if odd.strip(b"^") or odd.count(b"^") != body.count(b"\n^") + body.startswith(b"^"):
        return True
    tail = body.rstrip(b"\r\n")[-2:]
    return any(s in body for s in _SUSPECT) or tail.endswith((b"/", b".")) or tail == b" @"


def packed_names(data: bytes) -> Iterator[tuple[str, str]]:
    """The (name, object id) of each well-formed ref of a ``packed-refs`` file; names are
    checked one by one only when the file is ``_suspect``."""
    check = _suspect(data)
    for name, oid, _ in parse_packed_refs(data):
        if name is not None and (not check or valid_ref(name)):
            yield name, oid


def malformed_packed(data: bytes) -> list[str]:
    """The malformed ref names of a ``packed-refs`` file."""
    if not _suspect(data):
        return []
    return [name for name, _, _ in parse_packed_refs(data)
            if name is not None and not valid_ref(name)]


def _packed(gitdir: Path) -> bytes:
    try:
        return (gitdir / "packed-refs").read_bytes()
    except FileNotFoundError:
        return b""


PACK_ABOVE = 100  # more refs than this go into packed-refs (a file each: 0.5 ms apiece here)


def write_refs(gitdir: Path, refs: dict[str, str]) -> None:
    """Create refs directly (no process), loose or, when many, packed; only for a
    repository nobody else is using."""
    if len(refs) > PACK_ABOVE:
        _write_packed(gitdir, refs)
        return
    made: set[str] = set()
    for name, sha in refs.items():
        path = ref_path(gitdir, name)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a link to a file elsewhere is replaced, not written through
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(sha + "\n")


def _write_packed(gitdir: Path, refs: dict[str, str]) -> None:
    """Add ``refs`` to packed-refs (replacing any of those names, loose or packed), which
    stays sorted by name; its peeled lines are kept, but no longer claimed complete."""
    for name in _loose(gitdir) & refs.keys():
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(ref_path(gitdir, name))
    records = [(os.fsencode(name), raw if raw.endswith(b"\n") else raw + b"\n")
               for name, _, raw in parse_packed_refs(_packed(gitdir))
               if name is not None and name not in refs]
    records += [(os.fsencode(name), f"{sha} {name}\n".encode(errors="surrogateescape"))
                for name, sha in refs.items()]
    records.sort(key=lambda record: record[0])
    _replace_packed(gitdir, b"# pack-refs with: sorted \n" + b"".join(r for _, r in records))


def _loose(top: Path) -> set[str]:
    """The names of the files under ``top``/refs (loose refs, or reflogs)."""
    return {os.path.relpath(os.path.join(dirpath, name), top)
            for dirpath, _dirs, files in os.walk(top / "refs") for name in files}


def _replace_packed(gitdir: Path, data: bytes) -> None:
    tmp = gitdir / "packed-refs.necropool"
    tmp.unlink(missing_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, gitdir / "packed-refs")


def delete_refs(gitdir: Path, names: list[str]) -> None:
    """Delete refs (loose, packed, and their reflogs) directly; only for a repository
    nobody else is using (a slot we hold)."""
    doomed = set(names)
    for place in (gitdir, gitdir / "logs"):  # (only the loose files there are: of 100,000
        for name in _loose(place) & doomed:  # names, most are packed)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(ref_path(place, name))
    records = list(parse_packed_refs(_packed(gitdir)))
    kept = [raw for name, _, raw in records if name not in doomed]  # with its peeled line
    if len(kept) != len(records):
        _replace_packed(gitdir, b"".join(kept))


def read_head(gitdir: Path) -> tuple[str | None, str | None]:
    """(branch or None when detached, commit) of a repository's HEAD, without a process."""
    try:
        value = (gitdir / "HEAD").read_text().strip()
    except (OSError, UnicodeDecodeError):  # unreadable or binary garbage: no HEAD
        return None, None
    if value.startswith("ref: "):
        if not value.startswith("ref: refs/heads/") or not valid_ref(value[5:]):
            return None, None  # a HEAD git would not accept: it names no commit
        return value[16:], read_ref(gitdir, value[5:])
    return None, value or None


def refs_under(gitdir: Path, prefix: str) -> dict[str, str]:
    """Refs whose names start with ``prefix`` (``refs/heads/``, say), loose and packed,
    with their object ids; a loose ref wins over a packed one, as for git. Malformed names
    (which git would not accept either) are left out."""
    found: dict[str, str] = {}
    for name, oid in packed_names(_packed(gitdir)):
        if name.startswith(prefix):
            found.setdefault(name, oid)  # the first of duplicates, as read_ref finds it
    for dirpath, _dirs, files in os.walk(gitdir / prefix):
        for name in files:
            ref = Path(dirpath, name).relative_to(gitdir).as_posix()
            if valid_ref(ref):  # (a ``.lock`` file is not a ref)
                found[ref] = read_ref(gitdir, ref) or ""
    return found


def mirror_branch(mirror: Path) -> str:
    """The upstream's default branch as the mirror's HEAD names it."""
    branch, _ = read_head(mirror)
    if not branch:
        raise GitError(f"cannot tell the default branch of {mirror}: pass --branch")
    return branch


def mirror_tip(mirror: Path, branch: str) -> str:
    tip = read_ref(mirror, f"refs/heads/{branch}")
    if not tip:
        raise GitError(f"branch {branch!r} does not exist upstream")
    return tip


# --- the mirror -----------------------------------------------------------------------------

def clone_mirror(url: str, dest: Path, *, timeout: float, backend: str = "git",
                 credentials: Path | None = None, progress: Progress | None = None) -> None:
    """Bare mirror of the upstream, its objects received through git's protocol (a local
    upstream's too: ``localclone`` takes a plain one's files first); ``progress`` hears
    how the transfer goes."""
    if backend == "libgit2":
        import pygit2  # lazy: ~40 ms on top of start-up; only backend libgit2

        try:
            repo = pygit2.clone_repository(url, str(dest), bare=True,
                                           callbacks=_callbacks(pygit2, credentials, progress))
            repo.config["remote.origin.fetch"] = "+refs/*:refs/*"
            repo.config["remote.origin.mirror"] = True
        except pygit2.GitError as exc:
            raise GitError(f"clone of {url} failed: {exc}", str(exc)) from None
        return
    run_network(["clone", "--mirror", "--no-local", "--quiet", "--", url, str(dest)],
                timeout=timeout, env=mirror_env(credentials), progress=progress)


def fetch_mirror(mirror: Path, *, timeout: float, backend: str = "git",
                 credentials: Path | None = None) -> None:
    if backend == "libgit2":
        import pygit2  # lazy: ~40 ms on top of start-up; only backend libgit2

        try:
            remote = pygit2.Repository(str(mirror)).remotes["origin"]
            remote.fetch(["+refs/heads/*:refs/heads/*"], prune=pygit2.enums.FetchPrune.PRUNE,
                         callbacks=_callbacks(pygit2, credentials))
        except pygit2.GitError as exc:
            raise GitError(f"fetch failed: {exc}", str(exc)) from None
        return
    run_network(["fetch", UPLOAD_PACK, "--prune", "--quiet", "origin"], mirror, timeout=timeout,
                env=mirror_env(credentials))


def commit_of(repo: Path, rev: str, meanwhile: Callable[[], None] | None = None) -> str | None:
    """The commit ``rev`` (a ref name, short or full, or a commit id, full or abbreviated;
    already checked by ``validate.check_ref_request``) names in ``repo``, peeled through
    tags; None when it names none there (or is ambiguous). ``meanwhile``: this process's
    own work, done while git looks (on another core)."""
    args = ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"]
    proc = start(args, repo)
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        out = wait(proc, args, check=False)
    if out.returncode != 0:
        return None
    return out.stdout.decode().strip() or None


def fetch_into_mirror(mirror: Path, what: str, *, timeout: float,
                      credentials: Path | None = None) -> bool:
    """Fetch one ref or object the mirror lacks from its upstream: ``what`` is a full ref
    name, fetched to the same name (the one refspec a mirror has, ``refs/*:refs/*``,
    narrowed to it: nothing outside ``refs/`` and no other ref is written), or a full
    commit id, fetched without a ref. False when the upstream does not serve it; a failure
    to reach the upstream raises."""
    spec = f"+{what}:{what}" if what.startswith("refs/") else what
    try:
        run_network(["fetch", UPLOAD_PACK, "--no-tags", "--no-write-fetch-head",
                     "--no-auto-maintenance", "--quiet", "origin", spec], mirror,
                    timeout=timeout, env=mirror_env(credentials))
    except GitError as exc:
        if exc.transient:
            raise
        return False
    return True


def _callbacks(pygit2: Any, credentials: Path | None, progress: Progress | None = None) -> Any:
    """libgit2's way to the credential file (a user name and password when it asks) and
    of reporting a transfer's progress."""
    found = read_credentials(credentials) if credentials is not None else None
    if found is None and progress is None:
        return None

    class Callbacks(pygit2.RemoteCallbacks):  # type: ignore[misc]
        def transfer_progress(self, stats: Any) -> None:
            if progress is not None:
                progress(Report(RECEIVING, stats.received_objects, stats.total_objects,
                                stats.received_bytes))

    return Callbacks(credentials=pygit2.UserPass(*found) if found else None)


def mirror_current(mirror: Path, url: str, *, timeout: float) -> bool:
    """True when the refs of the upstream at ``url``, a local path, are the mirror's: a
    fetch would bring nothing. A repository whose git directory is plain to see (``.git``
    or bare) has its refs read from the files, like the mirror's; any other asks
    ``ls-remote`` (a third of a fetch that brings nothing). False when it cannot say: a
    difference only costs the fetch that would have happened anyway."""
    path = Path(url.removeprefix("file://"))
    for gitdir in (path / ".git", path):
        if gitdir.is_dir() and (gitdir / "objects").is_dir() and (gitdir / "HEAD").is_file():
            return refs_under(gitdir, "refs/") == refs_under(mirror, "refs/")
    try:
        out = run(["ls-remote", UPLOAD_PACK, "origin"], mirror, timeout=timeout).stdout
    except GitError:
        return False
    upstream = {}
    for line in out.decode(errors="surrogateescape").splitlines():
        sha, _, name = line.partition("\t")
        if name.startswith("refs/") and not name.endswith("^{}"):
            upstream[name] = sha
    return upstream == refs_under(mirror, "refs/")


# --- slots ----------------------------------------------------------------------------------

def slot_config(url: str, object_format: str | None = None) -> str:
    """The canonical .git/config of a slot; cleanup restores it if a holder changed it."""
    return _config(["\tbare = false", "\tlogallrefupdates = true"], object_format,
                   [f"\turl = {_quote(url)}", "\tfetch = +refs/heads/*:refs/remotes/origin/*"])


def mirror_config(url: str, object_format: str | None = None) -> str:
    """The canonical config of a pool's mirror (what ``clone --mirror`` writes), put back
    before each fetch: no key a holder added there is ever obeyed."""
    return _config(["\tbare = true"], object_format,
                   [f"\turl = {_quote(url)}", "\tfetch = +refs/*:refs/*", "\tmirror = true"])


def put_back_mirror_config(mirror: Path, url: str, branch: str) -> bool:
    """Make the mirror's config ``mirror_config`` again (atomically: concurrent callers
    write the same text); True when it had been changed. Its object format is told by
    the branch's object id, not by the config being replaced."""
    tip = read_ref(mirror, f"refs/heads/{branch}") or ""
    expected = mirror_config(url, "sha256" if len(tip) == 64 else None).encode()
    try:
        fd = os.open(mirror / "config", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            if fh.read() == expected:
                return False
    except OSError:
        pass  # missing, or a symlink: replaced all the same
    try:
        write_atomic(mirror / "config", expected)
    except OSError as exc:
        raise GitError(f"cannot put back {mirror / 'config'}: {exc.strerror}") from None
    return True


def _config(core: list[str], object_format: str | None, origin: list[str]) -> str:
    version = 1 if object_format else 0
    lines = ["[core]", f"\trepositoryformatversion = {version}", "\tfilemode = true", *core]
    if object_format:
        lines += ["[extensions]", f"\tobjectformat = {object_format}"]
    lines += ['[remote "origin"]', *origin]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def clone_slot(mirror: Path, dest: Path, url: str, branch: str) -> str:
    """Clone a slot from the mirror with HEAD detached at the branch tip; return that commit.

    pygit2 clones the repository by plain path, so the mirror's pack files are hard-linked
    (a slot costs its working tree); the git CLI then checks the tree out, measured 1.5x
    faster than libgit2's checkout here, and its index needs no refresh by the first holder.
    The mirror's branches become ``refs/remotes/origin/*``: a fresh slot has no local branch.
    Its refs are packed, as ``git clone`` leaves them.
    """
    import pygit2  # lazy: ~40 ms on top of start-up; only (re-)cloning a slot

    try:
        repo = pygit2.clone_repository(str(mirror), str(dest / ".git"), bare=True)
        for name in list(repo.references):
            if name.startswith("refs/heads/"):
                target = repo.references[name].target
                repo.references.create(f"refs/remotes/origin/{name[11:]}", target, force=True)
                repo.references.delete(name)
        tip = str(repo.references[f"refs/remotes/origin/{branch}"].target)
        repo.free()
    except (pygit2.GitError, KeyError, ValueError) as exc:
        raise GitError(f"cloning a slot from the mirror failed: {exc}", str(exc)) from None
    (dest / ".git" / "config").write_text(slot_config(url, object_format(mirror)))
    run(["pack-refs", "--all"], dest)  # as a clone has them: one file, not one per tag
    run(["checkout", "-f", "-q", "--detach", tip], dest)
    dest.chmod(0o700)  # owner-only: a holder handed another slot (--user) must not read it
    return tip


def ensure_commit(tree: Path, mirror: Path, commit: str) -> None:
    """Make ``commit`` present in the slot at ``tree``, fetched by id from the mirror when
    it is not (a pull request's commit is in none of the branches and tags a slot has);
    no ref and no FETCH_HEAD is written: a fresh slot has none of them."""
    if run(["cat-file", "-e", f"{commit}^{{commit}}"], tree, check=False).returncode == 0:
        return
    run(["fetch", "--no-tags", "--no-write-fetch-head", "--no-auto-maintenance", "--quiet",
         str(mirror), commit], tree)


def object_format(gitdir: Path) -> str | None:
    try:
        text = (gitdir / "config").read_text()
    except OSError:
        return None
    match = re.search(r"objectformat\s*=\s*(\S+)", text, re.IGNORECASE)
    return match.group(1) if match else None
