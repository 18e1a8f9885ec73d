"""A TCP proxy on 127.0.0.1 that breaks connections on purpose, so network faults are tested
against real sockets and real clients (git, psycopg, ...) without mocks or root privileges.

    with Proxy(("127.0.0.1", server_port)) as proxy:
        proxy.cut_after(2)            # the 2nd request reaches the server, its reply is lost
        run_client(port=proxy.port)

The proxy sees bytes, not messages, so it numbers *round trips*: a round trip begins with the
first client->server bytes after the connection opened or after the server last sent something,
and its request ends when the server's reply begins (the direction changes). Numbers count
1, 2, 3, ... across all connections in the order requests begin (``per_connection=False``,
the default) or restart at 1 on each connection (``per_connection=True``; a fault for round
trip k then fires on every connection's k-th round trip).

A request sent in several segments is one round trip while the server stays silent; a protocol
whose server speaks first (a banner) makes its banner a reply to no round trip. Faults are
looked up when a round trip begins (request side) or when its reply begins (reply side).

Besides faults, ``delay(seconds)`` makes the link a distant one: latency added each way."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["Proxy"]

_CHUNK = 65536
_ACCEPT_POLL = 0.05  # how soon close() is noticed by the accept loop, in seconds


@dataclasses.dataclass(frozen=True)
class _Fault:
    kind: str  # "cut", "drop" or "stall"
    seconds: float | None = None  # stall only: None holds until release() or close()
    hard: bool = False  # cut only: RST to the client instead of FIN


class _Conn:
    """One proxied connection: the client's socket, the one to the target, and where it is in
    its current round trip. Sockets are shut down by ``sever`` (which wakes the pumps) and
    closed only by the last pump to leave, so no descriptor is reused under a running pump."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.lock = threading.Lock()
        self.in_request = False
        self.round_trip = 0  # the number of the current round trip, 0 before the first
        self.count = 0  # round trips begun on this connection
        self.dropping = False
        self.spoken = False  # bytes went either way: the (simulated) TCP handshake is over
        self.severed = False
        self.pumps_left = 2

    def sever(self, hard: bool = False) -> None:
        with self.lock:
            if self.severed:
                return
            self.severed = True
        if hard:
            # Linger 0: close() sends RST. SHUT_RD wakes a pump blocked in recv without a FIN.
            with contextlib.suppress(OSError):
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_RD)
        else:
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)

    def pump_done(self) -> bool:
        """Called by each pump as it leaves; the last one closes both sockets (True)."""
        with self.lock:
            self.pumps_left -= 1
            last = self.pumps_left == 0
        if last:
            self.client.close()
            self.server.close()
        return last


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (a loopback address only) and injects the
    faults set by its methods; all methods are thread-safe and take effect on the next round
    trip to begin (``cut_all``, ``release`` and ``close``: at once)."""

    def __init__(self, target: tuple[str, int] | int, *, per_connection: bool = False,
                 connect_timeout: float = 5.0) -> None:
        host, port = ("127.0.0.1", target) if isinstance(target, int) else target
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the proxy forwards to 127.0.0.1 only, not {host!r}")
        self.target = ("127.0.0.1", port)
        self.per_connection = per_connection
        self.connect_timeout = connect_timeout
        self._cond = threading.Condition()  # guards everything below; notified on any change
        self._request_faults: dict[int, _Fault] = {}
        self._reply_faults: dict[int, _Fault] = {}
        self._refusing = False
        self._delay = 0.0
        self._release_gen = 0
        self._closed = False
        self._round_trips = 0
        self._replies = 0
        self._connections = 0
        self._refused = 0
        self._fired: list[tuple[int, str]] = []
        self._conns: set[_Conn] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_ACCEPT_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="netproxy-accept",
                                          daemon=True)
        self._acceptor.start()

    # --- faults -------------------------------------------------------------------------------

    def cut_at(self, k: int, *, hard: bool = False) -> None:
        """Sever both sides when round trip k's request arrives, before forwarding any of it:
        the server never sees the request. ``hard`` resets the client (RST) instead of EOF."""
        self._set(self._request_faults, k, _Fault("cut", hard=hard))

    def cut_after(self, k: int, *, hard: bool = False) -> None:
        """Forward round trip k's request, then sever both sides when the server's reply
        begins, delivering none of it: the server acted, the client cannot know (reply lost)."""
        self._set(self._reply_faults, k, _Fault("cut", hard=hard))

    def stall_at(self, k: int, seconds: float | None = None, *, reply: bool = False) -> None:
        """Hold round trip k's request (or with ``reply``, its reply) for ``seconds``, or, with
        None, until ``release()``; then deliver it. Later bytes queue behind it in the kernel."""
        faults = self._reply_faults if reply else self._request_faults
        self._set(faults, k, _Fault("stall", seconds=seconds))

    def stall_after(self, k: int, seconds: float | None = None) -> None:
        """``stall_at(k, seconds, reply=True)``: the server answered, the client waits."""
        self.stall_at(k, seconds, reply=True)

    def drop_at(self, k: int) -> None:
        """Swallow round trip k's request and everything the client sends after it on that
        connection while the server stays silent: the connection stays open, the client waits
        for a reply that never comes (a black hole, unlike a cut)."""
        self._set(self._request_faults, k, _Fault("drop"))

    def delay(self, seconds: float) -> None:
        """From the next round trip on, add ``seconds`` of latency each way, as a link that
        far away would: each round trip's request reaches the server, and its reply (or a
        banner) the client, ``seconds`` after the proxy got it; the rest of a request or reply
        sent in several segments follows without more delay. A new connection's first bytes
        wait ``2 * seconds`` more: the TCP handshake such a link costs (the proxy's own, on
        loopback, costs nothing). 0 ends it. Not a fault: ``reset()`` leaves it."""
        if seconds < 0:
            raise ValueError(f"a delay is not negative: {seconds}")
        with self._cond:
            self._delay = seconds

    def release(self) -> None:
        """End every stall now, timed or not; its bytes are delivered."""
        with self._cond:
            self._release_gen += 1
            self._cond.notify_all()

    def reset(self) -> None:
        """Clear all faults and stop refusing; stalls in progress are released."""
        with self._cond:
            self._request_faults.clear()
            self._reply_faults.clear()
            self._refusing = False
        self.release()

    def refuse(self, on: bool = True) -> None:
        """While on, accept new connections and close them at once (the target never hears
        of them): a server that is up but broken. Live connections are not touched."""
        with self._cond:
            self._refusing = on

    def cut_all(self, *, hard: bool = False) -> int:
        """Sever every live connection now; returns how many. New ones are still accepted."""
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            conn.sever(hard)
        self._notify()
        return len(conns)

    # --- counters -----------------------------------------------------------------------------

    @property
    def round_trips(self) -> int:
        """Round trips begun (requests seen), across all connections, in either mode."""
        with self._cond:
            return self._round_trips

    @property
    def replies(self) -> int:
        """Round trips whose reply began at the proxy (delivered, held or cut)."""
        with self._cond:
            return self._replies

    @property
    def connections(self) -> int:
        """Connections accepted so far, refused ones included."""
        with self._cond:
            return self._connections

    @property
    def refused(self) -> int:
        """Connections closed at once by ``refuse`` (or because the target was unreachable)."""
        with self._cond:
            return self._refused

    @property
    def live(self) -> int:
        """Connections open now."""
        with self._cond:
            return len(self._conns)

    @property
    def fired(self) -> list[tuple[int, str]]:
        """Faults that took effect, in order: (round trip, "cut"|"cut-after"|"stall"|
        "stall-after"|"drop")."""
        with self._cond:
            return list(self._fired)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``condition()`` (e.g. ``lambda: proxy.round_trips >= 3``) holds; False
        on timeout. Evaluated whenever the proxy's state changes (and every 50 ms)."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                self._cond.wait(min(left, 0.05))
        return True

    # --- life cycle ---------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, sever every connection, end stalls and join the threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self.cut_all()
        deadline = time.monotonic() + timeout
        self._acceptor.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Proxy(127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]})"

    # --- internals ----------------------------------------------------------------------------

    def _set(self, faults: dict[int, _Fault], k: int, fault: _Fault) -> None:
        if k < 1:
            raise ValueError(f"round trips are numbered from 1, not {k}")
        with self._cond:
            faults[k] = fault

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _accept_loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._cond:
                self._connections += 1
                refusing = self._refusing or self._closed
                if refusing:
                    self._refused += 1
                self._cond.notify_all()
            if refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError:
                with self._cond:
                    self._refused += 1
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, server)
            threads = [
                threading.Thread(target=self._pump_requests, args=(conn,),
                                 name=f"netproxy-c2s-{self.port}", daemon=True),
                threading.Thread(target=self._pump_replies, args=(conn,),
                                 name=f"netproxy-s2c-{self.port}", daemon=True),
            ]
            with self._cond:
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()] + threads
                closed = self._closed
            if closed:
                conn.sever()
            for thread in threads:
                thread.start()

    def _lag(self, conn: _Conn) -> float:
        """The latency of bytes beginning a request or reply now (under ``conn.lock``)."""
        with self._cond:
            lag = self._delay
        if not conn.spoken:
            conn.spoken = True
            lag *= 3  # the handshake's round trip first
        return lag

    def _stall(self, conn: _Conn, seconds: float | None, releasable: bool = True) -> bool:
        """Wait out a stall: its time, a release() (unless not ``releasable``: a delay), a
        sever of this connection or close(). True when the held bytes may go on; False when
        the connection was severed or the proxy is closing (close() marks itself closed before
        it severs, so a stall it ends must not forward in between)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._cond:
            gen = self._release_gen
            while ((gen == self._release_gen or not releasable) and not self._closed
                   and not conn.severed):
                if deadline is None:
                    self._cond.wait(0.05)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.05))
            return not self._closed and not conn.severed

    def _begin_round_trip(self, conn: _Conn) -> _Fault | None:
        """Number a new round trip (under the connection's lock) and return its request fault."""
        conn.count += 1
        with self._cond:
            self._round_trips += 1
            conn.round_trip = conn.count if self.per_connection else self._round_trips
            fault = self._request_faults.get(conn.round_trip)
            if fault is not None:
                self._fired.append((conn.round_trip, fault.kind))
            self._cond.notify_all()
        return fault

    def _pump_requests(self, conn: _Conn) -> None:
        try:
            while True:
                try:
                    data = conn.client.recv(_CHUNK)
                except OSError:
                    conn.sever()
                    return
                if not data:
                    # The client is done sending: pass the half-close on (unless severed: a
                    # FIN would precede the RST of a hard cut).
                    if not conn.severed:
                        with contextlib.suppress(OSError):
                            conn.server.shutdown(socket.SHUT_WR)
                    return
                fault = None
                lag = 0.0
                with conn.lock:
                    if conn.severed:
                        return
                    if not conn.in_request:
                        conn.in_request = True
                        fault = self._begin_round_trip(conn)
                        conn.dropping = fault is not None and fault.kind == "drop"
                        lag = self._lag(conn)
                    dropping = conn.dropping
                if fault is not None and fault.kind == "cut":
                    conn.sever(fault.hard)
                    return
                if dropping:
                    continue
                if lag and not self._stall(conn, lag, releasable=False):
                    return
                if (fault is not None and fault.kind == "stall"
                        and not self._stall(conn, fault.seconds)):
                    return
                try:
                    conn.server.sendall(data)
                except OSError:
                    conn.sever()
                    return
        finally:
            self._pump_exit(conn)

    def _pump_replies(self, conn: _Conn) -> None:
        try:
            while True:
                try:
                    data = conn.server.recv(_CHUNK)
                except OSError:
                    conn.sever()
                    return
                if not data:
                    # The server is done sending: pass the half-close on (unless severed: a
                    # FIN would precede the RST of a hard cut).
                    if not conn.severed:
                        with contextlib.suppress(OSError):
                            conn.client.shutdown(socket.SHUT_WR)
                    return
                fault = None
                lag = 0.0
                with conn.lock:
                    if conn.severed:
                        return
                    if conn.in_request or not conn.spoken:  # a reply, or a banner
                        lag = self._lag(conn)
                    if conn.in_request:
                        conn.in_request = False
                        conn.dropping = False
                        with self._cond:
                            self._replies += 1
                            fault = self._reply_faults.get(conn.round_trip)
                            if fault is not None:
                                kind = "cut-after" if fault.kind == "cut" else "stall-after"
                                self._fired.append((conn.round_trip, kind))
                            self._cond.notify_all()
                if fault is not None and fault.kind == "cut":
                    conn.sever(fault.hard)
                    return
                if (fault is not None and fault.kind == "stall"
                        and not self._stall(conn, fault.seconds)):
                    return
                if lag and not self._stall(conn, lag, releasable=False):
                    return
                try:
                    conn.client.sendall(data)
                except OSError:
                    conn.sever()
                    return
        finally:
            self._pump_exit(conn)

    def _pump_exit(self, conn: _Conn) -> None:
        last = conn.pump_done()
        with self._cond:
            if last:
                self._conns.discard(conn)
            self._cond.notify_all()
