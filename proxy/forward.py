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
- Bulk: once one direction of a connection has moved `SPLICE_AFTER` bytes, it moves the rest
  with splice(2) through a pipe (socket -> pipe -> socket: the bytes never enter user space),
  so small request/response traffic keeps the cheaper recv/send path and pays for no pipe.
  The pipe is the buffer of that direction: its reader is not read again until the pipe is
  flushed (same backpressure, at most `BUFFER_SIZE` bytes in flight), and byte counts,
  `last_reader` and half-close behave as on the recv/send path.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import functools
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import ServerFactory
from twisted.python import log

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
# Accepted sockets stay in blocking mode (making them non-blocking is a syscall per
# connection); every recv/send on them says MSG_DONTWAIT instead.
_DONTWAIT = socket.MSG_DONTWAIT
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY, errno.EINTR)
_RST_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
# A direction that has moved this many bytes switches to splice(2): worth two descriptors
# for the rest of its transfer.
SPLICE_AFTER = 1 << 20
_splice = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class _End:
    """One socket of a connection, a reactor reader/writer of its own (IReadWriteDescriptor).

    `eof_in`: nothing more will be read from it (EOF, or we stopped for good); `shut_out`: our
    FIN went out (`shut_pending`: once `buf` is flushed). Both done means the socket closes.
    """

    __slots__ = ("conn", "reactor", "sock", "fileno", "peer", "nbytes", "buf", "reading",
                 "writing", "eof_in", "shut_out", "shut_pending", "closed", "connecting",
                 "pipe_r", "pipe_w", "piped")

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
        # The pipe carrying bytes *to* this socket once its peer splices (-1: none), and
        # how many bytes are in it.
        self.pipe_r = self.pipe_w = -1
        self.piped = 0

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
            n = self.sock.recv_into(_chunk, 0, _DONTWAIT)
        except _RETRY:
            return
        except OSError:
            self.conn.broken(self)
            return
        if n:
            self.nbytes += n
            self.conn.last_reader = self  # who spoke last: see ClientSide.awaits_answer
            self.peer.write(_chunk_view[:n])  # type: ignore[union-attr]
            if self.nbytes > SPLICE_AFTER:
                self._start_splicing()
        else:
            self.read_eof()

    def _start_splicing(self) -> None:
        """Move this direction's further bytes with splice(2), once what recv/send left in
        the peer's buffer is out (the order of bytes must not change)."""
        peer = self.peer
        if (_splice is None or peer.buf or peer.closed or not self.reading  # type: ignore[union-attr]
                or peer.pipe_r >= 0):  # type: ignore[union-attr]
            return
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # out of descriptors: stay on recv/send
            return
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, BUFFER_SIZE)
        except OSError:  # over the per-user pipe budget: the default size works too
            pass
        peer.pipe_r, peer.pipe_w = r, w  # type: ignore[union-attr]
        # splice(2) has no MSG_DONTWAIT: the sockets themselves must not block now.
        self.sock.setblocking(False)
        peer.sock.setblocking(False)  # type: ignore[union-attr]
        self.__class__ = _SplicingEnd

    def flush_pipe(self) -> None:
        """Send what the pipe holds for this socket; wait for writability if it does not all
        go, holding the peer's reads meanwhile (the pipe is this direction's buffer)."""
        sent = self.splice(self.pipe_r, self.sock.fileno(), self.piped)
        if sent is None:
            return
        self.piped -= max(sent, 0)
        if self.piped:
            if not self.writing:
                self.writing = True
                self.reactor.addWriter(self)
                self.peer.stop_reading()  # type: ignore[union-attr]
        elif self.writing:
            self._flushed()

    def write(self, data: memoryview) -> None:
        """Send `data` now if nothing is queued; queue what the kernel does not take."""
        if not self.buf:
            try:
                sent = self.sock.send(data, _DONTWAIT)
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

    def splice(self, src: int, dst: int, count: int) -> int | None:
        """splice(2) up to `count` bytes: how many moved (0: EOF on a socket source), -1 if
        that would block, None if this socket failed (then dropped, see ClientSide.broken)."""
        try:
            return _splice(src, dst, count, flags=_SPLICE_FLAGS)  # type: ignore[misc]
        except _RETRY:
            return -1
        except OSError:
            self.conn.broken(self)
            return None

    def doWrite(self) -> None:
        if self.connecting:
            self.conn.dial_done()
            return
        if self.piped:
            self.flush_pipe()
            return
        try:
            sent = self.sock.send(self.buf, _DONTWAIT)
        except _RETRY:
            return
        except OSError:
            self.conn.broken(self)
            return
        del self.buf[:sent]
        if not self.buf:
            self._flushed()

    def _flushed(self) -> None:
        """Everything queued for this socket went out: FIN if due, else read the peer again."""
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
        if self.buf or self.piped:
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
        if self.pipe_r >= 0:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1
            self.piped = 0
        self.conn.end_closed()

    def connectionLost(self, reason: Any) -> None:
        """The reactor dropped us (HUP/ERR without data, or reactor shutdown)."""
        self.reading = self.writing = False  # already removed by the reactor
        if self.connecting:
            self.conn.dial_failed(refused=True)
        else:
            self.conn.broken(self)


class _SplicingEnd(_End):
    """An `_End` whose reads go to its peer with splice(2) through the peer's pipe (see
    `_End._start_splicing`); everything else is `_End`'s."""

    __slots__ = ()

    def doRead(self) -> None:
        peer = self.peer
        if peer.piped:  # type: ignore[union-attr]  # a stale event: reads wait for the flush
            return
        # Only read with the pipe empty (see flush_pipe), so -1 (EAGAIN) means no data.
        n = self.splice(self.sock.fileno(), peer.pipe_w, BUFFER_SIZE)  # type: ignore[union-attr]
        if n is None or n < 0:
            return
        if n:
            self.nbytes += n
            self.conn.last_reader = self
            peer.piped = n  # type: ignore[union-attr]
            peer.flush_pipe()  # type: ignore[union-attr]
        else:
            self.read_eof()


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

    # No __dict__: one fewer object per connection (memory per held connection, GC work).
    __slots__ = ("backend", "reactor", "dials", "client", "server", "_open", "_retries",
                 "_retry_call", "last_reader")

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
        # TCP_NODELAY is inherited from the listening socket (see `listen`); the socket may
        # be in blocking mode (see _DONTWAIT).
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
        if err == 0 or (err in _IN_PROGRESS and _established(sock)):
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
        # On a reactor that reports a failed connect as a hang-up (connectionLost), a write
        # event means connected: asking the socket for its error would be a syscall for
        # nothing, one per connection.
        if not getattr(self.reactor, "connect_errors_as_hangups", False) \
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.dial_failed(refused=True)
        else:
            self.dials.discard(self)
            self._connected()

    def _connected(self) -> None:
        client, server = self.client, self.server
        assert client is not None and server is not None
        server.connecting = False
        client.peer, server.peer = server, client
        if server.writing:
            server.writing, server.reading = False, True
            switch = getattr(self.reactor, "write_to_read", None)
            if switch is not None:  # ProxyReactor: one epoll_ctl(MOD) instead of two
                switch(server)
            else:
                self.reactor.addReader(server)  # before removeWriter: MOD, not DEL + ADD
                self.reactor.removeWriter(server)
        else:
            server.start_reading()
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


def _established(sock: Any) -> bool:
    """Whether a connect that said "in progress" is done already. To a backend on this host
    (a container, loopback) the kernel completes the handshake before connect() returns: one
    getpeername() then spares waiting for the write event (an epoll_ctl, a reactor turn and a
    second epoll_ctl). A remote backend answers ENOTCONN and is waited for as before."""
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


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
        return self.build(getattr(addr, "host", None))

    def build(self, host: str | None) -> Any:
        """The protocol for a connection accepted from `host`."""
        route = self.route
        if route.gated:  # paused or in maintenance
            return route.gate(host)
        if route.balancer is None:
            return ClientSide(route.backend, self.reactor, self.dials)
        return ClientSide(route.balancer.pick(host), self.reactor, self.dials)


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
        if isinstance(listening.factory, ListenerFactory):
            # The family as a plain int: the socket's `family` property builds an enum.
            listening.doRead = functools.partial(_accept_all, listening, int(listener.family))
    return listening


def _accept_all(port: Any, family: int) -> None:
    """The Port's doRead without its per-accept machinery (a log-buffering context, a
    generator, an address object and a `socket.socket` wrapper per connection): accept up to
    `numberAccepts` sockets as C-level sockets, adapting that number as Twisted does. Errors
    other than "no more" go to Twisted's own loop, which logs them and recovers from EMFILE."""
    accept = port.socket._accept
    build = port.factory.build
    limit = port.numberAccepts
    accepted = 0
    try:
        while accepted < limit:
            try:
                fd, addr = accept()
            except _RETRY:
                break
            except OSError:
                type(port).doRead(port)
                return
            accepted += 1
            build(addr[0]).makeConnection(_socket.socket(family, socket.SOCK_STREAM, 0, fd))
    except Exception:  # noqa: BLE001 - never let one connection take the listener down
        log.err(None, "gantry-proxy: accepting a connection")
    port.numberAccepts = limit + 20 if accepted == limit else max(1, accepted)
