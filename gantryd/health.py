"""Fleet health remediation, the watching half: `gantryd run` runs the health checks of every
component this host serves as desired (status `ready`), in a thread of its own, with gantry's
rules (:mod:`gantry.health`: the health checks, else the ready checks; unhealthy after
`healthFailures` consecutive failed rounds, or when the container stopped running).

The replacing half is the daemon's: when a component turned unhealthy it reports `unhealthy`,
takes a rollout slot (the same slots as rollouts, so at most `maxParallel` hosts restart at
once even when the whole fleet turns unhealthy together), reports `restarting` and replaces
the container through the lifecycle (same image and config); the slot's `acquired` event says
`remediation: ...`. A failed replacement keeps the old container, reports `unhealthy` and
waits for another `healthFailures` failures before it tries again; it never halts a rollout.
Frozen, canary, split, halted or updating hosts are not watched.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from gantry import health as H
from gantry.errors import GantryError

from .store import Desired

log = logging.getLogger("gantryd.health")

# How long a live container seen (with Docker's event stream up, nothing said to have
# changed) is trusted without asking Docker and the proxy again.
TRUST_FOR = 30.0


class HealthWatch:
    """Health checks of the watched components of one host (``lifecycle``'s)."""

    def __init__(self, lifecycle: Any, on_unhealthy: Callable[[], None]) -> None:
        self.lifecycle = lifecycle
        self.on_unhealthy = on_unhealthy  # wakes the daemon's loop
        self._lock = threading.Lock()
        self._watched: dict[str, tuple[int, Any]] = {}  # component -> (revision, model)
        self._streaks: dict[str, H.Streak] = {}
        self._due: dict[str, float] = {}
        self._kick = threading.Event()  # a component to watch, or stopping
        # The live container of each component as last seen, (when, status, info), trusted
        # while Docker's event stream is up and said nothing of our containers meanwhile:
        # a passing round is then one probe, with no Docker or proxy call.
        self._seen: dict[str, tuple[float, Any, Any]] = {}
        self._generation = 0  # moves with every change Docker reports
        self._events_up = False

    def due(self, component: str, desired: Desired | None, ready: bool) -> str | None:
        """Called by the daemon on every turn: watch `component` while it is `ready` as
        `desired` says (else forget it); answers why it must be replaced, if it must."""
        if not ready or desired is None:
            with self._lock:
                self._watched.pop(component, None)
                self._streaks.pop(component, None)
                self._seen.pop(component, None)
            return None
        with self._lock:
            seen = self._watched.get(component)
        if seen is None or seen[0] != desired.revision:
            model = desired.model()
            with self._lock:
                self._watched[component] = (desired.revision, model)
                self._streaks[component] = H.Streak(model.health_failures)
                self._seen.pop(component, None)
            self._kick.set()
        return self.unhealthy(component)

    def poke(self) -> None:
        """Look at what to watch now (our stop, too)."""
        self._kick.set()

    def containers_changed(self, watched: bool) -> None:
        """Docker reported a container of ours starting or ending, or its event stream
        (re)connected or broke (`watched`: whether it is up now): look containers up again."""
        with self._lock:
            self._generation += 1
            self._seen.clear()
            self._events_up = watched

    def unhealthy(self, component: str) -> str | None:
        """Why `component`'s live container is unhealthy; None while it is not (or when the
        container judged is no longer the live one)."""
        with self._lock:
            streak = self._streaks.get(component)
            if streak is None or not streak.unhealthy:
                return None
            judged, why = streak.container, streak.describe()
        current = self.lifecycle.current(component)
        if current is None or current.id != judged:
            return None
        return f"{current.short_id} {why}"

    def reset(self, component: str) -> None:
        """After a replacement (done or failed): count from zero again."""
        with self._lock:
            streak = self._streaks.get(component)
            self._seen.pop(component, None)
            if streak is not None:
                streak.reset()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            now = time.monotonic()
            self._kick.clear()
            with self._lock:
                watched = dict(self._watched)
            wake = math.inf  # nothing watched: sleep until due() has something
            for component, (_, model) in watched.items():
                if self._due.get(component, 0.0) <= now:
                    self._round(component, model)
                    self._due[component] = time.monotonic() + H.interval_of(model)
                wake = min(wake, self._due[component])
            self._kick.wait(None if wake == math.inf else max(0.05, wake - time.monotonic()))

    def _round(self, component: str, model: Any) -> None:
        try:
            current, known = self._live(component)
            with self._lock:
                streak = self._streaks.get(component)
            if streak is None:
                return
            was = streak.unhealthy
            if current is not None:
                judged = current.id
                H.examine(model, self.lifecycle.runtime, judged, streak, known=known)
            elif streak.container is not None and not was:
                # The container being judged is no longer live (it died between two
                # rounds): gone, so the daemon's loop wakes and puts one back.
                judged = streak.container
                streak.observe(judged, ("no longer running",), gone=True)
            else:
                return
            if streak.failures:  # judged afresh next round
                with self._lock:
                    self._seen.pop(component, None)
        except GantryError as exc:  # the engine or the proxy does not answer: no verdict
            log.debug("%s: no health verdict: %s", component, exc)
            return
        # Said once when it starts failing and once when it counts as unhealthy, not per
        # round: a host waiting for a slot keeps failing meanwhile.
        if streak.failures == 1 or (streak.unhealthy and not was):
            log.warning("%s: %s %s", component, judged[:12], streak.describe())
        if streak.unhealthy and not was:
            self.on_unhealthy()

    def _live(self, component: str) -> tuple[Any, Any]:
        """(status, ContainerInfo) of the live container, None when there is none: as last
        seen while that can be trusted, else from Docker and the proxy."""
        now = time.monotonic()
        with self._lock:
            seen, generation = self._seen.get(component), self._generation
        if seen is not None and now - seen[0] < TRUST_FOR:
            return seen[1], seen[2]
        current = self.lifecycle.current(component)
        if current is None:
            return None, None
        info = self.lifecycle.runtime.inspect(current.id)
        with self._lock:
            # Not if Docker reported a change meanwhile: what we saw may predate it.
            if self._events_up and generation == self._generation and info is not None:
                self._seen[component] = (now, current, info)
        return current, info
