"""Pause and maintenance of a component's traffic on this host.

Both are states of the proxy's routes (``<project>.<component>.<port>``), applied to every
route of the component: a pause holds new connections (connected, in order, to whatever the
route points at on resume); maintenance answers them (503 with a message on http routes). The
proxy keeps both across a switch and a restart, so ``gantry update`` of a paused component
stays paused, and its drain is not held up by held connections (they belong to no backend).

No component lock is taken: each call is one atomic proxy call per route, and a ``resume``
must not wait behind a long update that runs while the component is paused.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import GantryError, RouteError

DEFAULT_MAX_PAUSE = 30.0
STATES = ("paused", "maintenance")


class NotRouted(GantryError):
    """The component has no proxy route on this host (never deployed, or stopped)."""


@dataclass(frozen=True)
class Gate:
    """What a component's routes should do with new connections (``paused`` is the max pause
    in seconds, None when not paused)."""

    paused: float | None = None
    maintenance: bool = False
    message: str | None = None

    @property
    def states(self) -> tuple[str, ...]:
        """("paused", "maintenance"), or those of them that are on."""
        return tuple(name for name, on in (("paused", self.paused is not None),
                                           ("maintenance", self.maintenance)) if on)


def gate_of(route: dict[str, Any]) -> Gate:
    """A route's current gate, from the proxy's route JSON."""
    paused = route.get("paused") or None
    maintenance = route.get("maintenance") or None
    return Gate(paused=float(paused.get("maxPause", DEFAULT_MAX_PAUSE)) if paused else None,
                maintenance=maintenance is not None,
                message=maintenance.get("message") if maintenance else None)


def states(routes: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """("paused", "maintenance"), or those of them that are on for any of the routes."""
    on = {state for r in routes for state in gate_of(r).states}
    return tuple(state for state in STATES if state in on)


def describe(routes: Iterable[dict[str, Any]]) -> str:
    """A short note for `gantry list`: "paused, 3 held", "maintenance", or ""."""
    routes = list(routes)
    notes = []
    for state in states(routes):
        if state == "paused":
            held = sum(int(r.get("held") or 0) for r in routes)
            state = f"paused, {held} held"
        notes.append(state)
    return ", ".join(notes)


def component_routes(life: Any, component: str) -> list[dict[str, Any]]:
    """The component's routes on this host; NotRouted when it has none."""
    routes = life.routes(component)
    if not routes:
        raise NotRouted(f"{component} has no proxy route on this host (deploy it first: "
                        f"gantry update {component})")
    return routes


def pause(life: Any, component: str, max_pause: float = DEFAULT_MAX_PAUSE) -> list[dict]:
    """Hold new connections on every route of the component; answers the routes."""
    return [_call(life.proxy.pause, r["name"], max_pause)
            for r in component_routes(life, component)]


def resume(life: Any, component: str) -> list[dict]:
    """Release the held connections to the routes' current backends; answers the routes."""
    return [_call(life.proxy.resume, r["name"]) for r in component_routes(life, component)]


def maintenance(life: Any, component: str, enabled: bool,
                message: str | None = None) -> list[dict]:
    """Turn maintenance on (with ``message``) or off on every route; answers the routes."""
    return [_call(life.proxy.maintenance, r["name"], enabled, message)
            for r in component_routes(life, component)]


def converge(proxy: Any, routes: Iterable[dict[str, Any]], want: Gate) -> list[str]:
    """Make every route's gate ``want`` (idempotent: routes already there are left alone, so a
    pause keeps its start); answers the names of the routes changed."""
    changed = []
    for route in routes:
        try:
            if _converge_route(proxy, route, want):
                changed.append(route["name"])
        except NotRouted:
            continue  # removed meanwhile (a stop): nothing left to gate
    return changed


def _converge_route(proxy: Any, route: dict[str, Any], want: Gate) -> bool:
    have, name = gate_of(route), route["name"]
    changed = False
    if have.paused != want.paused:
        if want.paused is None:
            _call(proxy.resume, name)
        else:
            _call(proxy.pause, name, want.paused)
        changed = True
    if _maintenance_differs(have, want):
        _call(proxy.maintenance, name, want.maintenance, want.message)
        changed = True
    return changed


def _maintenance_differs(have: Gate, want: Gate) -> bool:
    # No message wanted: whatever page the proxy shows then (its default text) is right.
    return have.maintenance != want.maintenance or (
        want.maintenance and want.message is not None and have.message != want.message)


def _call(method: Any, name: str, *args: Any) -> dict:
    """One proxy call on route ``name``; the answer is the route JSON."""
    try:
        return method(name, *args)
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            raise NotRouted(f"route {name} is gone (the component was stopped meanwhile)") \
                from exc
        raise RouteError(f"proxy: {method.__name__} {name}: {exc}") from exc
