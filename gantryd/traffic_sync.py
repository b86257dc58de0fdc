"""The host side of the fleet-wide pause and maintenance: keep this host's proxy routes of our
components as their etcd traffic keys say.

A thread of its own, woken by the daemon (the key changed, the watch reconnected, the proxy
restarted, the daemon's loop made a turn — which is when a first deploy creates a route), so
a pause lands within a proxy call of the etcd event even while the daemon's loop is busy with
a long update. Applying is idempotent (routes already right are left alone), so a wake-up too
many costs one etcd read and one route listing.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gantry import traffic as gate

from . import traffic
from .store import Store

log = logging.getLogger("gantryd.traffic")

RESYNC_INTERVAL = 30.0
BACKOFF_START, BACKOFF_MAX = 0.25, 5.0


class TrafficSync:
    """Applies the traffic keys of ``components`` to ``lifecycle``'s proxy routes.

    ``states[c]`` is what the routes show after the last pass (("paused",), ...), for the
    host's status report; ``on_change`` is called when a pass changed it.
    """

    def __init__(self, store: Store, components: Sequence[str], lifecycle: Any,
                 on_change: Callable[[], None]):
        self.store = store
        self.components = list(components)
        self.lifecycle = lifecycle
        self.on_change = on_change
        self.states: dict[str, tuple[str, ...]] = {}
        self._wake = threading.Event()
        self._wake.set()  # the first pass applies the current state (a (re)started daemon)
        self._problem: str | None = None

    def poke(self) -> None:
        self._wake.set()

    def run(self, stopping: threading.Event) -> None:
        delay = BACKOFF_START
        while not stopping.is_set():
            self._wake.wait(RESYNC_INTERVAL)
            self._wake.clear()
            if stopping.is_set():
                break
            try:
                self.sync()
                delay = BACKOFF_START
                if self._problem is not None:
                    log.info("traffic: back to normal (was: %s)", self._problem)
                    self._problem = None
            except Exception as exc:  # etcd or the proxy away: the daemon's loop says more
                message = f"{type(exc).__name__}: {exc}"
                if message != self._problem:
                    log.warning("traffic: %s; retrying", message)
                    self._problem = message
                self._wake.set()
                stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def sync(self) -> None:
        """One pass over every component."""
        before = dict(self.states)
        for component in self.components:
            self.states[component] = self._sync(component)
        if self.states != before:
            self.on_change()

    def _sync(self, component: str) -> tuple[str, ...]:
        wanted = traffic.read(self.store, component)
        routes = self.lifecycle.routes(component)
        if wanted is not None and routes:
            changed = gate.converge(self.lifecycle.proxy, routes, wanted.gate)
            if changed:
                log.info("%s: traffic %s on %s", component,
                         ", ".join(wanted.gate.states) or "normal", ", ".join(changed))
                routes = self.lifecycle.routes(component)
        return gate.states(routes)
