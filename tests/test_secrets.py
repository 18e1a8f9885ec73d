"""No secret leaves its place: a pool over a real HTTP git server (Basic auth) whose URL
carries a token shows and stores the URL without it, keeps the token in one owner-only file
that only the mirror's fetches read, and fetches all the same; a ledger's password reaches
neither the output, even of a malformed URL, nor a command ``run`` starts."""

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import commit_file, git, run_cli
from httpgit import HttpGitServer, client_env

TOKEN = "tok3n-Sup3rSecret"


@pytest.fixture
def server(tmp_path: Path, upstream: Path, root: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpGitServer]:
    """The upstream served at http://ci:TOKEN@127.0.0.1:PORT/repo.git; necropool's processes
    reach it directly (no proxy) and find no credential helper of the user's."""
    for name, value in client_env().items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    with HttpGitServer(tmp_path / "srv", user="ci", token=TOKEN) as srv:
        srv.add_repo("repo", source=upstream)
        yield srv


@pytest.fixture
def git_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every git command line necropool starts, as ``ps`` shows it, logged to a file by a
    ``git`` first on PATH that then runs the real one."""
    bindir, log = tmp_path / "bin", tmp_path / "git-argv.log"
    bindir.mkdir()
    real = next(Path(d) / "git" for d in os.environ["PATH"].split(os.pathsep)
                if os.access(Path(d) / "git", os.X_OK))
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>{log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def no_token(result) -> None:
    assert result.code == 0, result
    assert TOKEN not in result.stdout + result.stderr, result
    assert "ci:" not in result.stdout + result.stderr, result


def files_with_token(top: Path) -> list[Path]:
    return [path for path in top.rglob("*") if path.is_file() and not path.is_symlink()
            and TOKEN.encode() in path.read_bytes()]


@pytest.mark.slow
def test_token_in_no_output_file_event_metric_or_command_line(
        server: HttpGitServer, root: Path, upstream: Path, git_argv: Path) -> None:
    no_token(run_cli("create", "web", server.url("repo"), "--slots", "2", "--json"))
    pool = root / "pools" / "web"
    credentials = pool / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert TOKEN in credentials.read_text()
    assert "ci" not in (pool / "pool.toml").read_text().split("url")[1].split("\n")[0]

    clean = server.url("repo", with_credentials=False)
    listed = run_cli("list", "--json")
    no_token(listed)
    assert listed.json()["pools"][0]["url"] == clean
    slot = run_cli("allocate", "web", "--json")
    no_token(slot)
    path = Path(slot.json()["path"])
    assert git(path, "remote", "get-url", "origin") == clean  # what an agent sees
    (path / "scratch.txt").write_text("work\n")
    for args in (["list"], ["status"], ["status", "web", "--json"],
                 ["status", "--format", "prometheus"], ["detect"], ["detect", "--json"],
                 ["log"], ["log", "--json"], ["release", str(path)],
                 ["run", "web", "--", "sh", "-c", "git remote -v; env"],
                 ["auto-recover", "--json"], ["rescued", "list"]):
        no_token(run_cli(*args))
    metrics = run_cli("status", "--format", "prometheus").stdout
    assert f'url="{clean}"' in metrics

    # fetching still works: a new upstream commit reaches a newly allocated slot
    new_head = commit_file(upstream, "NEW", "new\n")
    git(upstream, "push", "-q", str(server.root / "repo.git"), "main")
    fresh = run_cli("allocate", "web", "--json")
    no_token(fresh)
    assert fresh.json()["current_commit"] == new_head
    assert any(r.authorized for r in server.requests)

    assert files_with_token(root) == [credentials]
    assert TOKEN not in git_argv.read_text()


def test_wrong_token_fails_clearly_without_showing_it(server: HttpGitServer, root: Path) -> None:
    url = server.url("repo").replace(TOKEN, "wrong-Tok3n")
    made = run_cli("create", "web", url, "--slots", "1")
    assert made.code == 3, made
    assert "Authentication failed" in made.stderr
    assert "wrong-Tok3n" not in made.stdout + made.stderr
    assert not (root / "pools" / "web").exists()


@pytest.mark.slow
def test_a_pool_with_the_token_in_pool_toml_is_migrated_on_first_use(
        server: HttpGitServer, root: Path, upstream: Path) -> None:
    """A pool made before the credential file: its URL with the token in pool.toml, the
    mirror's config, the slots' configs and its history (never rewritten, never shown)."""
    no_token(run_cli("create", "web", server.url("repo"), "--slots", "2"))
    pool = root / "pools" / "web"
    clean, secret = server.url("repo", with_credentials=False), server.url("repo")
    (pool / "credentials").unlink()
    for config in (pool / "pool.toml", pool / "mirror.git" / "config",
                   *pool.glob("slots/*/.git/config"), pool / "events.jsonl"):
        config.write_text(config.read_text().replace(clean, secret))
    assert len(files_with_token(root)) == 5

    no_token(run_cli("list"))
    assert sorted(files_with_token(root)) == [pool / "credentials", pool / "events.jsonl"]
    for args in (["log"], ["log", "--json"], ["log", "web", "--format", "tsv"]):
        no_token(run_cli(*args))
    assert stat.S_IMODE((pool / "credentials").stat().st_mode) == 0o600
    new_head = commit_file(upstream, "NEW", "new\n")
    git(upstream, "push", "-q", str(server.root / "repo.git"), "main")
    slot = run_cli("allocate", "web", "--json")
    no_token(slot)
    assert slot.json()["current_commit"] == new_head


def test_sync_takes_a_rotated_token(server: HttpGitServer, root: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{server.url("repo")}"\nnum_slots = 1\n')
    no_token(run_cli("--config", config, "sync"))
    rotated = "r0tated-Tok3n"
    server.token = rotated
    config.write_text(config.read_text().replace(TOKEN, rotated))
    synced = run_cli("--config", config, "sync", "--json")
    assert synced.code == 0, synced
    assert rotated not in synced.stdout + synced.stderr
    assert synced.json()["actions"][0]["changed"] == {"credentials": ["***", "***"]}
    assert rotated in (root / "pools" / "web" / "credentials").read_text()


@pytest.mark.parametrize("dsn", [
    "postgresql://necropool:hunter2secret@[::1/necropool",          # unclosed [
    "postgresql://necropool:hunter2%40secret@db.invalid:port/db",   # encoded, bad port
    "postgresql://necropool:hunter2secret@db.invalid:99999999/db",  # port out of range
])
def test_a_malformed_ledger_url_never_prints_its_password(root: Path, dsn: str) -> None:
    for args in (["list"], ["list", "--json"], ["ledger", "status"]):
        result = run_cli("--ledger", dsn, *args)
        assert result.code != 0, result
        assert "hunter2" not in result.stdout + result.stderr, result


def test_run_passes_no_ledger_password(ledger_dsn: str, upstream: Path, root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in NECROPOOL_LEDGER (the test server trusts any) is not the command's."""
    dsn = ledger_dsn.replace("postgres@", "postgres:hunter2secret@", 1)
    monkeypatch.setenv("NECROPOOL_LEDGER", dsn)
    assert run_cli("create", "web", upstream, "--slots", "1").code == 0
    ran = run_cli("run", "web", "--", sys.executable, "-c",
                  "import os; print(os.environ['NECROPOOL_LEDGER'])")
    assert ran.code == 0, ran
    assert "hunter2" not in ran.stdout + ran.stderr
    assert ran.stdout.strip() == dsn.replace("hunter2secret", "***")


@pytest.mark.parametrize("url_form", ["token_as_user", "libgit2"])
def test_fetching_works_with_a_bare_token_and_with_libgit2(
        tmp_path: Path, upstream: Path, root: Path, server: HttpGitServer, url_form: str) -> None:
    """A forge's token given as the user name (no password); the libgit2 backend."""
    if url_form == "token_as_user":
        server.user, server.token = TOKEN, ""
        url, backend = server.url("repo").replace(f"{TOKEN}:@", f"{TOKEN}@"), "git"
    else:
        url, backend = server.url("repo"), "libgit2"
    no_token(run_cli("create", "web", url, "--slots", "1", "--fetch-backend", backend))
    new_head = commit_file(upstream, "NEW", "new\n")
    git(upstream, "push", "-q", str(server.root / "repo.git"), "main")
    slot = run_cli("allocate", "web", "--json")
    no_token(slot)
    assert slot.json()["current_commit"] == new_head
    assert files_with_token(root) == [root / "pools" / "web" / "credentials"]


@pytest.mark.slow
def test_create_shows_no_token_in_ps_while_it_runs(server: HttpGitServer, root: Path) -> None:
    """``create``'s own command line (what ``ps`` shows every user) has the URL's token
    masked while it clones from an upstream that stalls: the first request is held."""
    import subprocess

    from netproxy import Proxy

    proxy = Proxy(server.port)
    proxy.stall_at(1)
    argv = [sys.executable, "-m", "necropool", "create", "web",
            server.url("repo", port=proxy.port), "--slots", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proxy.wait_until(lambda: proxy.round_trips >= 1, timeout=60)
        shown = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert TOKEN.encode() not in b" ".join(shown) and b"ci:" not in b" ".join(shown)
        assert shown[3:5] == [b"create", b"web"] and b"@127.0.0.1:" in shown[5], shown
        assert len(b"\0".join(shown)) == len("\0".join(argv).encode()) + 1  # as laid out
    finally:
        proxy.release()
        out, err = proc.communicate(timeout=120)
        proxy.close()
    assert proc.returncode == 0, err
    assert TOKEN not in out + err
