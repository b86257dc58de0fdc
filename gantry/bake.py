"""Bake time (``rollout.minHealthy``): an update is done only once the new container stayed
healthy that long after the switch.

Until then the old container keeps running, drained but not routed (it finishes its own
connections and gets no new ones). The new container's health checks run every interval
(:mod:`gantry.health`: ``healthFailures`` consecutive failed rounds, or an exit, make it
unhealthy). If it turns unhealthy, the routes go straight back to what they were (the proxy
makes a draining backend active again, so no connection is refused), the new container is
drained, stopped and removed, and the update fails with UpdateFailed like a failed ready
check. Only after a good bake does the lifecycle retire the old container.

A first deploy has nothing to go back to, so it has no bake. A gantry killed during the bake
leaves the new container routed: the next ``recover`` keeps it and retires the old one.
"""
from __future__ import annotations

import time
from typing import Any

from . import health as H
from .errors import CheckFailed, GantryError, UpdateFailed
from .runtime import ContainerInfo


class Bake:
    """The routes an update goes back to when its new container fails the bake."""

    def __init__(self, life: Any, component: Any, routes: list[dict]) -> None:
        self.life = life  # a gantry.lifecycle.Lifecycle
        self.component = component
        self.before = {r["name"]: r for r in routes}

    @classmethod
    def begin(cls, life: Any, component: Any) -> Bake | None:
        """Before the switch: what to go back to; None when there is no bake."""
        if not component.rollout.min_healthy:
            return None
        view = life._view(component.name)
        if view.live() is None:
            life.reporter.step(f"{component.name}: no previous container to go back to; "
                               "no bake")
            return None
        return cls(life, component, view.routes)

    def hold(self, new: ContainerInfo) -> None:
        """Watch ``new`` for ``minHealthy`` seconds. Unhealthy (or interrupted): switch back,
        remove it and raise UpdateFailed (the exception itself for a non-GantryError)."""
        comp, rep = self.component, self.life.reporter
        seconds = comp.rollout.min_healthy
        started = time.monotonic()
        rep.step(f"{comp.name}: baking {new.short_id} for {seconds:g}s (the old container "
                 "stays, drained)")
        streak = H.Streak(comp.health_failures)
        try:
            while True:
                H.examine(comp, self.life.runtime, new.id, streak)
                if streak.unhealthy:
                    raise CheckFailed(f"bake: {new.short_id} {streak.describe()} after "
                                      f"{time.monotonic() - started:.1f}s")
                remaining = started + seconds - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(H.interval_of(comp), remaining))
        except BaseException as exc:
            failed = self._back(new, exc)
            if isinstance(exc, GantryError):
                raise failed from exc
            raise
        rep.step(f"{comp.name}: {new.short_id} stayed healthy for {seconds:g}s")

    def _back(self, new: ContainerInfo, cause: BaseException) -> UpdateFailed:
        """Routes back to what they were; the new container drains and goes (unless the
        proxy kept it routed: then it keeps serving)."""
        life, comp = self.life, self.component
        names = list(dict.fromkeys([*self.before, *(r["name"] for r in life.routes(comp))]))
        life._restore_routes(names, self.before)
        view = life._view(comp.name)
        info = next((c for c in view.containers if c.id == new.id), None)
        if info is not None and view.routed(info):
            return UpdateFailed(f"{comp.name}: {cause}; the routes could not go back, so "
                                f"{new.short_id} keeps serving")
        life.reporter.step(f"{comp.name}: routes back on the old container; removing "
                           f"{new.short_id}")
        if info is not None:
            life._retire(comp, info, view, drain=True)
        return life._failed(comp, cause if isinstance(cause, GantryError)
                            else CheckFailed(f"bake interrupted: {cause!r}"))
