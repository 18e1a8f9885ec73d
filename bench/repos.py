"""Generated repositories for the benchmark: no network, deterministic content."""

import subprocess
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}


def _blob(data: bytes) -> bytes:
    return b"data %d\n%s\n" % (len(data), data)


def make_repo(path: Path, files: int, commits: int, per_commit: int = 20) -> Path:
    """A repository with ``files`` files in nested dirs and ``commits`` commits, built with
    git fast-import (seconds, not minutes)."""
    import os

    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / ".gitignore").write_text("build/\n*.o\n")
    stream = bytearray()
    when = 1_700_000_000

    def commit(n: int, changes: list[tuple[str, bytes]]) -> None:
        nonlocal when
        when += 60
        msg = f"commit {n}".encode()
        stream.extend(b"commit refs/heads/main\n")
        stream.extend(b"committer Bench <bench@example.com> %d +0000\n" % when)
        stream.extend(_blob(msg))
        if n == 0:
            stream.extend(b"M 100644 inline .gitignore\n" + _blob(b"build/\n*.o\n"))
        for name, data in changes:
            stream.extend(b"M 100644 inline " + name.encode() + b"\n" + _blob(data))

    def name(i: int) -> str:
        return f"src/d{i % 50:02d}/e{(i // 50) % 20:02d}/file{i}.txt"

    commit(0, [(name(i), b"line %d\n" % i * 8) for i in range(files)])
    for n in range(1, commits):
        changes = [(name((n * per_commit + k) % files), b"rev %d %d\n" % (n, k) * 4)
                   for k in range(per_commit)]
        commit(n, changes)
    env = dict(os.environ, **GIT_ENV)
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input=bytes(stream), env=env,
                   check=True)
    subprocess.run(["git", "checkout", "-q", "-f", "main"], cwd=path, check=True)
    subprocess.run(["git", "gc", "-q"], cwd=path, check=True, env=env)
    return path


def make_small_repo(path: Path) -> Path:
    """Five files in one commit: an upstream for benches that time the ledger, not git."""
    import os

    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for n in range(5):
        (path / f"file{n}.txt").write_text(f"content {n}\n")
    env = dict(os.environ, **GIT_ENV)
    subprocess.run(["git", "add", "."], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=path, check=True, env=env)
    return path


def add_upstream_commit(path: Path, n: int) -> None:
    import os

    env = dict(os.environ, **GIT_ENV)
    (path / f"upstream-{n}.txt").write_text(f"{n}\n")
    subprocess.run(["git", "add", "."], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", f"up {n}"], cwd=path, check=True, env=env)
