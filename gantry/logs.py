"""A component's logs on this host, found by labels, followed across replacements.

The container shown is the live one (the newest routed), else -- a component without routes,
or one being stopped -- the newest running one, else the newest. Following (``-f``) reads that
container's log stream and Docker's event stream of the component's containers (filtered by
gantry's labels): on every event, and every ``poll`` seconds while a newer container is in its
ready checks (the route switch itself is no Docker event), the choice is made again; when it
changes, a marker line is written and the stream goes on with the new container's output from
its start. The old container's remaining output (its drain) is not shown.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from datetime import datetime
from typing import Any, BinaryIO

from . import labels as L
from .engine import Engine, NotFound
from .errors import GantryError
from .lifecycle import ContainerStatus, Lifecycle

_END = object()  # a stream ended
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|m|s))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_SECONDS = {"h": 3600, "m": 60, "s": 1}


class NoContainer(GantryError):
    """The component has no container on this host."""


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90s``, ``10m``, ``1h30m``), a Unix timestamp,
    or an ISO 8601 time (local time unless it has an offset) -> a Unix timestamp."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        back = sum(float(n) * _SECONDS[u] for n, u in _PART.findall(text))
        return (time.time() if now is None else now) - back
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"expected a duration (10m, 1h30m), a Unix timestamp or an ISO 8601 "
                         f"time, not {text!r}") from None


def pick(statuses: list[ContainerStatus]) -> ContainerStatus | None:
    """The container to show among a component's (oldest first); see the module doc."""
    routed = [s for s in statuses if s.state == "running"]
    up = [s for s in statuses if s.docker_status in ("running", "restarting")]
    for group in (routed, up, statuses):
        if group:
            return group[-1]
    return None


def _newer_starting(statuses: list[ContainerStatus], current: ContainerStatus) -> bool:
    return any(s.state == "starting" and s.created > current.created for s in statuses)


def marker(component: str, status: ContainerStatus) -> bytes:
    return f"--- {component}: now {status.short_id} ({status.image}) ---\n".encode()


class _Pump(threading.Thread):
    """Puts every item of a blocking Docker stream on a queue as (key, item), then (key,
    _END); ``close()`` ends the stream from another thread."""

    def __init__(self, key: str, stream: Any, out: queue.Queue) -> None:
        super().__init__(daemon=True, name=f"gantry-logs-{key[:12]}")
        self.key, self.stream, self.out = key, stream, out
        self.start()

    def run(self) -> None:
        try:
            for item in self.stream:
                self.out.put((self.key, item))
        except Exception:  # closed under us, or the engine went away: the end either way
            pass
        self.out.put((self.key, _END))

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # already closed
            pass


class LogFollower:
    """``gantry logs``: writes a component's container output to ``out`` (bytes).

    ``engine``: the Docker engine; ``life`` finds the containers and routes.
    """

    EVENTS = "events"

    def __init__(self, life: Lifecycle, engine: Engine, component: str, out: BinaryIO,
                 poll: float = 0.5) -> None:
        self.life, self.engine, self.component, self.out = life, engine, component, out
        self.poll = poll
        self._at_line_start = True

    def _write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.out.flush()
            self._at_line_start = data.endswith(b"\n")

    def _note(self, line: bytes) -> None:
        self._write(line if self._at_line_start else b"\n" + line)

    def _choose(self) -> tuple[ContainerStatus | None, list[ContainerStatus]]:
        statuses = self.life.status(self.component)
        return pick(statuses), statuses

    def _first(self) -> ContainerStatus:
        chosen, _ = self._choose()
        if chosen is None:
            raise NoContainer(f"{self.component}: no container on this host")
        return chosen

    def show(self, tail: int | None, since: float | None) -> None:
        """The output so far of the container shown (no follow)."""
        for chunk in self.engine.logs(self._first().id, follow=False,
                                      tail="all" if tail is None else tail, since=since):
            self._write(chunk)

    def follow(self, tail: int | None, since: float | None) -> None:
        """Follow until interrupted (KeyboardInterrupt) or the engine goes away."""
        items: queue.Queue = queue.Queue()
        # Subscribed before the first choice, so no replacement falls between the two.
        events = _Pump(self.EVENTS, self.engine.events({
            "type": "container",
            "label": L.selector(self.life.host.project, self.life.host.machine,
                                self.component)}), items)
        try:
            current = self._first()
        except GantryError:
            events.close()
            raise
        logs = self._open(current, items, tail, since)
        ended_at: float | None = None  # when the current container's output ended (it stopped)
        watch = False  # a newer container is in its ready checks: poll for the switch
        try:
            while True:
                try:
                    key, item = items.get(timeout=self.poll if watch else None)
                except queue.Empty:
                    key, item = self.EVENTS, None
                if key == current.id and item is not _END:
                    self._write(item)
                    continue
                if key == self.EVENTS and item is _END:
                    raise GantryError("the Docker event stream ended (engine restarted?)")
                if key == current.id:
                    ended_at = time.time()
                elif key != self.EVENTS:
                    continue  # the rest of a stream already closed
                chosen, statuses = self._choose()
                # The same container running again (restarted by the engine): its output
                # from where it ended.
                again = (chosen is not None and chosen.id == current.id
                         and ended_at is not None and chosen.docker_status == "running")
                if chosen is not None and (chosen.id != current.id or again):
                    logs.close()
                    self._note(marker(self.component, chosen))
                    logs = self._open(chosen, items, None, ended_at if again else None)
                    current, ended_at = chosen, None
                elif key == current.id:
                    self._note(f"--- {self.component}: {current.short_id} stopped; waiting "
                               f"for its next container ---\n".encode())
                watch = _newer_starting(statuses, current)
        finally:
            logs.close()
            events.close()

    def _open(self, status: ContainerStatus, items: queue.Queue, tail: int | None,
              since: float | None) -> _Pump:
        try:
            stream = self.engine.logs(status.id, follow=True,
                                      tail="all" if tail is None else tail, since=since)
        except NotFound:  # removed since it was chosen: its stream just ends
            stream = iter(())
        return _Pump(status.id, stream, items)
