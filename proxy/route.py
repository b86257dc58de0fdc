"""A route: one listener, the backend new connections go to, and backends still draining."""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer, error

from proxy.address import Address
from proxy.backend import ACTIVE, DRAINING, Backend
from proxy.errors import Conflict
from proxy.forward import ListenerFactory, listen
from proxy.spec import RouteSpec

log = logging.getLogger("proxy.route")

LISTENING = "listening"
ERROR = "error"
LISTEN_BACKLOG = 1024
# After a force-close the aborted sockets are gone within a reactor turn; this only bounds it.
ABORT_GRACE = 5.0


class Route:
    """A named listener forwarding to `backend`.

    `backends` holds the active backend and the draining ones that still have live
    connections; a draining backend is forgotten (its totals folded into `retired`) as soon
    as its last connection closes, so the list does not grow with every switch.
    """

    def __init__(self, name: str, spec: RouteSpec, reactor: Any):
        self.name = name
        self.reactor = reactor
        self.listen = spec.listen
        self.kind = spec.kind
        self.idle_timeout = spec.idle_timeout
        self.backends: dict[Address, Backend] = {}
        self.backend = self._backend_for(spec.backend)
        self.port: Any = None
        self.error: str | None = None
        self.drains = {"completed": 0, "forced": 0, "timeout": 0}
        self.retired = {"opened": 0, "closed": 0, "errors": 0, "bytesIn": 0, "bytesOut": 0}
        self._factory = ListenerFactory(self, reactor)

    @property
    def spec(self) -> RouteSpec:
        return RouteSpec(self.listen, self.backend.address, self.kind, self.idle_timeout)

    @property
    def state(self) -> str:
        return LISTENING if self.port is not None else ERROR

    # -- listening ------------------------------------------------------------------------
    def _bind(self, address: Address) -> Any:
        try:
            return listen(self.reactor, address.port, self._factory, LISTEN_BACKLOG,
                          address.host)
        except error.CannotListenError as e:
            raise Conflict(f"cannot listen on {address}: {e.socketError}") from None

    def start(self) -> None:
        """Bind the listen address; on failure keep the route in state `error` and raise."""
        try:
            self.port = self._bind(self.listen)
            self.error = None
        except Conflict as e:
            self.error = str(e)
            raise

    async def rebind(self, address: Address) -> None:
        """Move the listener to `address`; on failure the old listener stays and Conflict rises."""
        if self.port is None:
            self.port = self._bind(address)
            self.listen, self.error = address, None
            return
        try:
            new_port = self._bind(address)
        except Conflict:
            if address.port != self.listen.port:
                raise
            # The same port on another interface may collide with our own socket: free it,
            # try again, and put the old one back if that fails too.
            await self.stop_listening()
            try:
                new_port = self._bind(address)
            except Conflict:
                self.start()
                raise
        else:
            await defer.maybeDeferred(self.port.stopListening)
        self.port, self.listen, self.error = new_port, address, None

    def stop_listening(self) -> defer.Deferred[None]:
        """Close the listener (no new connections); live ones go on."""
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    # -- backends -------------------------------------------------------------------------
    def _backend_for(self, address: Address) -> Backend:
        backend = self.backends.get(address)
        if backend is None:
            backend = self.backends[address] = Backend(address, on_idle=self._backend_idle)
        return backend

    def switch(self, address: Address) -> Address:
        """Send connections accepted from now on to `address`; return the previous backend.

        Nothing is re-bound, so no connection is refused; the previous backend drains (with
        idle-closing on http routes) and keeps its live connections to the end.
        """
        previous = self.backend
        if address == previous.address:
            return address
        new = self._backend_for(address)
        new.set_state(ACTIVE, None, self.reactor)
        self.backend = new
        self.set_draining(previous)
        return previous.address

    def set_draining(self, backend: Backend) -> None:
        idle = self.idle_timeout if self.kind == "http" else None
        backend.set_state(DRAINING, idle, self.reactor)
        if not backend.live:
            self._backend_idle(backend)

    def update(self, kind: str, idle_timeout: float | None) -> None:
        if (kind, idle_timeout) == (self.kind, self.idle_timeout):
            return
        self.kind, self.idle_timeout = kind, idle_timeout
        for backend in self.backends.values():
            if backend.state == DRAINING:
                self.set_draining(backend)

    def _backend_idle(self, backend: Backend) -> None:
        if backend.state != DRAINING or backend is self.backend \
                or self.backends.get(backend.address) is not backend:
            return
        backend.stop_reaper()
        del self.backends[backend.address]
        counts = backend.to_dict()
        for key in self.retired:
            self.retired[key] += counts[key]

    def totals(self) -> dict[str, int]:
        """Route-wide counters, forgotten backends included."""
        out = dict(self.retired, live=0)
        for backend in self.backends.values():
            counts = backend.to_dict()
            for key in out:
                out[key] += counts[key]
        return out

    # -- draining -------------------------------------------------------------------------
    async def drain(self, address: Address, timeout: float, close: bool) -> dict[str, Any]:
        """Wait until `address` has no live connection here, at most `timeout` seconds; with
        `close`, abort what is left at the timeout."""
        backend = self.backends.get(address)
        if backend is None or not backend.live:
            self.drains["completed"] += 1
            return {"drained": True, "live": 0, "closed": 0}
        log.info("route %s: draining %s (%d live, timeout %gs%s)", self.name, address,
                 backend.live, timeout, ", then close" if close else "")
        if await backend.drained_within(timeout, self.reactor):
            self.drains["completed"] += 1
            log.info("route %s: %s drained", self.name, address)
            return {"drained": True, "live": 0, "closed": 0}
        closed = 0
        if close:
            closed = backend.close_all()
            self.drains["forced"] += 1
            await backend.drained_within(ABORT_GRACE, self.reactor)
        else:
            self.drains["timeout"] += 1
        log.info("route %s: drain of %s timed out after %gs: %d live, %d closed",
                 self.name, address, timeout, backend.live, closed)
        return {"drained": False, "live": backend.live, "closed": closed}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": str(self.listen),
            "kind": self.kind,
            "idleTimeout": self.idle_timeout,
            "backend": str(self.backend.address),
            "state": self.state,
            "error": self.error,
            "backends": [b.to_dict() for b in self.backends.values()],
        }
