"""Bare git repositories served over smart HTTP on 127.0.0.1, so fetches over the network (and,
through tests/netproxy.py, their failures) are tested with the real git client and server.

    with HttpGitServer(tmp_path / "srv", user="u", token="secret") as server:
        server.add_repo("repo", source=upstream)
        git clone <server.url("repo")>     # http://u:secret@127.0.0.1:PORT/repo.git

The server is a stdlib ThreadingHTTPServer that runs ``git http-backend`` as a CGI program per
request (what a real forge's web server does), with optional HTTP Basic auth. Responses are
buffered and sent with a Content-Length, so connections are kept alive and each HTTP request is
exactly one round trip for tests/netproxy.py (except a chunked POST that asked for
``100-continue``). Client git processes should run with ``client_env()``: no credential helper,
no prompt, no HTTP proxy from the environment."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hmac
import os
import shutil
import socket
import socketserver
import subprocess
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["HttpGitServer", "Request", "client_env"]

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy",
               "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY")
_CGI_TIMEOUT = 60.0


def client_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for git clients in tests: credentials come only from the URL (no helper
    from user or system config, no askpass, no terminal prompt, so a missing token fails at
    once instead of hanging), and 127.0.0.1 is never sent through an HTTP proxy."""
    env = dict(os.environ if base is None else base)
    for name in _PROXY_VARS:
        env.pop(name, None)
    env.update({
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
    })
    return env


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP request as the server saw it; ``authorized`` says an Authorization header was
    sent (its value is not kept), ``status`` is what the server answered."""

    method: str
    path: str
    query: str
    authorized: bool
    status: int
    gzip: bool = False  # the body came with Content-Encoding: gzip
    chunked: bool = False  # the body came with Transfer-Encoding: chunked

    @property
    def service(self) -> str | None:
        """git-upload-pack (fetch, clone, ls-remote) or git-receive-pack (push), or None."""
        if self.path.endswith("/info/refs"):
            values = urllib.parse.parse_qs(self.query).get("service")
            return values[0] if values else None
        for service in ("git-upload-pack", "git-receive-pack"):
            if self.path.endswith("/" + service):
                return service
        return None


class HttpGitServer(ThreadingHTTPServer):
    """Serves every bare repository under ``root`` at ``http://127.0.0.1:PORT/<path>`` from a
    background thread. With ``user`` and ``token`` each request must carry them (HTTP Basic),
    else it is answered 401 with a challenge, as git expects before it sends credentials."""

    daemon_threads = True

    def __init__(self, root: Path | str, user: str | None = None, token: str | None = None,
                 *, realm: str = "necropool-test") -> None:
        if (user is None) != (token is None):
            raise ValueError("give both user and token, or neither")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.token = token
        self.realm = realm
        self.backend = _http_backend()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._open: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port: int = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,),
                                        name=f"httpgit-{self.port}", daemon=True)
        self._thread.start()

    # --- for tests ----------------------------------------------------------------------------

    def url(self, repo_name: str, with_credentials: bool = True, *,
            port: int | None = None) -> str:
        """The repository's URL, with ``user:token@`` when the server has them and
        ``with_credentials``. ``.git`` is appended unless ``root/repo_name`` exists as is.
        ``port`` names another port, such as a tests/netproxy.py Proxy's in front of this."""
        name = repo_name.strip("/")
        if not (self.root / name).is_dir() and not name.endswith(".git"):
            name += ".git"
        auth = ""
        if with_credentials and self.user is not None and self.token is not None:
            auth = (urllib.parse.quote(self.user, safe="") + ":"
                    + urllib.parse.quote(self.token, safe="") + "@")
        return f"http://{auth}127.0.0.1:{port or self.port}/{urllib.parse.quote(name)}"

    def add_repo(self, name: str, source: Path | str | None = None) -> Path:
        """A bare repository ``root/<name>.git``: a clone of ``source`` (a local path), or
        empty. Returns its path; the test may push to it directly with ``git push <path>``."""
        path = self.root / (name if name.endswith(".git") else name + ".git")
        args = (["clone", "--bare", "-q", str(source), str(path)] if source is not None
                else ["init", "--bare", "-q", str(path)])
        subprocess.run(["git", *args], check=True, capture_output=True, env=client_env(),
                       timeout=_CGI_TIMEOUT)
        return path

    @property
    def requests(self) -> list[Request]:
        """Every request so far, in the order they were answered."""
        with self._lock:
            return list(self._requests)

    def rpc_calls(self, service: str = "git-upload-pack") -> int:
        """Successful POSTs to ``service``: each fetch, clone or ls-remote makes one or more
        (protocol v2: ls-refs, then fetch), a refused or unauthorised one makes none."""
        return sum(1 for r in self.requests
                   if r.method == "POST" and r.service == service and r.status == 200)

    def clear(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._requests.clear()

    # --- life cycle ---------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving, drop kept-alive connections and join the serving thread."""
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout)
        with self._lock:
            open_socks = list(self._open)
        for sock in open_socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()

    def __enter__(self) -> HttpGitServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- ThreadingHTTPServer ------------------------------------------------------------------

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS query); nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _authorized(self, header: str | None) -> bool:
        if self.user is None or self.token is None:
            return True
        if header is None or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.user}:{self.token}".encode()
        return hmac.compare_digest(decoded, expected)


def _http_backend() -> str:
    exec_path = subprocess.run(["git", "--exec-path"], check=True, capture_output=True,
                               text=True, timeout=_CGI_TIMEOUT).stdout.strip()
    backend = os.path.join(exec_path, "git-http-backend")
    if not os.access(backend, os.X_OK):
        found = shutil.which("git-http-backend")
        if found is None:
            raise FileNotFoundError(f"no git-http-backend in {exec_path}")
        backend = found
    return backend


class _Handler(BaseHTTPRequestHandler):
    """Runs git http-backend for one request (CGI/1.1 by hand: environment in, headers and
    body out) and answers with its status, headers and a Content-Length."""

    server: HttpGitServer
    protocol_version = "HTTP/1.1"  # keep-alive, as git (libcurl) expects of a real server
    timeout = 10  # an idle kept-alive connection is closed after this many seconds

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        pass  # the requests are recorded; stderr noise would only clutter test output

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        encoding = self.headers.get("Content-Encoding")
        auth_header = self.headers.get("Authorization")
        # The body is read before any answer, a 401 included, so the connection stays usable.
        body = self._read_chunked() if chunked else self.rfile.read(
            int(self.headers.get("Content-Length") or 0))
        if self.server._authorized(auth_header):
            status, headers, payload = self._run_backend(urllib.parse.unquote(path), query, body,
                                                         encoding)
        else:
            status, payload = 401, b"authentication required\n"
            headers = [("WWW-Authenticate", f'Basic realm="{self.server.realm}"'),
                       ("Content-Type", "text/plain")]
        # Recorded before the answer is sent: a client that has its answer has been counted.
        self.server._record(Request(
            method=self.command, path=path, query=query, authorized=auth_header is not None,
            status=status, gzip=(encoding or "").lower() in ("gzip", "x-gzip"),
            chunked=chunked))
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self.rfile.readline(1024)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _run_backend(self, path_info: str, query: str, body: bytes,
                     encoding: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GIT_", "HTTP_")) and k not in _PROXY_VARS}
        env.update({
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.server.port),
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_LENGTH": str(len(body)),
        })
        if self.headers.get("Content-Type"):
            env["CONTENT_TYPE"] = self.headers["Content-Type"]
        if encoding:
            env["HTTP_CONTENT_ENCODING"] = encoding  # http-backend inflates gzip itself
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.server.user is not None:
            env["REMOTE_USER"] = self.server.user  # also what lets http-backend accept a push
        try:
            proc = subprocess.run([self.server.backend], input=body, capture_output=True,
                                  env=env, timeout=_CGI_TIMEOUT)
            return _parse_cgi(proc.stdout)
        except (subprocess.TimeoutExpired, ValueError) as exc:
            return 500, [("Content-Type", "text/plain")], f"{exc}\n".encode()


def _parse_cgi(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI response into status (from its Status header, else 200), the other
    headers and the body."""
    ends = [i for i in (output.find(b"\r\n\r\n"), output.find(b"\n\n")) if i >= 0]
    if not ends:
        raise ValueError(f"git http-backend sent no headers: {output[:200]!r}")
    end = min(ends)
    head = output[:end].decode("latin-1")
    sep = b"\r\n\r\n" if output.startswith(b"\r\n\r\n", end) else b"\n\n"
    body = output[end + len(sep):]
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            continue
        if name.strip().lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((name.strip(), value.strip()))
    return status, headers, body

