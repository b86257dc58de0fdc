"""A weighted canary of one component on one host: start, promote, abort.

    canary = Canary(life)
    canary.start(component, 30)        # new container beside the live one; routes 70/30
    canary.promote(component)          # the canary takes every connection; the old one goes
    canary.abort(component)            # back to 100 % on the old one; the canary goes
    canary.find(component) -> ContainerStatus | None   # state "canary", .canary = percent

``start`` runs the update lifecycle up to the ready checks (pull, start beside the live
container, checks; a failure removes the new container and changes nothing else), then sets
every route of the component to ``[(live, 100 - PCT), (new, PCT)]`` instead of switching.
The old container keeps running and stays the routes' primary backend.

Recognition (no local state, like the rest of gantry): a canary is a running container with
the label ``io.gantry.canary=PCT`` (the percentage it was made for) that is an active,
non-primary backend of *every* route of the component; its share is read from the route
weights, which are the truth (``start`` again with the same image and config only
re-weights). ``Lifecycle.recover`` keeps such a split whole. A split on some routes only (a
start or abort killed between two route changes) resolves to the primary alone; a promote
killed half-way is finished (the canary is then the primary somewhere: the live container).
A canary gets the engine's restart policy only when promoted, so an engine restart without
live-restore ends a canary: the old container serves again.

``start`` while a canary is in place replaces it (the old canary drains and goes) unless it
runs the same image and config, which only changes the weights. A plain ``update`` during a
canary replaces both sides with its new container.
"""
from __future__ import annotations

import time
from typing import Any

from .errors import GantryError, UpdateFailed
from .lifecycle import ContainerStatus, Deployment, Lifecycle, _name_of, _View
from .runtime import ContainerInfo


class NoCanary(GantryError):
    """promote/abort with no canary in place."""


def check_percent(percent: int) -> int:
    if not 1 <= percent <= 99:
        raise ValueError(f"canary percentage must be 1-99, not {percent}")
    return percent


class Canary:
    """Canary operations on the components of one Lifecycle (its host and project)."""

    def __init__(self, life: Lifecycle) -> None:
        self.life = life
        self.reporter = life.reporter

    def find(self, component: Any) -> ContainerStatus | None:
        """The component's canary container, or None."""
        view = self.life._view(_name_of(component))
        info = view.canary()
        return view.status(info) if info else None

    def start(self, component: Any, percent: int, image: str | None = None) -> Deployment:
        """Split new connections: ``percent`` to a new container of ``image`` (default:
        ``repo:tag`` resolved, or the component's build), the rest to the live one.
        UpdateFailed leaves things as they were (a previous canary included)."""
        check_percent(percent)
        life, name = self.life, component.name
        with life.lock(component):
            life._recover(component)
            started = time.monotonic()
            view = life._view(name)
            stable = view.live()
            if stable is None:
                raise UpdateFailed(f"{name}: no live container to split with; "
                                   "run `gantry update` first")
            if not component.ports:
                raise UpdateFailed(f"{name}: no ports, so no traffic to split")
            previous = view.canary()
            ref = image or life._image(component)  # built (`build`) or resolved
            if previous is not None and previous.labels.image == ref \
                    and previous.labels.config_hash == component.spec_hash():
                life._switch_routes(component, *_split(stable, previous, percent))
                self.reporter.step(f"{name}: canary {previous.short_id} now gets {percent}%")
                return self._done(component, ref, started, ())
            ref = life._pull(component, ref)
            life._start_new(component, ref,
                            lambda new: life._switch_routes(component,
                                                            *_split(stable, new, percent)),
                            canary=str(percent))
            replaced = ()
            if previous is not None:  # out of the active set now: it drains
                life._retire(component, previous, life._view(name), drain=True)
                replaced = (previous.id,)
            return self._done(component, ref, started, replaced)

    def promote(self, component: Any) -> Deployment:
        """The canary becomes the only backend; the old container drains and goes."""
        return self._settle(component, promote=True)

    def abort(self, component: Any) -> Deployment:
        """Back to 100 % on the old container; the canary drains and goes."""
        return self._settle(component, promote=False)

    def _settle(self, component: Any, promote: bool) -> Deployment:
        """End the split one way or the other: the side kept takes every connection."""
        life = self.life
        with life.lock(component):
            life._recover(component)
            started = time.monotonic()
            view = life._view(component.name)
            canary = self._require(component, view)
            if promote:
                life._switch_routes(component, (canary, 1))
                life._keep_up(canary.id)
                replaced = tuple(life._retire_others(component, keep=canary.id)[0])
            else:
                stable = view.live()
                assert stable is not None  # a canary is never the primary
                life._switch_routes(component, (stable, 1))
                life._retire(component, canary, life._view(component.name), drain=True)
                replaced = (canary.id,)
            live = life.current(component)
            assert live is not None
            self.reporter.step(
                f"{component.name}: canary {canary.short_id} promoted" if promote else
                f"{component.name}: canary {canary.short_id} aborted; "
                f"{live.short_id} takes every connection")
            return Deployment(component.name, live, live.image, replaced=replaced,
                              elapsed=time.monotonic() - started)

    def _require(self, component: Any, view: _View) -> ContainerInfo:
        canary = view.canary()
        if canary is None:
            raise NoCanary(f"{component.name}: no canary in place "
                           f"(start one with `gantry update {component.name} --canary PCT`)")
        return canary

    def _done(self, component: Any, ref: str, started: float,
              replaced: tuple[str, ...]) -> Deployment:
        canary = self.find(component)
        assert canary is not None
        elapsed = time.monotonic() - started
        self.reporter.step(f"{component.name}: {canary.short_id} is the canary ({ref}, "
                           f"{canary.canary}%); done in {elapsed:.1f}s")
        return Deployment(component.name, canary, ref, replaced=replaced, elapsed=elapsed)


def _split(stable: ContainerInfo, canary: ContainerInfo,
           percent: int) -> tuple[tuple[ContainerInfo, int], tuple[ContainerInfo, int]]:
    """The routes' weighted set: the stable container first (the primary)."""
    return (stable, 100 - percent), (canary, percent)
