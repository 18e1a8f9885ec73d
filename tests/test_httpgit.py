"""tests/httpgit.py with the real git client: clone, fetch and ls-remote work with the token in
the URL and fail with 401 without it, big requests (gzip, chunked) reach http-backend intact,
and through tests/netproxy.py each HTTP request is one round trip that a fault can break."""

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import commit_file, git
from httpgit import HttpGitServer, client_env
from netproxy import Proxy

TIMEOUT = 20


def run_git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """git as a client of the test server: bounded in time, credentials only from the URL."""
    return subprocess.run(["git", *args], cwd=cwd, env=client_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    repo = tmp_path / "source"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit_file(repo, "README", "hello\n")
    return repo


@pytest.fixture
def server(tmp_path: Path, source: Path) -> Iterator[HttpGitServer]:
    with HttpGitServer(tmp_path / "srv", user="u", token="secret") as srv:
        srv.add_repo("repo", source=source)
        yield srv


def test_url_carries_the_token(server: HttpGitServer) -> None:
    assert server.url("repo") == f"http://u:secret@127.0.0.1:{server.port}/repo.git"
    assert server.url("repo.git", with_credentials=False) == \
        f"http://127.0.0.1:{server.port}/repo.git"


def test_clone_with_token(server: HttpGitServer, source: Path, tmp_path: Path) -> None:
    proc = run_git("clone", "-q", server.url("repo"), str(tmp_path / "clone"))
    assert proc.returncode == 0, proc.stderr
    assert git(tmp_path / "clone", "rev-parse", "HEAD") == git(source, "rev-parse", "HEAD")
    assert (tmp_path / "clone" / "README").read_text() == "hello\n"
    requests = server.requests
    # git asks without credentials first; the 401's challenge makes it send them.
    assert requests[0].status == 401 and not requests[0].authorized
    assert all(r.authorized and r.status == 200 for r in requests[1:])
    assert server.rpc_calls() >= 1


def test_fetch_with_token(server: HttpGitServer, source: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    assert run_git("clone", "-q", server.url("repo"), str(clone)).returncode == 0
    new_head = commit_file(source, "two", "2\n")
    git(source, "push", "-q", str(server.root / "repo.git"), "main")
    server.clear()
    proc = run_git("fetch", "-q", "origin", cwd=clone)
    assert proc.returncode == 0, proc.stderr
    assert git(clone, "rev-parse", "origin/main") == new_head
    assert server.rpc_calls() >= 1
    assert all(r.service == "git-upload-pack" for r in server.requests)


def test_ls_remote_with_token(server: HttpGitServer, source: Path) -> None:
    proc = run_git("ls-remote", server.url("repo"))
    assert proc.returncode == 0, proc.stderr
    head = git(source, "rev-parse", "HEAD")
    assert f"{head}\trefs/heads/main" in proc.stdout.splitlines()


@pytest.mark.parametrize("command", ["ls-remote", "clone", "fetch"])
def test_without_credentials_401(server: HttpGitServer, tmp_path: Path, command: str) -> None:
    url = server.url("repo", with_credentials=False)
    if command == "fetch":
        repo = tmp_path / "empty"
        git(tmp_path, "init", "-q", str(repo))
        proc = run_git("fetch", url, "main", cwd=repo)
    elif command == "clone":
        proc = run_git("clone", url, str(tmp_path / "clone"))
    else:
        proc = run_git("ls-remote", url)
    assert proc.returncode != 0
    assert "terminal prompts disabled" in proc.stderr  # no prompt, no hang: a clean failure
    assert server.requests and all(r.status == 401 for r in server.requests)
    assert not any(r.authorized for r in server.requests)
    assert server.rpc_calls() == 0


def test_wrong_token_401(server: HttpGitServer) -> None:
    url = server.url("repo").replace(":secret@", ":wrong@")
    proc = run_git("ls-remote", url)
    assert proc.returncode != 0
    assert "Authentication failed" in proc.stderr
    assert [r.status for r in server.requests if r.authorized] == [401]


def test_unknown_repository_404(server: HttpGitServer) -> None:
    proc = run_git("ls-remote", server.url("nope"))
    assert proc.returncode != 0
    assert server.requests[-1].status == 404


def test_server_without_auth(tmp_path: Path, source: Path) -> None:
    with HttpGitServer(tmp_path / "open") as srv:
        srv.add_repo("repo", source=source)
        assert "@" not in srv.url("repo")
        proc = run_git("clone", "-q", srv.url("repo"), str(tmp_path / "clone"))
        assert proc.returncode == 0, proc.stderr
        assert all(r.status == 200 and not r.authorized for r in srv.requests)


def _branches(repo: Path, count: int) -> None:
    """``count`` branches on as many distinct commits (one fast-import, no working tree), so a
    clone sends one want line (50 bytes) for each."""
    lines = []
    for i in range(count):
        lines += [f"commit refs/heads/b{i}", f"mark :{i + 1}",
                  "committer T <t@e> 1700000000 +0000", "data 2", f"{i % 10}\n"]
        lines.append("")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input="\n".join(lines),
                   text=True, check=True, capture_output=True, timeout=TIMEOUT)


def test_gzip_request_body(server: HttpGitServer, tmp_path: Path) -> None:
    _branches(server.root / "repo.git", 60)  # ~3 kB of wants: git gzips bodies over 1 kB
    proc = run_git("clone", "-q", "--no-checkout", server.url("repo"), str(tmp_path / "clone"))
    assert proc.returncode == 0, proc.stderr
    assert any(r.gzip and r.status == 200 for r in server.requests)
    assert git(tmp_path / "clone", "rev-parse", "origin/b59")


@pytest.mark.slow  # 1-5 s: 3000 commits and refs
def test_chunked_request_body(server: HttpGitServer, tmp_path: Path) -> None:
    _branches(server.root / "repo.git", 3000)  # ~150 kB of wants: more than http.postBuffer
    proc = run_git("-c", "http.postBuffer=131072", "clone", "-q", "--no-checkout",
                   server.url("repo"), str(tmp_path / "clone"))
    assert proc.returncode == 0, proc.stderr
    assert any(r.chunked and r.status == 200 for r in server.requests)
    assert git(tmp_path / "clone", "rev-parse", "origin/b2999")


def test_each_request_is_one_round_trip_through_the_proxy(server: HttpGitServer) -> None:
    with Proxy(server.port) as proxy:
        proc = run_git("ls-remote", server.url("repo", port=proxy.port))
        assert proc.returncode == 0, proc.stderr
        assert proxy.round_trips == len(server.requests) >= 3
        assert proxy.connections == 1  # kept alive across the 401 and the RPCs


def test_proxy_faults_fail_git(server: HttpGitServer, tmp_path: Path) -> None:
    with Proxy(server.port) as proxy:
        url = server.url("repo", port=proxy.port)
        proxy.cut_at(1)
        proc = run_git("ls-remote", url)
        assert proc.returncode != 0
        assert "Empty reply from server" in proc.stderr
        assert server.requests == []  # cut before forwarding: the server heard nothing
        proxy.reset()
        proc = run_git("clone", "-q", url, str(tmp_path / "clone"))
        assert proc.returncode == 0, proc.stderr


def test_lost_reply_on_a_kept_alive_connection(server: HttpGitServer) -> None:
    """The server answers, the client never sees it. libcurl retries a request whose reused
    connection died before any reply byte, so a single lost reply may go unnoticed while the
    server did the work twice: tests of "reply lost" must cut every retry too."""
    with Proxy(server.port) as proxy:
        url = server.url("repo", port=proxy.port)
        # Round trips 1 and 2: the 401 and the authorised advertisement; 3: the ls-refs RPC.
        proxy.cut_after(3)
        proc = run_git("ls-remote", url)
        assert (3, "cut-after") in proxy.fired
        assert proc.returncode != 0 or server.rpc_calls() == 2
        server.clear()
        proxy.reset()
        start = proxy.round_trips
        for k in range(start + 3, start + 8):
            proxy.cut_after(k)
        proc = run_git("ls-remote", url)
        assert proc.returncode != 0
        assert server.rpc_calls() >= 1  # the server answered; git never saw it


def test_close_is_prompt_with_a_kept_alive_connection(tmp_path: Path, source: Path) -> None:
    srv = HttpGitServer(tmp_path / "srv2")
    srv.add_repo("repo", source=source)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
    sock.sendall(b"GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"
                 b"Host: 127.0.0.1\r\n\r\n")
    assert sock.recv(12) == b"HTTP/1.1 200"
    started = time.monotonic()
    srv.close()
    assert time.monotonic() - started < 1.0
    sock.settimeout(2)
    while sock.recv(65536):
        pass  # the rest of the reply, then EOF: the server dropped the kept-alive connection
    sock.close()
