"""tests/netproxy.py against a real echo server: each fault does what the tests that rely on it
assume (where the request got to, what the client sees), and the proxy itself never hangs."""

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from netproxy import Proxy

TIMEOUT = 2.0


class Echo(socketserver.ThreadingTCPServer):
    """Echoes every complete line back and records what it received, so a test can tell
    whether a request reached the server."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.received: list[tuple[float, bytes]] = []
        self.accepted = 0
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def data(self) -> bytes:
        with self.cond:
            return b"".join(chunk for _, chunk in self.received)

    def wait_for(self, needle: bytes, timeout: float = TIMEOUT) -> float:
        """When ``needle`` arrived (monotonic time); fails the test if it does not."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                seen = b""
                for when, chunk in self.received:
                    seen += chunk
                    if needle in seen:
                        return when
                left = deadline - time.monotonic()
                assert left > 0, f"the server never received {needle!r}"
                self.cond.wait(left)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(TIMEOUT)


class _EchoHandler(socketserver.BaseRequestHandler):
    server: Echo

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(10)
        with self.server.cond:
            self.server.accepted += 1
        pending = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.server.cond:
                self.server.received.append((time.monotonic(), data))
                self.server.cond.notify_all()
            pending += data
            lines, newline, pending = pending.rpartition(b"\n")
            if not newline:
                continue
            try:
                sock.sendall(lines + newline)
            except OSError:
                return


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.stop()


@pytest.fixture
def proxy(echo: Echo) -> Iterator[Proxy]:
    with Proxy(("127.0.0.1", echo.port)) as p:
        yield p


def connect(proxy: Proxy, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def exchange(sock: socket.socket, message: bytes) -> bytes:
    """Send one request and read the reply line; no newline at the end means the proxy
    closed the connection."""
    sock.sendall(message)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the next read sees EOF or a reset (not a timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_forwards_and_counts_round_trips(proxy: Proxy, echo: Echo) -> None:
    with connect(proxy) as sock:
        for i in range(3):
            assert exchange(sock, f"req {i}\n".encode()) == f"req {i}\n".encode()
    assert proxy.round_trips == 3
    assert proxy.replies == 3
    assert proxy.connections == 1
    assert proxy.fired == []
    assert proxy.wait_until(lambda: proxy.live == 0)


def test_request_in_several_segments_is_one_round_trip(proxy: Proxy, echo: Echo) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"par")
        echo.wait_for(b"par")
        assert exchange(sock, b"t\n") == b"part\n"
        assert exchange(sock, b"two\n") == b"two\n"
    assert proxy.round_trips == 2
    assert proxy.replies == 2


def test_cut_at_closes_before_forwarding(proxy: Proxy, echo: Echo) -> None:
    proxy.cut_at(2)
    with connect(proxy) as sock:
        assert exchange(sock, b"one\n") == b"one\n"
        assert exchange(sock, b"two\n") == b""
        assert closed_by_peer(sock)
    assert proxy.fired == [(2, "cut")]
    time.sleep(0.1)
    assert b"two" not in echo.data()
    # The fault fired once: a new connection goes through.
    with connect(proxy) as sock:
        assert exchange(sock, b"three\n") == b"three\n"


def test_cut_at_hard_resets_the_client(proxy: Proxy, echo: Echo) -> None:
    proxy.cut_at(1, hard=True)
    with connect(proxy) as sock:
        sock.sendall(b"one\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert b"one" not in echo.data()


def test_cut_after_forwards_request_but_loses_reply(proxy: Proxy, echo: Echo) -> None:
    proxy.cut_after(2)
    with connect(proxy) as sock:
        assert exchange(sock, b"one\n") == b"one\n"
        assert exchange(sock, b"two\n") == b""
        assert closed_by_peer(sock)
    echo.wait_for(b"two\n")
    assert proxy.fired == [(2, "cut-after")]


def test_stall_at_holds_the_request_then_delivers(proxy: Proxy, echo: Echo) -> None:
    proxy.stall_at(1, 0.4)
    with connect(proxy) as sock:
        sent = time.monotonic()
        assert exchange(sock, b"slow\n") == b"slow\n"
        replied = time.monotonic()
    assert echo.wait_for(b"slow\n") - sent >= 0.35
    assert replied - sent >= 0.35
    assert proxy.fired == [(1, "stall")]


def test_stall_after_holds_the_reply_then_delivers(proxy: Proxy, echo: Echo) -> None:
    proxy.stall_after(1, 0.4)
    with connect(proxy) as sock:
        assert exchange(sock, b"slow\n") == b"slow\n"
        replied = time.monotonic()
    # Held after the server had it (lower bounds only: no flakiness on a loaded machine).
    assert replied - echo.wait_for(b"slow\n") >= 0.35
    assert proxy.fired == [(1, "stall-after")]


@pytest.mark.parametrize("reply", [False, True])
def test_stall_forever_until_release(proxy: Proxy, echo: Echo, reply: bool) -> None:
    proxy.stall_at(1, None, reply=reply)
    with connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"held\n")
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert (b"held" in echo.data()) is reply
        proxy.release()
        sock.settimeout(TIMEOUT)
        assert sock.recv(100) == b"held\n"


def test_drop_swallows_the_request_and_keeps_the_connection(proxy: Proxy, echo: Echo) -> None:
    proxy.drop_at(2)
    with connect(proxy) as sock:
        assert exchange(sock, b"one\n") == b"one\n"
        sock.sendall(b"two\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.sendall(b"still there\n")  # the connection is open; this is swallowed too
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert proxy.live == 1
    assert b"two" not in echo.data()
    assert b"still" not in echo.data()
    assert proxy.round_trips == 2
    assert proxy.fired == [(2, "drop")]


def test_refuse_accepts_and_closes_new_connections(proxy: Proxy, echo: Echo) -> None:
    with connect(proxy) as kept:
        assert exchange(kept, b"before\n") == b"before\n"
        proxy.refuse(True)
        with connect(proxy) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"refused\n")
            assert closed_by_peer(sock)
        assert exchange(kept, b"kept\n") == b"kept\n"  # live connections are untouched
        proxy.refuse(False)
        with connect(proxy) as sock:
            assert exchange(sock, b"after\n") == b"after\n"
    assert proxy.refused == 1
    assert proxy.connections == 3
    assert echo.accepted == 2
    assert b"refused" not in echo.data()


def test_cut_all_severs_live_connections(proxy: Proxy, echo: Echo) -> None:
    socks = [connect(proxy) for _ in range(3)]
    try:
        for i, sock in enumerate(socks):
            assert exchange(sock, f"{i}\n".encode()) == f"{i}\n".encode()
        assert proxy.cut_all() == 3
        for sock in socks:
            assert closed_by_peer(sock)
        assert proxy.wait_until(lambda: proxy.live == 0)
        with connect(proxy) as sock:
            assert exchange(sock, b"new\n") == b"new\n"
    finally:
        for sock in socks:
            sock.close()


def test_global_numbering_is_in_order_of_occurrence(proxy: Proxy, echo: Echo) -> None:
    proxy.cut_at(3)
    with connect(proxy) as a, connect(proxy) as b:
        assert exchange(a, b"a1\n") == b"a1\n"  # 1
        assert exchange(b, b"b1\n") == b"b1\n"  # 2
        assert exchange(b, b"b2\n") == b""  # 3: cut
        assert exchange(a, b"a2\n") == b"a2\n"  # 4
    assert proxy.round_trips == 4


def test_per_connection_numbering(echo: Echo) -> None:
    with Proxy(("127.0.0.1", echo.port), per_connection=True) as proxy:
        proxy.cut_at(2)
        with connect(proxy) as a, connect(proxy) as b:
            assert exchange(a, b"a1\n") == b"a1\n"
            assert exchange(b, b"b1\n") == b"b1\n"
            assert exchange(a, b"a2\n") == b""
            assert exchange(b, b"b2\n") == b""
        assert proxy.fired == [(2, "cut"), (2, "cut")]
        assert proxy.round_trips == 4


def test_reset_clears_faults(proxy: Proxy, echo: Echo) -> None:
    proxy.cut_at(1)
    proxy.drop_at(2)
    proxy.stall_after(3, None)
    proxy.refuse(True)
    proxy.reset()
    with connect(proxy) as sock:
        for i in range(3):
            assert exchange(sock, f"{i}\n".encode()) == f"{i}\n".encode()
    assert proxy.fired == []


def test_delay_adds_latency_each_way_and_the_handshake_once(proxy: Proxy, echo: Echo) -> None:
    """A round trip takes two delays (request, reply; lower bounds only: a loaded machine
    adds), a new connection's first one two more; the round trips are counted as without
    it, a reset leaves it on, and 0 ends it."""
    def timed(sock: socket.socket, message: bytes) -> float:
        started = time.monotonic()
        assert exchange(sock, message) == message
        return time.monotonic() - started

    proxy.delay(0.1)
    proxy.reset()
    with connect(proxy) as sock:
        assert timed(sock, b"first\n") >= 0.4 - 0.02
        assert timed(sock, b"next\n") >= 0.2 - 0.02
        proxy.delay(0)
        quick = min(timed(sock, b"again\n") for _ in range(3))
    assert quick < 0.15
    assert proxy.round_trips == proxy.replies == 5
    with pytest.raises(ValueError):
        proxy.delay(-1)


def test_close_is_prompt_with_a_stall_and_idle_connections(echo: Echo) -> None:
    proxy = Proxy(echo.port)
    proxy.stall_at(1, None)
    idle = connect(proxy)
    held = connect(proxy)
    held.sendall(b"held\n")
    assert proxy.wait_until(lambda: proxy.fired == [(1, "stall")])
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 1.0
    assert closed_by_peer(held)
    # answered at once (closed, or reset), never left waiting: no timeout
    with contextlib.suppress(ConnectionResetError):
        idle.recv(1)
    idle.close()
    held.close()
    assert not any(t.name.startswith(f"netproxy-c2s-{proxy.port}") for t in threading.enumerate())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5).close()


def test_only_loopback_targets() -> None:
    with pytest.raises(ValueError):
        Proxy(("192.0.2.1", 80))
