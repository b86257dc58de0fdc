"""The forwarding pair: the accepted client socket and the socket to the backend, each moving
what it reads to the other, with bounded buffers, half-close and exact open/closed accounting.

Hot-path notes (why the code looks the way it does; figures in docs/performance.md). Opening
and closing a connection through Twisted's transports cost 2.5x HAProxy's CPU per connection
(a Server transport, a Connector with two DelayedCalls and a Deferred chain per backend
connect, producer registration, a reactor turn per close). So the listener stays a Twisted
Port, but each accepted socket and its backend socket are registered with the reactor
directly as small reader/writers (`_End`):
- The backend socket is connected with a plain non-blocking `connect_ex`; one timer per route
  (`_Dials`) times out connects instead of a DelayedCall per connection.
- A chunk is `recv_into` one shared buffer and `send()`-ed straight to the other socket; only
  what the kernel does not take is copied into that socket's buffer, and while that buffer is
  over `BUFFER_SIZE` the other socket is not read: memory per connection stays bounded.
- EOF is passed on at once (`shutdown(SHUT_WR)`, after whatever is still buffered); a socket is
  closed when both of its directions are done, without an extra reactor turn.
- No logging, no clock reads per chunk, one integer add per chunk.
"""

from __future__ import annotations

import _socket
import errno
import socket
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import ServerFactory

if TYPE_CHECKING:
    from proxy.backend import Backend
    from proxy.route import Route

CONNECT_TIMEOUT = 5.0
# A refused connect is tried again after each of these delays (about 1.5 s in all) before
# the client is given up, as HAProxy's `retries` does: a backend whose port is briefly closed
# (its engine restarting its NAT rules, a process restarting) is then not a client-visible
# error. The client's bytes wait in the kernel meanwhile, and it stays counted as live.
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)
# Bytes per recv() and the write-buffer level that pauses the other socket: large reads halve
# the per-byte Python overhead on bulk transfers and still bound memory to a few hundred KiB
# per connection.
BUFFER_SIZE = 1 << 17
# The reactor is single-threaded, so every read can land in the same buffer.
_chunk = bytearray(BUFFER_SIZE)
_chunk_view = memoryview(_chunk)
_RETRY = (BlockingIOError, InterruptedError)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY, errno.EINTR)
_RST_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class _End:
    """One socket of a connection, a reactor reader/writer of its own (IReadWriteDescriptor).

    `eof_in`: nothing more will be read from it (EOF, or we stopped for good); `shut_out`: our
    FIN went out (`shut_pending`: once `buf` is flushed). Both done means the socket closes.
    """

    __slots__ = ("conn", "reactor", "sock", "fileno", "peer", "nbytes", "buf", "reading",
                 "writing", "eof_in", "shut_out", "shut_pending", "closed", "connecting")

    def __init__(self, conn: ClientSide, reactor: Any, sock: socket.socket):
        self.conn = conn
        self.reactor = reactor
        self.sock = sock
        self.fileno = sock.fileno
        self.peer: _End | None = None
        self.nbytes = 0
        self.buf = bytearray()
        self.reading = self.writing = self.connecting = False
        self.eof_in = self.shut_out = self.shut_pending = self.closed = False

    def logPrefix(self) -> str:
        return "gantry-proxy"

    # -- reactor registration -------------------------------------------------------------
    def start_reading(self) -> None:
        if not (self.reading or self.eof_in or self.closed):
            self.reading = True
            self.reactor.addReader(self)

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)

    # -- data -----------------------------------------------------------------------------
    def doRead(self) -> None:
        try:
            n = self.sock.recv_into(_chunk)
        except _RETRY:
            return
        except OSError:
            self.conn.broken(self)
            return
        if n:
            self.nbytes += n
            self.conn.last_reader = self  # who spoke last: see ClientSide.awaits_answer
            self.peer.write(_chunk_view[:n])  # type: ignore[union-attr]
        else:
            self.read_eof()

    def write(self, data: memoryview) -> None:
        """Send `data` now if nothing is queued; queue what the kernel does not take."""
        if not self.buf:
            try:
                sent = self.sock.send(data)
            except _RETRY:
                sent = 0
            except OSError:
                self.conn.broken(self)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self.writing = True
            self.reactor.addWriter(self)
        self.buf += data
        if len(self.buf) > BUFFER_SIZE:
            self.peer.stop_reading()  # type: ignore[union-attr]  # resumed once flushed

    def doWrite(self) -> None:
        if self.connecting:
            self.conn.dial_done()
            return
        try:
            sent = self.sock.send(self.buf)
        except _RETRY:
            return
        except OSError:
            self.conn.broken(self)
            return
        del self.buf[:sent]
        if not self.buf:
            self.writing = False
            self.reactor.removeWriter(self)
            if self.shut_pending:
                self.shutdown_write()
            else:
                self.peer.start_reading()  # type: ignore[union-attr]

    # -- half-close and close -------------------------------------------------------------
    def read_eof(self) -> None:
        """Our remote sent FIN: pass it on after what is still buffered towards the peer."""
        self.eof_in = True
        if self.shut_out:  # both directions done: close (which also unregisters it)
            self.close()
        else:
            self.stop_reading()
        self.peer.finish()  # type: ignore[union-attr]

    def finish(self) -> None:
        """No more data will come for this socket: send FIN once the buffer is flushed."""
        if self.buf:
            self.shut_pending = True
        else:
            self.shutdown_write()

    def shutdown_write(self) -> None:
        if self.shut_out or self.closed:
            return
        self.shut_out = True
        if self.eof_in:  # close() sends the FIN itself: no shutdown() call needed
            self.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def lose(self) -> None:
        """Close politely: stop reading, flush what is buffered, send FIN, close."""
        self.eof_in = True
        self.stop_reading()
        if self.shut_out:
            self.close()
        else:
            self.finish()

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reading or self.writing:
            forget = getattr(self.reactor, "forget", None)
            if forget is not None:  # ProxyReactor: close() below takes it out of epoll
                forget(self)
            else:
                self.stop_reading()
                if self.writing:
                    self.reactor.removeWriter(self)
            self.reading = self.writing = False
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
            except OSError:
                pass
        self.sock.close()
        self.buf.clear()
        self.conn.end_closed()

    def connectionLost(self, reason: Any) -> None:
        """The reactor dropped us (HUP/ERR without data, or reactor shutdown)."""
        self.reading = self.writing = False  # already removed by the reactor
        if self.connecting:
            self.conn.dial_failed(refused=True)
        else:
            self.conn.broken(self)


class _Dials:
    """Backend connects in progress, timed out by one timer for the route instead of a
    DelayedCall per connection. Entries are in deadline order (insertion order, one timeout)."""

    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.pending: dict[ClientSide, float] = {}
        self._timer: Any = None

    def add(self, conn: ClientSide) -> None:
        self.pending[conn] = self.reactor.seconds() + CONNECT_TIMEOUT
        if self._timer is None:
            self._timer = self.reactor.callLater(CONNECT_TIMEOUT, self._expire)

    def discard(self, conn: ClientSide) -> None:
        self.pending.pop(conn, None)

    def _expire(self) -> None:
        self._timer = None
        now = self.reactor.seconds()
        for conn, deadline in list(self.pending.items()):
            if deadline > now:
                self._timer = self.reactor.callLater(deadline - now, self._expire)
                return
            conn.dial_failed()


class ClientSide:
    """One proxied connection, the unit a Backend counts: live from accept until both its
    client and backend sockets are closed. `nbytes` came from the client, `backend_nbytes`
    from the backend."""

    def __init__(self, backend: Backend, reactor: Any, dials: _Dials | None = None):
        self.backend = backend
        self.reactor = reactor
        self.dials = dials if dials is not None else _Dials(reactor)
        self.client: _End | None = None
        self.server: _End | None = None
        self._open = 0
        self._retries = 0
        self._retry_call: Any = None
        self.last_reader: _End | None = None

    @property
    def awaits_answer(self) -> bool:
        """The client sent the last bytes: in a request/response protocol it waits for an
        answer the backend is still working on, so the connection is not idle."""
        return self.last_reader is not None and self.last_reader is self.client

    @property
    def nbytes(self) -> int:
        return self.client.nbytes if self.client is not None else 0

    @property
    def backend_nbytes(self) -> int:
        return self.server.nbytes if self.server is not None else 0

    def makeConnection(self, sock: socket.socket) -> None:
        """Called by the listening Port with the accepted socket (see `listen`)."""
        # TCP_NODELAY is inherited from the listening socket (see `listen`).
        sock.setblocking(False)
        # Client bytes wait in the kernel until there is somewhere to put them.
        self.client = _End(self, self.reactor, sock)
        self._open = 1
        self.backend.connection_opened(self)
        self._dial()

    def _dial(self) -> None:
        host, port = self.backend.address.host, self.backend.address.port
        try:
            # The C-level socket: socket.socket's Python wrapper adds nothing we use here.
            # SOCK_NONBLOCK saves the setblocking() call.
            sock = _socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                  socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError:  # out of descriptors: give up (a retry would likely fail too)
            self.backend.errors += 1
            self.client.lose()  # type: ignore[union-attr]
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = server = _End(self, self.reactor, sock)
        self._open = 2
        server.connecting = True
        err = sock.connect_ex((host, port))
        if err == 0:
            self._connected()
        elif err in _IN_PROGRESS:
            server.writing = True
            self.reactor.addWriter(server)
            self.dials.add(self)
        else:  # refused (or unreachable) at once
            self.dial_failed(refused=True)

    def dial_done(self) -> None:
        """The backend socket became writable: connected, or refused."""
        sock = self.server.sock  # type: ignore[union-attr]
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.dial_failed(refused=True)
        else:
            self.dials.discard(self)
            self._connected()

    def _connected(self) -> None:
        client, server = self.client, self.server
        assert client is not None and server is not None
        server.connecting = False
        client.peer, server.peer = server, client
        server.start_reading()  # before removeWriter: one epoll MOD, not DEL + ADD
        if server.writing:
            server.writing = False
            self.reactor.removeWriter(server)
        client.start_reading()

    def dial_failed(self, refused: bool = False) -> None:
        """The backend refused (retried a few times) or did not answer in time: count it,
        FIN the client."""
        if not self._cancel_dial():
            return
        if refused and self._retries < len(RETRY_DELAYS) and not self.client.closed:  # type: ignore[union-attr]
            self._retry_call = self.reactor.callLater(RETRY_DELAYS[self._retries], self._redial)
            self._retries += 1
            return
        self.backend.errors += 1
        self.client.lose()  # type: ignore[union-attr]

    def _redial(self) -> None:
        self._retry_call = None
        self._dial()

    def _cancel_dial(self) -> bool:
        """Give up a backend connect in progress (or a pending retry); False if neither."""
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
            return True
        self.dials.discard(self)
        server = self.server
        if server is None or not server.connecting:
            return False
        server.connecting = False
        server.close()
        return True

    def broken(self, end: _End) -> None:
        """`end`'s socket failed (reset, broken pipe): drop it, close the other politely."""
        if end.connecting:
            self.dial_failed(refused=True)
            return
        end.close()
        peer = end.peer
        if peer is not None and not peer.closed:
            peer.lose()

    def end_closed(self) -> None:
        self._open -= 1
        if self._open == 0:
            self.backend.connection_closed(self)

    def abort(self) -> None:
        """Close both sockets at once with RST (force-close at a drain timeout)."""
        self._cancel_dial()
        for end in (self.client, self.server):
            if end is not None:
                end.close(reset=True)

    def close_idle(self) -> None:
        """Close an idle connection politely (FIN both ways)."""
        self._cancel_dial()
        for end in (self.client, self.server):
            if end is not None and not end.closed:
                end.lose()


def _accepted(sock: socket.socket, protocol: ClientSide, *args: Any) -> socket.socket:
    # Stands in for the Port's transport class: the "transport" handed to makeConnection
    # is the bare accepted socket.
    return sock


class ListenerFactory(ServerFactory):
    """Builds a ClientSide for whatever backend the route points at *now*: that is the switch."""

    noisy = False

    def __init__(self, route: Route, reactor: Any):
        self.route = route
        self.reactor = reactor
        self.dials = _Dials(reactor)

    def buildProtocol(self, addr: Any) -> Any:
        route = self.route
        if route.gated:  # paused or in maintenance
            return route.gate(getattr(addr, "host", None))
        if route.balancer is None:
            return ClientSide(route.backend, self.reactor, self.dials)
        return ClientSide(route.balancer.pick(getattr(addr, "host", None)), self.reactor,
                          self.dials)


def listen(reactor: Any, port: int, factory: ListenerFactory, backlog: int,
           interface: str) -> Any:
    """`reactor.listenTCP`, with accepted sockets handed to the ClientSide bare instead of
    wrapped in a Twisted Server transport (the Port builds `port.transport(...)` per accept)."""
    return _bare(reactor.listenTCP(port, factory, backlog=backlog, interface=interface))


def adopt(reactor: Any, listener: socket.socket, factory: ListenerFactory) -> Any:
    """`listen` on a socket bound elsewhere (the keeper, systemd): the Port holds a copy, the
    caller closes its own. Closing the Port leaves the socket listening for its holder."""
    return _bare(reactor.adoptStreamPort(listener.fileno(), listener.family, factory))


def _bare(listening: Any) -> Any:
    listening.transport = _accepted
    listener = getattr(listening, "socket", None)  # None on test reactors
    if listener is not None:
        # Linux copies TCP_NODELAY to every accepted socket: one setsockopt per listener
        # instead of one per connection.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listening
