"""The forwarding pair: the protocol on the accepted client socket and the one on the socket
to the backend, paired as each other's producer so a slow reader pauses the fast writer.

Hot-path notes (why the code looks the way it does):
- `dataReceived` sends straight to the peer socket when the peer has nothing buffered. Going
  through `transport.write` would buffer the chunk and send it one reactor turn later, costing
  two epoll_ctl calls and a loop iteration per chunk.
- Whatever `send` does not take goes to `transport.write`, whose buffer above `bufferSize`
  pauses the producer (the other socket stops reading): memory per connection stays bounded.
- No logging, no clock reads, one integer add per chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import error, interfaces
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from proxy.backend import Backend
    from proxy.route import Route

CONNECT_TIMEOUT = 5.0
# Bytes per recv() and the write-buffer level that pauses the other socket: twice Twisted's
# default halves the per-byte Python overhead on bulk transfers and still bounds memory to
# a few hundred KiB per connection.
BUFFER_SIZE = 1 << 17


def _send(transport: Any, data: bytes) -> None:
    """Write `data` to a TCP transport, sending synchronously when its buffer is empty."""
    if not transport.dataBuffer and not transport._tempDataLen and transport.connected \
            and not transport.disconnecting and not transport._writeDisconnected:
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let the transport's own write path discover and report the error.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class _Side(Protocol):
    """What both sides share: byte count, forwarding, and half-close bookkeeping."""

    peer: Any = None  # the other socket's transport, once paired
    nbytes = 0
    _read_eof = False
    _write_eof = False

    def dataReceived(self, data: bytes) -> None:
        self.nbytes += len(data)
        _send(self.peer, data)

    def readConnectionLost(self) -> None:
        # Our peer sent FIN: pass it on, after whatever is still buffered towards the other side.
        if self._read_eof:
            return
        self._read_eof = True
        peer = self.peer
        if peer is not None and peer.connected:
            peer.loseWriteConnection()
        self._maybe_close()

    def writeConnectionLost(self) -> None:
        self._write_eof = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._read_eof and self._write_eof:
            self.transport.loseConnection()


@implementer(interfaces.IHalfCloseableProtocol)
class ClientSide(_Side):
    """The accepted client connection; it is also the unit the backend counts as a connection."""

    def __init__(self, backend: Backend, reactor: Any):
        self.backend = backend
        self.reactor = reactor
        self.backend_side: BackendSide | None = None
        self.connector: Any = None
        self._open_sides = 1

    @property
    def backend_nbytes(self) -> int:
        side = self.backend_side
        return side.nbytes if side is not None else 0

    def connectionMade(self) -> None:
        transport = self.transport
        transport.setTcpNoDelay(True)
        transport.bufferSize = BUFFER_SIZE
        # Hold client bytes in the kernel until there is somewhere to put them.
        transport.pauseProducing()
        self.backend.connection_opened(self)
        address = self.backend.address
        self._open_sides = 2
        self.connector = self.reactor.connectTCP(
            address.host, address.port, _Dialer(self), timeout=CONNECT_TIMEOUT)

    def backend_connected(self, side: BackendSide) -> None:
        self.connector = None
        self.backend_side = side
        client, server = self.transport, side.transport
        self.peer, side.peer = server, client
        client.registerProducer(server, True)
        server.registerProducer(client, True)
        client.resumeProducing()

    def backend_failed(self, reason: Failure) -> None:
        """The backend refused or timed out (or we gave up because the client left)."""
        self.connector = None
        if not reason.check(error.UserError):  # UserError: we cancelled it
            self.backend.errors += 1
            self.transport.loseConnection()
        self._side_closed()

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        if self.connector is not None:
            self.connector.stopConnecting()  # reports back through backend_failed
        self._side_closed()

    def _side_closed(self) -> None:
        self._open_sides -= 1
        if self._open_sides == 0:
            self.backend.connection_closed(self)

    def abort(self) -> None:
        """Close both sockets at once (force-close at a drain timeout)."""
        if self.connector is not None:
            self.connector.stopConnecting()
        self.transport.abortConnection()
        if self.backend_side is not None and self.backend_side.transport is not None:
            self.backend_side.transport.abortConnection()

    def close_idle(self) -> None:
        """Close an idle connection politely (FIN both ways)."""
        self.transport.loseConnection()
        if self.backend_side is not None and self.backend_side.transport is not None:
            self.backend_side.transport.loseConnection()


@implementer(interfaces.IHalfCloseableProtocol)
class BackendSide(_Side):
    """The connection from the proxy to the backend."""

    def __init__(self, client: ClientSide):
        self.client = client

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.transport.bufferSize = BUFFER_SIZE
        self.client.backend_connected(self)

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.client._side_closed()


class _Dialer:
    """The minimal client factory `connectTCP` needs, one per connection (cheaper than a
    twisted ClientFactory, and silent)."""

    __slots__ = ("client",)

    def __init__(self, client: ClientSide):
        self.client = client

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def startedConnecting(self, connector: Any) -> None:
        pass

    def buildProtocol(self, addr: Any) -> BackendSide:
        return BackendSide(self.client)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client.backend_failed(reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass


class ListenerFactory(ServerFactory):
    """Builds a ClientSide for whatever backend the route points at *now*: that is the switch."""

    noisy = False

    def __init__(self, route: Route, reactor: Any):
        self.route = route
        self.reactor = reactor

    def buildProtocol(self, addr: Any) -> ClientSide:
        return ClientSide(self.route.backend, self.reactor)
