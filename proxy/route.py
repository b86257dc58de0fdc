"""A route: one listener, the backend new connections go to, and backends still draining."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from twisted.internet import defer

from proxy.address import Address
from proxy.backend import ACTIVE, DRAINING, Backend
from proxy.balance import Balancer
from proxy.errors import Conflict
from proxy.forward import ClientSide, ListenerFactory
from proxy.gate import DEFAULT_MAINTENANCE, GATEWAY_TIMEOUT, Handoff, Pause, http_answer, \
    refuse
from proxy.listeners import Listeners
from proxy.spec import PauseRequest, RouteSpec, Weighted
from proxy.state import SavedRoute

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

    def __init__(self, name: str, spec: RouteSpec, reactor: Any,
                 listeners: Listeners | None = None):
        self.name = name
        self.reactor = reactor
        # Where listening sockets come from (and go back to): see proxy.listeners.
        self.listeners = listeners or Listeners(reactor)
        self.listen = spec.listen
        self.kind = spec.kind
        self.idle_timeout = spec.idle_timeout
        self.backends: dict[Address, Backend] = {}
        self.backend = self._backend_for(spec.backend)
        # Set only while several backends share new connections; None is the fast path.
        self.balancer: Balancer[Backend] | None = None
        self.sticky = False
        self.pause: Pause | None = None
        # While in maintenance: the operator's message ("" for the default page), else None.
        self.maintenance: str | None = None
        self.gated = False  # paused or in maintenance: new connections are not forwarded
        self.port: Any = None
        self.error: str | None = None
        self.drains = {"completed": 0, "forced": 0, "timeout": 0}
        self.retired = {"opened": 0, "closed": 0, "errors": 0, "bytesIn": 0, "bytesOut": 0}
        self._factory = ListenerFactory(self, reactor)
        if spec.weights:
            self.set_backends(spec.weights, spec.sticky)

    @property
    def spec(self) -> RouteSpec:
        weights: Weighted = ()
        if self.balancer is not None:
            weights = tuple((b.address, b.weight) for b in self.balancer.items)
        return RouteSpec(self.listen, self.backend.address, self.kind, self.idle_timeout,
                         weights, self.sticky if weights else False)

    @property
    def state(self) -> str:
        return LISTENING if self.port is not None else ERROR

    # -- listening ------------------------------------------------------------------------
    def _bind(self, address: Address) -> Any:
        return self.listeners.listen(address, self._factory, LISTEN_BACKLOG)  # or Conflict

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
            await self.stop_listening(release=True)
            try:
                new_port = self._bind(address)
            except Conflict:
                self.start()
                raise
        else:
            await defer.maybeDeferred(self.port.stopListening)
            self.listeners.release(self.listen)
        self.port, self.listen, self.error = new_port, address, None

    def stop_listening(self, release: bool = False) -> defer.Deferred[None]:
        """Stop accepting (no new connections); live ones go on. The listening socket stays
        open where it is kept (keeper, systemd), for the next process, unless `release`:
        then it closes for good (new clients are refused, not queued)."""
        if release:
            self.listeners.release(self.listen)
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
        """Send connections accepted from now on to `address`; return the previous backend."""
        return self.set_backends(((address, 1),))[0]

    def set_backends(self, weighted: Weighted, sticky: bool = False
                     ) -> tuple[Address, list[Address]]:
        """Make `weighted` the active set (the first is the primary): new connections are
        split by weight. Answers the previous primary and the backends that started draining.

        Nothing is re-bound, so no connection is refused; a backend leaving the set drains
        (with idle-closing on http routes) and keeps its live connections to the end; a
        draining backend put back in the set is active again, with its counters.
        """
        previous = self.backend.address
        wanted = {address for address, _ in weighted}
        was_active = [b for b in self.backends.values() if b.state == ACTIVE]
        chosen = []
        for address, weight in weighted:
            backend = self._backend_for(address)
            if backend.state != ACTIVE or backend.weight != weight:
                backend.weight = weight
                backend.set_state(ACTIVE, None, self.reactor)
            chosen.append((backend, weight))
        self.backend = chosen[0][0]
        self.sticky = sticky and len(chosen) > 1
        self.balancer = Balancer(chosen, self.sticky) if len(chosen) > 1 else None
        draining = [b for b in was_active if b.address not in wanted]
        for backend in draining:
            self.set_draining(backend)
        return previous, [b.address for b in draining]

    def pick(self, client_host: str | None) -> Backend:
        """The backend a connection accepted now goes to."""
        if self.balancer is None:
            return self.backend
        return self.balancer.pick(client_host)

    def connect(self, sock: socket.socket, client_host: str | None) -> None:
        """Forward an accepted socket (one a pause held) to the current backend."""
        ClientSide(self.pick(client_host), self.reactor, self._factory.dials).makeConnection(sock)

    # -- pause and maintenance --------------------------------------------------------------
    def gate(self, client_host: str | None) -> Any:
        """The protocol for a connection accepted while gated: answered or held."""
        if self.maintenance is not None:
            answer = None
            if self.kind == "http":
                answer = http_answer(503, "Service Unavailable",
                                     self.maintenance or DEFAULT_MAINTENANCE, 5)
            return Handoff(lambda sock: refuse(self.reactor, sock, answer))
        assert self.pause is not None
        return self.pause.protocol(client_host)

    def _expire_held(self, sock: socket.socket) -> None:
        refuse(self.reactor, sock, GATEWAY_TIMEOUT if self.kind == "http" else None)

    def set_pause(self, max_pause: float, since: float | None = None) -> None:
        """Hold new connections (see proxy.gate) until `resume`; pausing again changes
        `max_pause` only."""
        if self.pause is None:
            self.pause = Pause(self.reactor, max_pause, since or time.time(), self._expire_held)
        else:
            self.pause.set_max_pause(max_pause)
        self._regate()

    def resume(self) -> int:
        """End a pause: connect the held connections in accept order; answer how many."""
        pause, self.pause = self.pause, None
        self._regate()
        if pause is None:
            return 0
        held = pause.release()
        for sock, host in held:
            self.connect(sock, host)
        log.info("route %s resumed: %d held connections forwarded", self.name, len(held))
        return len(held)

    def set_maintenance(self, enabled: bool, message: str | None = None) -> None:
        self.maintenance = (message or "") if enabled else None
        self._regate()

    def _regate(self) -> None:
        self.gated = self.pause is not None or self.maintenance is not None

    def saved(self) -> SavedRoute:
        """What the state file keeps of this route."""
        pause = self.pause
        return SavedRoute(self.spec, PauseRequest(pause.max_pause) if pause else None,
                          pause.since if pause else None, self.maintenance)

    def restore_gates(self, saved: SavedRoute) -> None:
        """Re-apply a saved pause and maintenance (after a restart)."""
        if saved.pause is not None:
            self.set_pause(saved.pause.max_pause, saved.paused_since)
        if saved.maintenance is not None:
            self.set_maintenance(True, saved.maintenance)

    @property
    def held(self) -> int:
        return len(self.pause.parked) if self.pause is not None else 0

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
            "sticky": self.sticky,
            "paused": self.pause.to_dict() if self.pause is not None else None,
            "held": self.held,
            "maintenance": ({"message": self.maintenance or None} if self.maintenance is not None
                            else None),
        }

