"""End-to-end forwarding through the real daemon: integrity, half-close, backpressure."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading

import pytest

from proxy_servers import (SourceServer, connect, echo_digest, free_port, recv_all,
                           wait_for)

pytestmark = pytest.mark.timeout(120)


def _route(proxy, backend: str, name: str = "r", **kw) -> str:
    listen = f"127.0.0.1:{free_port()}"
    proxy.client.set_route(name, listen, backend, **kw)
    return listen


def test_integrity_concurrent_both_directions(proxy, echo):
    listen = _route(proxy, echo.address)
    rng = random.Random(1)
    sizes = [64 << 20, 8 << 20, 1 << 20, 12345, 1]
    payloads = [rng.randbytes(n) for n in sizes]
    results: dict[int, tuple[str, int]] = {}

    def run(i: int) -> None:
        results[i] = echo_digest(listen, payloads[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    for i, payload in enumerate(payloads):
        assert results[i] == (hashlib.sha256(payload).hexdigest(), len(payload))
    route = wait_for(lambda: (r := proxy.client.route("r"))["backends"][0]["live"] == 0 and r)
    backend = route["backends"][0]
    assert backend["opened"] == backend["closed"] == len(payloads)
    assert backend["bytesIn"] == backend["bytesOut"] == sum(sizes)


def test_half_close_response_after_client_shutdown(proxy, echo):
    listen = _route(proxy, echo.address)
    payload = os.urandom(3 << 20)
    with connect(listen) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the echo answers only after our EOF
        assert recv_all(sock) == payload


def test_backend_half_close_reaches_client(proxy):
    # The backend says its piece and shuts its write side; the client still gets to talk.
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def backend() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"hello")
            conn.shutdown(socket.SHUT_WR)
            got.append(recv_all(conn))

    t = threading.Thread(target=backend)
    t.start()
    listen = _route(proxy, f"127.0.0.1:{listener.getsockname()[1]}")
    with connect(listen) as sock:
        assert recv_all(sock) == b"hello"  # EOF arrives, our write side is still open
        sock.sendall(b"late words")
        sock.shutdown(socket.SHUT_WR)
        t.join(10)
    listener.close()
    assert got == [b"late words"]


def test_spliced_bulk_half_close_counts_and_no_leaked_descriptors(proxy):
    # Both directions move more than SPLICE_AFTER (so they switch to splice through a pipe),
    # then each side half-closes in turn: every byte arrives, in order, counted exactly,
    # and the pipes are closed with the connection.
    size = 5 << 20
    down, up = os.urandom(size), os.urandom(size)
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def backend() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(down)
            conn.shutdown(socket.SHUT_WR)
            got.append(recv_all(conn))

    listen = _route(proxy, f"127.0.0.1:{listener.getsockname()[1]}")
    fds_before = len(os.listdir(f"/proc/{proxy.pid}/fd"))
    t = threading.Thread(target=backend)
    t.start()
    with connect(listen, timeout=30) as sock:
        assert recv_all(sock) == down  # EOF after the spliced bytes; our side still open
        sock.sendall(up)
        sock.shutdown(socket.SHUT_WR)
        t.join(30)
    listener.close()
    assert got == [up]
    backend_row = wait_for(lambda: (b := proxy.client.route("r")["backends"][0])["live"] == 0
                           and b)
    assert (backend_row["bytesIn"], backend_row["bytesOut"]) == (size, size)
    wait_for(lambda: len(os.listdir(f"/proc/{proxy.pid}/fd")) <= fds_before,
             what="the proxy to close the connection's sockets and pipes")


def test_out_of_descriptors_closes_clients_and_recovers(proxy, echo):
    # The proxy's descriptor limit is lowered under it: accepts and backend sockets fail
    # with EMFILE. Clients are closed (not hung), the listener survives, counts stay exact,
    # and once descriptors are back it serves again.
    import resource

    listen = _route(proxy, echo.address)
    fds = [int(fd) for fd in os.listdir(f"/proc/{proxy.pid}/fd")]
    soft, hard = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (max(fds) + 2, hard))
    answers = []
    try:
        clients = [connect(listen, timeout=30) for _ in range(4)]
        for sock in clients:
            with sock:
                try:
                    sock.sendall(b"x")
                    sock.shutdown(socket.SHUT_WR)
                    answers.append(recv_all(sock))
                except OSError:  # reset, or closed before we were done sending
                    answers.append(b"")
    finally:
        resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (soft, hard))
    # Served while descriptors lasted, else closed without an answer; never left hanging.
    assert set(answers) <= {b"x", b""} and b"" in answers, answers
    assert echo_digest(listen, b"back") == (hashlib.sha256(b"back").hexdigest(), 4)
    backend = wait_for(lambda: (b := proxy.client.route("r")["backends"][0])["live"] == 0
                       and b)
    assert backend["opened"] == backend["closed"]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_backpressure_slow_reader_bounds_memory(proxy):
    total = 200 << 20
    source = SourceServer(total)
    try:
        listen = _route(proxy, source.address)
        before = _rss_kib(proxy.pid)
        with connect(listen, timeout=60) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            # Do not read: the source must stall once the kernel buffers and the proxy's
            # bounded buffer are full ("stalled": no progress over ten polls).
            samples: list[int] = []

            def stopped_growing() -> bool:
                samples.append(source.sent)
                return len(samples) > 10 and samples[-1] == samples[-10] and samples[-1] > 0

            wait_for(stopped_growing, 30, interval=0.05, what="the source to stall")
            grown_mib = (_rss_kib(proxy.pid) - before) / 1024
            print(f"stalled after {source.sent >> 20} MiB, proxy RSS +{grown_mib:.1f} MiB")
            assert source.sent < total // 2, "the proxy swallowed the stream: no backpressure"
            assert grown_mib < 64, f"proxy RSS grew {grown_mib:.0f} MiB with a stalled reader"
            # Now read slowly-then-fast; everything must arrive.
            received = 0
            while True:
                data = sock.recv(1 << 18)
                if not data:
                    break
                received += len(data)
            assert received == total
        assert (_rss_kib(proxy.pid) - before) / 1024 < 64
    finally:
        source.close()


def test_backend_refused_closes_client_and_counts_error(proxy):
    dead = f"127.0.0.1:{free_port()}"
    listen = _route(proxy, dead)
    with connect(listen) as sock:
        sock.settimeout(10)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
    route = wait_for(lambda: (r := proxy.client.route("r"))["backends"][0]["live"] == 0 and r)
    b = route["backends"][0]
    assert (b["opened"], b["closed"], b["errors"]) == (1, 1, 1)


def test_refused_connect_is_retried_while_the_backend_comes_back(proxy):
    # A bound socket that does not listen yet refuses connects, as a restarting backend does.
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    try:
        listen = _route(proxy, f"127.0.0.1:{backend.getsockname()[1]}")
        with connect(listen) as sock:
            sock.sendall(b"hello")
            # The proxy holds the client (live, bytes unread) while it retries the backend.
            wait_for(lambda: proxy.client.route("r")["backends"][0]["live"] == 1)
            backend.listen(1)
            conn, _ = backend.accept()
            with conn:
                assert conn.recv(5) == b"hello"
                conn.sendall(b"world")
            sock.settimeout(10)
            assert recv_all(sock) == b"world"
        b = wait_for(lambda: (r := proxy.client.route("r"))["backends"][0]["live"] == 0 and r)
        assert b["backends"][0]["errors"] == 0
    finally:
        backend.close()


def test_backend_connect_timeout_closes_client_and_counts_error(proxy):
    # A backend whose accept queue is full drops further SYNs: the connect hangs until the
    # proxy's connect timeout (5 s) gives up on it.
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    queued = [socket.socket() for _ in range(4)]
    for s in queued:
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
    try:
        listen = _route(proxy, f"127.0.0.1:{listener.getsockname()[1]}")
        with connect(listen) as sock:
            sock.settimeout(15)
            assert sock.recv(10) == b""
        b = wait_for(lambda: (r := proxy.client.route("r"))["backends"][0]["live"] == 0
                     and r)["backends"][0]
        assert (b["opened"], b["closed"], b["errors"]) == (1, 1, 1)
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_switch_keeps_existing_connection_on_old_backend(proxy, echo_pair):
    a, b = echo_pair
    listen = _route(proxy, a.address)
    with connect(listen) as old:
        assert old.recv(1) == b"A"
        assert proxy.client.set_route("r", listen, b.address)["previous"] == a.address
        with connect(listen) as new:
            assert new.recv(1) == b"B"
        old.sendall(b"still here")
        old.shutdown(socket.SHUT_WR)
        assert recv_all(old) == b"still here"  # echoed by A


def _dial_through(backend_sock: socket.socket):
    """A ClientSide dialling `backend_sock`'s address on a memory reactor, as the daemon would
    for an accepted client; answers (reactor, connection, client's other end)."""
    from twisted.internet.testing import MemoryReactorClock

    from proxy.address import Address
    from proxy.backend import Backend
    from proxy.forward import ClientSide

    reactor = MemoryReactorClock()
    host, port = backend_sock.getsockname()[:2]
    conn = ClientSide(Backend(Address(host, port)), reactor)
    ours, theirs = socket.socketpair()
    conn.makeConnection(ours)
    return reactor, conn, theirs


def test_a_backend_connect_done_inside_connect_is_not_waited_for():
    """To a backend on this host the handshake completes within connect(): the backend
    socket is read at once, with no write event to wait for and no connect timer."""
    backend = socket.create_server(("127.0.0.1", 0))
    reactor, conn, client = _dial_through(backend)
    try:
        assert conn.server in reactor.readers and conn.server not in reactor.writers
        assert conn.client in reactor.readers and not conn.dials.pending
        assert conn.server.peer is conn.client and not conn.server.connecting
    finally:
        conn.abort()
        client.close()
        backend.close()


def test_a_backend_connect_still_in_progress_is_waited_for():
    """A handshake not done when connect() returns (here a backend whose accept queue is
    full, so its SYNs go unanswered) is waited for: a write event, the connect timer."""
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(0)
    address = backend.getsockname()
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue: later SYNs are dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(address)
            fillers.append(s)
        reactor, conn, client = _dial_through(backend)
        assert conn.server in reactor.writers and conn.server not in reactor.readers
        assert conn.server.connecting and conn in conn.dials.pending
        assert conn.client not in reactor.readers  # its bytes wait for the backend
        conn.abort()
        client.close()
    finally:
        for s in fillers:
            s.close()
        backend.close()
