"""The route table: applies control requests, persists every change, restores at start."""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer

from proxy.backend import Backend
from proxy.errors import Conflict, NotFound
from proxy.listeners import Listeners
from proxy.route import Route
from proxy.spec import DrainRequest, MaintenanceRequest, PauseRequest, RouteSpec, check_name, \
    empty_body
from proxy.state import CorruptState, load_state, save_state, set_aside

log = logging.getLogger("proxy.router")

# After a corrupt state file, how long listeners of the lost routes stay held for gantry to
# restore them (gantryd re-checks at once when it restarts its proxy).
CORRUPT_GRACE = 120.0


class Router:
    """All routes of the daemon. Every method runs in the reactor thread."""

    def __init__(self, reactor: Any, state_path: str | None = None,
                 listeners: Listeners | None = None):
        self.reactor = reactor
        self.state_path = state_path
        self.listeners = listeners or Listeners(reactor)
        self.routes: dict[str, Route] = {}
        # Backends of removed routes that still carry connections (for shutdown and metrics).
        self.detached: set[Backend] = set()

    def restore(self) -> None:
        """Recreate the routes of the state file; a route whose port cannot be bound stays
        in state `error` while the others work."""
        if self.state_path is None:
            return
        try:
            saved_routes = load_state(self.state_path)
        except CorruptState as e:
            self._start_empty(e)
            return
        for name, saved in saved_routes.items():
            spec = saved.spec
            route = self.routes[name] = Route(name, spec, self.reactor, self.listeners)
            route.restore_gates(saved)
            try:
                route.start()
                log.info("route %s restored: %s -> %s (%s)", name, spec.listen, spec.backend,
                         spec.kind)
            except Conflict as e:
                log.error("route %s restored in error state: %s", name, e)
        # A listener kept for an address no route uses (removed while no proxy ran) would
        # queue its clients forever.
        self.listeners.retain(r.listen for r in self.routes.values())

    def _start_empty(self, problem: CorruptState) -> None:
        """A corrupt state file: keep it aside, serve with no routes until gantry restores
        them from the containers' labels. Listeners kept for the old routes stay held for a
        while, so their clients wait in the backlog for the restored routes, not refused."""
        aside = set_aside(self.state_path)  # StateError: the daemon cannot start
        log.error("%s; kept it as %s and started with NO routes: gantry/gantryd restore them "
                  "from the containers", problem, aside)
        self.reactor.callLater(CORRUPT_GRACE, lambda: self.listeners.retain(
            r.listen for r in self.routes.values()))

    def save(self) -> None:
        if self.state_path is not None:
            save_state(self.state_path, {name: r.saved() for name, r in self.routes.items()})

    def get(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            raise NotFound(f"no route named {name!r}")
        return route

    def snapshot(self) -> list[dict[str, Any]]:
        return [route.to_dict() for route in self.routes.values()]

    async def put(self, name: str, body: Any) -> dict[str, Any]:
        """Create a route or change it: re-bind if `listen` changed, switch if `backend` did."""
        check_name(name)
        spec = RouteSpec.from_json(body)
        route = self.routes.get(name)
        if route is None:
            route = Route(name, spec, self.reactor, self.listeners)
            route.start()  # Conflict: the route is not created
            self.routes[name] = route
            self.save()
            log.info("route %s created: %s -> %s (%s)", name, spec.listen, spec.backend, spec.kind)
            return {"previous": None, "draining": [], "route": route.to_dict()}
        if spec.listen != route.listen or route.port is None:
            old_listen = route.listen
            await route.rebind(spec.listen)  # Conflict: the old listener stays
            log.info("route %s: listening on %s (was %s)", name, spec.listen, old_listen)
        route.update(spec.kind, spec.idle_timeout)
        previous, draining = route.set_backends(spec.active, spec.sticky)
        self.save()
        if previous != spec.backend or draining or spec.weights:
            log.info("route %s switched: %s -> %s (now draining: %s)", name, previous,
                     _describe(spec), ", ".join(map(str, draining)) or "none")
        return {"previous": str(previous), "draining": [str(a) for a in draining],
                "route": route.to_dict()}

    def pause(self, name: str, body: Any) -> dict[str, Any]:
        request = PauseRequest.from_json(body)
        route = self.get(name)
        route.set_pause(request.max_pause)
        self.save()
        log.info("route %s paused (max pause %gs)", name, request.max_pause)
        return route.to_dict()

    def resume(self, name: str, body: Any) -> dict[str, Any]:
        empty_body(body, "resume")
        route = self.get(name)
        if route.pause is not None:
            route.resume()
            self.save()
        return route.to_dict()

    def maintenance(self, name: str, body: Any) -> dict[str, Any]:
        request = MaintenanceRequest.from_json(body)
        route = self.get(name)
        route.set_maintenance(request.enabled, request.message)
        self.save()
        log.info("route %s: maintenance %s", name, "on" if request.enabled else "off")
        return route.to_dict()

    async def remove(self, name: str) -> dict[str, Any]:
        """Stop listening and forget the route; its live connections run to their end."""
        route = self.get(name)
        del self.routes[name]
        self.save()
        await route.stop_listening(release=True)
        for backend in list(route.backends.values()):
            backend.stop_reaper()
            if backend.live:
                self.detached.add(backend)
                backend.wait_drained().addBoth(lambda _, b=backend: self.detached.discard(b))
        log.info("route %s removed (was %s -> %s)", name, route.listen, route.backend.address)
        return {"previous": str(route.backend.address)}

    async def drain(self, name: str, body: Any) -> dict[str, Any]:
        request = DrainRequest.from_json(body)
        route = self.get(name)
        return await route.drain(request.backend, request.timeout, request.close)

    def all_backends(self) -> list[Backend]:
        out = [b for route in self.routes.values() for b in route.backends.values()]
        return out + list(self.detached)

    async def stop_accepting(self) -> None:
        """Close every route's Port; kept listeners stay open (for the next process)."""
        await defer.DeferredList([r.stop_listening() for r in self.routes.values()])

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let live connections finish for up to `timeout`, abort the rest."""
        live = sum(b.live for b in self.all_backends())
        log.info("shutting down: %d routes, %d live connections, waiting up to %gs",
                 len(self.routes), live, timeout)
        await self.stop_accepting()
        # Held connections cannot be resumed by a process that goes away: answer them now.
        held = sum(r.pause.expire_all() for r in self.routes.values() if r.pause is not None)
        if held:
            log.warning("shutdown: %d connections held by a pause answered as timed out", held)
        deadline = self.reactor.seconds() + timeout
        for backend in self.all_backends():
            remaining = deadline - self.reactor.seconds()
            if backend.live and (remaining <= 0
                                 or not await backend.drained_within(remaining, self.reactor)):
                aborted = sum(b.close_all() for b in self.all_backends())
                log.warning("shutdown timeout: closed %d connections", aborted)
                return
        log.info("all connections closed")


def _describe(spec: RouteSpec) -> str:
    if not spec.weights:
        return str(spec.backend)
    split = ", ".join(f"{a} {w}" for a, w in spec.weights)
    return f"[{split}{', sticky' if spec.sticky else ''}]"
